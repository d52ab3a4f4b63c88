"""Regression tests for defects 5-8 of issue #17 (found in review), each through real sockets.

5. phone numbers DialNexa echoes in its messages, in any spelling, masked in every log line and error;
6. the export's per-id wait: a call that disappears (404) no longer runs, and nothing outlives the trigger;
7. ``rate_limit_per_minute`` raised or lowered takes effect without a restart;
8. ``soft_fail`` skips only a timeout or a ``failure_statuses`` match, never a trigger failure.

Each failed on the code before its fix. Nothing here waits on the wall clock: triggers run on the fake clock of
``tests/_clock.py``, rate budgets on the ``clock`` fixture, and the DAG runs are real ``dag.test()`` runs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterator, MutableMapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from _clock import drive_time
from _compat import AIRFLOW_V_3, TRIGGER_FAIL_REPR, capture_logs, dag_bag
from airflow.providers.common.compat.sdk import AirflowException, AirflowSensorTimeout, AirflowSkipException
from conftest import FakeClock, only_event

from airflow_provider_dialnexa import policy
from airflow_provider_dialnexa._poller import active_pollers
from airflow_provider_dialnexa.exceptions import (
    DialNexaBadRequestError,
    DialNexaCallFailedError,
    DialNexaError,
    DialNexaRateLimitError,
    DialNexaServerError,
    DialNexaUnconfirmedCallError,
)
from airflow_provider_dialnexa.hooks import dialnexa as hook_module
from airflow_provider_dialnexa.hooks.dialnexa import DialNexaHook, close_async_clients
from airflow_provider_dialnexa.operators.dialnexa import DialNexaCreateCallOperator
from airflow_provider_dialnexa.policy import RetryPolicy
from airflow_provider_dialnexa.sensors.dialnexa import DialNexaCallSensor
from airflow_provider_dialnexa.simulator import Fault, Simulator
from airflow_provider_dialnexa.simulator.echo import spellings
from airflow_provider_dialnexa.triggers.dialnexa import DialNexaCallTrigger, DialNexaWindowTrigger

NUMBER = "+14155550123"
MASKED = "+14*****0123"
AGENT = "agent_2g7Xy3tY53gRlp"
FAST = RetryPolicy(backoff_base=0.01, backoff_max=0.02, min_wait=0)
CONTEXT = cast("Any", {})


def use_connection(monkeypatch: pytest.MonkeyPatch, sim: Simulator, api_key: str, **extra: Any) -> None:
    """``dialnexa_default`` -> the simulator; no rate budget and one retry unless asked."""
    extras = {"timeout": 10, "max_retries": 1, "rate_limit_per_minute": 0, **extra}
    conn = {"conn_type": "dialnexa", "host": sim.url, "password": api_key, "extra": extras}
    monkeypatch.setenv("AIRFLOW_CONN_DIALNEXA_DEFAULT", json.dumps(conn))


def running_call(sim: Simulator, **spec: Any) -> str:
    return sim.create_call(outcome="completed", queued_s=0, ring_s=3600, talk_s=0, **spec)


@pytest.fixture
def logged(caplog: pytest.LogCaptureFixture) -> Iterator[Callable[[], list[str]]]:
    """What was logged so far in the test (standard logging and structlog), one string per line."""
    caplog.set_level(logging.DEBUG)
    events: list[MutableMapping[str, Any]]
    with capture_logs() as events:
        yield lambda: [*caplog.messages, *(str(event.get("event")) for event in events)]


def leaks(*texts: object) -> list[str]:
    """The texts that show ``NUMBER`` in any of the spellings the simulator echoes (none may)."""
    return [str(text) for text in texts if any(spelling in str(text) for spelling in spellings(NUMBER))]


# -- 5. a number DialNexa echoes is masked in every log line and every error ------------------------------------


def test_mask_numbers_masks_every_common_spelling_and_leaves_ids_and_times_alone() -> None:
    from airflow_provider_dialnexa.records import mask_numbers

    for spelling in spellings(NUMBER):
        masked = mask_numbers(f"Carrier rejected {spelling}.")
        assert spelling not in masked
        assert masked.startswith("Carrier rejected ")
        assert masked.endswith("0123.")
        assert "****" in masked
    assert mask_numbers(f"to {NUMBER}, from 14155550199") == f"to {MASKED}, from 14*****0199"
    assert mask_numbers("call (415) 555-0123 now") == "call 41****0123 now"
    assert mask_numbers("+91 98765 43210 and +44 (0)20 7946 0958") == "+91******3210 and +44*******0958"
    kept = (
        "DialNexa call 'call_x9y3zp4mq7r1' (connection 'dialnexa_default'): HTTP 503 Service Unavailable",
        "calls created in [2026-05-01T00:00:00.000Z, 2026-05-01T01:00:00.000Z) at 2026-05-01 10:32:51",
        "correlation 'airflow-1234567890abcdef1234567890abcdef', id 550e8400-e29b-41d4-a716-446655440000",
        "host http://192.168.100.200:8080 (retry 1 of 3 in 2.00 s), since 1790000000.123, 450 of 804 calls",
    )
    for text in kept:
        assert mask_numbers(text) == text
    assert mask_numbers(mask_numbers(f"to {NUMBER}")) == f"to {MASKED}"


def test_get_call_5xx_echoing_the_number_is_masked_in_retry_warnings_and_the_error(
    simulator: Simulator, api_key: str, monkeypatch: pytest.MonkeyPatch, logged: Callable[[], list[str]]
) -> None:
    use_connection(monkeypatch, simulator, api_key, max_retries=2)
    call_id = running_call(simulator, to_number=NUMBER)
    simulator.add_fault(Fault("503", route="get", call_id=call_id, echo_number=True))
    hook = DialNexaHook(retry_policy=FAST)
    with pytest.raises(DialNexaServerError) as info:
        hook.get_call(call_id)
    hook.close()
    error = info.value
    assert [e.status_code for e in simulator.requests(call_id=call_id)] == [503] * 3
    assert not leaks(str(error), error.api_message)
    assert MASKED in str(error)
    assert call_id in str(error)  # ids stay readable
    warnings = [line for line in logged() if "retry" in line]
    assert len(set(warnings)) == 2  # retries 1 and 2 (Airflow 2.11 captures each line twice)
    assert not leaks(*warnings), leaks(*warnings)


@pytest.mark.parametrize(
    ("kind", "expected"),
    [("400", DialNexaBadRequestError), ("429", DialNexaRateLimitError), ("503", DialNexaUnconfirmedCallError)],
)
def test_create_call_refusals_echoing_the_number_are_masked(
    kind: str,
    expected: type[DialNexaError],
    simulator: Simulator,
    api_key: str,
    monkeypatch: pytest.MonkeyPatch,
    logged: Callable[[], list[str]],
) -> None:
    """400: final at once; 429: sent again, then given up; 503: the call may exist and the lookup (List Calls,
    also 503 echoing a number) fails: ``DialNexaUnconfirmedCallError`` quoting both messages."""
    use_connection(monkeypatch, simulator, api_key, max_retries=1)
    simulator.add_fault(Fault(kind, route="create", echo_number=True))
    simulator.add_fault(Fault("503", route="list", echo_number=True))
    hook = DialNexaHook(retry_policy=FAST)
    with pytest.raises(expected) as info:
        hook.create_call(NUMBER, AGENT)
    hook.close()
    error = info.value
    assert simulator.requests(route="create")
    assert not leaks(str(error), error.api_message, *logged()), leaks(str(error), error.api_message, *logged())
    assert MASKED in str(error)
    if kind == "503":
        assert isinstance(error.__cause__, DialNexaServerError)
        assert not leaks(str(error.__cause__))


def test_operator_logs_mask_the_number_of_a_429_it_sent_again(
    simulator: Simulator, api_key: str, monkeypatch: pytest.MonkeyPatch, logged: Callable[[], list[str]]
) -> None:
    use_connection(monkeypatch, simulator, api_key, max_retries=2)
    simulator.add_fault(Fault("429", route="create", count=1, echo_number=True))
    monkeypatch.setattr(hook_module, "time", SimpleNamespace(sleep=lambda s: None, time=time.time))  # no backoff
    operator = DialNexaCreateCallOperator(task_id="place", phone_number=NUMBER, agent_id=AGENT)
    ti = SimpleNamespace(dag_id="leads", run_id="manual__1", task_id="place", map_index=-1, try_number=1)
    result = operator.execute(cast("Any", {"ti": ti}))
    assert [e.status_code for e in simulator.requests(route="create")] == [429, 201]
    assert result["call_id"]
    warnings = [line for line in logged() if "429" in line]
    assert warnings, logged()
    assert not leaks(*logged()), leaks(*logged())


@pytest.mark.usefixtures("close_shared_clients")
async def test_a_trigger_error_event_and_its_warnings_mask_the_echoed_number(
    simulator: Simulator, api_key: str, monkeypatch: pytest.MonkeyPatch, logged: Callable[[], list[str]]
) -> None:
    """The event is stored in the metadata DB and shown in the task log: no number in it either."""
    use_connection(monkeypatch, simulator, api_key, max_retries=0)
    drive_time(monkeypatch)
    call_id = running_call(simulator, to_number=NUMBER)
    simulator.add_fault(Fault("502", route="get", call_id=call_id, echo_number=True))
    trigger = DialNexaCallTrigger(call_id, polling="per_call", first_poll_delay=0, max_consecutive_failures=1)
    event = await only_event(trigger)
    assert (event["event"], event["kind"]) == ("error", "server")
    assert not leaks(event["message"], *logged()), leaks(event["message"], *logged())
    assert MASKED in event["message"]


# -- 6. export, per-id fallback: a vanished call is not running; nothing outlives the trigger ---------------------


def window() -> tuple[str, str]:
    now = datetime.now(UTC)
    return (now - timedelta(hours=1)).isoformat(), (now + timedelta(hours=1)).isoformat()


def other_tasks() -> set[asyncio.Task[Any]]:
    return asyncio.all_tasks() - {asyncio.current_task()}  # type: ignore[operator]


@pytest.mark.usefixtures("close_shared_clients")
async def test_a_call_that_disappears_no_longer_runs_and_the_wait_goes_on(
    simulator: Simulator, api_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two calls run when the trigger lists the window; before the first read by id, one is deleted (Get Call
    404) and the other ends. Before: ``error``/``not_found`` for the whole export. Now: ``success``."""
    use_connection(monkeypatch, simulator, api_key)
    clock = drive_time(monkeypatch)
    gone, ending = running_call(simulator), running_call(simulator)

    def on_window(n: int) -> None:
        if n == 1:  # the first batch window: after the listing, before the reads by id
            simulator.delete_call(gone)
            simulator.set_status(ending, "no_answer")

    clock.on_window = on_window
    trigger = DialNexaWindowTrigger(*window(), mode="per_call", poll_interval=1)
    event = (await anext(trigger.run())).payload
    assert (event["event"], event["mode"], event.get("polls")) == ("success", "per_call", 1), event
    assert [e.status_code for e in simulator.requests(call_id=gone, route="get")] == [404]
    assert not other_tasks()


@pytest.mark.usefixtures("close_shared_clients")
async def test_no_read_outlives_the_window_trigger(
    simulator: Simulator, api_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two running calls, read by id after the listing; List Calls is then refused, so each read falls back to
    Get Call: one is refused at once (403, final), the other's answer is held for 60 s. The trigger ends with the
    403; the held read must have been cancelled with it, and the poller's tasks ended, before ``run`` returns."""
    use_connection(monkeypatch, simulator, api_key, max_retries=0)
    clock = drive_time(monkeypatch)
    refused, held = running_call(simulator), running_call(simulator)
    clock.on_window = lambda n: simulator.configure(list_route="forbidden")  # after the listing, before the batch
    simulator.add_fault(Fault("403", route="get", call_id=refused))
    simulator.add_fault(Fault("slow", route="get", call_id=held, delay_s=60))
    before = other_tasks()
    trigger = DialNexaWindowTrigger(*window(), mode="per_call", poll_interval=1)
    generator = trigger.run()
    event = (await asyncio.wait_for(anext(generator), 30)).payload
    assert (event["event"], event["kind"]) == ("error", "permission"), event
    with pytest.raises(StopAsyncIteration):
        await anext(generator)
    assert other_tasks() - before == set(), [task.get_coro() for task in other_tasks() - before]
    assert active_pollers() == {}


async def test_a_stopped_poller_settles_the_waiters_of_the_batches_it_cancels(
    simulator: Simulator, api_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read still waiting on a batch when the poller's last user leaves is cancelled, never left pending."""
    from airflow_provider_dialnexa._poller import batch_poller

    use_connection(monkeypatch, simulator, api_key)
    drive_time(monkeypatch)
    call_id = running_call(simulator)
    simulator.add_fault(Fault("slow", route="list", delay_s=60))
    with batch_poller("dialnexa_default") as poller:
        stray = asyncio.create_task(poller.fetch(call_id))
        while not poller._batches:  # the batch is in flight: its List Calls is held by the simulator
            await asyncio.sleep(0.01)
    # The user left without its read; the poller stopped: the read ends (cancelled) instead of hanging forever.
    done, _ = await asyncio.wait({stray}, timeout=10)
    assert stray in done
    assert stray.cancelled()
    await poller.stopped()
    assert not poller._batches
    assert poller._flusher is not None
    assert poller._flusher.done()
    await close_async_clients()


# -- 7. rate_limit_per_minute raised (or lowered) without a restart -----------------------------------------------


def budget_waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """What the sync hook's rate budget makes requests wait, recorded instead of slept (its clock stands still)."""
    waits: list[float] = []
    monkeypatch.setattr(hook_module, "time", SimpleNamespace(sleep=waits.append, time=time.time))
    return waits


def test_a_new_hook_paces_by_the_connections_current_rate_raised_or_lowered(
    simulator: Simulator, api_key: str, monkeypatch: pytest.MonkeyPatch, clock: FakeClock
) -> None:
    """The next task on a worker (a new hook, same process) uses the connection's current value at once."""
    clock.now = time.time()
    simulator.configure(rate_headers=False)  # the configured bound alone paces (no window to spread over)
    waits = budget_waits(monkeypatch)
    calls = [running_call(simulator) for _ in range(3)]

    def reads(per_minute: float) -> list[float]:
        use_connection(monkeypatch, simulator, api_key, rate_limit_per_minute=per_minute)
        hook, start = DialNexaHook(), len(waits)
        for call_id in calls:
            hook.get_call(call_id)
        hook.close()
        return waits[start:]

    slow = reads(6)  # 1 request per 10 s, burst 1: the 2nd and 3rd wait 10 and 20 s
    assert slow == pytest.approx([10.0, 20.0])
    raised = reads(600)  # 10 per second: what is owed from before is paid at the new pace
    assert raised, "the budget had nothing left to wait for"
    assert max(raised) < 1.0, f"a raised rate_limit_per_minute did not apply: waited {raised}"
    (budget,) = policy._budgets.values()
    assert budget.per_minute == 600
    lowered = reads(6)
    assert min(lowered) >= 10.0, f"a lowered rate_limit_per_minute did not apply: waited {lowered}"


def test_the_lowest_bound_holds_while_its_connection_is_in_use_and_only_as_long(
    simulator: Simulator, api_key: str, monkeypatch: pytest.MonkeyPatch, clock: FakeClock
) -> None:
    """Two connections, one key: 60 and 600 per minute. The key paces at 60 while both are used; once the 60 one
    has sent nothing for ``CONNECTION_TTL`` the other's 600 applies."""
    clock.now = time.time()
    budget_waits(monkeypatch)
    call_id = running_call(simulator)
    for conn_id, per_minute in (("dnx_low", 60), ("dnx_high", 600)):
        extra = {"timeout": 10, "max_retries": 0, "rate_limit_per_minute": per_minute}
        conn = {"conn_type": "dialnexa", "host": simulator.url, "password": api_key, "extra": extra}
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))
    low, high = DialNexaHook("dnx_low"), DialNexaHook("dnx_high")
    low.get_call(call_id)
    high.get_call(call_id)
    (budget,) = policy._budgets.values()
    assert budget.per_minute == 60
    clock.now += hook_module.CONNECTION_TTL / 2
    low.get_call(call_id)
    high.get_call(call_id)
    assert budget.per_minute == 60, "the lower connection is still in use"
    clock.now += hook_module.CONNECTION_TTL + 1
    high.get_call(call_id)
    assert budget.per_minute == 600
    low.close()
    high.close()


@pytest.mark.usefixtures("close_shared_clients")
async def test_a_triggerer_picks_up_a_raised_rate_after_the_connection_ttl(
    simulator: Simulator, api_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1000.0]
    monkeypatch.setattr(hook_module, "_clock", lambda: now[0])
    call_id = running_call(simulator)
    use_connection(monkeypatch, simulator, api_key, rate_limit_per_minute=60)
    hook = DialNexaHook()
    await hook.aget_call(call_id)
    (budget,) = policy._budgets.values()
    assert budget.per_minute == 60
    use_connection(monkeypatch, simulator, api_key, rate_limit_per_minute=600)
    await hook.aget_call(call_id)
    assert budget.per_minute == 60, "within the TTL the triggerer keeps the connection it read"
    now[0] += hook_module.CONNECTION_TTL + 1
    await DialNexaHook().aget_call(call_id)
    assert budget.per_minute == 600


# -- 8. soft_fail never skips a trigger failure or another error raised on resume -----------------------------------


def trigger_failure_kwargs() -> dict[str, Any]:
    """``next_kwargs`` Airflow's triggerer stores when a trigger fails (``Trigger.submit_failure``)."""
    traceback = ["Traceback (most recent call last):\n", "RuntimeError: the triggerer could not run the trigger\n"]
    if AIRFLOW_V_3:
        from airflow.sdk.bases.operator import TriggerFailureReason

        return {"error": TriggerFailureReason.TRIGGER_FAILURE, "traceback": traceback}
    return {"error": "Trigger failure", "traceback": traceback}


def test_soft_fail_does_not_skip_a_trigger_failure() -> None:
    if AIRFLOW_V_3:
        from airflow.sdk.exceptions import TaskDeferralError
    else:
        from airflow.exceptions import TaskDeferralError  # type: ignore[no-redef]
    sensor = DialNexaCallSensor(task_id="wait", call_id="call_abc123", deferrable=True, soft_fail=True)
    with pytest.raises(TaskDeferralError):
        sensor.resume_execution(TRIGGER_FAIL_REPR, trigger_failure_kwargs(), CONTEXT)


class _CheckingSensor(DialNexaCallSensor):
    """A sensor whose resume raises an Airflow error that is not DialNexa's (e.g. a check a subclass adds)."""

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> dict[str, str]:
        raise AirflowException("the outcome could not be checked")


def test_soft_fail_does_not_skip_another_error_raised_on_resume() -> None:
    sensor = _CheckingSensor(task_id="wait", call_id="call_abc123", deferrable=True, soft_fail=True)
    event = {"event": "success", "call_id": "call_abc123", "status": "completed", "raw_status": "completed"}
    with pytest.raises(AirflowException, match="could not be checked") as info:
        sensor.resume_execution("execute_complete", {"event": event}, CONTEXT)
    assert not isinstance(info.value, AirflowSkipException)


def test_soft_fail_still_skips_a_declared_failure_and_a_timeout() -> None:
    sensor = DialNexaCallSensor(
        task_id="wait", call_id="call_abc123", deferrable=True, soft_fail=True, failure_statuses={"failed"}
    )
    failed = {"event": "success", "call_id": "call_abc123", "status": "failed", "raw_status": "failed"}
    late = {"event": "timeout", "call_id": "call_abc123", "message": "late", "last_status": "initiated"}
    for event, cause in ((failed, DialNexaCallFailedError), (late, AirflowSensorTimeout)):
        with pytest.raises(AirflowSkipException) as info:
            sensor.resume_execution("execute_complete", {"event": event}, CONTEXT)
        assert isinstance(info.value.__cause__, cause)


def test_dag_test_soft_fail_sensors_fail_on_a_trigger_failure_and_skip_only_timeouts_and_failures(
    simulator: Simulator, api_key: str, monkeypatch: pytest.MonkeyPatch, airflow_db: Path
) -> None:
    """``tests/dags/dialnexa_soft_fail.py`` through ``dag.test()``: four ``soft_fail`` sensors.

    ``dag.test()`` runs each trigger inline and has no triggerer to fail one; the DAG's ``trigger_failed`` sensor
    defers the way Airflow resumes a task whose trigger failed (``__fail__`` and the kwargs the triggerer writes)
    to Airflow's own ``FailureTrigger``, and the inline runner here delivers no event when a trigger raises, as
    the triggerer does. Everything after that (resume, the sensor's ``soft_fail``, the task's state) is Airflow's.
    """
    use_connection(monkeypatch, simulator, api_key, max_retries=0)
    running, failing, ending = running_call(simulator), running_call(simulator), running_call(simulator)
    simulator.script(failing, ["initiated", "failed"])  # the poke sees it running, the trigger's poll failed
    simulator.script(ending, ["initiated", "completed"])
    deliver_no_event_when_a_trigger_fails(monkeypatch)
    bag = dag_bag(str(airflow_db))
    assert bag.import_errors == {}
    run = bag.dags["dialnexa_soft_fail"].test(run_conf={"running": running, "failing": failing, "ending": ending})
    states = task_states(run.run_id)
    assert states == {
        "trigger_failed": "failed",
        "resume_raises": "failed",
        "declared_failure": "skipped",
        "timed_out": "skipped",
    }, states
    assert str(run.state) == "failed"


def deliver_no_event_when_a_trigger_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``dag.test()``'s inline trigger runner do what the triggerer does when a trigger raises: deliver no
    event (the task then resumes as its deferral said, here ``__fail__``), instead of failing the task itself."""
    if AIRFLOW_V_3:
        from airflow.sdk.definitions import dag as module
    else:  # pragma: no cover - Airflow 2.11 leg
        from airflow.models import dag as module  # type: ignore[no-redef]
    real = module._run_inline_trigger  # type: ignore[attr-defined]

    def inline(trigger: Any, *args: Any) -> Any:
        try:
            return real(trigger, *args)
        except Exception:
            return None

    monkeypatch.setattr(module, "_run_inline_trigger", inline)


def task_states(run_id: str) -> dict[str, str]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.execute(select(TaskInstance.task_id, TaskInstance.state).where(TaskInstance.run_id == run_id))
        return {task_id: str(state) for task_id, state in rows}
