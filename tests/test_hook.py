"""DialNexaHook against the embedded simulator over real sockets: records, call ids, errors, retries, secrets.

Request mocks are used only for what a server cannot produce (proving that ``requests`` is never touched on
the async path); the Retry-After checks read the simulator's own request log, not the test's wall clock.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator, MutableMapping
from dataclasses import dataclass, field
from email.utils import formatdate
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import requests
import uvicorn
from _compat import capture_logs
from airflow.providers.common.compat.connection import get_async_connection
from conftest import FakeClock

import airflow_provider_dialnexa
from airflow_provider_dialnexa import policy
from airflow_provider_dialnexa._connection import USER_AGENT, settings_from_connection
from airflow_provider_dialnexa.exceptions import (
    DialNexaAuthError,
    DialNexaBadRequestError,
    DialNexaConfigError,
    DialNexaError,
    DialNexaMalformedResponseError,
    DialNexaNotFoundError,
    DialNexaPermissionError,
    DialNexaRateLimitError,
    DialNexaServerError,
    DialNexaUnreachableError,
    InvalidCallIdError,
    error_for_status,
)
from airflow_provider_dialnexa.hooks import _transport as transport_module
from airflow_provider_dialnexa.hooks import dialnexa as hook_module
from airflow_provider_dialnexa.hooks.dialnexa import DialNexaHook, close_async_clients
from airflow_provider_dialnexa.policy import RateBudget, RetryPolicy, budget_for, parse_retry_after
from airflow_provider_dialnexa.simulator import Fault, Simulator
from airflow_provider_dialnexa.simulator.app import HUNG_UP

FAST = RetryPolicy(backoff_base=0.01, backoff_max=0.05, min_wait=0)
#: Retries the test connection allows (its ``max_retries`` extra): a persistent fault costs this + 1 requests.
RETRIES = 3
WRONG_KEY = "dnx_wrong_key:n0t-the-s3cret"


# -- fixtures ------------------------------------------------------------------------------------------------


def _set_conn(monkeypatch: pytest.MonkeyPatch, conn_id: str, host: str, password: str | None, **extra: Any) -> None:
    value: dict[str, Any] = {"conn_type": "dialnexa", "host": host, "extra": extra}
    if password is not None:
        value["password"] = password
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(value))


@pytest.fixture(autouse=True)
def _fresh_rate_budgets() -> Iterator[None]:
    """Budgets are process-wide per key: a 429 pause must not leak into the next test."""
    policy._budgets.clear()
    yield
    policy._budgets.clear()


@pytest.fixture
def sim(dialnexa_conn: Simulator, api_key: str, monkeypatch: pytest.MonkeyPatch) -> Simulator:
    """The simulator behind ``dialnexa_default``, with no rate budget (so request timing is the policy's alone)."""
    _set_conn(
        monkeypatch,
        "dialnexa_default",
        dialnexa_conn.url,
        api_key,
        timeout=5,
        max_retries=RETRIES,
        rate_limit_per_minute=0,
    )
    return dialnexa_conn


@pytest.fixture
def hook(sim: Simulator) -> Iterator[DialNexaHook]:
    result = DialNexaHook(retry_policy=FAST)
    yield result
    result.close()


@pytest.fixture
async def ahook(sim: Simulator) -> AsyncIterator[DialNexaHook]:
    yield DialNexaHook(retry_policy=FAST)
    await close_async_clients()


@dataclass
class Logs:
    """Everything logged during a test: stdlib records (all loggers at DEBUG) and structlog events."""

    caplog: pytest.LogCaptureFixture
    events: list[MutableMapping[str, Any]]

    def text(self) -> str:
        return self.caplog.text + "\n" + "\n".join(repr(event) for event in self.events)

    def warnings(self) -> list[str]:
        return [str(event["event"]) for event in self.events if event.get("log_level") == "warning"]


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[Logs]:
    caplog.set_level(logging.DEBUG)
    for name in list(logging.root.manager.loggerDict):
        caplog.set_level(logging.DEBUG, logger=name)
    with capture_logs() as events:
        yield Logs(caplog, events)


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _statuses(sim: Simulator, call_id: str) -> list[int]:
    return [entry.status_code for entry in sim.requests(call_id=call_id)]


def _new_call(sim: Simulator, **spec: Any) -> str:
    spec.setdefault("outcome", "completed")
    for phase in ("queued_s", "ring_s", "talk_s"):
        spec.setdefault(phase, 0)
    return sim.create_call(**spec)


# -- the record, as sent -----------------------------------------------------------------------------------

CAMEL_KEYS = {"createdAt", "to_number", "from_number", "duration", "analysis"}
SNAKE_KEYS = {"created_at", "to_phone_number", "from_phone_number", "duration_seconds", "post_call_analysis"}


@pytest.mark.parametrize(
    ("spelling", "keys", "absent"), [("camel", CAMEL_KEYS, SNAKE_KEYS), ("snake", SNAKE_KEYS, CAMEL_KEYS)]
)
def test_get_call_returns_the_record_as_sent(
    hook: DialNexaHook, sim: Simulator, spelling: str, keys: set[str], absent: set[str]
) -> None:
    call_id = _new_call(sim, spelling=spelling, metadata={"crm_lead_id": "L-1", "nested": {"a": [1, None]}})
    record = hook.get_call(call_id)
    assert record == sim.record(call_id)
    assert keys <= set(record)
    assert not absent & set(record), "the hook must not rename fields"
    assert record["metadata"] == {"crm_lead_id": "L-1", "nested": {"a": [1, None]}}
    assert record["status"] == "completed"
    assert sim.get_count(call_id) == 1


def test_get_call_keeps_hyphenated_statuses_verbatim(hook: DialNexaHook, sim: Simulator) -> None:
    ended = _new_call(sim, outcome="no_answer", hyphenated=True)
    talking = _new_call(sim, outcome="completed", talk_s=3600, hyphenated=True)
    assert hook.get_call(ended)["status"] == "no-answer"
    assert hook.get_call(talking)["status"] == "in-progress"


def test_get_call_shows_scripted_statuses_verbatim(hook: DialNexaHook, sim: Simulator) -> None:
    call_id = _new_call(sim, talk_s=3600)
    sim.script(call_id, ["Initiated", "In-Progress", " No-Answer "])
    assert [hook.get_call(call_id)["status"] for _ in range(4)] == [
        "Initiated",
        "In-Progress",
        " No-Answer ",
        " No-Answer ",
    ]


def test_non_ascii_content_round_trips(hook: DialNexaHook, sim: Simulator) -> None:
    ids = [_new_call(sim) for _ in range(5)]  # the simulator rotates through Hindi, Spanish and emoji transcripts
    transcripts = {hook.get_call(call_id)["transcript"] for call_id in ids}
    assert transcripts == {sim.record(call_id)["transcript"] for call_id in ids}
    assert any(not text.isascii() for text in transcripts)


# -- call ids ------------------------------------------------------------------------------------------------

BAD_CALL_IDS: list[Any] = [
    "",
    " ",
    " call_abc",
    "call_abc ",
    "call abc",
    "call_a/b",
    "../call_abc",
    "call_abc?x=1",
    "call_abc#frag",
    "call_%2e%2e",
    "call_a%b",
    "call_a\\b",
    "call_..",
    "..",
    "call_\x00",
    "call_\n",
    "call_\x7f",
    "call_\u200b",
    "call_" + "x" * 10_240,
    123,
    None,
    b"call_abc",
    ["call_abc"],
]


@pytest.mark.parametrize("call_id", BAD_CALL_IDS, ids=lambda v: repr(v)[:30])
def test_invalid_call_id_is_refused_before_any_request(hook: DialNexaHook, sim: Simulator, call_id: Any) -> None:
    with pytest.raises(InvalidCallIdError) as info:
        hook.get_call(call_id)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, DialNexaError)
    assert len(str(info.value)) < 400, "a 10 KB id must not be echoed whole"
    assert sim.stats()["requests"] == 0


def test_call_id_is_url_encoded_in_the_path(hook: DialNexaHook, sim: Simulator) -> None:
    """Characters legal in an opaque id but meaningful in a URL arrive as one path segment, intact."""
    odd = "call_a+b:c@d;e=f&g~é"
    assert hook.settings.call_url(odd).endswith("/v1/calls/call_a%2Bb%3Ac%40d%3Be%3Df%26g~%C3%A9")
    with pytest.raises(DialNexaBadRequestError):  # the simulator's id rule refuses it, as DialNexa would
        hook.get_call(odd)
    (entry,) = sim.requests()
    assert entry.route == "get"
    assert entry.call_ids == (odd,)
    assert entry.status_code == 400


# -- error classes -------------------------------------------------------------------------------------------


def test_400_bad_call_id_format(hook: DialNexaHook, sim: Simulator) -> None:
    with pytest.raises(DialNexaBadRequestError) as info:
        hook.get_call("call_bad!id")
    exc = info.value
    assert (exc.http_status, exc.call_id, exc.conn_id) == (400, "call_bad!id", "dialnexa_default")
    assert exc.api_message == "Invalid call ID format"
    assert "Invalid call ID format" in str(exc)
    assert sim.stats()["requests"] == 1


def test_401_wrong_key(sim: Simulator, monkeypatch: pytest.MonkeyPatch, logs: Logs) -> None:
    _set_conn(monkeypatch, "dialnexa_wrong", sim.url, WRONG_KEY, rate_limit_per_minute=0)
    hook = DialNexaHook("dialnexa_wrong", retry_policy=FAST)
    call_id = _new_call(sim)
    with pytest.raises(DialNexaAuthError) as info:
        hook.get_call(call_id)
    exc = info.value
    assert exc.http_status == 401
    assert "dialnexa_wrong" in str(exc)
    assert _statuses(sim, call_id) == [401], "a 401 is final: no retry"
    for text in (str(exc), repr(exc), logs.text()):
        assert WRONG_KEY not in text
        assert "n0t-the-s3cret" not in text


def test_403_foreign_call(hook: DialNexaHook, sim: Simulator) -> None:
    call_id = _new_call(sim, foreign=True)
    with pytest.raises(DialNexaPermissionError) as info:
        hook.get_call(call_id)
    assert info.value.http_status == 403
    assert "organization" in str(info.value)
    assert _statuses(sim, call_id) == [403]


def test_404_unknown_call_sends_exactly_one_request(hook: DialNexaHook, sim: Simulator) -> None:
    with pytest.raises(DialNexaNotFoundError) as info:
        hook.get_call("call_doesnotexist00")
    assert info.value.http_status == 404
    assert info.value.call_id == "call_doesnotexist00"
    assert "call_doesnotexist00" in str(info.value)
    assert sim.get_count("call_doesnotexist00") == 1
    assert sim.stats()["requests"] == 1


def test_429_then_success(hook: DialNexaHook, sim: Simulator) -> None:
    call_id = _new_call(sim)
    sim.add_fault(Fault(kind="429", route="get", call_id=call_id, count=1))
    assert hook.get_call(call_id)["id"] == call_id
    assert _statuses(sim, call_id) == [429, 200]


def test_three_html_502s_then_success(hook: DialNexaHook, sim: Simulator) -> None:
    call_id = _new_call(sim)
    sim.add_fault(Fault(kind="502_html", route="get", call_id=call_id, count=3))
    assert hook.get_call(call_id) == sim.record(call_id)
    assert _statuses(sim, call_id) == [502, 502, 502, 200]
    assert sim.get_count(call_id) == 4


@pytest.mark.parametrize(("kind", "status"), [("500", 500), ("502_html", 502), ("503", 503), ("504", 504)])
def test_persistent_5xx_gives_up_after_max_retries(hook: DialNexaHook, sim: Simulator, kind: str, status: int) -> None:
    call_id = _new_call(sim)
    sim.add_fault(Fault(kind=kind, route="get", call_id=call_id))  # type: ignore[arg-type]
    with pytest.raises(DialNexaServerError) as info:
        hook.get_call(call_id)
    assert type(info.value) is DialNexaServerError
    assert info.value.http_status == status
    assert f"HTTP {status}" in str(info.value)
    assert "<html>" not in str(info.value), "an HTML error page must not end up in the message"
    assert _statuses(sim, call_id) == [status] * (RETRIES + 1)


@pytest.mark.parametrize("kind", ["503", "504"])
def test_503_and_504_then_success(hook: DialNexaHook, sim: Simulator, kind: str) -> None:
    call_id = _new_call(sim)
    sim.add_fault(Fault(kind=kind, route="get", call_id=call_id, count=2))  # type: ignore[arg-type]
    assert hook.get_call(call_id)["id"] == call_id
    assert _statuses(sim, call_id) == [int(kind), int(kind), 200]


def test_persistent_429_gives_up_with_rate_limit_error(hook: DialNexaHook, sim: Simulator) -> None:
    call_id = _new_call(sim)
    sim.add_fault(Fault(kind="429", route="get", call_id=call_id))
    with pytest.raises(DialNexaRateLimitError) as info:
        hook.get_call(call_id)
    assert info.value.retryable
    assert _statuses(sim, call_id) == [429] * (RETRIES + 1)


def test_max_retries_argument_overrides_the_connection(sim: Simulator) -> None:
    call_id = _new_call(sim)
    sim.add_fault(Fault(kind="500", route="get", call_id=call_id))
    with pytest.raises(DialNexaServerError):
        DialNexaHook(max_retries=1, retry_policy=FAST).get_call(call_id)
    assert sim.get_count(call_id) == 2
    with pytest.raises(DialNexaServerError):
        DialNexaHook(max_retries=0, retry_policy=FAST).get_call(call_id)
    assert sim.get_count(call_id) == 3


def test_slow_response_beyond_the_timeout_is_unreachable(api_key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # A private simulator: its late answers must not land in the shared simulator's log during later tests.
    with Simulator(api_key=api_key) as private:
        _set_conn(monkeypatch, "dialnexa_slow", private.url, api_key, rate_limit_per_minute=0)
        call_id = _new_call(private)
        private.add_fault(Fault(kind="slow", route="get", call_id=call_id, delay_s=3600))  # held until the hang-up
        hook = DialNexaHook("dialnexa_slow", timeout=0.2, max_retries=1, retry_policy=FAST)
        with pytest.raises(DialNexaUnreachableError) as info:
            hook.get_call(call_id)
        hook.close()
        assert private.stats()["faults_fired"] == {"slow": 2}
    assert isinstance(info.value, DialNexaServerError)
    assert "Timeout" in str(info.value)
    # each held answer was logged when the hook hung up: two attempts, nothing more.
    assert _statuses(private, call_id) == [HUNG_UP, HUNG_UP]


def test_connection_reset_mid_response_then_success(hook: DialNexaHook, sim: Simulator) -> None:
    call_id = _new_call(sim)
    sim.add_fault(Fault(kind="reset", route="get", call_id=call_id, count=1))
    assert hook.get_call(call_id) == sim.record(call_id)
    assert _statuses(sim, call_id) == [0, 200]  # 0 = the simulator dropped the connection


def test_persistent_reset_is_unreachable(hook: DialNexaHook, sim: Simulator) -> None:
    call_id = _new_call(sim)
    sim.add_fault(Fault(kind="reset", route="get", call_id=call_id))
    with pytest.raises(DialNexaUnreachableError):
        hook.get_call(call_id)
    assert _statuses(sim, call_id) == [0] * (RETRIES + 1)


@pytest.mark.parametrize("kind", ["truncated_json", "not_object", "no_id", "html_200"])
def test_malformed_body_is_not_retried(hook: DialNexaHook, sim: Simulator, kind: str) -> None:
    call_id = _new_call(sim)
    sim.add_fault(Fault(kind=kind, route="get", call_id=call_id))  # type: ignore[arg-type]
    with pytest.raises(DialNexaMalformedResponseError) as info:
        hook.get_call(call_id)
    assert info.value.http_status == 200
    assert not info.value.retryable
    assert sim.get_count(call_id) == 1
    assert "Agent:" not in str(info.value), "the message must not carry the (personal) body"


def test_connection_refused_is_unreachable(monkeypatch: pytest.MonkeyPatch, api_key: str) -> None:
    _set_conn(monkeypatch, "dialnexa_closed", f"http://127.0.0.1:{_closed_port()}", api_key, rate_limit_per_minute=0)
    hook = DialNexaHook("dialnexa_closed", max_retries=1, retry_policy=FAST)
    with pytest.raises(DialNexaUnreachableError) as info:
        hook.get_call("call_abc123")
    assert "dialnexa_closed" in str(info.value)
    assert "127.0.0.1" in str(info.value)
    assert api_key not in str(info.value)


# -- Retry-After (checked against the simulator's request log) --------------------------------------------------

TOLERANCE = 0.05


def test_retry_after_seconds_is_honoured(hook: DialNexaHook, sim: Simulator, logs: Logs) -> None:
    call_id = _new_call(sim)
    sim.add_fault(Fault(kind="429", route="get", call_id=call_id, count=1, retry_after="2"))
    assert hook.get_call(call_id)["id"] == call_id
    first, second = sim.requests(call_id=call_id)
    assert (first.status_code, second.status_code) == (429, 200)
    assert second.t - first.t >= 2 - TOLERANCE
    assert any(re.search(r"HTTP 429 .*retry 1 of 3 in 2\.00 s\)", w) for w in logs.warnings()), logs.warnings()


def test_retry_after_http_date_is_honoured(hook: DialNexaHook, sim: Simulator) -> None:
    call_id = _new_call(sim)
    not_before = math.ceil(time.time()) + 1  # an HTTP-date has whole seconds
    sim.add_fault(
        Fault(kind="429", route="get", call_id=call_id, count=1, retry_after=formatdate(not_before, usegmt=True))
    )
    assert hook.get_call(call_id)["id"] == call_id
    first, second = sim.requests(call_id=call_id)
    assert (first.status_code, second.status_code) == (429, 200)
    assert second.t >= not_before - TOLERANCE


def test_bogus_retry_after_is_capped_also_for_the_rate_budget(
    sim: Simulator, api_key: str, monkeypatch: pytest.MonkeyPatch, clock: FakeClock
) -> None:
    """A 429 pauses the key's rate budget; the pause must obey ``retry_after_max`` like the retry wait does.

    The budget's clock stands still (``clock``), so the retry always meets the pause, however long the retry's
    own (real) 0.05 s wait overran: with the budget on the real clock, an overrun of more than one slot
    (1/70 s) on a loaded machine had already ended the pause, no budget sleep was taken and the test failed.
    """
    _set_conn(monkeypatch, "dialnexa_budget", sim.url, api_key, max_retries=2, rate_limit_per_minute=6000)
    sleeps: list[float] = []
    monkeypatch.setattr(transport_module, "time", SimpleNamespace(sleep=sleeps.append))
    call_id = _new_call(sim)
    sim.add_fault(Fault(kind="429", route="get", call_id=call_id, count=1, retry_after="3600"))
    policy = RetryPolicy(backoff_base=0.01, retry_after_max=0.05, min_wait=0)
    hook = DialNexaHook("dialnexa_budget", retry_policy=policy)
    assert hook.get_call(call_id)["id"] == call_id
    assert _statuses(sim, call_id) == [429, 200]
    assert sleeps, "the retry did not wait for the budget's pause"
    assert max(sleeps) <= 0.05 + 1 / 60, f"the rate budget parked the task: slept {sleeps}"  # the pause + one slot


# -- logs and secrets ------------------------------------------------------------------------------------------


def test_each_retry_logs_a_warning_with_reason_and_wait(hook: DialNexaHook, sim: Simulator, logs: Logs) -> None:
    call_id = _new_call(sim)
    sim.add_fault(Fault(kind="500", route="get", call_id=call_id, count=2))
    hook.get_call(call_id)
    retries = [w for w in logs.warnings() if "retry" in w]
    assert len(retries) == 2
    for number, warning in enumerate(retries, start=1):
        assert "HTTP 500" in warning
        assert call_id in warning
        assert re.search(rf"retry {number} of {RETRIES} in \d+\.\d\d s\)$", warning), warning


def test_api_key_never_appears_in_logs_or_errors(
    sim: Simulator, api_key: str, monkeypatch: pytest.MonkeyPatch, logs: Logs, capsys: pytest.CaptureFixture[str]
) -> None:
    _set_conn(monkeypatch, "dialnexa_wrong", sim.url, WRONG_KEY, rate_limit_per_minute=0)
    hook = DialNexaHook(retry_policy=FAST)
    ok = _new_call(sim)
    failing = _new_call(sim)
    sim.add_fault(Fault(kind="500", route="get", call_id=failing))
    sim.add_fault(Fault(kind="reset", route="get", call_id=ok, count=1))
    sim.add_fault(Fault(kind="429", route="get", call_id=ok, count=1, retry_after="0"))
    errors: list[BaseException] = []
    assert hook.get_call(ok)["id"] == ok
    for call_id in (failing, "call_missing00", "call_bad!id", "bad/id"):
        with pytest.raises(DialNexaError) as info:
            hook.get_call(call_id)
        errors.append(info.value)
    with pytest.raises(DialNexaAuthError) as auth:
        DialNexaHook("dialnexa_wrong", retry_policy=FAST).get_call(ok)
    errors.append(auth.value)
    assert hook.test_connection()[0] is True
    texts = [logs.text(), *capsys.readouterr()]
    texts += [text for exc in errors for text in (str(exc), repr(exc), repr(exc.args), repr(vars(exc)))]
    secret = api_key.partition(":")[2]
    for text in texts:
        assert api_key not in text
        assert secret not in text
        assert WRONG_KEY not in text
    assert logs.events or logs.caplog.records, "nothing was logged at all: the capture is broken"


def test_error_messages_scrub_a_key_echoed_by_the_server(api_key: str) -> None:
    body = json.dumps({"statusCode": 401, "message": f"Invalid key {api_key}", "error": "Unauthorized"}).encode()
    exc = error_for_status(401, body, subject="call 'x'", call_id="x", conn_id="c", secrets=(api_key,))
    assert isinstance(exc, DialNexaAuthError)
    assert api_key not in str(exc)
    assert api_key not in (exc.api_message or "")
    assert "Invalid key ***" in str(exc)


# -- test_connection, session, headers -------------------------------------------------------------------------


def test_test_connection_succeeds(hook: DialNexaHook, sim: Simulator) -> None:
    ok, message = hook.test_connection()
    assert ok is True
    assert sim.url in message
    assert sim.stats()["by_route"] == {"list": 1}


def test_test_connection_with_a_wrong_key(sim: Simulator, monkeypatch: pytest.MonkeyPatch) -> None:
    _set_conn(monkeypatch, "dialnexa_wrong", sim.url, WRONG_KEY, rate_limit_per_minute=0)
    ok, message = DialNexaHook("dialnexa_wrong", retry_policy=FAST).test_connection()
    assert ok is False
    assert "401" in message
    assert "API key" in message
    assert WRONG_KEY not in message


def test_test_connection_without_a_key_sends_nothing(sim: Simulator, monkeypatch: pytest.MonkeyPatch) -> None:
    _set_conn(monkeypatch, "dialnexa_nokey", sim.url, None)
    ok, message = DialNexaHook("dialnexa_nokey").test_connection()
    assert ok is False
    assert "dialnexa_nokey" in message
    assert sim.stats()["requests"] == 0


def test_test_connection_unreachable(monkeypatch: pytest.MonkeyPatch, api_key: str) -> None:
    _set_conn(monkeypatch, "dialnexa_closed", f"http://127.0.0.1:{_closed_port()}", api_key, max_retries=0)
    ok, message = DialNexaHook("dialnexa_closed").test_connection()
    assert ok is False
    assert "127.0.0.1" in message


def test_one_keep_alive_session_per_hook(hook: DialNexaHook, sim: Simulator) -> None:
    ids = [_new_call(sim) for _ in range(3)]
    session = hook.session
    for _ in range(10):
        for call_id in ids:
            hook.get_call(call_id)
    assert hook.session is session
    stats = sim.stats()
    assert stats["requests"] == 30
    assert stats["connections"] == 1


def test_connection_is_looked_up_once(sim: Simulator, monkeypatch: pytest.MonkeyPatch) -> None:
    lookups: list[str] = []
    original = DialNexaHook.get_connection

    def counting(conn_id: str) -> Any:
        lookups.append(conn_id)
        return original(conn_id)

    monkeypatch.setattr(DialNexaHook, "get_connection", staticmethod(counting))
    hook = DialNexaHook(retry_policy=FAST)
    call_id = _new_call(sim)
    for _ in range(3):
        hook.get_call(call_id)
    hook.test_connection()
    assert lookups == ["dialnexa_default"]


def test_session_headers(hook: DialNexaHook, api_key: str) -> None:
    headers = hook.session.headers
    assert headers["User-Agent"] == USER_AGENT == f"airflow-provider-dialnexa/{airflow_provider_dialnexa.__version__}"
    assert headers["Authorization"] == f"Bearer {api_key}"
    assert headers["Accept"] == "application/json"


# -- what actually goes over the wire (a test-only ASGI echo server) ---------------------------------------------


@dataclass
class EchoServer:
    """Records every request's raw path and headers and answers with a minimal call record."""

    url: str = ""
    seen: list[dict[str, Any]] = field(default_factory=list)

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        self.seen.append({"raw_path": scope["raw_path"].decode("latin-1"), "headers": headers})
        body = json.dumps({"id": scope["path"].rsplit("/", 1)[-1], "status": "completed"}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module")
def echo() -> Iterator[EchoServer]:
    app = EchoServer()
    sock = socket.create_server(("127.0.0.1", 0))  # listening before the server runs: no readiness wait needed
    app.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="off", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    yield app
    server.should_exit = True
    thread.join(10)


@pytest.fixture
def echo_conn(echo: EchoServer, api_key: str, monkeypatch: pytest.MonkeyPatch) -> EchoServer:
    echo.seen.clear()
    _set_conn(monkeypatch, "dialnexa_echo", echo.url + "/v1/", api_key, rate_limit_per_minute=0)
    return echo


ODD_ID = "call_a+b:c@d;e=f&g"
ODD_PATH = "/v1/calls/call_a%2Bb%3Ac%40d%3Be%3Df%26g"


def _check_wire(seen: dict[str, Any], api_key: str) -> None:
    assert seen["raw_path"] == ODD_PATH
    assert seen["headers"]["user-agent"] == USER_AGENT
    assert seen["headers"]["authorization"] == f"Bearer {api_key}"
    assert seen["headers"]["accept"] == "application/json"


def test_sync_request_on_the_wire(echo_conn: EchoServer, api_key: str) -> None:
    assert DialNexaHook("dialnexa_echo").get_call(ODD_ID)["id"] == ODD_ID
    (seen,) = echo_conn.seen
    _check_wire(seen, api_key)


async def test_async_request_on_the_wire(echo_conn: EchoServer, api_key: str) -> None:
    try:
        assert (await DialNexaHook("dialnexa_echo").aget_call(ODD_ID))["id"] == ODD_ID
    finally:
        await close_async_clients()
    (seen,) = echo_conn.seen
    _check_wire(seen, api_key)


# -- async ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("spelling", "keys"), [("camel", CAMEL_KEYS), ("snake", SNAKE_KEYS)])
async def test_aget_call_returns_the_record_as_sent(
    ahook: DialNexaHook, sim: Simulator, spelling: str, keys: set[str]
) -> None:
    call_id = _new_call(sim, spelling=spelling, outcome="voicemail")
    record = await ahook.aget_call(call_id)
    assert record == sim.record(call_id)
    assert keys <= set(record)


async def test_aget_call_keeps_hyphenated_statuses(ahook: DialNexaHook, sim: Simulator) -> None:
    ended = _new_call(sim, outcome="no_answer", hyphenated=True)
    talking = _new_call(sim, talk_s=3600, hyphenated=True)
    assert (await ahook.aget_call(ended))["status"] == "no-answer"
    assert (await ahook.aget_call(talking))["status"] == "in-progress"


@pytest.mark.parametrize("call_id", BAD_CALL_IDS[::3], ids=lambda v: repr(v)[:30])
async def test_aget_call_refuses_invalid_ids_before_any_request(
    ahook: DialNexaHook, sim: Simulator, call_id: Any
) -> None:
    with pytest.raises(InvalidCallIdError):
        await ahook.aget_call(call_id)
    assert sim.stats()["requests"] == 0


@pytest.mark.parametrize(
    ("spec", "call_id", "error", "statuses"),
    [
        ({}, "call_bad!id", DialNexaBadRequestError, [400]),
        ({"foreign": True}, None, DialNexaPermissionError, [403]),
        ({}, "call_doesnotexist00", DialNexaNotFoundError, [404]),
    ],
)
async def test_aget_call_final_errors_send_one_request(
    ahook: DialNexaHook,
    sim: Simulator,
    spec: dict[str, Any],
    call_id: str | None,
    error: type[DialNexaError],
    statuses: list[int],
) -> None:
    call_id = call_id or _new_call(sim, **spec)
    with pytest.raises(error):
        await ahook.aget_call(call_id)
    assert _statuses(sim, call_id) == statuses


async def test_aget_call_wrong_key_forgets_the_shared_client(
    sim: Simulator, api_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _set_conn(monkeypatch, "dialnexa_rotated", sim.url, WRONG_KEY, rate_limit_per_minute=0)
    call_id = _new_call(sim)
    try:
        with pytest.raises(DialNexaAuthError) as info:
            await DialNexaHook("dialnexa_rotated", retry_policy=FAST).aget_call(call_id)
        assert WRONG_KEY not in str(info.value)
        _set_conn(monkeypatch, "dialnexa_rotated", sim.url, api_key, rate_limit_per_minute=0)  # the key is fixed
        assert (await DialNexaHook("dialnexa_rotated", retry_policy=FAST).aget_call(call_id))["id"] == call_id
    finally:
        await close_async_clients()
    assert _statuses(sim, call_id) == [401, 200]


async def test_a_client_dropped_after_401_is_closed(sim: Simulator, monkeypatch: pytest.MonkeyPatch) -> None:
    """Forgetting the shared client after a 401 must not leak its sockets (an 'unclosed transport')."""
    _set_conn(monkeypatch, "dialnexa_rotated", sim.url, WRONG_KEY, rate_limit_per_minute=0)
    hook = DialNexaHook("dialnexa_rotated", retry_policy=FAST)
    settings = await hook.asettings()
    client = hook_module._loop_states[asyncio.get_running_loop()].clients["dialnexa_rotated"].client
    try:
        assert settings.api_key == WRONG_KEY
        with pytest.raises(DialNexaAuthError):
            await hook.aget_call(_new_call(sim))
        assert "dialnexa_rotated" not in hook_module._loop_states[asyncio.get_running_loop()].clients
        assert client.is_closed, "the dropped httpx client was left open"
    finally:
        await close_async_clients()
        if not client.is_closed:  # keep the failure from leaking a socket into later tests
            await client.aclose()


@pytest.mark.parametrize(
    ("fault", "statuses"),
    [
        (Fault(kind="429", route="get", count=1), [429, 200]),
        (Fault(kind="502_html", route="get", count=3), [502, 502, 502, 200]),
        (Fault(kind="503", route="get", count=1), [503, 200]),
        (Fault(kind="504", route="get", count=1), [504, 200]),
        (Fault(kind="reset", route="get", count=1), [0, 200]),
    ],
    ids=lambda v: v.kind if isinstance(v, Fault) else None,
)
async def test_aget_call_retries_then_succeeds(
    ahook: DialNexaHook, sim: Simulator, fault: Fault, statuses: list[int]
) -> None:
    call_id = _new_call(sim)
    sim.add_fault(Fault(kind=fault.kind, route=fault.route, count=fault.count, call_id=call_id))
    assert await ahook.aget_call(call_id) == sim.record(call_id)
    assert _statuses(sim, call_id) == statuses


async def test_aget_call_persistent_500(ahook: DialNexaHook, sim: Simulator) -> None:
    call_id = _new_call(sim)
    sim.add_fault(Fault(kind="500", route="get", call_id=call_id))
    with pytest.raises(DialNexaServerError) as info:
        await ahook.aget_call(call_id)
    assert info.value.http_status == 500
    assert _statuses(sim, call_id) == [500] * (RETRIES + 1)


@pytest.mark.parametrize("kind", ["truncated_json", "not_object", "no_id"])
async def test_aget_call_malformed_body_is_not_retried(ahook: DialNexaHook, sim: Simulator, kind: str) -> None:
    call_id = _new_call(sim)
    sim.add_fault(Fault(kind=kind, route="get", call_id=call_id))  # type: ignore[arg-type]
    with pytest.raises(DialNexaMalformedResponseError):
        await ahook.aget_call(call_id)
    assert sim.get_count(call_id) == 1


async def test_aget_call_slow_response_is_unreachable(api_key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with Simulator(api_key=api_key) as private:
        _set_conn(monkeypatch, "dialnexa_slow", private.url, api_key, rate_limit_per_minute=0)
        call_id = _new_call(private)
        private.add_fault(Fault(kind="slow", route="get", call_id=call_id, delay_s=3600))  # held until the hang-up
        hook = DialNexaHook("dialnexa_slow", timeout=0.2, max_retries=1, retry_policy=FAST)
        try:
            with pytest.raises(DialNexaUnreachableError) as info:
                await hook.aget_call(call_id)
        finally:
            await close_async_clients()
        assert private.stats()["faults_fired"] == {"slow": 2}
    assert "Timeout" in str(info.value)
    assert _statuses(private, call_id) == [HUNG_UP, HUNG_UP]


async def test_aget_call_connection_refused(monkeypatch: pytest.MonkeyPatch, api_key: str) -> None:
    _set_conn(monkeypatch, "dialnexa_closed", f"http://127.0.0.1:{_closed_port()}", api_key, rate_limit_per_minute=0)
    try:
        with pytest.raises(DialNexaUnreachableError) as info:
            await DialNexaHook("dialnexa_closed", max_retries=1, retry_policy=FAST).aget_call("call_abc123")
    finally:
        await close_async_clients()
    assert "dialnexa_closed" in str(info.value)


async def test_aget_call_retry_after_is_honoured(ahook: DialNexaHook, sim: Simulator) -> None:
    call_id = _new_call(sim)
    sim.add_fault(Fault(kind="429", route="get", call_id=call_id, count=1, retry_after="1"))
    assert (await ahook.aget_call(call_id))["id"] == call_id
    first, second = sim.requests(call_id=call_id)
    assert (first.status_code, second.status_code) == (429, 200)
    assert second.t - first.t >= 1 - TOLERANCE


async def test_hooks_on_one_loop_share_one_client_and_one_lookup(
    sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    lookups: list[str] = []
    original = get_async_connection

    async def counting(conn_id: str, hook: Any = None) -> Any:
        lookups.append(conn_id)
        return await original(conn_id, hook=hook)

    monkeypatch.setattr("airflow_provider_dialnexa.hooks._transport.get_async_connection", counting)
    first, second = DialNexaHook(retry_policy=FAST), DialNexaHook(retry_policy=FAST)
    ids = [_new_call(sim) for _ in range(4)]
    try:
        # Concurrent first use: the lock must still resolve the connection only once.
        records = await asyncio.gather(*(hook.aget_call(call_id) for hook in (first, second) for call_id in ids))
        for _ in range(3):
            for call_id in ids:
                await first.aget_call(call_id)
                await second.aget_call(call_id)
        state = hook_module._loop_states[asyncio.get_running_loop()]
        assert list(state.clients) == ["dialnexa_default"]
        assert (await first.asettings()) is (await second.asettings())
    finally:
        await close_async_clients()
    assert [record["id"] for record in records] == ids * 2
    assert lookups == ["dialnexa_default"]
    assert sim.stats()["requests"] == 8 + 24
    assert sim.stats()["connections"] <= 8, "sequential requests must reuse the pooled connections"


async def test_sequential_async_requests_reuse_one_connection(ahook: DialNexaHook, sim: Simulator) -> None:
    call_id = _new_call(sim)
    for _ in range(20):
        await ahook.aget_call(call_id)
    assert sim.stats()["connections"] == 1


async def test_aget_call_never_touches_requests(
    ahook: DialNexaHook, sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("aget_call used requests")

    for name in ("send", "request", "get"):
        monkeypatch.setattr(requests.Session, name, forbidden)
    monkeypatch.setattr(requests, "get", forbidden)
    monkeypatch.setattr(requests, "request", forbidden)
    call_id = _new_call(sim)
    sim.add_fault(Fault(kind="500", route="get", call_id=call_id, count=1))
    assert (await ahook.aget_call(call_id))["id"] == call_id
    assert _statuses(sim, call_id) == [500, 200]
    assert "session" not in ahook.__dict__


async def test_close_async_clients_closes_the_shared_client(ahook: DialNexaHook, sim: Simulator) -> None:
    await ahook.aget_call(_new_call(sim))
    client = hook_module._loop_states[asyncio.get_running_loop()].clients["dialnexa_default"].client
    assert isinstance(client, httpx.AsyncClient)
    await close_async_clients()
    assert client.is_closed
    assert asyncio.get_running_loop() not in hook_module._loop_states


async def test_aget_call_config_error_sends_nothing(sim: Simulator, monkeypatch: pytest.MonkeyPatch) -> None:
    _set_conn(monkeypatch, "dialnexa_nokey", sim.url, "   ")
    try:
        with pytest.raises(DialNexaConfigError, match="dialnexa_nokey"):
            await DialNexaHook("dialnexa_nokey").aget_call("call_abc123")
    finally:
        await close_async_clients()
    assert sim.stats()["requests"] == 0


# -- rate budget and Retry-After parsing (pure, no sleeping) -------------------------------------------------


def test_rate_budget_spacing(clock: FakeClock) -> None:
    budget = RateBudget(per_minute=60, burst=2)  # one token per second, two in the bucket
    assert [budget.reserve() for _ in range(4)] == [0.0, 0.0, pytest.approx(1.0), pytest.approx(2.0)]
    clock.now += 2.0  # two tokens refilled, both already promised
    assert budget.reserve() == pytest.approx(1.0)
    clock.now += 60.0  # a long idle time refills no more than the burst
    assert [budget.reserve() for _ in range(3)] == [0.0, 0.0, pytest.approx(1.0)]


def test_rate_budget_spacing_follows_the_rate(clock: FakeClock) -> None:
    budget = RateBudget(per_minute=120, burst=1)  # one token every 0.5 s
    assert [budget.reserve() for _ in range(5)] == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0])


@pytest.mark.parametrize(("per_minute", "capacity"), [(6, 1.0), (60, 10.0), (120, 20.0), (6000, 20.0), (0.5, 1.0)])
def test_rate_budget_default_burst(clock: FakeClock, per_minute: float, capacity: float) -> None:
    budget = RateBudget(per_minute)
    assert budget.capacity == capacity
    assert [budget.reserve() == 0.0 for _ in range(int(capacity) + 1)] == [True] * int(capacity) + [False]


def test_rate_budget_pause_holds_every_request(clock: FakeClock) -> None:
    budget = RateBudget(per_minute=6000, burst=20)
    budget.pause(5.0, slow_down=False)
    assert budget.reserve() == pytest.approx(5.01)
    assert budget.reserve() == pytest.approx(5.02)  # after the pause one after another at the rate, not together
    clock.now += 3.0
    assert budget.reserve() == pytest.approx(2.03)
    budget.pause(0.5)  # a shorter pause does not cut the running one short
    assert budget.reserve() == pytest.approx(2.04)
    clock.now += 2.5
    assert budget.reserve() == 0.0


def test_budget_for_is_shared_per_key_whatever_the_rate() -> None:
    first = budget_for("kid:one", 120)
    assert first is not None
    assert budget_for("kid:one", 120) is first
    assert budget_for("kid:two", 120) is not first
    assert budget_for("kid:one", 60) is first, "one key, one budget: the lower rate is its upper bound"
    assert first.per_minute == 60
    assert budget_for("kid:one", 0) is None
    assert not any("kid:one" in str(key) for key in policy._budgets), "budgets must not be keyed by the raw key"


@pytest.mark.parametrize(("value", "expected"), [("2", 2.0), (" 2 ", 2.0), ("1.5", 1.5), ("0", 0.0), ("-3", 0.0)])
def test_parse_retry_after_seconds(value: str, expected: float) -> None:
    assert parse_retry_after(value) == expected


@pytest.mark.parametrize(
    "value", [None, "", "   ", "soon", "2 seconds", "Wed, 99 Foo 2026 25:61:00 GMT", "nan", "inf", "1e400"]
)
def test_parse_retry_after_garbage(value: str | None) -> None:
    assert parse_retry_after(value) is None


def test_parse_retry_after_http_date() -> None:
    now = 1_790_000_000.0
    assert parse_retry_after(formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30.0)
    assert parse_retry_after(formatdate(now - 30, usegmt=True), now=now) == 0.0


def test_parse_retry_after_http_date_uses_the_wall_clock(clock: FakeClock) -> None:
    clock.now = 1_790_000_000.0
    assert parse_retry_after(formatdate(clock.now + 7, usegmt=True)) == pytest.approx(7.0)


def test_retry_policy_waits() -> None:
    retry = RetryPolicy(max_retries=3, backoff_base=1.0, backoff_max=4.0, retry_after_max=10.0)
    assert retry.attempts == 4
    for attempt, ceiling in ((1, 1.0), (2, 2.0), (3, 4.0), (4, 4.0), (10, 4.0)):
        for _ in range(20):
            assert ceiling / 2 <= retry.wait(attempt) <= ceiling
    assert retry.wait(1, retry_after=3.0) == 3.0
    assert retry.wait(1, retry_after=0.0) == 1.0, "never under DialNexa's 1 s minimum"
    assert retry.wait(1, retry_after=3600.0) == 10.0, "a bogus Retry-After must be capped"


def test_connection_settings_feed_the_policy() -> None:
    settings, _ = settings_from_connection("c", host=None, password="k:s", extra={"max_retries": 0, "timeout": 2})
    hook = DialNexaHook("c", retry_policy=FAST)
    assert hook._policy(settings).attempts == 1
    assert hook._policy(settings).backoff_max == FAST.backoff_max
    assert hook._read_timeout(settings) == 2.0
    assert DialNexaHook("c", timeout=9, max_retries=4)._policy(settings).max_retries == 4
