"""Waiting for a batch (issue #20): DialNexaBatchTrigger, DialNexaBatchSensor, DialNexaCreateBatchCallOperator.

The trigger runs on the fake clock of ``tests/_clock.py``; each of its sleeps also moves the simulator's batch
clock as far, so a batch that dials for hours (or waits hours behind another) is waited for in milliseconds
and every poll is still a real request to the simulator.
"""

from __future__ import annotations

import asyncio
import json
import time
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, cast

import pytest
from _clock import FakeClock, _Shim, drive_time
from _compat import TRIGGER_FAIL_REPR, capture_logs, deserialize, serialize, trigger_timeout_kwargs
from airflow.providers.common.compat.sdk import AirflowSensorTimeout, AirflowSkipException, TaskDeferred

from airflow_provider_dialnexa.exceptions import (
    DialNexaAuthError,
    DialNexaBatchFailedError,
    DialNexaError,
    DialNexaWaitTimeoutError,
)
from airflow_provider_dialnexa.hooks.dialnexa import DialNexaHook, close_async_clients
from airflow_provider_dialnexa.operators.dialnexa import DialNexaCreateBatchCallOperator, correlation_id_for
from airflow_provider_dialnexa.sensors.batch import DialNexaBatchSensor
from airflow_provider_dialnexa.simulator import Fault, Simulator
from airflow_provider_dialnexa.triggers import batch as batch_trigger_module
from airflow_provider_dialnexa.triggers.batch import DialNexaBatchTrigger

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context

AGENT = "agent_2g7Xy3tY53gRlp"
CONTEXT = cast("Context", {})
#: A realistic pace: a lead a minute, two-minute calls, retries after half an hour.
SLOW = {"dial_interval_s": 60.0, "call_s": 120.0, "retry_wait_s": 1800.0}


@pytest.fixture
def sim(simulator: Simulator, api_key: str, monkeypatch: pytest.MonkeyPatch) -> Simulator:
    extra = {"timeout": 5, "max_retries": 0, "rate_limit_per_minute": 0}
    conn = {"conn_type": "dialnexa", "host": simulator.url, "password": api_key, "extra": extra}
    monkeypatch.setenv("AIRFLOW_CONN_DIALNEXA_DEFAULT", json.dumps(conn))
    simulator.configure_batches(**SLOW)
    return simulator


def new_batch(sim: Simulator, n: int = 10, correlation: str = "c1", **kwargs: Any) -> dict[str, Any]:
    rows = [{"phone_number": f"+1415555{i:04d}"} for i in range(n)]
    hook = DialNexaHook()
    try:
        return hook.create_batch_call(rows, "Renewals", AGENT, correlation_id=correlation, **kwargs)
    finally:
        hook.close()


def batch_clock(monkeypatch: pytest.MonkeyPatch, sim: Simulator) -> FakeClock:
    """The fake clock for the batch trigger; every sleep moves the simulator's batch clock as far."""
    clock = drive_time(monkeypatch, poller=False)

    async def sleep(delay: float) -> None:
        await clock.sleep(delay, clock.sleeps)
        sim.advance_clock(delay)

    monkeypatch.setattr(batch_trigger_module, "time", _Shim(time, time=clock.time))
    monkeypatch.setattr(batch_trigger_module, "asyncio", _Shim(asyncio, sleep=sleep))
    return clock


async def event_of(trigger: DialNexaBatchTrigger) -> dict[str, Any]:
    """The trigger's one event; the generator ends right after it."""
    gen = trigger.run()
    try:
        event = await asyncio.wait_for(gen.__anext__(), 60)
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(gen.__anext__(), 5)
    finally:
        await close_async_clients()
    payload = event.payload
    assert isinstance(payload, dict)
    assert payload["batch_id"] == trigger.batch_id
    return payload


def batch_reads(sim: Simulator) -> int:
    return len(sim.requests(route="batch_list")) + len(sim.requests(route="batch_get"))


# -- the trigger ----------------------------------------------------------------------------------------


def test_the_trigger_waits_politely_and_logs_progress_at_each_poll(
    sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim.configure_batches(mix={"completed": 1}, outcomes={"+14155550003": ["no_answer", "busy", "completed"]})
    batch = new_batch(sim, 20)
    clock = batch_clock(monkeypatch, sim)
    before = batch_reads(sim)
    trigger = DialNexaBatchTrigger(batch["id"], end_time=clock.now + 24 * 3600, resume_with={"total": 20})

    with capture_logs() as logs:
        event = asyncio.run(event_of(trigger))

    assert event["event"] == "success"
    assert event["status"] == "completed"
    assert event["progress"] == {"total": 20, "sent": 20, "picked_up": 20, "retries": [1, 1, 0, 0]}
    assert event["resume_with"] == {"total": 20}
    polls = len(clock.sleeps)
    assert batch_reads(sim) - before == polls  # one request per poll
    # The interval grows by 1.5 from 30 s (10 % jitter) to the 600 s cap, never shrinking.
    nominal = [min(600.0, 30.0 * 1.5**i) for i in range(polls)]
    assert all(0.9 * n <= s <= n for s, n in zip(clock.sleeps, nominal, strict=True))
    lines = [str(e["event"]) for e in logs if "DialNexa batch" in str(e["event"]) and " sent" in str(e["event"])]
    assert len(lines) == polls
    assert "running: " in lines[0]
    assert lines[-1].startswith(f"DialNexa batch {batch['id']!r} completed: 20/20 sent, 20 picked up, retries 1/1/0/0")


def test_a_batch_waiting_behind_another_backs_off_and_times_out_reporting_waiting(
    sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    new_batch(sim, 500, correlation="first")  # 500 leads a minute apart: over 8 hours
    second = new_batch(sim, 5, correlation="second")
    assert second["warning"]["conflicts"][0]["kind"] == "running"
    clock = batch_clock(monkeypatch, sim)
    trigger = DialNexaBatchTrigger(second["id"], end_time=clock.now + 4 * 3600)

    event = asyncio.run(event_of(trigger))

    assert event["event"] == "timeout"
    assert event["last_status"] == "waiting"
    assert "waiting: 0/5 sent" in event["message"]
    # Four hours cost the ramp (30 s to 600 s: 8 polls) plus one poll per 10 minutes (jitter: up to 10 % sooner).
    assert len(clock.sleeps) <= 8 + 4 * 3600 / 540 + 1


def test_a_paused_batch_is_reported_and_waited_for_not_taken_as_done(
    sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = new_batch(sim, 50)
    DialNexaHook().pause_batch_call(batch["id"])
    clock = batch_clock(monkeypatch, sim)

    with capture_logs() as logs:
        event = asyncio.run(event_of(DialNexaBatchTrigger(batch["id"], end_time=clock.now + 3600)))

    assert event["event"] == "timeout"
    assert event["last_status"] == "paused"
    paused = [e for e in logs if "is paused" in str(e["event"])]
    assert len(paused) == len(clock.sleeps) - 1  # every poll says so (the last sleep ran into the deadline)


def test_paused_as_a_stop_status_ends_the_wait(sim: Simulator, monkeypatch: pytest.MonkeyPatch) -> None:
    batch = new_batch(sim, 50)
    DialNexaHook().pause_batch_call(batch["id"])
    clock = batch_clock(monkeypatch, sim)
    trigger = DialNexaBatchTrigger(batch["id"], end_time=clock.now + 3600, stop_statuses=["Paused"])
    event = asyncio.run(event_of(trigger))
    assert (event["event"], event["status"]) == ("success", "paused")
    assert len(clock.sleeps) == 1


def test_an_unknown_batch_ends_with_an_error_event(sim: Simulator, monkeypatch: pytest.MonkeyPatch) -> None:
    batch_clock(monkeypatch, sim)
    event = asyncio.run(event_of(DialNexaBatchTrigger("batch_doesnotexist1")))
    assert (event["event"], event["kind"]) == ("error", "not_found")
    assert "batch_doesnotexist1" in event["message"]


def test_failed_polls_are_survived_up_to_the_cap(sim: Simulator, monkeypatch: pytest.MonkeyPatch) -> None:
    batch = new_batch(sim, 2)
    sim.add_fault(Fault(kind="503", route="batch_list", count=2))
    clock = batch_clock(monkeypatch, sim)
    event = asyncio.run(event_of(DialNexaBatchTrigger(batch["id"], end_time=clock.now + 24 * 3600)))
    assert event["status"] == "completed"

    sim.add_fault(Fault(kind="503", route="batch_list"))
    trigger = DialNexaBatchTrigger(batch["id"], max_consecutive_failures=2)
    event = asyncio.run(event_of(trigger))
    assert (event["event"], event["kind"]) == ("error", "server")
    assert "gave up after 3 consecutive failed polls" in event["message"]


def test_the_trigger_survives_serde() -> None:
    trigger = DialNexaBatchTrigger("batch_x1", end_time=123.0, stop_statuses=["paused"], resume_with={"total": 3})
    classpath, kwargs = trigger.serialize()
    assert classpath == "airflow_provider_dialnexa.triggers.batch.DialNexaBatchTrigger"
    again = DialNexaBatchTrigger(**cast("dict[str, Any]", deserialize(serialize(kwargs))))
    assert again.serialize() == trigger.serialize()


# -- the sensor -----------------------------------------------------------------------------------------


def sensor(batch_id: str, **kwargs: Any) -> DialNexaBatchSensor:
    return DialNexaBatchSensor(task_id="wait_for_batch", batch_id=batch_id, **kwargs)


def test_the_sensor_returns_at_once_for_an_ended_batch(sim: Simulator) -> None:
    batch = new_batch(sim, 3)
    sim.advance_clock(24 * 3600)
    result = sensor(batch["id"]).execute(CONTEXT)
    assert result["status"] == "completed"
    assert result["total"] == 3
    assert result["progress"]["sent"] == 3


def test_the_sensor_defers_a_running_batch_with_its_deadline(sim: Simulator) -> None:
    batch = new_batch(sim, 3)
    task = sensor(batch["id"], timeout=7200, poke_interval=45, failure_statuses=["failed", "paused"])
    with pytest.raises(TaskDeferred) as info:
        task.execute(CONTEXT)
    trigger = info.value.trigger
    assert isinstance(trigger, DialNexaBatchTrigger)
    assert trigger.poll_interval == 45
    assert trigger.stop_statuses == ["paused"]
    assert trigger.end_time is not None
    assert 7100 < trigger.end_time - time.time() <= 7200
    assert info.value.timeout is not None
    assert info.value.timeout.total_seconds() == 7200


@pytest.mark.parametrize("soft_fail", [False, True])
def test_a_declared_failure_on_the_first_poke_obeys_soft_fail(sim: Simulator, soft_fail: bool) -> None:
    batch = new_batch(sim, 3)
    DialNexaHook().cancel_batch_call(batch["id"])
    task = sensor(batch["id"], failure_statuses=["cancelled"], soft_fail=soft_fail)
    with pytest.raises(AirflowSkipException if soft_fail else DialNexaBatchFailedError):
        task.execute(CONTEXT)


def test_bad_failure_statuses_fail_at_parse_time() -> None:
    with pytest.raises(ValueError, match="cannot end a DialNexa batch"):
        sensor("batch_x1", failure_statuses=["running"])


def event(name: str, **fields: Any) -> dict[str, Any]:
    return {"event": name, "batch_id": "batch_x1", "resume_with": {}, **fields}


@pytest.mark.parametrize(
    ("next_method", "next_kwargs", "error"),
    [
        ("execute_complete", {"event": event("timeout", message="late", last_status="waiting")}, AirflowSensorTimeout),
        ("execute_complete", {"event": event("error", kind="auth", message="HTTP 401")}, DialNexaAuthError),
        ("execute_complete", {"event": event("success", status="deleted")}, DialNexaBatchFailedError),
        ("execute_complete", {"event": {"event": "success", "call_id": "call_1"}}, DialNexaError),
        (TRIGGER_FAIL_REPR, trigger_timeout_kwargs(), AirflowSensorTimeout),
    ],
)
@pytest.mark.parametrize("soft_fail", [False, True])
def test_resume_failures_and_soft_fail(
    next_method: str, next_kwargs: dict[str, Any], error: type[Exception], soft_fail: bool
) -> None:
    task = sensor("batch_x1", soft_fail=soft_fail)
    skips = soft_fail and error in (AirflowSensorTimeout, DialNexaBatchFailedError)  # errors fail, as for calls
    with pytest.raises(AirflowSkipException if skips else error) as info:
        task.resume_execution(next_method, next_kwargs, CONTEXT)
    if skips:
        assert isinstance(info.value.__cause__, error)


def test_resume_success_returns_the_progress() -> None:
    progress = {"total": 3, "sent": 3, "picked_up": 2, "retries": None}
    result = sensor("batch_x1").resume_execution(
        "execute_complete", {"event": event("success", status="cancelled", progress=progress)}, CONTEXT
    )
    assert result == {"batch_id": "batch_x1", "status": "cancelled", "total": 3, "progress": progress}


def test_poke_mode_waits_until_the_batch_has_ended(sim: Simulator) -> None:
    sim.configure_batches(dial_interval_s=0.2, call_s=0.5, retry_wait_s=0, mix={"completed": 1})
    batch = new_batch(sim, 3)
    task = sensor(batch["id"], deferrable=False, mode="poke", poke_interval=1, timeout=60)
    assert task.execute(CONTEXT)["status"] == "completed"


# -- the create operator --------------------------------------------------------------------------------


def context(try_number: int = 1) -> Any:
    ti = SimpleNamespace(
        dag_id="campaign", run_id="manual__1", task_id="create_batch", map_index=-1, try_number=try_number
    )
    return {"ti": ti}


def create_op(**kwargs: Any) -> DialNexaCreateBatchCallOperator:
    rows = [{"phone_number": f"+1415555{i:04d}", "lead_id": f"L-{i}"} for i in range(4)]
    kwargs.setdefault("title", "Renewals")
    return DialNexaCreateBatchCallOperator(task_id="create_batch", leads=rows, agent_id=AGENT, **kwargs)


def test_the_operator_uploads_once_per_task_instance_and_a_retry_adopts(sim: Simulator) -> None:
    first = create_op().execute(context())
    sim.add_fault(Fault(kind="reset", route="batch_create"))  # a second upload would even be ambiguous

    retried = create_op().execute(context(try_number=2))

    assert retried["batch_id"] == first["batch_id"]
    assert len(sim.requests(route="batch_create")) == 1
    assert first == {"batch_id": first["batch_id"], "total": 4, "status": "initiated", "warning": None}
    token_title = [b["title"] for b in sim.batches()]
    from airflow_provider_dialnexa._batches import batch_title

    assert token_title == [batch_title("Renewals", correlation_id_for("campaign", "manual__1", "create_batch", -1))]


def test_the_warning_names_the_batches_ahead(sim: Simulator) -> None:
    new_batch(sim, 50, correlation="ahead")
    result = create_op().execute(context())
    warning = result["warning"]
    assert warning is not None
    assert "ahead of it" in warning["message"]
    assert warning["conflicts"][0]["kind"] == "running"
    assert warning["conflicts"][0]["total_leads"] == 50


def test_wait_for_completion_defers_and_resumes_from_the_event_alone(sim: Simulator) -> None:
    op = create_op(wait_for_completion=True, poll_interval=30, timeout=3600, failure_statuses=["failed", "paused"])
    with pytest.raises(TaskDeferred) as info:
        op.execute(context())
    trigger = info.value.trigger
    assert isinstance(trigger, DialNexaBatchTrigger)
    assert trigger.resume_with == {"total": 4, "warning": None}
    assert trigger.stop_statuses == ["paused"]

    progress = {"total": 4, "sent": 4, "picked_up": 3, "retries": [1, 0, 0, 0]}
    done = {"event": "success", "batch_id": trigger.batch_id, "status": "completed", "progress": progress}
    result = create_op(wait_for_completion=True).execute_complete(
        context(), {**done, "resume_with": trigger.resume_with}
    )
    assert result == {"batch_id": trigger.batch_id, "total": 4, "status": "completed", "warning": None}

    paused = {**done, "status": "paused", "resume_with": trigger.resume_with}
    with pytest.raises(DialNexaBatchFailedError, match="paused"):
        create_op(wait_for_completion=True, failure_statuses=["paused"]).execute_complete(context(), paused)
    timeout = {"event": "timeout", "batch_id": trigger.batch_id, "message": "late", "resume_with": {}}
    with pytest.raises(DialNexaWaitTimeoutError, match="late"):
        create_op(wait_for_completion=True).execute_complete(context(), timeout)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"title": "x" * 36}, "at most 35"),
        ({"calling_hours_start": "9am"}, "HH:MM"),
        ({"calling_hours_end": "25:00"}, "HH:MM"),
        ({"starts_at": "2027-01-02T00:00:00Z", "ends_at": "2027-01-01T00:00:00Z"}, "after starts_at"),
        ({"failure_statuses": ["running"]}, "cannot end"),
        ({"wait_for_completion": True, "poll_interval": 0.5}, "poll_interval"),
    ],
)
def test_literal_mistakes_fail_at_parse_time(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        create_op(**kwargs)
    create_op(title="{{ params.title }}", calling_hours_start="{{ params.start }}")  # templates wait


def test_leads_from_an_upstream_task_are_rendered_rows(sim: Simulator) -> None:
    op = create_op()
    op.leads = [{"phone_number": "+14155550999", "name": "Ana"}]  # what an XComArg renders to
    op.agent_version_number = "2"  # what a template renders to
    result = op.execute(context())
    assert result["total"] == 1
