"""Raw ASGI app of the DialNexa simulator: the public ``/v1/calls`` routes and the ``/_sim`` control API.

No web framework: routing is a few string comparisons and all state lives in :class:`SimState`, so one
request costs microseconds and a benchmark can push thousands per second through a single server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from http import HTTPStatus
from typing import Any, NamedTuple
from urllib.parse import parse_qs, unquote

from airflow_provider_dialnexa.simulator import batch_api, batches
from airflow_provider_dialnexa.simulator.echo import echo_message, number_of
from airflow_provider_dialnexa.simulator.ratelimit import header_values
from airflow_provider_dialnexa.simulator.state import (
    ERROR_FAULTS,
    ApiError,
    Fault,
    SimState,
    is_status_fault,
    split_csv,
)
from airflow_provider_dialnexa.simulator.webhooks import ApiRefusal

Message = MutableMapping[str, Any]
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON = b"application/json; charset=utf-8"
HTML = b"text/html; charset=utf-8"
_HTML_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n"
    b"<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)
_HTML_200 = (
    b"<!DOCTYPE html><html><head><title>DialNexa</title></head><body><h1>Scheduled maintenance</h1></body></html>"
)
_LOOPBACK = ("127.", "::1", "localhost")


class SimulatedReset(Exception):
    """Raised by the app mid-response so the server drops the connection (the ``reset`` fault)."""


class _DropSimulatedReset(logging.Filter):
    """Keeps uvicorn from logging a traceback for every deliberate ``reset`` fault."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], SimulatedReset))


def install_log_filter() -> None:
    """Silence deliberate resets in uvicorn's error log (idempotent)."""
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _DropSimulatedReset) for f in logger.filters):
        logger.addFilter(_DropSimulatedReset())


class Reply(NamedTuple):
    status: int
    body: bytes
    content_type: bytes = JSON
    headers: tuple[tuple[bytes, bytes], ...] = ()


def dumps(payload: Any) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


def error_body(status: int, message: str | list[str]) -> bytes:
    """DialNexa's error envelope (NestJS style)."""
    return dumps({"statusCode": status, "message": message, "error": HTTPStatus(status).phrase})


def _error(status: int, message: str | list[str], headers: tuple[tuple[bytes, bytes], ...] = ()) -> Reply:
    return Reply(status, error_body(status, message), JSON, headers)


def _fault_reply(fault: Fault, number: str | None = None) -> Reply:
    """The answer of an error fault (429/5xx, or any status code given as the kind); ``number``: echo it."""
    if fault.kind == "502_html":
        return Reply(502, _HTML_502, HTML)
    status = int(fault.kind)
    retry = ((b"retry-after", fault.retry_after.encode("latin-1")),) if fault.retry_after is not None else ()
    messages = {429: "ThrottlerException: Too Many Requests", 500: "Internal server error", **CREATE_REFUSALS}
    message = echo_message(status, number) if number else messages.get(status, HTTPStatus(status).phrase)
    return _error(status, message, retry if status in (429, 503) else ())


#: DialNexa's documented Create Call refusals (OpenAPI ``createCall`` examples).
CREATE_REFUSALS: dict[int, str] = {
    400: "phone_number must be a valid E.164 phone number",
    402: "Insufficient billing wallet balance",
    403: "Destination country or network prefix is not enabled for this workspace",
    404: "Agent or phone number not found",
}


#: Logged status of a request whose client hung up while its answer was held (nginx's "client closed request").
HUNG_UP = 499


class _Held:
    """Whether a request's client hung up while its answer was held (set by ``_hold``, read when logging)."""

    hung_up = False


async def _hold(delay: float, receive: Receive, held: _Held) -> None:
    """Hold a request's answer ``delay`` seconds, or until the client hangs up (no one waits for it then).

    A ``slow`` answer is meant to come after the client's read timeout. Ending the hold at the hang-up logs
    the request (status ``HUNG_UP``: no answer reached the client) as soon as the client gave up, so a test
    can make the delay as long as it likes (far beyond any stall of a loaded machine) without waiting for it.
    """

    async def hang_up() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass  # a GET's (empty) request body, still unread

    try:
        await asyncio.wait_for(hang_up(), delay)
        held.hung_up = True
    except TimeoutError:
        pass
    except asyncio.CancelledError:  # server shutting down mid-delay: end quietly, not with a traceback
        raise SimulatedReset("shutdown during a simulated delay") from None


async def _lose(fault: Fault, reply: Reply, receive: Receive, held: _Held) -> tuple[Reply, bool] | None:
    """The answer of a ``lost_*`` fault after the route ran (the call exists): a 502/504, or a late reply."""
    if fault.kind == "lost_502":
        return Reply(502, _HTML_502, HTML), False
    if fault.kind == "lost_504":
        return _error(504, "Gateway Timeout"), False
    if fault.kind == "lost_slow":
        await _hold(fault.delay_s, receive, held)  # the client gave up long ago; the call was placed anyway
        return reply, False
    return None


def _mangle(kind: str, route: str, status: int, payload: Any) -> Reply | None:
    """Apply a body-mangling fault to a successful payload; None for kinds that leave the body alone."""
    if kind == "html_200":
        return Reply(200, _HTML_200, HTML)
    if kind == "not_object":
        return Reply(status, dumps("Service temporarily degraded" if route == "list" else [payload]))
    if kind in ("no_id", "no_status", "no_metadata"):
        for item in payload if isinstance(payload, list) else payload.get("data", [payload]):
            item.pop(kind[3:], None)
        return Reply(status, dumps(payload))
    if kind == "object_id":  # an id that is not a string (here a JSON object): no client may use it as a key
        for item in payload if isinstance(payload, list) else payload.get("data", [payload]):
            item["id"] = {"value": item.get("id")}
        return Reply(status, dumps(payload))
    if kind == "truncated_json":
        body = dumps(payload)
        return Reply(status, body[: max(1, len(body) // 2)])
    return None


def _resolve(method: str, scope: Scope) -> tuple[str, str | None]:
    """``(route, call_id)`` of a public-API request; the id is URL-decoded from the raw path."""
    raw: bytes = scope.get("raw_path") or scope["path"].encode()
    parts = raw.decode("latin-1").split("/")
    if parts[1:3] == ["v1", "calls"]:
        if len(parts) == 3:
            return {"GET": "list", "POST": "create"}.get(method, "other"), None
        if len(parts) == 4 and method == "GET":
            return "get", unquote(parts[3])
    if parts[1:3] == ["v1", "user-webhooks"]:  # simulator/webhooks.py
        if len(parts) == 3:
            return {"GET": "webhook_list", "POST": "webhook_create"}.get(method, "other"), None
        if len(parts) == 4 and parts[3]:
            route = {"GET": "webhook_get", "PATCH": "webhook_update", "DELETE": "webhook_delete"}.get(method, "other")
            return route, unquote(parts[3])
    if parts[1:3] == ["v1", "batch-calls"]:  # simulator/batches.py
        if len(parts) == 3:
            return {"GET": "batch_list", "POST": "batch_create"}.get(method, "other"), None
        if len(parts) == 4 and method == "GET":
            return "batch_get", unquote(parts[3])
        if len(parts) == 5 and parts[4] == "status" and method == "PATCH":
            return "batch_status", unquote(parts[3])
    return "other", None


def _bearer(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
    return ""


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    return b"".join(chunks)


async def _send(send: Send, reply: Reply, extra: list[tuple[bytes, bytes]]) -> None:
    headers = [(b"content-type", reply.content_type), (b"content-length", str(len(reply.body)).encode()), *extra]
    await send({"type": "http.response.start", "status": reply.status, "headers": headers + list(reply.headers)})
    await send({"type": "http.response.body", "body": reply.body})


def _first(query: Mapping[str, Sequence[str]], name: str) -> str | None:
    values = query.get(name)
    return values[-1] if values else None


def control(state: SimState, method: str, path: str, query: Mapping[str, Sequence[str]], body: Any) -> tuple[int, Any]:
    """Run one control-API request (``path`` starts with ``/_sim/``); returns ``(status, JSON-able payload)``.

    Shared by the HTTP control routes and the in-process :class:`Simulator`, so both behave the same.
    """
    body = body if body is not None else {}
    if not isinstance(body, dict):
        return 400, {"statusCode": 400, "message": "body must be a JSON object", "error": "Bad Request"}
    parts = path.strip("/").split("/")[1:]
    try:
        match method, parts:
            case "GET", ["health"]:
                return 200, {"ok": True}
            case "POST", ["calls"]:
                call_id = state.create_call(**body)
                return 201, {"id": call_id, "record": state.record(call_id), "plan": state.plan(call_id).to_dict()}
            case "POST", ["calls", "batch"]:
                return 201, {"ids": state.create_calls(**body)}
            case "POST", ["calls", "seed"]:
                return 201, {"seeded": state.seed_calls(**body)}
            case "GET", ["calls", call_id]:
                return 200, state.record(call_id)
            case "DELETE", ["calls", call_id]:
                state.delete_call(call_id)
                return 200, {"ok": True}
            case "GET", ["calls", call_id, "plan"]:
                return 200, state.plan(call_id).to_dict()
            case "POST", ["calls", call_id, "status"]:
                state.set_status(call_id, body.get("status"))  # type: ignore[arg-type]
                return 200, {"ok": True}
            case "POST", ["calls", call_id, "script"]:
                state.script(call_id, body.get("statuses"))  # type: ignore[arg-type]
                return 200, {"ok": True}
            case "POST", ["faults"]:
                state.add_fault(Fault(**body))
                return 201, {"ok": True}
            case "DELETE", ["faults"]:
                state.clear_faults()
                return 200, {"ok": True}
            case "GET", ["config"]:
                return 200, state.configure()
            case "POST", ["config"]:
                return 200, state.configure(**body)
            case "GET", ["stats"]:
                return 200, state.stats()
            case "GET", ["correlations"]:
                return 200, state.calls_by_metadata(_first(query, "key") or "airflow_correlation_id")
            case "GET", ["requests"]:
                return 200, {"requests": state.requests(_first(query, "call_id"), _first(query, "route"))}
            case _, ["webhooks", *rest]:
                return state.webhooks.control(method, rest, query, body)  # type: ignore[no-any-return]
            case "POST", ["reset"]:
                state.reset(body.get("seed"))
                return 200, {"ok": True}
            case _, ["batches" | "clock", *_]:
                return batch_api.control(state, method, parts, body)
    except KeyError as exc:
        return 404, {"statusCode": 404, "message": str(exc.args[0]), "error": "Not Found"}
    except (TypeError, ValueError) as exc:
        return 400, {"statusCode": 400, "message": str(exc), "error": "Bad Request"}
    return 404, {"statusCode": 404, "message": f"Cannot {method} {path}", "error": "Not Found"}


class SimulatorApp:
    """ASGI application serving one :class:`SimState`."""

    def __init__(self, state: SimState) -> None:
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        body = b"" if scope["method"] in ("GET", "HEAD") else await _read_body(receive)
        if scope["path"].startswith("/_sim/"):
            await self._control(scope, body, send)
        else:
            await self._api(scope, body, receive, send)

    async def _api(self, scope: Scope, body: bytes, receive: Receive, send: Send) -> None:
        state, now, method = self.state, time.time(), scope["method"]
        route, call_id = _resolve(method, scope)
        batches.tick(state)
        paged = route in ("list", "batch_list", "batch_get", "webhook_list")
        query = parse_qs(scope["query_string"].decode("latin-1"), keep_blank_values=True) if paged else {}
        call_ids = (call_id,) if call_id is not None else tuple(split_csv(query.get("call_id")))
        held = _Held()
        reply, reset = await self._answer(route, method, scope, call_ids, query, body, now, receive, held)
        client = scope.get("client")
        peer = tuple(client) if client else None
        status = 0 if reset else HUNG_UP if held.hung_up else reply.status
        window = state.note(method, route, call_ids, status, peer, now)
        if held.hung_up:
            return  # nobody to answer
        if reply.status == 429:
            window = window._replace(remaining=0)
        extra = header_values(window, now, state.config.reset_style) if state.config.rate_headers else []
        if not reset:
            await _send(send, reply, extra)
            return
        # Promise more bytes than we send, then abort: the client sees the connection drop mid-body.
        headers = [(b"content-type", reply.content_type), (b"content-length", str(len(reply.body) + 512).encode())]
        await send({"type": "http.response.start", "status": reply.status, "headers": headers + extra})
        await send({"type": "http.response.body", "body": reply.body[: len(reply.body) // 2], "more_body": True})
        raise SimulatedReset("simulated connection reset")

    async def _answer(
        self,
        route: str,
        method: str,
        scope: Scope,
        call_ids: tuple[str, ...],
        query: Mapping[str, Sequence[str]],
        body: bytes,
        now: float,
        receive: Receive,
        held: _Held,
    ) -> tuple[Reply, bool]:
        """The reply to a public-API request and whether to reset the connection while sending it."""
        state = self.state
        if route == "other":
            return _error(404, f"Cannot {method} {scope['path']}"), False
        if not state.authorized(_bearer(scope)):
            return _error(401, "API key is missing or invalid"), False
        refused = state.admit(now)
        if refused is not None:  # the key-wide limit: 429 with Retry-After until the window frees a slot
            retry = str(max(1, math.ceil(refused.reset_in))).encode()
            return _error(429, "ThrottlerException: Too Many Requests", ((b"retry-after", retry),)), False
        fault = state.match_fault(route, call_ids)
        delay = state.config.latency_s + (fault.delay_s if fault is not None and fault.kind == "slow" else 0.0)
        if delay:
            await _hold(delay, receive, held)
            now = time.time()  # the call's lifecycle moved on while we slept
        if fault is not None and (fault.kind in ERROR_FAULTS or is_status_fault(fault.kind)):
            return _fault_reply(fault, self._echoed(route, call_ids, body) if fault.echo_number else None), False
        try:
            if route == "get":
                status, payload = 200, state.api_get(call_ids[0], now)
            elif route == "list":
                status, payload = 200, state.api_list(query, now)
            elif route.startswith("batch_"):
                ctype = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"content-type"), "")
                status, payload = batch_api.api(state, route, call_ids[0] if call_ids else None, query, body, ctype)
            elif route == "create":
                status, payload = 201, state.api_create(_parse_json(body), now)
            else:
                parsed = _parse_json(body) if route in ("webhook_create", "webhook_update") else None
                status, payload = await state.webhooks.api(route, call_ids[0] if call_ids else None, query, parsed)
        except (ApiError, ApiRefusal) as exc:
            return _error(exc.status, exc.message), False
        if fault is not None:
            mangled = _mangle(fault.kind, route, status, payload)
            if mangled is not None:
                return mangled, False
        if fault is not None and (lost := await _lose(fault, Reply(status, dumps(payload)), receive, held)) is not None:
            return lost
        return Reply(status, dumps(payload)), fault is not None and fault.kind == "reset"

    def _echoed(self, route: str, call_ids: tuple[str, ...], body: bytes) -> str:
        """The phone number an ``echo_number`` fault quotes (see ``simulator.echo``)."""
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        try:
            record = self.state.record(call_ids[0]) if route == "get" and call_ids else None
        except KeyError:
            record = None
        return number_of(route, call_ids, parsed, record)

    async def _control(self, scope: Scope, body: bytes, send: Send) -> None:
        client = scope.get("client")
        if client and not str(client[0]).startswith(_LOOPBACK):
            await _send(send, _error(403, "The control API only answers loopback clients"), [])
            return
        self.state.note_control()
        try:
            parsed = json.loads(body) if body.strip() else None
        except ValueError:
            await _send(send, _error(400, "Invalid JSON body"), [])
            return
        query = parse_qs(scope["query_string"].decode("latin-1"))
        status, payload = control(self.state, scope["method"], scope["path"], query, parsed)
        await _send(send, Reply(status, dumps(payload)), [])


def _parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        raise ApiError(400, "Unexpected token in JSON body") from None


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
