"""What the docs promise (README.md, docs/*.md), checked against their own numbers (issue #12).

* The poll schedule, end to end through the trigger on a fake clock (``tests/_clock.py``): first poll one
  ``poke_interval`` after the sensor's poke, each interval x1.5, capped at ``max_poll_interval``, jitter only
  ever shortening an interval, never under 1 s.
* Every documented default, as a literal from the README (not the module's constant, so a changed default
  fails here until the README changes with it).
* 402/409/422: ``DialNexaBadRequestError`` (``bad_request``), no retry, on every path.
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from _clock import drive_time

from airflow_provider_dialnexa._connection import settings_from_connection
from airflow_provider_dialnexa.exceptions import DialNexaBadRequestError
from airflow_provider_dialnexa.hooks.dialnexa import DialNexaHook
from airflow_provider_dialnexa.operators.dialnexa import DialNexaGetCallOperator
from airflow_provider_dialnexa.policy import MIN_POLL_INTERVAL, PollPolicy, RetryPolicy
from airflow_provider_dialnexa.sensors.dialnexa import DialNexaCallSensor
from airflow_provider_dialnexa.simulator import Fault, Simulator
from airflow_provider_dialnexa.triggers.dialnexa import DialNexaCallTrigger, DialNexaWindowTrigger

CONN_ID = "dialnexa_default"


@pytest.fixture
def sim(simulator: Simulator, api_key: str, monkeypatch: pytest.MonkeyPatch) -> Simulator:
    """``dialnexa_default`` -> the simulator; retries allowed (none may happen where the tests say so)."""
    extra = {"timeout": 10, "max_retries": 3, "rate_limit_per_minute": 0}
    conn = {"conn_type": "dialnexa", "host": simulator.url, "password": api_key, "extra": extra}
    monkeypatch.setenv("AIRFLOW_CONN_DIALNEXA_DEFAULT", json.dumps(conn))
    return simulator


pytestmark = pytest.mark.usefixtures("close_shared_clients")


def running_then_ended(sim: Simulator, polls: int, outcome: str = "completed") -> str:
    """A call the trigger sees running for ``polls`` polls, then ended (scripted: no clock involved)."""
    call_id = sim.create_call(outcome=outcome, queued_s=0, ring_s=0, talk_s=0, age_s=1)
    sim.script(call_id, ["initiated", *["in-progress"] * (polls - 1), outcome])
    return call_id


async def run_to_event(trigger: DialNexaCallTrigger) -> dict[str, Any]:
    event = await trigger.run().__anext__()
    payload: dict[str, Any] = event.payload
    return payload


# -- the poll schedule (README "Sensor: wait for a call to end") ------------------------------------------

#: README: "first after poke_interval, default 10 s, growing x1.5 to max_poll_interval, default 60 s".
README_SCHEDULE = [10.0, 15.0, 22.5, 33.75, 50.625, 60.0, 60.0, 60.0]


async def test_the_sensor_defers_to_the_readme_poll_schedule(sim: Simulator, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sensor's own deferral (defaults), run on a fake clock without jitter: the waits between the poke and
    each poll are exactly the README's, and the call is polled once per wait."""
    clock = drive_time(monkeypatch)
    call_id = running_then_ended(sim, polls=len(README_SCHEDULE))  # the poke and 7 polls see it running
    _, kwargs = _deferred_trigger(DialNexaCallSensor(task_id="wait", call_id=call_id, deferrable=True))
    trigger = DialNexaCallTrigger(**{**kwargs, "poll_jitter": 0.0, "polling": "per_call"})
    event = await run_to_event(trigger)
    assert event["event"] == "success"
    assert clock.sleeps == pytest.approx(README_SCHEDULE)
    assert sim.get_count(call_id) == 1 + len(README_SCHEDULE)  # the poke, then one poll per wait


async def test_the_export_window_trigger_waits_on_the_same_schedule(
    sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The export's window trigger grows its interval like the call trigger: 10, 15, 22.5, ... (the task has just
    listed the window, so its first wait is interval 0), each at most 10 % shorter."""
    clock = drive_time(monkeypatch)
    call_id = sim.create_call(outcome="completed", queued_s=0, ring_s=3600, talk_s=0)
    now = datetime.now(UTC)
    trigger = DialNexaWindowTrigger((now - timedelta(hours=1)).isoformat(), (now + timedelta(hours=1)).isoformat())
    probe, probes = trigger._probe, [0]

    async def probe_then_end_the_call(hook: DialNexaHook) -> str:
        probes[0] += 1
        if probes[0] == 4:
            sim.set_status(call_id, "completed")
        return await probe(hook)

    monkeypatch.setattr(trigger, "_probe", probe_then_end_the_call)
    event = await anext(trigger.run())
    assert event.payload["event"] == "success"
    assert len(clock.sleeps) == 4
    for slept, nominal in zip(clock.sleeps, README_SCHEDULE, strict=False):
        assert 0.9 * nominal <= slept <= nominal


def _deferred_trigger(sensor: DialNexaCallSensor) -> tuple[str, dict[str, Any]]:
    """The trigger the sensor defers to (``TaskDeferred.trigger``), serialized as the triggerer receives it."""
    from _compat import TaskDeferred

    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute({})  # type: ignore[arg-type]
    trigger = deferred.value.trigger
    assert isinstance(trigger, DialNexaCallTrigger)
    return trigger.serialize()


async def test_jitter_only_shortens_each_interval(sim: Simulator, monkeypatch: pytest.MonkeyPatch) -> None:
    """Default jitter (10 %): each wait lies in [0.9, 1] x the README's interval, never above it."""
    clock = drive_time(monkeypatch)
    random.seed(12)
    call_id = running_then_ended(sim, polls=len(README_SCHEDULE) - 1)
    event = await run_to_event(DialNexaCallTrigger(call_id, polling="per_call"))
    assert event["event"] == "success"
    assert len(clock.sleeps) == len(README_SCHEDULE)
    for waited, nominal in zip(clock.sleeps, README_SCHEDULE, strict=True):
        assert 0.9 * nominal <= waited <= nominal, (waited, nominal)
    assert clock.sleeps != pytest.approx(README_SCHEDULE), "jitter drew no shorter interval at all"


async def test_batched_waits_ask_one_window_early_and_keep_the_schedule(
    sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batched: each wait is the interval less the poller's 1 s window, so the read still lands on schedule."""
    clock = drive_time(monkeypatch)
    call_id = sim.create_call(outcome="completed", queued_s=0, ring_s=3600, talk_s=0)
    clock.on_window = lambda n: sim.set_status(call_id, "completed") if n == 4 else None  # List Calls reads no script
    event = await run_to_event(DialNexaCallTrigger(call_id, polling="batched", poll_jitter=0.0))
    assert event["event"] == "success"
    on_schedule = [wait + window for wait, window in zip(clock.sleeps, clock.windows, strict=True)]
    assert on_schedule == pytest.approx(README_SCHEDULE[:4])


def test_poll_policy_bounds_over_many_draws() -> None:
    """PollPolicy itself: never above the nominal interval, never below 1 s, capped, growing x1.5."""
    policy = PollPolicy()
    for n in range(12):
        nominal = min(60.0, 10.0 * 1.5**n)
        draws = [policy.interval(n) for _ in range(500)]
        assert max(draws) <= nominal
        assert min(draws) >= 0.9 * nominal
    tight = PollPolicy(poll_interval=1, max_poll_interval=1, jitter=0.9)
    assert min(tight.interval(0) for _ in range(500)) >= MIN_POLL_INTERVAL == 1.0


# -- documented defaults, as the README states them -------------------------------------------------------


def test_wait_defaults_match_the_readme() -> None:
    sensor = DialNexaCallSensor(task_id="wait", call_id="call_abc123", deferrable=True)
    operator = DialNexaGetCallOperator(task_id="fetch", call_id="call_abc123", wait_for_completion=True)
    trigger = DialNexaCallTrigger("call_abc123")
    for task in (sensor, operator):
        assert task.timeout == 2 * 60 * 60  # "The default timeout is 2 hours"
        assert task.max_poll_interval == 60  # "max_poll_interval, default 60 s"
        assert task.max_consecutive_failures == 10  # "max_consecutive_failures (default 10)"
    assert sensor.poke_interval == 10  # "first after poke_interval, default 10 s"
    assert (trigger.poll_interval, trigger.max_poll_interval, trigger.poll_growth) == (10, 60, 1.5)
    assert trigger.poll_jitter == 0.1  # "each interval up to 10 % shorter"
    assert trigger.max_consecutive_failures == 10


def test_connection_defaults_match_the_readme() -> None:
    """README's connection table: timeout 30 (connect 10), max_retries 5, rate_limit_per_minute 120, batched."""
    settings, warnings = settings_from_connection(
        "dialnexa_default", host=None, password="key_id:secret", schema=None, port=None, extra={}
    )
    assert warnings == []
    assert settings.base_url == "https://api.dialnexa.com"
    assert settings.timeout == 30
    assert settings.max_retries == 5
    assert settings.rate_limit_per_minute == 120
    assert settings.polling == "batched"


def test_retry_defaults_match_the_readme(monkeypatch: pytest.MonkeyPatch) -> None:
    """'Retries back off exponentially from about 1 s with jitter (capped at 30 s, never under 1 s); a
    Retry-After header (...) bounded at 120 s wins.'"""
    policy = RetryPolicy()
    assert policy.max_retries == 5
    monkeypatch.setattr(random, "uniform", lambda low, high: high)  # the longest wait jitter can draw
    assert [policy.wait(attempt) for attempt in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]
    monkeypatch.setattr(random, "uniform", lambda low, high: low)  # the shortest
    assert min(policy.wait(attempt) for attempt in range(1, 8)) == 1
    assert policy.wait(1, retry_after=10_000) == 120
    assert policy.wait(1, retry_after=0) == 1


# -- 402 / 409 / 422: final, bad_request, never retried --------------------------------------------------

FINAL_4XX = [402, 409, 422]


@pytest.mark.parametrize("status", FINAL_4XX)
def test_sync_hook_maps_final_4xx_to_bad_request_without_retry(sim: Simulator, status: int) -> None:
    call_id = sim.create_call(outcome="completed", queued_s=0, ring_s=0, talk_s=0, age_s=1)
    sim.add_fault(Fault(kind=str(status), route="get", call_id=call_id, count=1))  # a retry would succeed
    hook = DialNexaHook()
    with pytest.raises(DialNexaBadRequestError) as info:
        hook.get_call(call_id)
    hook.close()
    assert info.value.http_status == status
    assert info.value.kind == "bad_request"
    assert call_id in str(info.value)
    assert [e.status_code for e in sim.requests(call_id=call_id)] == [status]


@pytest.mark.parametrize("status", FINAL_4XX)
async def test_async_hook_and_trigger_map_final_4xx_to_bad_request_without_retry(
    sim: Simulator, status: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    drive_time(monkeypatch)
    hook_call, trigger_call = (
        sim.create_call(outcome="completed", queued_s=0, ring_s=0, talk_s=0, age_s=1) for _ in range(2)
    )
    for call_id in (hook_call, trigger_call):
        sim.add_fault(Fault(kind=str(status), route="get", call_id=call_id, count=1))
    with pytest.raises(DialNexaBadRequestError) as info:
        await DialNexaHook().aget_call(hook_call)
    assert info.value.http_status == status
    event = await run_to_event(DialNexaCallTrigger(trigger_call, polling="per_call", first_poll_delay=0))
    assert (event["event"], event["kind"]) == ("error", "bad_request")
    assert f"HTTP {status}" in event["message"]
    for call_id in (hook_call, trigger_call):
        assert [e.status_code for e in sim.requests(call_id=call_id)] == [status]
