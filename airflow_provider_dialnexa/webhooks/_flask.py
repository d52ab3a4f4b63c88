"""The receiver on Airflow 2.11's webserver: a Flask blueprint the plugin registers at ``/dialnexa``.

One route, ``POST /webhooks/<conn_id>``, authenticated by the delivery's signature (``receiver.py``) and
exempt from the webserver's CSRF protection (this blueprint only: DialNexa has no CSRF token). The
webserver preloads the app before forking its workers, so the sweeper thread is started in each
worker by its first request of any kind (a health check counts), never in the preloading parent.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request

from airflow_provider_dialnexa.webhooks.receiver import MAX_BODY_BYTES, TOO_LARGE, handle
from airflow_provider_dialnexa.webhooks.signature import SIGNATURE_HEADERS
from airflow_provider_dialnexa.webhooks.sweeper import sweeper

_CHUNK = 64 * 1024


def read_bounded(limit: int = MAX_BODY_BYTES) -> bytes | None:
    """The raw body, or None as soon as it is known to exceed ``limit`` (declared or actually sent)."""
    declared = request.content_length
    if declared is not None and declared > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    stream = request.stream
    while True:
        chunk = stream.read(_CHUNK)
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _json(body: dict[str, Any], status: int) -> Response:
    response = jsonify(body)
    response.status_code = status
    return response


def create_blueprint() -> Blueprint:
    """The DialNexa webhooks blueprint (one route)."""
    blueprint = Blueprint("dialnexa_webhooks", __name__, url_prefix="/dialnexa")

    @blueprint.route("/webhooks/<conn_id>", methods=["POST"])
    def receive(conn_id: str) -> Response:
        body = read_bounded()
        if body is None:
            return _json(TOO_LARGE, 413)
        signatures = [value for name in SIGNATURE_HEADERS for value in request.headers.getlist(name)]
        reply = handle(conn_id, signatures, body, remote=request.remote_addr, on_recorded=sweeper.wake)
        return _json(reply.body, reply.status)

    def exempt_from_csrf(state: Any) -> None:
        csrf = state.app.extensions.get("csrf")
        if csrf is not None:
            csrf.exempt(blueprint)

    blueprint.record_once(exempt_from_csrf)
    blueprint.before_app_request(sweeper.ensure_running)
    return blueprint
