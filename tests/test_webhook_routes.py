"""The route in-process (FastAPI app on Airflow 3, Flask blueprint on 2.11), the plugin, and the sweeper thread.

Only what needs no metadata DB: header names, bounded body reading (413 from the declared length and from a
chunked body), the identical 401, CSRF exemption, plugin wiring. Recording is covered by
``test_webhook_store.py`` and, through real servers, by ``test_webhook_fullstack.py``.
"""

from __future__ import annotations

import asyncio
import importlib
import io
import json
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from _compat import AIRFLOW_V_3

from airflow_provider_dialnexa.webhooks import receiver, sweeper
from airflow_provider_dialnexa.webhooks.plugin import DialNexaWebhooksPlugin
from airflow_provider_dialnexa.webhooks.receiver import MAX_BODY_BYTES, UNAUTHORIZED
from airflow_provider_dialnexa.webhooks.signature import sign
from airflow_provider_dialnexa.webhooks.sweeper import Sweeper, SweepResult

CONN_ID = "dialnexa_routes"
SECRET = "whsec_routes_secret"
PING = json.dumps({"event_type": "verification", "message": "verify", "timestamp": 1}).encode()
IGNORED = json.dumps(
    {"event_type": "call_initiated", "payload": {"call": {"id": "c1", "status": "initiated"}}}
).encode()


@pytest.fixture(autouse=True)
def _conn(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    conn = {"conn_type": "dialnexa", "password": "k:s", "extra": {"webhook_secret": SECRET}}
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(conn))
    receiver.secrets_cache.clear()
    yield
    receiver.secrets_cache.clear()


# -- the route of this Airflow line: FastAPI app (3) or Flask blueprint (2.11) --------------------------


class Route:
    """POSTs to the receiver of the running Airflow line, in-process; the answer as (status, JSON)."""

    def __init__(self) -> None:
        if AIRFLOW_V_3:
            from airflow_provider_dialnexa.webhooks._fastapi import create_app

            self.app: Any = create_app()
        else:
            from flask import Flask
            from flask_wtf.csrf import CSRFProtect

            from airflow_provider_dialnexa.webhooks._flask import create_blueprint

            self.app = Flask(__name__)
            self.app.config["SECRET_KEY"] = "test"
            CSRFProtect(self.app)  # as Airflow 2.11's webserver does

            @self.app.route("/other", methods=["POST"])
            def other() -> str:
                return "ok"

            self.app.register_blueprint(create_blueprint())

    def request(
        self, method: str, path: str, content: bytes = b"", headers: dict[str, str] | None = None, chunked: bool = False
    ) -> tuple[int, Any]:
        if AIRFLOW_V_3:
            return asyncio.run(self._asgi(method, path.removeprefix("/dialnexa"), content, headers or {}, chunked))
        client = self.app.test_client()
        if chunked:  # what gunicorn hands the app for a chunked body: no length, input terminated
            response = client.open(
                path,
                method=method,
                input_stream=io.BytesIO(content),
                headers={**(headers or {}), "Transfer-Encoding": "chunked"},
                environ_overrides={"wsgi.input_terminated": True},
            )
        else:
            response = client.open(path, method=method, data=content, headers=headers or {})
        return response.status_code, response.get_json(silent=True)

    async def _asgi(
        self, method: str, path: str, content: bytes, headers: dict[str, str], chunked: bool
    ) -> tuple[int, Any]:
        import httpx

        async def pieces() -> AsyncIterator[bytes]:
            for start in range(0, len(content), 65536):
                yield content[start : start + 65536]

        transport = httpx.ASGITransport(app=self.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api-server") as http:
            body: Any = pieces() if chunked else content
            response = await http.request(method, path, content=body, headers=headers)
        try:
            return response.status_code, response.json()
        except ValueError:
            return response.status_code, None


@pytest.fixture
def route(monkeypatch: pytest.MonkeyPatch) -> Route:
    monkeypatch.setattr(sweeper.sweeper, "ensure_running", lambda: None)  # no thread in these tests
    return Route()


PATH = f"/dialnexa/webhooks/{CONN_ID}"


def test_route_answers_per_header_and_body(route: Route) -> None:
    for header in ("x-nexa-signature", "X-DialNexa-Signature"):
        assert route.request("POST", PATH, PING, {header: sign(PING, SECRET)}) == (200, {"status": "verified"})
    ignored = route.request("POST", PATH, IGNORED, {"x-nexa-signature": sign(IGNORED, SECRET)})
    assert ignored == (200, {"status": "ignored", "event": "call_initiated"})
    unauthenticated = [
        route.request("POST", PATH, PING),
        route.request("POST", PATH, PING, {"x-nexa-signature": sign(PING, "nope")}),
        route.request("POST", "/dialnexa/webhooks/bad%20id", PING, {"x-nexa-signature": sign(PING, SECRET)}),
    ]
    assert unauthenticated == [(401, UNAUTHORIZED)] * 3
    assert route.request("GET", PATH)[0] == 405


def test_route_bounds_the_body(route: Route) -> None:
    exact = b" " * (MAX_BODY_BYTES - len(PING)) + PING  # JSON with leading blanks: exactly 1 MiB, authentic
    assert route.request("POST", PATH, exact, {"x-nexa-signature": sign(exact, SECRET)})[0] == 200
    too_big = b" " * MAX_BODY_BYTES + PING
    signed = {"x-nexa-signature": sign(too_big, SECRET)}
    assert route.request("POST", PATH, too_big, signed)[0] == 413  # declared length
    assert route.request("POST", PATH, too_big, signed, chunked=True)[0] == 413  # no Content-Length


def test_nothing_else_is_open(route: Route) -> None:
    if AIRFLOW_V_3:  # the sub-app serves no docs or schema (Airflow mounts it without its auth)
        assert route.request("GET", "/dialnexa/docs")[0] == 404
        assert route.request("GET", "/dialnexa/openapi.json")[0] == 404
        assert [r.path for r in route.app.routes] == ["/webhooks/{conn_id}"]
    else:  # the CSRF exemption is this blueprint's alone
        assert route.request("POST", "/other")[0] == 400
        assert [str(rule) for rule in route.app.url_map.iter_rules() if "dialnexa" in str(rule)] == [
            "/dialnexa/webhooks/<conn_id>"
        ]


# -- plugin ------------------------------------------------------------------------------------------------


def test_plugin_serves_exactly_one_app_per_line() -> None:
    plugin = DialNexaWebhooksPlugin()
    assert DialNexaWebhooksPlugin.name == "dialnexa_webhooks"
    if AIRFLOW_V_3:
        (app,) = plugin.fastapi_apps
        assert app["url_prefix"] == "/dialnexa"
        assert [route.path for route in app["app"].routes] == ["/webhooks/{conn_id}"]
        assert plugin.flask_blueprints == []
    else:
        (blueprint,) = plugin.flask_blueprints
        assert blueprint.url_prefix == "/dialnexa"
        assert plugin.fastapi_apps == []


_ADDED_BY_PLUGIN = """
import json, sys
from airflow.providers.common.compat.sdk import AirflowPlugin
before = set(sys.modules)
import airflow_provider_dialnexa.webhooks.plugin
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def test_plugin_is_an_entry_point_and_importing_it_pulls_in_no_web_framework() -> None:
    import importlib.metadata

    (entry,) = [ep for ep in importlib.metadata.entry_points(group="airflow.plugins") if ep.name == "dialnexa_webhooks"]
    assert entry.value == "airflow_provider_dialnexa.webhooks.plugin:DialNexaWebhooksPlugin"
    done = subprocess.run(
        [sys.executable, "-c", _ADDED_BY_PLUGIN], capture_output=True, text=True, check=True, timeout=120
    )
    added = set(json.loads(done.stdout.strip().splitlines()[-1]))
    heavy = {"fastapi", "flask", "starlette", "sqlalchemy"}
    assert {name.split(".")[0] for name in added} & heavy == set()
    ours = {name for name in added if name.startswith("airflow_provider_dialnexa")}
    assert ours <= {
        "airflow_provider_dialnexa",
        "airflow_provider_dialnexa.webhooks",
        "airflow_provider_dialnexa.webhooks.plugin",
        "airflow_provider_dialnexa.webhooks.consume",
        "airflow_provider_dialnexa.webhooks.uri",
        "airflow_provider_dialnexa.webhooks.events",
        # events.py: the status vocabulary, call-id check and record shaping (pure modules)
        "airflow_provider_dialnexa.status",
        "airflow_provider_dialnexa._validation",
        "airflow_provider_dialnexa._placement",
        "airflow_provider_dialnexa._paging",
        "airflow_provider_dialnexa._connection",
        "airflow_provider_dialnexa.records",
        "airflow_provider_dialnexa.exceptions",
        "airflow_provider_dialnexa.policy",
    }, sorted(ours)


# -- the sweeper thread ------------------------------------------------------------------------------------


def test_sweeper_thread_sweeps_at_start_while_pending_and_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    pending = [2, 1, 0]
    three = threading.Event()

    def fake_sweep(session: Any, **_: Any) -> SweepResult:
        calls.append(1)
        if len(calls) == 3:
            three.set()
        return SweepResult(pending=pending[len(calls) - 1] if len(calls) <= 3 else 0)

    class _Session:
        def __enter__(self) -> object:
            return object()

        def __exit__(self, *exc: object) -> None:
            return None

    monkeypatch.setattr(sweeper, "sweep", fake_sweep)
    monkeypatch.setattr(sweeper, "SWEEP_INTERVAL", 0.01)
    monkeypatch.setattr(sweeper, "IDLE_INTERVAL", 3600.0)
    session_module = importlib.import_module("airflow.utils.session")
    monkeypatch.setattr(session_module, "create_session", _Session)
    thread = Sweeper()
    thread.ensure_running()
    thread.ensure_running()  # idempotent: one thread
    assert three.wait(60), "the sweeper did not sweep three times (start, then while pending)"
    assert thread._thread is not None
    thread.stop()
    assert not thread._thread.is_alive()
    assert len(calls) == 3  # idle after the third (nothing pending): no fourth sweep before stop
