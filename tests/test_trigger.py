"""DialNexaCallTrigger (issue #3): events, deadlines, failures, serde, and how it talks to DialNexa.

Every test runs the real trigger against the embedded simulator. Polls of one call are never closer than
1 s, so tests that need several polls take seconds: they use ``poll_interval=1, poll_jitter=0,
first_poll_delay=0`` and scripted lifecycles to keep the count of polls small.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import random
import threading
import time
from typing import Any

import pytest
import requests
from _clock import drive_time
from _compat import AIRFLOW_V_3, Connection, capture_logs, deserialize, import_string, serialize
from airflow.providers.common.compat.sdk import BaseHook
from conftest import only_event as one_event

from airflow_provider_dialnexa.hooks import dialnexa as hook_module
from airflow_provider_dialnexa.hooks.dialnexa import DialNexaHook
from airflow_provider_dialnexa.policy import RetryPolicy
from airflow_provider_dialnexa.simulator import Fault, Simulator
from airflow_provider_dialnexa.simulator.state import FaultKind, FaultRoute
from airflow_provider_dialnexa.triggers.dialnexa import DialNexaCallTrigger

CONN_ID = "dialnexa_default"
#: Poll at once, then every second exactly: the fastest schedule the 1 s floor allows.
FAST: dict[str, Any] = {"poll_interval": 1, "poll_growth": 1, "poll_jitter": 0, "first_poll_delay": 0}
MODES = ["per_call", "batched"]
EVENT_KEYS = {
    "success": {"event", "call_id", "status", "raw_status"},
    "error": {"event", "call_id", "kind", "message"},
    "timeout": {"event", "call_id", "message", "last_status"},
}


def use_connection(
    monkeypatch: pytest.MonkeyPatch, sim: Simulator, api_key: str, conn_id: str = CONN_ID, **extra: Any
) -> None:
    """An env-var connection to the simulator. No rate budget and no request retries unless asked:
    budgets are process-wide per key, and retries would hide the trigger's own failure handling.
    """
    extras = {"timeout": 5, "max_retries": 0, "rate_limit_per_minute": 0, **extra}
    conn = {"conn_type": "dialnexa", "host": sim.url, "password": api_key, "extra": extras}
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))


@pytest.fixture
def sim(simulator: Simulator, api_key: str, monkeypatch: pytest.MonkeyPatch) -> Simulator:
    use_connection(monkeypatch, simulator, api_key)
    return simulator


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hook retries with ~10 ms backoff (the trigger builds its own hook, so patch the default policy)."""
    fast = functools.partial(RetryPolicy, backoff_base=0.01, backoff_max=0.05, min_wait=0)
    monkeypatch.setattr(hook_module, "RetryPolicy", fast)


pytestmark = pytest.mark.usefixtures("close_shared_clients")


async def only_event(trigger: DialNexaCallTrigger, timeout: float = 30) -> dict[str, Any]:
    """The trigger's one event (see ``conftest.only_event``), with exactly the keys its kind documents."""
    payload = await one_event(trigger, timeout)
    assert set(payload) == EVENT_KEYS[payload["event"]], payload
    return payload


def ended_call(sim: Simulator, outcome: str = "completed", **spec: Any) -> str:
    """A call that is already over (``age_s`` back-dates it past any talk time it is given)."""
    spec = {"queued_s": 0, "ring_s": 0, "talk_s": 0, **spec}
    return sim.create_call(outcome=outcome, age_s=float(spec["talk_s"]) + 1, **spec)


def endless_call(sim: Simulator) -> str:
    """A call that rings for an hour: ``initiated`` whenever it is read."""
    return sim.create_call(outcome="completed", queued_s=0, ring_s=3600, talk_s=0)


def gaps(sim: Simulator, call_id: str) -> list[float]:
    times = [entry.t for entry in sim.requests(call_id=call_id)]
    return [later - earlier for earlier, later in itertools.pairwise(times)]


# -- success -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        ("completed", "completed"),
        ("did_not_pick", "did_not_pick"),
        ("did-not-pick", "did_not_pick"),
        ("busy", "busy"),
        ("no_answer", "no_answer"),
        ("no-answer", "no_answer"),
        ("No-Answer", "no_answer"),
        ("failed", "failed"),
        ("cancelled", "cancelled"),
        ("retry_expired", "retry_expired"),
        ("Retry-Expired", "retry_expired"),
        ("voicemail", "voicemail"),
        ("hangup", "hangup"),
        ("COMPLETED", "completed"),
        (" Busy ", "busy"),
    ],
)
async def test_terminal_status_yields_one_success_event(sim: Simulator, raw: str, status: str) -> None:
    call_id = ended_call(sim)
    sim.set_status(call_id, raw)
    event = await only_event(DialNexaCallTrigger(call_id, polling="per_call", **FAST))
    assert event == {"event": "success", "call_id": call_id, "status": status, "raw_status": raw}
    assert sim.get_count(call_id) == 1


async def test_hyphenated_outcomes_in_both_modes(sim: Simulator) -> None:
    cases = [
        (polling, ended_call(sim, outcome, hyphenated=True), outcome, raw)
        for polling in MODES
        for outcome, raw in (("no_answer", "no-answer"), ("did_not_pick", "did-not-pick"))
    ]
    events = await asyncio.gather(
        *(only_event(DialNexaCallTrigger(call_id, polling=polling, **FAST)) for polling, call_id, _, _ in cases)
    )
    for (polling, call_id, outcome, raw), event in zip(cases, events, strict=True):
        assert event == {"event": "success", "call_id": call_id, "status": outcome, "raw_status": raw}
        routes = [entry.route for entry in sim.requests(call_id=call_id)]
        assert routes == (["get"] if polling == "per_call" else ["list"])


async def test_polling_mode_comes_from_the_connection_when_not_given(
    simulator: Simulator, api_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_connection(monkeypatch, simulator, api_key, polling="per-call")
    use_connection(monkeypatch, simulator, api_key, "dialnexa_plain")
    first, second = ended_call(simulator), ended_call(simulator, "busy")
    assert (await only_event(DialNexaCallTrigger(first, **FAST)))["status"] == "completed"
    assert (await only_event(DialNexaCallTrigger(second, "dialnexa_plain", **FAST)))["status"] == "busy"
    assert [e.route for e in simulator.requests(call_id=first)] == ["get"]
    assert [e.route for e in simulator.requests(call_id=second)] == ["list"]  # default: batched


# -- deadline ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("polling", MODES)
async def test_deadline_already_passed_times_out_without_a_request(sim: Simulator, polling: str) -> None:
    call_id = endless_call(sim)
    trigger = DialNexaCallTrigger(call_id, end_time=time.time() - 1, polling=polling, **FAST)
    event = await only_event(trigger)
    assert event["event"] == "timeout"
    assert event["last_status"] is None
    assert call_id in event["message"]
    assert sim.requests(call_id=call_id) == []


@pytest.mark.parametrize("polling", MODES)
async def test_deadline_passes_while_the_call_runs(
    sim: Simulator, polling: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a fake clock (tests/_clock.py): the schedule is exact, so the count of polls is too."""
    clock = drive_time(monkeypatch)
    call_id = endless_call(sim)
    end_time = clock.now + 1.5
    event = await only_event(DialNexaCallTrigger(call_id, end_time=end_time, polling=polling, **FAST))
    assert event["event"] == "timeout"
    assert event["last_status"] == "initiated"
    assert "initiated" in event["message"]
    log = sim.requests(call_id=call_id)
    assert log, "the call was polled before the deadline"
    if polling == "per_call":  # no poll the deadline did not leave room for
        assert len(log) == 2  # at 0 s and 1 s; the next one would be after the deadline
        assert clock.sleeps == pytest.approx([0, 1, 0.5])  # the last wait is cut to the deadline, then no poll
    else:  # polls at 0 s and 1 s, each answered one batch window later; the deadline passed in the second
        assert len(log) == 2
        assert clock.windows == [1.0, 1.0]
    assert clock.now >= end_time


# -- failures ----------------------------------------------------------------------------------------


@pytest.mark.usefixtures("fast_retries")
async def test_bursts_of_5xx_and_429_are_retried(
    simulator: Simulator, api_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_connection(monkeypatch, simulator, api_key, max_retries=4)
    calls = {polling: ended_call(simulator, "busy") for polling in MODES}
    for polling, call_id in calls.items():
        route: FaultRoute = "get" if polling == "per_call" else "list"
        simulator.add_fault(Fault("503", route=route, call_id=call_id, count=2))
        simulator.add_fault(Fault("429", route=route, call_id=call_id, count=1, retry_after="0"))
        simulator.add_fault(Fault("502_html", route=route, call_id=call_id, count=1))
    events = await asyncio.gather(
        *(only_event(DialNexaCallTrigger(call_id, polling=polling, **FAST)) for polling, call_id in calls.items())
    )
    assert [(event["event"], event["status"]) for event in events] == [("success", "busy")] * 2
    for call_id in calls.values():
        assert [e.status_code for e in simulator.requests(call_id=call_id)] == [503, 503, 429, 502, 200]


async def test_transient_failures_up_to_the_cap_are_survived(sim: Simulator) -> None:
    """``max_consecutive_failures`` is how many failed polls in a row the trigger survives."""
    call_id = ended_call(sim)
    sim.add_fault(Fault("500", route="get", call_id=call_id, count=2))
    trigger = DialNexaCallTrigger(call_id, polling="per_call", max_consecutive_failures=2, **FAST)
    event = await only_event(trigger)
    assert event["event"] == "success"
    assert [e.status_code for e in sim.requests(call_id=call_id)] == [500, 500, 200]


async def test_transient_failures_beyond_the_cap_end_with_an_error(sim: Simulator) -> None:
    kinds: dict[FaultKind, str] = {"503": "server", "reset": "server", "no_status": "malformed"}
    calls = {fault: ended_call(sim) for fault in kinds}
    for fault, call_id in calls.items():
        sim.add_fault(Fault(fault, route="get", call_id=call_id))  # every request, until reset
    triggers = [
        DialNexaCallTrigger(call_id, polling="per_call", max_consecutive_failures=1, **FAST)
        for call_id in calls.values()
    ]
    events = await asyncio.gather(*(only_event(trigger) for trigger in triggers))
    for (fault, call_id), event in zip(calls.items(), events, strict=True):
        assert (event["event"], event["kind"]) == ("error", kinds[fault])
        assert "gave up after 2 consecutive failed polls" in event["message"]
        assert len(sim.requests(call_id=call_id)) == 2


async def test_malformed_bodies_are_transient(sim: Simulator) -> None:
    """A body that is not a call record (incl. one without ``status``) is polled again, not an error."""
    kinds: list[FaultKind] = ["truncated_json", "html_200", "not_object", "no_id", "no_status"]
    calls = {kind: ended_call(sim, "failed") for kind in kinds}
    for kind, call_id in calls.items():
        sim.add_fault(Fault(kind, route="get", call_id=call_id, count=1))
    triggers = [DialNexaCallTrigger(call_id, polling="per_call", **FAST) for call_id in calls.values()]
    events = await asyncio.gather(*(only_event(trigger) for trigger in triggers))
    assert [event["status"] for event in events] == ["failed"] * len(kinds)
    for call_id in calls.values():
        assert sim.get_count(call_id) == 2


def final_error_call(sim: Simulator, case: str) -> str:
    """A call id DialNexa answers with a final error (4xx) for."""
    if case == "unknown":
        return "call_doesnotexist00"
    if case == "bad_format":
        return "not.a.call.id"  # safe in a URL, but not DialNexa's format
    if case == "wrong_key":
        call_id = ended_call(sim)
        sim.configure(api_key="dnx_other:revoked")
        return call_id
    return ended_call(sim, foreign=True, foreign_status=int(case[-3:]))


@pytest.mark.usefixtures("fast_retries")
@pytest.mark.parametrize(
    ("case", "kind", "http_status"),
    [
        ("unknown", "not_found", 404),
        ("foreign_404", "not_found", 404),
        ("foreign_403", "permission", 403),
        ("bad_format", "bad_request", 400),
        ("wrong_key", "auth", 401),
    ],
)
async def test_final_errors_end_the_wait_at_once(
    simulator: Simulator, api_key: str, monkeypatch: pytest.MonkeyPatch, case: str, kind: str, http_status: int
) -> None:
    """Per-call polling; test_batching.py covers the batched path (Get Call for ids the list leaves out)."""
    use_connection(monkeypatch, simulator, api_key, max_retries=3)  # retries allowed: none may happen
    call_id = final_error_call(simulator, case)
    event = await only_event(DialNexaCallTrigger(call_id, polling="per_call", **FAST))
    assert (event["event"], event["kind"]) == ("error", kind)
    assert repr(call_id) in event["message"]
    assert f"HTTP {http_status}" in event["message"]
    assert api_key not in event["message"]
    assert [(e.route, e.status_code) for e in simulator.requests(call_id=call_id)] == [("get", http_status)]


@pytest.mark.usefixtures("fast_retries")
async def test_revoked_key_ends_batched_waits_at_once(
    simulator: Simulator, api_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_connection(monkeypatch, simulator, api_key, max_retries=3)
    calls = [ended_call(simulator) for _ in range(3)]
    simulator.configure(api_key="dnx_other:revoked")
    events = await asyncio.gather(*(only_event(DialNexaCallTrigger(c, polling="batched", **FAST)) for c in calls))
    for call_id, event in zip(calls, events, strict=True):
        assert (event["event"], event["kind"]) == ("error", "auth")
        assert repr(call_id) in event["message"]  # the shared List Calls failed, but the message names the call
        assert "HTTP 401" in event["message"]
    assert [(e.route, e.status_code, len(e.call_ids)) for e in simulator.requests()] == [("list", 401, 3)]


async def test_unusable_connection_ends_with_a_config_error(
    simulator: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_DIALNEXA_NOKEY", json.dumps({"conn_type": "dialnexa", "host": simulator.url}))
    event = await only_event(DialNexaCallTrigger("call_abc123", "dialnexa_nokey", **FAST))
    assert event["event"] == "error"
    assert event["kind"] == "config"
    assert "dialnexa_nokey" in event["message"]
    assert simulator.stats()["requests"] == 0


async def test_missing_connection_ends_with_an_error_event(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_DIALNEXA_NOWHERE", raising=False)
    event = await only_event(DialNexaCallTrigger("call_abc123", "dialnexa_nowhere", **FAST))
    assert event["event"] == "error"
    assert "dialnexa_nowhere" in event["message"]


# -- unknown statuses --------------------------------------------------------------------------------


async def test_unknown_status_keeps_waiting_and_warns_once_per_status(sim: Simulator) -> None:
    call_id = ended_call(sim)
    sim.script(call_id, ["ringing", "on_hold", "ringing", "completed"])
    with capture_logs() as logs:
        event = await only_event(DialNexaCallTrigger(call_id, polling="per_call", **FAST))
    assert event["status"] == "completed"
    assert sim.get_count(call_id) == 4
    warned = [str(e["event"]) for e in logs if e["log_level"] == "warning" and "undocumented" in str(e["event"])]
    assert len(warned) == 2, warned
    assert any("'ringing'" in w for w in warned)
    assert any("'on_hold'" in w for w in warned)


# -- serialization -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {
            "dialnexa_conn_id": "dialnexa_eu",
            "poll_interval": 7,
            "end_time": 1_900_000_000.25,
            "max_poll_interval": 90,
            "poll_growth": 2,
            "poll_jitter": 0.2,
            "first_poll_delay": 0,
            "max_consecutive_failures": 4,
            "polling": "per_call",
        },
    ],
)
def test_serde_round_trip_like_the_task_runner(kwargs: dict[str, Any], api_key: str) -> None:
    trigger = DialNexaCallTrigger("call_x9y3zp4mq7r1", **kwargs)
    classpath, kw = trigger.serialize()
    assert classpath == "airflow_provider_dialnexa.triggers.dialnexa.DialNexaCallTrigger"
    restored = deserialize(serialize(kw))
    assert isinstance(restored, dict)
    rebuilt = import_string(classpath)(**restored)
    assert isinstance(rebuilt, DialNexaCallTrigger)
    assert rebuilt.serialize() == (classpath, kw)
    assert json.loads(json.dumps(kw)) == kw
    assert all(value is None or type(value) in (str, int, float, bool) for value in kw.values()), kw
    assert {"api_key", "password", "token"}.isdisjoint(kw)
    assert api_key not in json.dumps(kw)
    for name, value in kwargs.items():
        assert kw[name] == value


def test_invalid_arguments_fail_at_construction() -> None:
    with pytest.raises(ValueError, match="poll_interval"):
        DialNexaCallTrigger("call_abc123", poll_interval=0.5)
    with pytest.raises(ValueError, match="polling"):
        DialNexaCallTrigger("call_abc123", polling="sometimes")
    with pytest.raises(ValueError, match="jitter"):
        DialNexaCallTrigger("call_abc123", poll_jitter=1.5)


# -- how the trigger talks to DialNexa ---------------------------------------------------------------


async def test_no_sync_http_and_no_sync_connection_lookup(sim: Simulator, monkeypatch: pytest.MonkeyPatch) -> None:
    """No blocking call on the trigger's event loop.

    Airflow 3 looks the connection up asynchronously, so the sync lookup must never run. Airflow 2.11 has no
    async lookup: ``common.compat`` runs the sync one in a worker thread, which is allowed there, off the loop.
    """
    loop_thread = threading.current_thread()
    off_loop_lookups: list[str] = []

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("blocking call from the trigger's event loop")

    def lookup_off_the_loop(original: Any) -> Any:
        def lookup(*args: Any, **kwargs: Any) -> Any:
            if AIRFLOW_V_3 or threading.current_thread() is loop_thread:
                forbidden()
            off_loop_lookups.append(threading.current_thread().name)
            return original(*args, **kwargs)

        return lookup

    monkeypatch.setattr(requests.Session, "request", forbidden)
    monkeypatch.setattr(requests.Session, "send", forbidden)
    monkeypatch.setattr(requests, "get", forbidden)
    sync_lookup = vars(BaseHook)["get_connection"].__func__
    monkeypatch.setattr(BaseHook, "get_connection", classmethod(lookup_off_the_loop(sync_lookup)))
    monkeypatch.setattr(DialNexaHook, "get_connection", classmethod(lookup_off_the_loop(sync_lookup)))
    extra_dejson: property = vars(Connection)["extra_dejson"]
    monkeypatch.setattr(Connection, "extra_dejson", property(lookup_off_the_loop(extra_dejson.fget)))
    per_call, batched = ended_call(sim, "voicemail"), ended_call(sim, "hangup")
    events = await asyncio.gather(
        only_event(DialNexaCallTrigger(per_call, polling="per_call", **FAST)),
        # polling=None: the trigger reads the connection's polling extra (asynchronously); batched by default
        only_event(DialNexaCallTrigger(batched, polling=None, **FAST)),
    )
    assert [event["status"] for event in events] == ["voicemail", "hangup"]
    assert [e.route for e in sim.requests()] == ["get", "list"]
    assert bool(off_loop_lookups) is not AIRFLOW_V_3, off_loop_lookups  # 2.11: the lookups did run, in threads


async def test_triggers_share_one_http_client_per_loop_and_connection(
    sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """20 waits in per-call mode, one after another on one loop (on a fake clock, so no request ever overlaps
    another, whatever the load): a shared keep-alive client reuses its connection, where a client per trigger
    would open 20.
    """
    drive_time(monkeypatch)
    calls = [ended_call(sim) for _ in range(20)]
    for call_id in calls:
        sim.script(call_id, ["initiated", "completed"])
    events = [await only_event(DialNexaCallTrigger(call_id, polling="per_call", **FAST)) for call_id in calls]
    assert {event["status"] for event in events} == {"completed"}
    stats = sim.stats()
    assert stats["requests"] == 40
    assert stats["connections"] <= 2, stats
    state = hook_module._loop_states[asyncio.get_running_loop()]
    assert list(state.clients) == [CONN_ID]


async def test_events_hold_no_transcript_and_no_phone_numbers(sim: Simulator) -> None:
    calls = {polling: ended_call(sim, "completed", talk_s=12) for polling in MODES}
    records = {call_id: sim.record(call_id) for call_id in calls.values()}
    assert all(record["transcript"] for record in records.values()), "simulated records have transcripts"
    events = await asyncio.gather(
        *(only_event(DialNexaCallTrigger(call_id, polling=polling, **FAST)) for polling, call_id in calls.items())
    )
    for event in events:
        record = records[event["call_id"]]
        text = json.dumps(event, ensure_ascii=False)
        for field in ("transcript", "summary", "to_number", "from_number", "recording_url"):
            assert str(record[field]) not in text
        assert set(event) == EVENT_KEYS["success"]


async def test_polls_of_one_call_are_at_least_a_second_apart(sim: Simulator) -> None:
    """A few multi-poll waits in both modes, with wide jitter pushing intervals below 1 s: the floor holds."""
    loose: dict[str, Any] = {"poll_interval": 1, "max_poll_interval": 1, "poll_jitter": 0.5, "first_poll_delay": 0}
    scripted = [ended_call(sim) for _ in range(3)]
    for call_id in scripted:
        sim.script(call_id, ["created", "initiated", "in-progress", "completed"])
    clocked = [sim.create_call(outcome="busy", queued_s=0, ring_s=2.5, talk_s=0) for _ in range(3)]
    triggers = [DialNexaCallTrigger(c, polling="per_call", **loose) for c in scripted]
    triggers += [DialNexaCallTrigger(c, polling="batched", **loose) for c in clocked]
    events = await asyncio.gather(*(only_event(trigger) for trigger in triggers))
    assert [event["status"] for event in events] == ["completed"] * 3 + ["busy"] * 3
    for call_id in scripted:
        assert sim.get_count(call_id) == 4
    for call_id in scripted + clocked:
        assert len(sim.requests(call_id=call_id)) >= 2
        assert min(gaps(sim, call_id)) >= 1.0, (call_id, gaps(sim, call_id))


async def test_retried_requests_of_one_call_are_at_least_a_second_apart(
    simulator: Simulator, api_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_connection(monkeypatch, simulator, api_key, max_retries=2)  # the default backoff, base 1 s
    monkeypatch.setattr(random, "uniform", lambda low, high: low)  # the shortest wait jitter can draw
    call_id = ended_call(simulator)
    simulator.add_fault(Fault("503", route="get", call_id=call_id, count=1))
    event = await only_event(DialNexaCallTrigger(call_id, polling="per_call", **FAST))
    assert event["event"] == "success"
    assert min(gaps(simulator, call_id)) >= 1.0
