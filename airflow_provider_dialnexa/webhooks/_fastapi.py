"""The receiver on Airflow 3's api-server: a FastAPI app the plugin mounts at ``/dialnexa``.

Airflow mounts plugin apps without its own authentication; this app has exactly one route,
``POST /webhooks/{conn_id}``, authenticated by the delivery's signature (``receiver.py``), and no docs
or OpenAPI pages. Its lifespan (entered by the api-server's own lifespan) runs the sweeper thread.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from airflow_provider_dialnexa.webhooks.receiver import MAX_BODY_BYTES, TOO_LARGE, handle
from airflow_provider_dialnexa.webhooks.signature import SIGNATURE_HEADERS
from airflow_provider_dialnexa.webhooks.sweeper import sweeper


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


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    sweeper.ensure_running()
    try:
        yield
    finally:
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
        reply = await run_in_threadpool(handle, conn_id, signatures, body, remote=remote, on_recorded=sweeper.wake)
        return JSONResponse(reply.body, status_code=reply.status)

    return app
