"""The receiver on Airflow 3's api-server: a FastAPI app the plugin mounts at ``/dialnexa``.

Airflow mounts plugin apps without its own authentication; this app has exactly one route,
``POST /webhooks/{conn_id}``, authenticated by the delivery's signature (``receiver.py``), and no docs
or OpenAPI pages. Its lifespan (entered by the api-server's own lifespan) runs the sweeper thread.

The route holds no thread while a delivery waits for its group's commit (``writer.py``): it awaits the
writer's future on the event loop. A signature the cached secrets verify (HMAC over at most 1 MiB) and a
small body's JSON are handled on the loop too; anything that may read the connection (a cache miss, a
signature that does not verify, so the secret may have rotated) runs in the threadpool.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from airflow_provider_dialnexa.webhooks import receiver
from airflow_provider_dialnexa.webhooks.receiver import MAX_BODY_BYTES, NOT_RECORDED, TOO_LARGE, Reply
from airflow_provider_dialnexa.webhooks.signature import SIGNATURE_HEADERS
from airflow_provider_dialnexa.webhooks.sweeper import sweeper
from airflow_provider_dialnexa.webhooks.writer import writer

#: Bodies up to this size are parsed on the event loop once authentic; larger ones in the threadpool.
_INLINE_BODY_BYTES = 64 * 1024


async def read_bounded(request: Request, limit: int = MAX_BODY_BYTES) -> bytes | None:
    """The raw body, or None as soon as it is known to exceed ``limit`` (declared or actually sent)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def deliver(conn_id: str, signatures: list[str], body: bytes, remote: str | None) -> Reply:
    """``receiver.handle`` for the event loop: the same answers, awaiting the writer instead of blocking a thread."""
    if len(body) <= _INLINE_BODY_BYTES and receiver.verified_from_cache(conn_id, signatures, body):
        checked = receiver.check(conn_id, signatures, body, remote=remote, authenticated=True)
    else:
        checked = await run_in_threadpool(receiver.check, conn_id, signatures, body, remote=remote)
    if isinstance(checked, Reply):
        return checked
    try:
        outcome = await asyncio.wrap_future(writer.submit(conn_id, checked))
    except Exception:  # logged by the writer, with its cause
        return NOT_RECORDED
    sweeper.wake()
    return receiver.recorded(conn_id, checked, outcome)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    sweeper.ensure_running()
    writer.ensure_running()
    try:
        yield
    finally:
        writer.stop()
        sweeper.stop()


def create_app() -> FastAPI:
    """The DialNexa webhooks app (one route, no docs)."""
    app = FastAPI(
        title="DialNexa webhooks",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )

    @app.post("/webhooks/{conn_id}")
    async def receive(conn_id: str, request: Request) -> JSONResponse:
        body = await read_bounded(request)
        if body is None:
            return JSONResponse(TOO_LARGE, status_code=413)
        signatures = [value for name in SIGNATURE_HEADERS for value in request.headers.getlist(name)]
        remote = request.client.host if request.client else None
        reply = await deliver(conn_id, signatures, body, remote)
        return JSONResponse(reply.body, status_code=reply.status)

    return app
