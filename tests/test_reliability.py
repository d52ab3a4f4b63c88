"""Reliability suite (issue #6): faults, outages, load, restarts, duplicates and bad input, on real sockets.

Every scenario runs against the embedded simulator over loopback HTTP and asserts two things: the final
state (trigger event, returned record or typed error) and the number of requests the simulator saw, which
the policies bound: at most ``max_retries + 1`` requests per poll, at most ``max_consecutive_failures``
failed polls in a row, no request at all for input that can never be valid, exactly one for a 401.

Every test also runs under a secret guard: all logs (stdlib at DEBUG, structlog output), stdout/stderr,
warnings and whatever the test hands to ``exposure.watch`` (exceptions, reprs, events, XComs) must not
contain the API key, its secret half or its key id.

The tests print their figures on lines starting with ``RELIABILITY |`` (run with ``-s`` to see them);
``docs/reliability.md`` copies them from a run.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import gc
import itertools
import json
import logging
import math
import re
import socket
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

import pytest
import requests
from _clock import drive_time
from _compat import DAG, Connection, TaskDeferred, deserialize, import_string, in_any_thread, serialize
from airflow.providers.common.compat.sdk import BaseHook
from jinja2.exceptions import UndefinedError

from airflow_provider_dialnexa import status as call_status
from airflow_provider_dialnexa._poller import active_pollers
from airflow_provider_dialnexa.exceptions import (
    DialNexaAuthError,
    DialNexaConfigError,
    DialNexaError,
    DialNexaMalformedResponseError,
    DialNexaServerError,
    DialNexaUnreachableError,
    InvalidCallIdError,
)
from airflow_provider_dialnexa.hooks.dialnexa import DialNexaHook, close_async_clients
from airflow_provider_dialnexa.operators.dialnexa import DialNexaGetCallOperator
from airflow_provider_dialnexa.policy import RetryPolicy
from airflow_provider_dialnexa.sensors.dialnexa import DialNexaCallSensor
from airflow_provider_dialnexa.simulator import OUTCOMES, Fault, LogEntry, Simulator
from airflow_provider_dialnexa.simulator.app import HUNG_UP
from airflow_provider_dialnexa.triggers.dialnexa import DialNexaCallTrigger

#: A recognisable key: the secret checks look for it, and for its secret half alone, in everything.
API_KEY = "dnx_live_RECOGNISABLE:SUPERSECRET-abc123"
KEY_ID, KEY_SECRET = API_KEY.split(":")
#: Hook-level tests retry fast; trigger-level tests use the hook's default backoff (0.5-1 s first wait).
FAST = RetryPolicy(backoff_base=0.01, backoff_max=0.05, min_wait=0)
MODES = ("per_call", "batched")
#: Faults answered with an error status (the hook retries them).
RETRIED_KINDS = ("429", "500", "502_html", "503", "504", "reset", "slow")
#: 2xx bodies that are not a usable call record (the hook does not retry; the trigger polls again).
MALFORMED_KINDS = ("truncated_json", "not_object", "no_id", "no_status", "html_200")
EVENT_KEYS = {"event", "call_id", "status", "raw_status", "kind", "message", "last_status"}
_PHONE_LIKE = re.compile(r"\+?\d[\d ()-]{6,}\d")

Context = Any  # the operators only read what they are given; tests pass an empty mapping


# -- helpers -----------------------------------------------------------------------------------------------


def figures(section: str, **values: object) -> None:
    """Print one line of figures for docs/reliability.md (visible with ``pytest -s``)."""
    print(f"RELIABILITY | {section} | " + " | ".join(f"{k}={v}" for k, v in values.items()))


@pytest.fixture
def sim(simulator: Simulator) -> Simulator:
    """The session simulator, reset, accepting only the recognisable key."""
    simulator.reset(seed=606)
    simulator.configure(api_key=API_KEY)
    return simulator


class Connections:
    """Creates env-var ``dialnexa`` connections (small retry budgets, no rate budget unless asked)."""

    def __init__(self, sim: Simulator, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sim = sim
        self.monkeypatch = monkeypatch

    def __call__(
        self,
        conn_id: str,
        *,
        host: str | None = "",
        password: str | None = API_KEY,
        schema: str | None = None,
        **extra: Any,
    ) -> str:
        extra = {"timeout": 5, "max_retries": 1, "rate_limit_per_minute": 0, **extra}
        conn: dict[str, Any] = {"conn_type": "dialnexa", "host": self.sim.url if host == "" else host, "extra": extra}
        if password is not None:
            conn["password"] = password
        if schema is not None:
            conn["schema"] = schema
        self.monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))
        return conn_id


@pytest.fixture
def conns(sim: Simulator, monkeypatch: pytest.MonkeyPatch) -> Connections:
    return Connections(sim, monkeypatch)


def rebuild(trigger: DialNexaCallTrigger) -> DialNexaCallTrigger:
    """What a triggerer does: import the classpath and call it with the serde round trip of the kwargs."""
    classpath, kwargs = trigger.serialize()
    restored = deserialize(serialize(kwargs))
    assert restored == kwargs
    return cast("DialNexaCallTrigger", import_string(classpath)(**restored))


def make_trigger(call_id: str, conn_id: str, polling: str | None = "per_call", **kwargs: Any) -> DialNexaCallTrigger:
    """A trigger as the triggerer builds it (through serde), polling at once and then every ~1 s."""
    options: dict[str, Any] = {"poll_interval": 1, "first_poll_delay": 0, "max_consecutive_failures": 3, **kwargs}
    return rebuild(DialNexaCallTrigger(call_id, conn_id, polling=polling, **options))


async def run_trigger(trigger: DialNexaCallTrigger) -> dict[str, Any]:
    """Run one trigger to its end; it must yield exactly one serde-safe event."""
    events = [event.payload async for event in trigger.run()]
    assert len(events) == 1, f"a trigger yields exactly one event, got {events}"
    payload: dict[str, Any] = events[0]
    assert deserialize(serialize(payload)) == payload, "the event must survive serde (stored in the metadata DB)"
    return payload


async def run_triggers(triggers: Sequence[DialNexaCallTrigger]) -> list[dict[str, Any]]:
    """Run triggers concurrently on this loop (like one triggerer), then close the shared clients."""
    try:
        return list(await asyncio.gather(*(run_trigger(t) for t in triggers)))
    finally:
        await close_async_clients()


def assert_clean_event(event: dict[str, Any], record: dict[str, Any] | None = None) -> None:
    """Events are small and carry no transcript, summary or phone number (they live in the metadata DB)."""
    assert set(event) <= EVENT_KEYS, f"unexpected event keys: {sorted(set(event) - EVENT_KEYS)}"
    text = json.dumps(event, ensure_ascii=False)
    assert len(text) < 2048, f"event too large ({len(text)} chars)"
    assert not _PHONE_LIKE.search(text.replace(str(event.get("call_id")), "")), f"phone-like text in {event}"
    for key in ("transcript", "summary", "recording_url", "analysis", "to_number", "from_number", "metadata"):
        assert key not in event
        value = (record or {}).get(key)
        if isinstance(value, str) and value:
            assert value not in text, f"the event leaks the record's {key}"


def expected_status(sim: Simulator, call_id: str) -> str:
    return call_status.normalise(sim.plan(call_id).outcome)


def log_of(sim: Simulator, call_id: str | None = None, route: str | None = None) -> list[LogEntry]:
    return sorted(sim.requests(call_id=call_id, route=route), key=lambda e: e.t)


def settled_log(sim: Simulator, call_id: str, at_least: int, timeout: float = 10.0) -> list[LogEntry]:
    """The call's log once it holds ``at_least`` entries: the simulator logs a ``slow`` request when it answers,
    which can be after the client timed out and already retried."""
    deadline = time.monotonic() + timeout
    while len(entries := log_of(sim, call_id)) < at_least and time.monotonic() < deadline:
        time.sleep(0.01)
    return entries


def gaps(entries: Sequence[LogEntry]) -> list[float]:
    return [b.t - a.t for a, b in itertools.pairwise(entries)]


def quick_call(sim: Simulator, outcome: str = "completed", after: float = 0.0) -> str:
    """A call that ends ``after`` seconds from now with ``outcome`` (0: already ended)."""
    return sim.create_call(outcome=outcome, queued_s=0, ring_s=0, talk_s=after)


def refused_url() -> str:
    """A loopback URL nothing listens on (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


async def until(predicate: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    """Wait for a condition (not a fixed sleep): the simulator has seen some request, a task has started..."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        await asyncio.sleep(0.02)


def no_tasks_left() -> bool:
    """Nothing of ours keeps running after the triggers ended (no poller, no stray task)."""
    current = asyncio.current_task()
    return not active_pollers() and all(t is current or t.done() for t in asyncio.all_tasks())


class SendCounter:
    """Counts HTTP attempts on the client side, where the simulator cannot see them (refused connections)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import httpx

        self.sync = 0
        self.async_ = 0
        sync_send, async_send = requests.Session.send, httpx.AsyncClient.send
        counter = self

        def send(session: requests.Session, *args: Any, **kwargs: Any) -> Any:
            counter.sync += 1
            return sync_send(session, *args, **kwargs)

        async def asend(client: httpx.AsyncClient, *args: Any, **kwargs: Any) -> Any:
            counter.async_ += 1
            return await async_send(client, *args, **kwargs)

        monkeypatch.setattr(requests.Session, "send", send)
        monkeypatch.setattr(httpx.AsyncClient, "send", asend)


# -- the secret guard (autouse) ------------------------------------------------------------------------------

SECRETS = {"API key": API_KEY, "secret half": KEY_SECRET, "key id": KEY_ID}
WATCHED_LOGGERS = ("", "airflow", "airflow.task", "airflow.triggers", "httpx", "httpcore", "urllib3", "asyncio")


def rendered(obj: object) -> str:
    """Everything a user could see of ``obj``: str, repr, JSON; for exceptions also traceback and attributes."""
    parts = [str(obj), repr(obj)]
    if isinstance(obj, BaseException):
        parts += traceback.format_exception(obj)
        parts.append(repr(vars(obj)))
    else:
        parts.append(json.dumps(obj, default=repr, ensure_ascii=False))
    return "\n".join(parts)


def _record_text(record: logging.LogRecord) -> str:
    parts = [record.getMessage(), repr(record.args)]
    if record.exc_info:
        parts.append(logging.Formatter().formatException(record.exc_info))
    return "\n".join(parts)


class Exposure:
    """What a test exposes besides logs: exceptions, reprs, serialized kwargs, events, XComs."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def watch(self, label: str, *objects: object) -> None:
        self.items.extend((label, rendered(obj)) for obj in objects)


@pytest.fixture(autouse=True)
def exposure(
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    recwarn: pytest.WarningsRecorder,
) -> Iterator[Exposure]:
    """Capture everything a test makes visible; after it, none of it may contain the key or a part of it."""
    for name in WATCHED_LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name)
    exposure = Exposure()
    yield exposure
    out, err = capfd.readouterr()  # with ``-s`` pytest shows the output as well as capturing it
    surfaces = [("stdout", out), ("stderr", err), *exposure.items]
    records = [*caplog.get_records("setup"), *caplog.get_records("call")]  # .records is the teardown phase's
    surfaces += [(f"log {r.name}", _record_text(r)) for r in records]
    surfaces += [(f"warning {w.category.__name__}", str(w.message)) for w in recwarn]
    leaks = [(where, what) for where, text in surfaces for what, secret in SECRETS.items() if secret in text]
    assert not leaks, f"the {leaks[0][1]} leaked into {leaks[0][0]} (and {len(leaks) - 1} more places)"


# == 1. Faults that heal: one bad answer, then the right final state ======================================


#: Read timeout of the connections in the fault tests, and how late a ``slow`` fault answers: far apart both ways,
#: so a loaded machine neither times out a healthy answer nor gets the slow one in time (request counts are exact).
#: The simulator holds a slow answer until the client hangs up (it timed out), so the hour costs no wall time;
#: a delay just above the timeout did: a client whose event loop stalled past both took the late answer.
READ_TIMEOUT = 2.0
SLOW_DELAY = 3600.0


def _fault(kind: str, route: str, call_id: str) -> Fault:
    delay = SLOW_DELAY if kind == "slow" else 1.0
    return Fault(kind=kind, route=route, call_id=call_id, count=1, delay_s=delay)  # type: ignore[arg-type]


async def test_single_fault_of_every_kind_heals_per_call(sim: Simulator, conns: Connections) -> None:
    """One faulted Get Call per call, all kinds at once: every wait still ends with the call's status.

    Error answers (429/5xx/reset/read timeout) are retried inside the hook: 2 requests, 1 poll.
    Unusable 2xx bodies are not retried by the hook; the trigger polls again: 2 requests, 2 polls.
    """
    conn = conns("dnx_heal", timeout=READ_TIMEOUT, max_retries=2)
    kinds = RETRIED_KINDS + MALFORMED_KINDS
    calls = {kind: quick_call(sim, OUTCOMES[i % len(OUTCOMES)]) for i, kind in enumerate(kinds)}
    for kind, call_id in calls.items():
        sim.add_fault(_fault(kind, "get", call_id))

    events = await run_triggers([make_trigger(calls[k], conn) for k in kinds])

    for kind, event in zip(kinds, events, strict=True):
        call_id = calls[kind]
        assert event == {
            "event": "success",
            "call_id": call_id,
            "status": expected_status(sim, call_id),
            "raw_status": sim.record(call_id)["status"],
        }, kind
        assert_clean_event(event, sim.record(call_id))
        seen = await asyncio.to_thread(settled_log, sim, call_id, 2)
        assert [e.route for e in seen] == ["get", "get"], f"{kind}: {seen}"
        first_status = {"reset": 0, "slow": HUNG_UP, "502_html": 502}.get(kind, int(kind) if kind.isdigit() else 200)
        assert seen[0].status_code == first_status, kind
        figures("heal/per_call", kind=kind, requests=len(seen), statuses=[e.status_code for e in seen])
    assert sim.stats()["faults_fired"] == dict.fromkeys(kinds, 1)
    assert sim.stats()["faults_pending"] == 0


async def test_single_fault_of_every_kind_heals_batched(sim: Simulator, conns: Connections) -> None:
    """The same through List Calls: one connection (so one poller) per kind, the fault on its list request.

    A list whose items lack ``id`` is not an error: those ids fall back to Get Call in the same poll.
    """
    kinds = RETRIED_KINDS + MALFORMED_KINDS
    calls = {kind: quick_call(sim, OUTCOMES[i % len(OUTCOMES)]) for i, kind in enumerate(kinds)}
    triggers = []
    for i, kind in enumerate(kinds):
        sim.add_fault(_fault(kind, "list", calls[kind]))
        triggers.append(
            make_trigger(calls[kind], conns(f"dnx_heal_b{i}", timeout=READ_TIMEOUT, max_retries=2), "batched")
        )

    events = await run_triggers(triggers)

    for kind, event in zip(kinds, events, strict=True):
        call_id = calls[kind]
        assert event["event"] == "success", (kind, event)
        assert event["status"] == expected_status(sim, call_id), kind
        assert_clean_event(event, sim.record(call_id))
        expected = {"list": 1, "get": 1} if kind == "no_id" else {"list": 2}
        routes = Counter(e.route for e in await asyncio.to_thread(settled_log, sim, call_id, 2))
        assert routes == expected, f"{kind}: {routes}"
        figures("heal/batched", kind=kind, requests=dict(routes))


async def test_retry_after_seconds_and_http_date_are_honoured(sim: Simulator, conns: Connections) -> None:
    """429 and 503 with ``Retry-After`` (delta-seconds and HTTP-date): the retry waits at least that long."""
    conn = conns("dnx_retry_after", max_retries=2)
    seconds_429, seconds_503, date_429 = (quick_call(sim) for _ in range(3))
    when = math.floor(time.time()) + 3  # an HTTP date has 1 s resolution: the wait is 2-3 s
    sim.add_fault(Fault(kind="429", route="get", call_id=seconds_429, count=1, retry_after="2"))
    sim.add_fault(Fault(kind="503", route="get", call_id=seconds_503, count=1, retry_after="2"))
    sim.add_fault(
        Fault(kind="429", route="get", call_id=date_429, count=1, retry_after=email.utils.formatdate(when, usegmt=True))
    )

    events = await run_triggers([make_trigger(c, conn) for c in (seconds_429, seconds_503, date_429)])

    assert [e["event"] for e in events] == ["success"] * 3
    for call_id, label in ((seconds_429, "429 Retry-After: 2"), (seconds_503, "503 Retry-After: 2")):
        first, second = log_of(sim, call_id)
        assert first.status_code in (429, 503)
        assert second.status_code == 200
        assert second.t - first.t >= 1.95, f"{label}: retried after {second.t - first.t:.2f} s"
        figures("retry-after", case=label, requests=2, wait_s=f"{second.t - first.t:.2f}")
    first, second = log_of(sim, date_429)
    assert second.t >= when - 0.05, f"HTTP-date Retry-After: retried {when - second.t:.2f} s early"
    figures("retry-after", case="429 Retry-After: <HTTP date>", requests=2, wait_s=f"{second.t - first.t:.2f}")


def test_sync_hook_fault_matrix(sim: Simulator, conns: Connections) -> None:
    """The task-side hook (requests): error answers are retried, unusable bodies fail at once (no retry)."""
    conn = conns("dnx_sync_matrix", max_retries=2)
    hook = DialNexaHook(conn, timeout=READ_TIMEOUT, retry_policy=FAST)
    for kind in RETRIED_KINDS + MALFORMED_KINDS:
        call_id = quick_call(sim, "busy")
        sim.add_fault(Fault(kind=kind, route="get", call_id=call_id, count=1, delay_s=SLOW_DELAY))  # type: ignore[arg-type]
        if kind in RETRIED_KINDS or kind == "no_status":
            record = hook.get_call(call_id)
            assert record["id"] == call_id
            # no_status reaches the caller: a record without status is the sensor's/operator's business
            assert ("status" not in record) if kind == "no_status" else (record["status"] == "busy"), kind
            expected = 1 if kind == "no_status" else 2
        else:
            with pytest.raises(DialNexaMalformedResponseError, match=conn) as info:
                hook.get_call(call_id)
            assert info.value.http_status == 200
            assert call_id in str(info.value)
            expected = 1
        assert len(settled_log(sim, call_id, expected)) == expected, kind
        figures("sync-hook", kind=kind, requests=expected, outcome="record" if expected == 2 else "see test")
    hook.close()


# == 2. Faults that never heal: a clear error after the documented cap, never a spin =======================


#: ``max_consecutive_failures`` is how many failed polls in a row a wait *survives* (trigger docstring); the
#: next failure ends it. With the cap at 3, a wait that never gets an answer makes 4 polls.
CAP = 3
FAILED_POLLS = CAP + 1


async def test_faults_that_never_heal_end_in_error_after_the_cap(
    sim: Simulator, conns: Connections, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run concurrently on one loop, like a triggerer:

    * every fault kind forever on its own call (per call): ``error`` after 4 failed polls, with exactly
      (max_retries + 1) x 4 requests for retried kinds and 4 for unusable bodies;
    * a refused connection in both modes: the same cap, counted on the client side;
    * a 503 outage longer than the retry budget for 20 waits per mode: every wait ends with ``error``,
      the request count is bounded by (max_retries + 1) per poll x 4 polls, with backoff in between.
    """
    conn = conns("dnx_forever", max_retries=1)
    slow_conn = conns("dnx_forever_slow", timeout=1, max_retries=0)
    refused = {mode: conns(f"dnx_refused_{mode}", host=refused_url(), max_retries=1) for mode in MODES}
    outage_conns = {mode: conns(f"dnx_outage_{mode}", max_retries=1) for mode in MODES}
    kinds = RETRIED_KINDS + MALFORMED_KINDS
    calls = {kind: quick_call(sim) for kind in kinds}
    for kind, call_id in calls.items():
        sim.add_fault(Fault(kind=kind, route="get", call_id=call_id, delay_s=SLOW_DELAY))  # type: ignore[arg-type]
    waits = 20
    outage = {mode: [quick_call(sim) for _ in range(waits)] for mode in MODES}
    for call_id in outage["per_call"] + outage["batched"]:
        sim.add_fault(Fault(kind="503", route="any", call_id=call_id))
    sends = SendCounter(monkeypatch)

    triggers = [make_trigger(calls[k], slow_conn if k == "slow" else conn) for k in kinds]
    triggers += [make_trigger("call_refused123", refused[mode], mode) for mode in MODES]
    triggers += [make_trigger(c, outage_conns[mode], mode) for mode in MODES for c in outage[mode]]
    events = await run_triggers(triggers)

    assert all(e["event"] == "error" for e in events), Counter(e["event"] for e in events)
    assert all(f"gave up after {FAILED_POLLS} consecutive failed polls" in e["message"] for e in events)
    assert no_tasks_left(), "nothing may keep polling after the events"
    expected_kind = {"429": "rate_limited"} | dict.fromkeys(MALFORMED_KINDS, "malformed")
    for kind, event in zip(kinds, events, strict=False):
        assert event["kind"] == expected_kind.get(kind, "server"), (kind, event)
        assert calls[kind] in event["message"]
        assert_clean_event(event)
        attempts = 1 if kind == "slow" or kind in MALFORMED_KINDS else 2
        seen = await asyncio.to_thread(settled_log, sim, calls[kind], attempts * FAILED_POLLS)
        assert len(seen) == attempts * FAILED_POLLS, f"{kind}: {len(seen)} requests, expected {attempts} x 4 polls"
        figures("forever/per_call", kind=kind, event=f"error/{event['kind']}", requests=len(seen))
    for mode, event in zip(MODES, events[len(kinds) : len(kinds) + 2], strict=True):
        assert event["kind"] == "server"
        assert refused[mode] in event["message"]
        assert "could not get an answer" in event["message"]
    # every HTTP attempt of this test: the ones the simulator saw, plus (1 + 1) x 4 per refused wait
    assert sends.async_ == sim.stats()["requests"] + 2 * 2 * FAILED_POLLS
    figures("forever/refused", modes="per_call+batched", event="error/server", attempts_per_wait=2 * FAILED_POLLS)

    assert all(e["kind"] == "server" for e in events[len(kinds) + 2 :])
    bound = waits * 2 * FAILED_POLLS
    per_call = [log_of(sim, c) for c in outage["per_call"]]
    assert {e.status_code for entries in per_call for e in entries} == {503}
    assert sum(map(len, per_call)) == bound
    gap = min(min(gaps(entries)) for entries in per_call)
    assert gap >= 0.45, f"a wait re-sent after {gap:.3f} s: no backoff"
    span = max(e[-1].t for e in per_call) - min(e[0].t for e in per_call)
    one = per_call[0]
    figures(
        "outage/per_call",
        waits=waits,
        max_retries=1,
        max_consecutive_failures=CAP,
        requests=sum(map(len, per_call)),
        bound=bound,
        span_s=f"{span:.1f}",
        min_gap_s=f"{gap:.2f}",
        requests_per_minute_per_wait=f"{60 * len(one) / (one[-1].t - one[0].t):.0f}",
    )
    # batched: the waits share List Calls requests, so the outage costs (1 + 1) x 4 per batch, not per wait
    wanted = set(outage["batched"])
    batched = [e for e in log_of(sim, route="list") if wanted.intersection(e.call_ids)]
    assert {e.status_code for e in batched} == {503}
    assert len(batched) <= 2 * 2 * FAILED_POLLS, len(batched)
    gap = min(gaps(batched))
    assert gap >= 0.45, f"re-sent after {gap:.3f} s: no backoff"
    span = batched[-1].t - batched[0].t
    figures(
        "outage/batched",
        waits=waits,
        max_retries=1,
        max_consecutive_failures=CAP,
        requests=len(batched),
        bound_if_polled_per_call=bound,
        span_s=f"{span:.1f}",
        min_gap_s=f"{gap:.2f}",
        requests_per_minute_all_waits=f"{60 * len(batched) / span:.0f}",
    )


def test_unreachable_host_from_the_task_side(conns: Connections, monkeypatch: pytest.MonkeyPatch) -> None:
    """Refused and unresolvable hosts: a clear error naming the connection after max_retries + 1 attempts."""
    sends = SendCounter(monkeypatch)
    for label, host in (("refused", refused_url()), ("unresolvable", "http://dialnexa-unreachable.invalid")):
        conn = conns(f"dnx_unreachable_{label}", host=host, max_retries=2)
        before = sends.sync
        with pytest.raises(DialNexaUnreachableError, match=conn) as info:
            DialNexaHook(conn, retry_policy=FAST).get_call("call_abc123")
        assert "could not get an answer" in str(info.value)
        assert sends.sync - before == 3
        figures("unreachable/sync", host=label, attempts=sends.sync - before, error="DialNexaUnreachableError")


# == 3. Load with faults ===================================================================================

LOAD_KINDS = ("429", "500", "502_html", "503", "504", "reset", "truncated_json", "not_object", "no_id", "no_status")
#: The same kinds, each error answer (retried in the hook) next to an unusable body (a failed poll): planted
#: 100 calls apart, a List Calls request of 200 ids meets at most one failed poll's worth of them.
PLANTED_KINDS = ("429", "truncated_json", "500", "not_object", "502_html", "no_id", "503", "no_status", "504", "reset")


@pytest.mark.parametrize(
    ("mode", "rate"),
    [
        pytest.param("per_call", 0.01, id="per_call"),
        # A batched poll is one request for up to 200 waits, so a 1% rate would fault none of the ~10 requests;
        # 10% per request still means ~1 faulted record in 100 once spread over the waits' polls.
        pytest.param("batched", 0.1, id="batched"),
    ],
)
async def test_load_1000_waits_with_faults(mode: str, rate: float, sim: Simulator, conns: Connections) -> None:
    """1,000 concurrent waits, a share of all responses faulted (mixed kinds): 100% end with the right status.

    Two layers of faults. Planted: one of each kind on its own call, fired by the first request naming that
    call, whatever the machine's pace. A seeded share of all responses on top: how many of those fire depends
    on how many requests the run makes, which a loaded machine lowers (the calls end on the wall clock while
    the polls come later; a batched run then makes ~6 requests and the seeded draws may fault none of them).
    """
    waits = 1000
    conn = conns(f"dnx_load_{mode}", timeout=2, max_retries=2)
    calls = sim.create_calls(waits, queued_s=0, ring_s=(0, 1), talk_s=(0, 3))
    planted = dict(zip(calls[50::100], PLANTED_KINDS, strict=True))
    for call_id, kind in planted.items():
        sim.add_fault(
            Fault(kind=kind, route="any", call_id=call_id, count=1, retry_after="1" if kind == "429" else None)
        )  # type: ignore[arg-type]
    for kind in LOAD_KINDS:
        sim.add_fault(Fault(kind=kind, rate=rate / len(LOAD_KINDS), retry_after="1" if kind == "429" else None))  # type: ignore[arg-type]

    events = await run_triggers([make_trigger(c, conn, mode, max_consecutive_failures=5) for c in calls])

    wrong = [(c, e) for c, e in zip(calls, events, strict=True) if e != _success(sim, c)]
    assert not wrong, f"{len(wrong)} waits ended wrongly, e.g. {wrong[:3]}"
    for call_id, event in zip(calls, events, strict=True):
        assert_clean_event(event, sim.record(call_id))
    stats = sim.stats()
    faults = sum(stats["faults_fired"].values())
    # A wait ends only on a clean answer naming its call, and a planted fault fires on the first request naming
    # its call: so every planted fault fired (only the seeded share's open-ended rules are left) and was survived.
    assert stats["faults_pending"] == len(LOAD_KINDS), "a planted fault never fired: the run was not faulted"
    assert set(stats["faults_fired"]) == set(LOAD_KINDS), stats["faults_fired"]
    seen = log_of(sim)
    span = seen[-1].t - seen[0].t
    if mode == "per_call":
        for call_id in calls:
            entries = log_of(sim, call_id)
            polls_upper = math.floor((entries[-1].t - entries[0].t) / 0.9) + 1
            assert len(entries) <= 3 * polls_upper, f"{call_id}: {len(entries)} requests in {polls_upper} polls"
    statuses = {str(k): v for k, v in sorted(stats["by_status"].items())}
    figures(
        f"load/{mode}",
        waits=waits,
        correct=f"{waits - len(wrong)}/{waits}",
        requests=stats["requests"],
        by_route=stats["by_route"],
        by_status=statuses,
        faulted_responses=faults,
        faulted_share=f"{100 * faults / stats['requests']:.1f}%",
        retried=faults,
        faults_fired=dict(sorted(stats["faults_fired"].items())),
        requests_per_wait=f"{stats['requests'] / waits:.2f}",
        span_s=f"{span:.1f}",
    )


def _success(sim: Simulator, call_id: str) -> dict[str, Any]:
    return {
        "event": "success",
        "call_id": call_id,
        "status": expected_status(sim, call_id),
        "raw_status": sim.record(call_id)["status"],
    }


# == 4. Restarts and duplicates ============================================================================


async def test_triggerer_restart_mid_wait_keeps_the_original_deadline(
    sim: Simulator, conns: Connections, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancel a trigger mid-wait, rebuild it from ``serialize()`` through serde and run it again.

    On a fake clock (``tests/_clock.py``), so every instant is exact whatever the machine's load: each wait
    is parked at t0 + 2.5 s and cancelled there; the restart itself takes 0.5 s. Never-ending calls then time
    out at the *original* ``end_time`` (t0 + 4.5 s; a fresh deadline would lie 4.5 s after the restart):
    per_call sends no request after it; batched reads at most one batch window (1 s) after its last check. A
    call that ends after the restart is reported with its status.
    """
    conn = conns("dnx_restart")
    clock = drive_time(monkeypatch)
    t0 = clock.now
    end_time = t0 + 4.5
    endless = {mode: sim.create_call(outcome="completed", queued_s=0, ring_s=0, talk_s=3600) for mode in MODES}
    ending = sim.create_call(outcome="voicemail", queued_s=0, ring_s=0, talk_s=3600)
    steady: dict[str, Any] = {"first_poll_delay": 0, "poll_growth": 1.0, "poll_jitter": 0.0}
    originals = [DialNexaCallTrigger(endless[m], conn, 1, end_time, polling=m, **steady) for m in MODES]
    originals.append(DialNexaCallTrigger(ending, conn, 1, t0 + 60, polling="per_call", **steady))
    # per_call polls at t0, +1, +2 before the park; batched reads a window after each check: +1, +2
    polls_before = [3, 2, 3]

    for trigger, call_id, expected_before in zip(originals, [*endless.values(), ending], polls_before, strict=True):
        clock.now, clock.park_after = t0, t0 + 2.5
        task = asyncio.create_task(run_trigger(rebuild(trigger)))
        await until(lambda: clock.parked == 1, "the trigger is parked mid-wait")
        assert not task.done(), "set-up: the wait is still running at the restart"
        task.cancel()
        results = await asyncio.gather(task, return_exceptions=True)
        assert isinstance(results[0], asyncio.CancelledError), results
        assert no_tasks_left(), "a cancelled trigger must leave no poller or task behind"
        before = len(log_of(sim, call_id))
        assert before == expected_before, (trigger.polling, before)
        clock.park_after = None
        clock.now += 0.5  # the restart
        restarted_at = clock.now
        if call_id == ending:
            sim.set_status(ending, "voicemail")  # the call ends while no trigger watches it
        event = await run_trigger(rebuild(trigger))
        await close_async_clients()
        requests_after = len(log_of(sim, call_id)) - before
        if call_id == ending:
            assert event == _success(sim, ending)
            assert requests_after == 1
            figures("restart/call-ends-after-restart", event=f"success/{event['status']}", requests=before + 1)
            continue
        mode = trigger.polling
        assert event["event"] == "timeout", event
        assert event["last_status"] == "in_progress"
        assert_clean_event(event)
        assert restarted_at + 4.5 > end_time + 2, "set-up: a fresh deadline would lie >= 2 s later"
        if mode == "per_call":  # polls at +2.5 and +3.5; the next wait is cut to the deadline, then no poll
            assert clock.now == pytest.approx(end_time)
            assert requests_after == 2
        else:  # checks at +2.5 and +3.5, each read one window later (+3.5, +4.5): at most 1 s past its check
            assert end_time <= clock.now <= end_time + 1.0 + 1e-6
            assert requests_after == 2
        figures(
            f"restart/{mode}",
            event="timeout",
            requests_before=before,
            requests_after=requests_after,
            event_after_deadline_s=f"{clock.now - end_time:.2f}",
        )


async def test_the_same_trigger_twice_at_once(sim: Simulator, conns: Connections) -> None:
    """HA duplicates: two copies of one trigger end with the same event and change nothing (GETs only)."""
    conn = conns("dnx_dup")
    calls = {mode: quick_call(sim, "no_answer", after=1.5) for mode in MODES}
    metadata = {c: sim.record(c)["metadata"] for c in calls.values()}
    originals = [DialNexaCallTrigger(calls[m], conn, 1, time.time() + 60, polling=m, first_poll_delay=0) for m in MODES]

    events = await run_triggers([rebuild(t) for t in originals for _ in range(2)])

    for i, mode in enumerate(MODES):
        first, second = events[2 * i], events[2 * i + 1]
        assert first == second == _success(sim, calls[mode])
        seen = log_of(sim, calls[mode])
        figures(f"duplicates/{mode}", event=f"success/{first['status']}", requests=len(seen), methods="GET only")
    assert {e.method for e in log_of(sim)} == {"GET"}
    assert sim.stats()["calls"] == len(calls)
    assert {c: sim.record(c)["metadata"] for c in calls.values()} == metadata


def test_task_retry_refetches_and_returns_the_same_record(sim: Simulator, conns: Connections) -> None:
    """Attempt 1 hits a fault that outlasts the retries and fails; attempts 2 and 3 return the same record."""
    conn = conns("dnx_task_retry", max_retries=1)
    call_id = quick_call(sim, "completed")
    sim.add_fault(Fault(kind="500", route="get", call_id=call_id, count=2))

    def attempt() -> dict[str, Any]:  # each task try builds the operator afresh, as a worker does
        operator = DialNexaGetCallOperator(
            task_id="fetch",
            call_id=call_id,
            dialnexa_conn_id=conn,
            exclude_fields=["transcript"],
            mask_phone_numbers=True,
        )
        return operator.execute(cast("Context", {}))

    with pytest.raises(DialNexaServerError, match=conn):
        attempt()
    assert len(log_of(sim)) == 2
    second, third = attempt(), attempt()
    assert second == third
    assert second["id"] == call_id
    assert second["status"] == "completed"
    assert "transcript" not in second
    assert "*" in second["to_number"]
    seen = log_of(sim)
    assert [e.status_code for e in seen] == [500, 500, 200, 200]
    assert {e.method for e in seen} == {"GET"}
    figures("task-retry", attempts=3, outcome="fail, record, same record", requests=len(seen))


async def test_deferred_operator_retry_returns_the_same_record(sim: Simulator, conns: Connections) -> None:
    """wait_for_completion: the first try defers, the trigger ends, the final fetch hits a persistent fault and
    the try fails; the retry finds the call ended and returns the same record without deferring."""
    conn = conns("dnx_deferred_retry", max_retries=0)
    call_id = quick_call(sim, "busy", after=1.2)

    def operator() -> DialNexaGetCallOperator:
        return DialNexaGetCallOperator(
            task_id="fetch", call_id=call_id, dialnexa_conn_id=conn, wait_for_completion=True, poll_interval=1
        )

    first = operator()
    with pytest.raises(TaskDeferred) as deferred:
        first.execute(cast("Context", {}))
    trigger = rebuild(cast("DialNexaCallTrigger", deferred.value.trigger))
    (event,) = await run_triggers([trigger])
    assert event == _success(sim, call_id)
    sim.add_fault(Fault(kind="502_html", route="get", call_id=call_id, count=1))
    with pytest.raises(DialNexaServerError, match="502"):
        await asyncio.to_thread(
            first.execute_complete, cast("Context", {}), cast("dict[str, Any]", deserialize(serialize(event)))
        )
    retried = await asyncio.to_thread(in_any_thread(operator().execute), cast("Context", {}))
    again = await asyncio.to_thread(in_any_thread(operator().execute), cast("Context", {}))
    assert retried == again
    assert retried["status"] == "busy"
    assert {e.method for e in log_of(sim)} == {"GET"}
    figures("task-retry/deferred", outcome="defer, fail, record", requests=len(log_of(sim)))


# == 5. Bad input: a clear error before any request =========================================================

BAD_CALL_IDS: list[Any] = [
    "",
    " ",
    " call_abc123",
    "call abc123",
    "../agents",
    "..",
    "call_abc/../../agents",
    "%2F",
    "call_abc%2F..",
    "?x=1",
    "call_abc?limit=1000",
    "#",
    "call_abc#frag",
    "call\\abc",
    "call_abc\x00",
    "call_\x1b[31mred",
    "call_abc\n",
    "call_\u202eabc",
    "\x7f",
    "c" * 10 * 1024,
    123,
    12.5,
    None,
    b"call_abc123",
    ["call_abc123"],
    {"id": "call_abc123"},
]


def _id(value: Any) -> str:
    return repr(value)[:20]


def _check_invalid(exc: BaseException) -> None:
    assert isinstance(exc, InvalidCallIdError)
    assert "call id" in str(exc)
    assert len(str(exc)) < 400, "a 10 KB id must not produce a 10 KB message"


@pytest.mark.parametrize("call_id", BAD_CALL_IDS, ids=_id)
async def test_invalid_call_id_is_refused_before_any_request(call_id: Any, sim: Simulator, conns: Connections) -> None:
    """Hook (sync and async), trigger (both modes), sensor and operator: InvalidCallIdError, zero requests."""
    conn = conns("dnx_bad_id")
    with pytest.raises(InvalidCallIdError) as sync_info:
        await asyncio.to_thread(DialNexaHook(conn).get_call, call_id)
    _check_invalid(sync_info.value)
    with pytest.raises(InvalidCallIdError) as async_info:
        await DialNexaHook(conn).aget_call(call_id)
    _check_invalid(async_info.value)
    for operator in (
        DialNexaCallSensor(task_id="wait", call_id=call_id, dialnexa_conn_id=conn, deferrable=True, poke_interval=1),
        DialNexaGetCallOperator(task_id="fetch", call_id=call_id, dialnexa_conn_id=conn, wait_for_completion=True),
    ):
        with pytest.raises(InvalidCallIdError) as task_info:
            await asyncio.to_thread(in_any_thread(operator.execute), cast("Context", {}))
        _check_invalid(task_info.value)
    if isinstance(call_id, str):
        events = await run_triggers([make_trigger(call_id, conn, mode) for mode in MODES])
        for event in events:
            assert event["event"] == "error"
            assert event["kind"] == "bad_request"
            assert "call id" in event["message"]
    else:
        await close_async_clients()
    assert sim.stats()["requests"] == 0, "no request may be sent for an invalid call id"


def _render(task: Any, params: dict[str, Any]) -> None:
    task.render_template_fields({"params": params})


@pytest.mark.parametrize(
    ("native", "params"),
    [
        pytest.param(False, {"call_id": None}, id="None-string-templates"),
        pytest.param(True, {"call_id": None}, id="None-native-templates"),
        pytest.param(False, {"call_id": ""}, id="empty-string-templates"),
        pytest.param(True, {"call_id": ""}, id="empty-native-templates"),
    ],
)
def test_templated_call_id_rendering_a_missing_value(
    native: bool, params: dict[str, Any], sim: Simulator, conns: Connections
) -> None:
    """A templated call_id that renders to None, "None" or "" fails before any request, in sensor and operator."""
    conn = conns("dnx_templated")
    template = "{{ params.call_id }}"
    with DAG("reliability_templates", schedule=None, render_template_as_native_obj=native, params=params):
        sensor = DialNexaCallSensor(task_id="wait", call_id=template, dialnexa_conn_id=conn, deferrable=True)
        operator = DialNexaGetCallOperator(task_id="fetch", call_id=template, dialnexa_conn_id=conn)
    for task in (sensor, operator):
        _render(task, params)
        try:
            task.execute(cast("Context", {}))
        except InvalidCallIdError as exc:
            _check_invalid(exc)
        except DialNexaError as exc:
            raise AssertionError(f"{task.task_id}: call id {task.call_id!r} reached DialNexa: {exc}") from None
        else:
            raise AssertionError(f"{task.task_id}: call id {task.call_id!r} was accepted")
        figures("templated-id", native=native, params=params, rendered=repr(task.call_id), error="InvalidCallIdError")
    assert sim.stats()["requests"] == 0


def test_templated_call_id_naming_a_missing_param(sim: Simulator, conns: Connections) -> None:
    """``{{ params.missing }}`` fails while rendering (Airflow's strict undefined), naming the param."""
    conn = conns("dnx_templated_missing")
    with DAG("reliability_templates_missing", schedule=None, params={}):
        operator = DialNexaGetCallOperator(task_id="fetch", call_id="{{ params.missing }}", dialnexa_conn_id=conn)
    with pytest.raises(UndefinedError, match="missing"):
        _render(operator, {})
    assert sim.stats()["requests"] == 0


# -- connections --------------------------------------------------------------------------------------------

UNUSABLE_CONNECTIONS: list[tuple[str, dict[str, Any], str]] = [
    ("no-key", {"password": None}, "no API key"),
    ("empty-key", {"password": ""}, "no API key"),
    ("blank-key", {"password": "   "}, "no API key"),
    ("no-scheme", {"host": "127.0.0.1:9"}, "no scheme"),
    ("ftp-scheme", {"host": "ftp://127.0.0.1:9"}, "not supported"),
    ("bad-extra", {"max_retries": "many"}, "max_retries"),
]


def _all_paths(conn: str, call_id: str) -> Iterator[tuple[str, Callable[[], object]]]:
    hook = DialNexaHook(conn, retry_policy=FAST)
    yield "hook.get_call", lambda: hook.get_call(call_id)
    yield "hook.test_connection", hook.test_connection
    sensor = DialNexaCallSensor(
        task_id="wait", call_id=call_id, dialnexa_conn_id=conn, deferrable=True, poke_interval=1
    )
    yield "sensor.execute", lambda: in_any_thread(sensor.execute)(cast("Context", {}))
    operator = DialNexaGetCallOperator(task_id="fetch", call_id=call_id, dialnexa_conn_id=conn)
    yield "operator.execute", lambda: in_any_thread(operator.execute)(cast("Context", {}))


def _conn_id(label: str) -> str:
    return f"dnx_unusable_{label.replace('-', '_')}"


@pytest.mark.parametrize(("label", "fields", "problem"), UNUSABLE_CONNECTIONS, ids=[c[0] for c in UNUSABLE_CONNECTIONS])
def test_unusable_connection_fails_clearly_before_any_request(
    label: str, fields: dict[str, Any], problem: str, sim: Simulator, conns: Connections
) -> None:
    """Hook, test_connection, sensor and operator name the connection id and the problem, and send nothing."""
    conn = conns(_conn_id(label), **fields)
    call_id = quick_call(sim)
    for path, run in _all_paths(conn, call_id):
        if path == "hook.test_connection":
            ok, message = cast("Callable[[], tuple[bool, str]]", run)()
            assert not ok
            assert conn in message, message
            assert problem in message, message
            continue
        with pytest.raises(DialNexaConfigError) as info:
            run()
        assert conn in str(info.value), (path, str(info.value))
        assert problem in str(info.value), (path, str(info.value))
    assert sim.stats()["requests"] == 0
    figures("connection", case=label, error="DialNexaConfigError", requests=0)


async def test_unusable_connections_end_trigger_waits_before_any_request(sim: Simulator, conns: Connections) -> None:
    """The same connections in the triggerer (both modes): an ``error`` event of kind ``config``, no request."""
    call_id = quick_call(sim)
    triggers = [
        make_trigger(call_id, conns(_conn_id(label), **fields), mode)
        for label, fields, _ in UNUSABLE_CONNECTIONS
        for mode in MODES
    ]
    events = await run_triggers(triggers)
    for (label, _, problem), event in zip([c for c in UNUSABLE_CONNECTIONS for _ in MODES], events, strict=True):
        assert event["event"] == "error", (label, event)
        assert event["kind"] == "config"
        assert _conn_id(label) in event["message"]
        assert problem in event["message"]
    assert sim.stats()["requests"] == 0
    figures("connection/trigger", cases=len(UNUSABLE_CONNECTIONS), modes=MODES, event="error/config", requests=0)


async def test_wrong_key_is_one_request_and_no_retry(sim: Simulator, conns: Connections) -> None:
    """401 cannot heal: exactly one request per path, an error naming the connection and the fix."""
    conn = conns("dnx_wrong_key", password="dnx_live_WRONG:not-the-secret", max_retries=5)
    call_id = quick_call(sim)
    counts: dict[str, int] = {}
    for path, run in _all_paths(conn, call_id):
        before = sim.stats()["requests"]
        if path == "hook.test_connection":
            ok, message = await asyncio.to_thread(cast("Callable[[], tuple[bool, str]]", run))
            assert not ok
            assert "401" in message
            assert conn in message
        else:
            with pytest.raises(DialNexaAuthError) as info:
                await asyncio.to_thread(run)
            assert info.value.http_status == 401
            assert conn in str(info.value)
            assert "API key" in str(info.value)
        counts[path] = sim.stats()["requests"] - before
    for mode in MODES:
        before = sim.stats()["requests"]
        (event,) = await run_triggers([make_trigger(call_id, conn, mode)])
        assert event["event"] == "error"
        assert event["kind"] == "auth"
        assert conn in event["message"]
        counts[f"trigger/{mode}"] = sim.stats()["requests"] - before
    assert counts == dict.fromkeys(counts, 1), counts
    assert sim.stats()["by_status"] == {401: len(counts)}
    figures("connection", case="wrong key (401)", requests_per_path=counts)


# -- operator options --------------------------------------------------------------------------------------


def shown(out: str, caplog: pytest.LogCaptureFixture) -> str:
    """What a user sees logged: Airflow 3 prints task and trigger logs (structlog) to stdout; Airflow 2.11 logs
    them through the standard library, where pytest's log capture holds them."""
    return out + "\n" + "\n".join(record.getMessage() for record in caplog.records)


def test_operator_field_options(
    sim: Simulator,
    conns: Connections,
    exposure: Exposure,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """As documented: include and exclude together, or an empty include, fail at DAG parse (ValueError);
    unknown names are accepted (DialNexa spells fields several ways) and an unmatched include logs a warning."""
    conn = conns("dnx_options")
    with pytest.raises(ValueError, match="not both"):
        DialNexaGetCallOperator(task_id="a", call_id="call_abc123", include_fields=["status"], exclude_fields=["id"])
    with pytest.raises(ValueError, match="include_fields is empty"):
        DialNexaGetCallOperator(task_id="b", call_id="call_abc123", include_fields=[])
    with pytest.raises(ValueError, match="non-empty strings"):
        DialNexaGetCallOperator(task_id="c", call_id="call_abc123", exclude_fields=["", "transcript"])
    assert sim.stats()["requests"] == 0

    call_id = quick_call(sim, "completed")
    operator = DialNexaGetCallOperator(
        task_id="d", call_id=call_id, dialnexa_conn_id=conn, include_fields=["status", "no_such_field"]
    )
    assert operator.execute(cast("Context", {})) == {"status": "completed"}
    excluded = DialNexaGetCallOperator(task_id="e", call_id=call_id, dialnexa_conn_id=conn, exclude_fields=["nope"])
    assert excluded.execute(cast("Context", {})) == sim.record(call_id)
    assert len(log_of(sim)) == 2
    out = capfd.readouterr().out
    exposure.watch("stdout", out)
    assert "include_fields ['no_such_field'] matched no field" in shown(out, caplog)


# == 6. Secrets and personal data ===========================================================================


async def test_key_and_personal_data_surface_nowhere(
    sim: Simulator,
    conns: Connections,
    exposure: Exposure,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A mixed run of every path with a recognisable key; the autouse guard scans all it exposed.

    Trigger events of every kind (success of every outcome, error, timeout) carry no transcript, summary,
    recording URL or phone number. XComs carry what the user asked for, never the key.
    """
    conn = conns("dnx_secrets", max_retries=1)
    calls = [quick_call(sim, outcome) for outcome in OUTCOMES]
    calls.append(sim.create_call(outcome="completed", queued_s=0, ring_s=0, talk_s=0, spelling="snake"))
    calls.append(sim.create_call(outcome="voicemail", queued_s=0, ring_s=0, talk_s=0, hyphenated=True))
    endless = sim.create_call(outcome="completed", queued_s=0, ring_s=0, talk_s=3600)
    foreign = sim.create_call(outcome="completed", foreign=True)
    # even indexes poll per call, odd ones share List Calls (a list fault hits every wait of its batch)
    sim.add_fault(Fault(kind="500", route="get", call_id=calls[0], count=1))
    sim.add_fault(Fault(kind="reset", route="list", call_id=calls[1], count=1))
    sim.add_fault(Fault(kind="truncated_json", route="get", call_id=calls[2], count=1))
    sim.add_fault(Fault(kind="429", route="get", call_id=calls[4], retry_after="0"))  # forever: error event
    triggers = [make_trigger(c, conn, MODES[i % 2], max_consecutive_failures=1) for i, c in enumerate(calls)]
    triggers += [make_trigger(endless, conn, end_time=time.time() + 1.5), make_trigger(foreign, conn)]
    triggers.append(make_trigger("call_doesnotexist1", conn, "batched"))
    exposure.watch("trigger repr and serialized kwargs", *(repr(t) for t in triggers))
    exposure.watch("serialized kwargs", *(serialize(t.serialize()[1]) for t in triggers))

    events = await run_triggers(triggers)

    exposure.watch("trigger events", *events)
    assert Counter(e["event"] for e in events) == {"success": len(calls) - 1, "error": 3, "timeout": 1}
    for call_id, event in zip([*calls, endless, foreign, "call_doesnotexist1"], events, strict=True):
        assert_clean_event(event, sim.record(call_id) if call_id != "call_doesnotexist1" else None)
    assert {e.get("kind") for e in events if e["event"] == "error"} == {"rate_limited", "permission", "not_found"}

    # the task side: hook, sensor, operator; XComs; every exception and repr
    hook = DialNexaHook(conn, retry_policy=FAST)
    record = hook.get_call(calls[0])
    assert record["transcript"], "set-up: a connected call has a transcript"
    exposure.watch("hook and settings", repr(hook), vars(hook), repr(hook.settings), str(hook.settings))
    exposure.watch("test_connection", hook.test_connection())
    sensor = DialNexaCallSensor(task_id="wait", call_id=calls[0], dialnexa_conn_id=conn, deferrable=True)
    exposure.watch("sensor XCom", sensor.execute(cast("Context", {})), sensor.execute_complete({}, events[0]))
    for options in ({}, {"exclude_fields": ["transcript"], "mask_phone_numbers": True}, {"include_fields": ["status"]}):
        xcom = DialNexaGetCallOperator(task_id="fetch", call_id=calls[0], dialnexa_conn_id=conn, **options).execute({})
        exposure.watch("operator XCom", xcom)
    waiting = DialNexaGetCallOperator(task_id="wait", call_id=endless, dialnexa_conn_id=conn, wait_for_completion=True)
    with pytest.raises(TaskDeferred) as deferred:
        waiting.execute(cast("Context", {}))
    exposure.watch("deferral", deferred.value, deferred.value.trigger.serialize())

    failures: list[BaseException] = []
    sim.add_fault(Fault(kind="503", route="get", call_id=calls[6]))
    for run in (lambda: hook.get_call(calls[6]), lambda: hook.get_call(foreign), lambda: hook.get_call("../x")):
        with pytest.raises(DialNexaError) as info:
            run()
        failures.append(info.value)
    bad_hosts = {"refused": refused_url(), "ftp": "ftp://api.dialnexa.com", "creds": "https://u:p@api.dialnexa.com"}
    for label, host in bad_hosts.items():
        with pytest.raises(DialNexaError) as info:
            DialNexaHook(conns(f"dnx_secrets_{label}", host=host), retry_policy=FAST).get_call(calls[0])
        failures.append(info.value)
    with pytest.raises(DialNexaConfigError) as info:
        DialNexaHook(conns("dnx_secrets_space", password=f"{KEY_ID}: {KEY_SECRET}")).get_call(calls[0])
    failures.append(info.value)
    sim.configure(api_key="dnx_live_ROTATED:another-secret")  # the key was revoked: 401 for it
    with pytest.raises(DialNexaAuthError) as info:
        hook.get_call(calls[0])
    failures.append(info.value)
    (revoked,) = await run_triggers([make_trigger(calls[0], conn)])
    assert revoked["kind"] == "auth"
    exposure.watch("401 event and test_connection", revoked, hook.test_connection())
    exposure.watch("exceptions", *failures)
    hook.close()

    # positive control: the guard really sees retry warnings, poll warnings and error texts
    out, err = capfd.readouterr()
    exposure.watch("stdout", out)
    exposure.watch("stderr", err)
    logged = shown(out, caplog)  # the autouse guard scans caplog's records too
    assert "retry 1 of 1" in logged, "the guard must see the hook's retry warnings"
    assert "polling again" in logged, "the guard must see the trigger's poll warnings"
    assert any("HTTP 401" in text for _, text in exposure.items)
    figures(
        "secrets",
        events_checked=len(events) + 1,
        exceptions_checked=len(failures),
        surfaces="stdlib logs at DEBUG, structlog output, stdout/stderr, warnings, str/repr/tracebacks, "
        "reprs, serialized kwargs, events, XComs",
        leaks=0,
    )


# == 7. The event loop ======================================================================================


class BlockingCallError(AssertionError):
    """A blocking entry point was called on the triggers' event loop thread."""


def forbid_blocking_calls(monkeypatch: pytest.MonkeyPatch, loop_thread: int) -> list[str]:
    """Make blocking entry points raise when called from the loop thread (worker threads stay allowed)."""
    seen: list[str] = []

    def guard(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if threading.get_ident() == loop_thread:
                seen.append(name)
                raise BlockingCallError(f"{name} called on the event loop")
            return original(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(requests.Session, "request", guard("requests.Session.request", requests.Session.request))
    monkeypatch.setattr(requests.Session, "send", guard("requests.Session.send", requests.Session.send))
    monkeypatch.setattr(time, "sleep", guard("time.sleep", time.sleep))
    get_connection = cast("Any", BaseHook.get_connection).__func__
    monkeypatch.setattr(BaseHook, "get_connection", classmethod(guard("BaseHook.get_connection", get_connection)))
    extra_dejson = cast("property", Connection.__dict__["extra_dejson"])
    monkeypatch.setattr(Connection, "extra_dejson", property(guard("Connection.extra_dejson", extra_dejson.fget)))  # type: ignore[arg-type]
    return seen


async def test_the_trigger_path_never_blocks_the_event_loop(
    sim: Simulator, conns: Connections, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """200 waits (half batched, half per call) with faults and a rate budget, on a loop in debug mode:
    no blocking call on the loop thread, no callback that holds the loop for 100 ms of CPU.

    Callbacks are timed in CPU time of the loop's thread (``time.thread_time``), not wall time: on a loaded
    machine the OS may park the thread mid-callback for longer than that, which says nothing about our code.
    """
    calls = {mode: sim.create_calls(100, queued_s=0, ring_s=(0, 1), talk_s=(0, 2)) for mode in MODES}
    for kind in ("429", "500", "reset", "truncated_json", "no_id"):
        sim.add_fault(Fault(kind=kind, rate=0.01, retry_after="1" if kind == "429" else None))  # type: ignore[arg-type]
    # polling=None: the trigger reads its mode from the connection (async lookup), as a default task does
    triggers = [
        make_trigger(c, conns(f"dnx_loop_{mode}", polling=mode, max_retries=2, rate_limit_per_minute=6000), None)
        for mode in MODES
        for c in calls[mode]
    ]
    loop = asyncio.get_running_loop()
    blocked = forbid_blocking_calls(monkeypatch, threading.get_ident())
    # A full collection of the heap the earlier tests left (1,000-wait runs) pauses whichever callback
    # allocates, for 100+ ms: that is the test session's heap, not the triggers' code. Freeze it.
    gc.collect()
    gc.freeze()
    slow: list[str] = []
    run_handle = asyncio.Handle._run

    def timed_run(handle: asyncio.Handle) -> None:
        started = time.thread_time()
        try:
            run_handle(handle)
        finally:
            spent = time.thread_time() - started
            if spent > 0.1:
                slow.append(f"{spent * 1000:.0f} ms of CPU in {handle!r:.200}")

    monkeypatch.setattr(asyncio.Handle, "_run", timed_run)
    loop.set_debug(True)
    loop.slow_callback_duration = 3600  # debug mode's own slow-callback check is wall time: ours is above
    try:
        events = await run_triggers(triggers)
    finally:
        loop.set_debug(False)
        monkeypatch.setattr(asyncio.Handle, "_run", run_handle)
        gc.unfreeze()
    assert blocked == [], f"blocking calls on the event loop: {Counter(blocked)}"
    assert events == [_success(sim, c) for mode in MODES for c in calls[mode]]
    stats = sim.stats()
    figures(
        "event-loop",
        waits=len(triggers),
        requests=stats["by_route"],
        faults=sum(stats["faults_fired"].values()),
        blocking_calls=len(blocked),
        slow_callbacks_over_100ms=len(slow),
    )
    assert not slow, f"{len(slow)} slow callbacks on the triggers' loop: {slow[:3]}"
