"""The two routes in-process (FastAPI app on Airflow 3, Flask blueprint on 2.11), the plugin, and the sweeper thread.

Only what needs no metadata DB: header names, bounded body reading (413 from the declared length and from a
chunked body), the identical 401, CSRF exemption, plugin wiring. Recording is covered by
``test_webhook_store.py`` and, through real servers, by ``test_webhook_fullstack.py``.
"""

from __future__ import annotations

import importlib
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


async def _chunks(total: int, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    sent = 0
    while sent < total:
        chunk = b"x" * min(size, total - sent)
        sent += len(chunk)
        yield chunk


# -- Airflow 3: the FastAPI app ----------------------------------------------------------------------------


@pytest.fixture
async def client() -> AsyncIterator[Any]:
    if not AIRFLOW_V_3:
        pytest.skip("the FastAPI app serves Airflow 3's api-server")
    import httpx

    from airflow_provider_dialnexa.webhooks._fastapi import create_app

    transport = httpx.ASGITransport(app=create_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://api-server") as http:
        yield http


async def test_fastapi_route_answers_per_header_and_body(client: Any) -> None:
    path = f"/webhooks/{CONN_ID}"
    for header in ("x-nexa-signature", "X-DialNexa-Signature"):
        response = await client.post(path, content=PING, headers={header: sign(PING, SECRET)})
        assert (response.status_code, response.json()) == (200, {"status": "verified"})
    response = await client.post(path, content=IGNORED, headers={"x-nexa-signature": sign(IGNORED, SECRET)})
    assert response.json() == {"status": "ignored", "event": "call_initiated"}
    unsigned = await client.post(path, content=PING)
    forged = await client.post(path, content=PING, headers={"x-nexa-signature": sign(PING, "nope")})
    no_secret = await client.post("/webhooks/bad%20id", content=PING, headers={"x-nexa-signature": sign(PING, SECRET)})
    assert {r.status_code for r in (unsigned, forged, no_secret)} == {401}
    assert {r.content for r in (unsigned, forged, no_secret)} == {json.dumps(UNAUTHORIZED).encode().replace(b" ", b"")}
    assert (await client.get(path)).status_code == 405
    assert (await client.get("/docs")).status_code == 404  # nothing else is served without auth
    assert (await client.get("/openapi.json")).status_code == 404


async def test_fastapi_route_bounds_the_body(client: Any) -> None:
    path = f"/webhooks/{CONN_ID}"
    exact = b" " * (MAX_BODY_BYTES - len(PING)) + PING  # JSON with leading blanks: exactly 1 MiB, authentic
    response = await client.post(path, content=exact, headers={"x-nexa-signature": sign(exact, SECRET)})
    assert response.status_code == 200
    declared = await client.post(path, content=b"x" * (MAX_BODY_BYTES + 1))
    assert declared.status_code == 413
    chunked = await client.post(path, content=_chunks(MAX_BODY_BYTES + 1))  # no Content-Length
    assert chunked.status_code == 413


# -- Airflow 2.11: the Flask blueprint --------------------------------------------------------------------


@pytest.fixture
def flask_client() -> Any:
    if AIRFLOW_V_3:
        pytest.skip("the Flask blueprint serves Airflow 2.11's webserver")
    from flask import Flask
    from flask_wtf.csrf import CSRFProtect

    from airflow_provider_dialnexa.webhooks._flask import create_blueprint

    app = Flask(__name__)
    app.config["SECRET_KEY"] = "test"
    CSRFProtect(app)  # as Airflow 2.11's webserver does

    @app.route("/other", methods=["POST"])
    def other() -> str:
        return "ok"

    app.register_blueprint(create_blueprint())
    return app.test_client()


def test_flask_route_answers_and_is_csrf_exempt_alone(flask_client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sweeper.sweeper, "ensure_running", lambda: None)  # no thread in this test
    path = f"/dialnexa/webhooks/{CONN_ID}"
    for header in ("x-nexa-signature", "X-DialNexa-Signature"):
        response = flask_client.post(path, data=PING, headers={header: sign(PING, SECRET)})
        assert (response.status_code, response.get_json()) == (200, {"status": "verified"})
    forged = flask_client.post(path, data=PING, headers={"x-nexa-signature": sign(PING, "nope")})
    unsigned = flask_client.post(path, data=PING)
    assert (forged.status_code, forged.get_json()) == (unsigned.status_code, unsigned.get_json()) == (401, UNAUTHORIZED)
    assert flask_client.post("/other").status_code == 400  # CSRF still guards every other route
    assert flask_client.get(path).status_code == 405


def test_flask_route_bounds_the_body(flask_client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    monkeypatch.setattr(sweeper.sweeper, "ensure_running", lambda: None)
    path = f"/dialnexa/webhooks/{CONN_ID}"
    assert flask_client.post(path, data=b"x" * (MAX_BODY_BYTES + 1)).status_code == 413
    chunked = flask_client.post(
        path,
        input_stream=io.BytesIO(b"x" * (MAX_BODY_BYTES + 1)),
        headers={"Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},  # what gunicorn sets for a chunked body
    )
    assert chunked.status_code == 413


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


def _modules_after(statement: str) -> set[str]:
    probe = f"import sys, json; {statement}; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120)
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def test_plugin_is_an_entry_point_and_importing_it_pulls_in_no_web_framework() -> None:
    import importlib.metadata

    (entry,) = [ep for ep in importlib.metadata.entry_points(group="airflow.plugins") if ep.name == "dialnexa_webhooks"]
    assert entry.value == "airflow_provider_dialnexa.webhooks.plugin:DialNexaWebhooksPlugin"
    baseline = _modules_after("from airflow.providers.common.compat.sdk import AirflowPlugin")
    added = _modules_after("import airflow_provider_dialnexa.webhooks.plugin") - baseline
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
