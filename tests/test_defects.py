"""Regression tests for the defects of the shipped waiting path (issue #14), each through real sockets.

Every test here failed on the code before its fix. They drive the embedded simulator over loopback and
assert on what it saw (its request log) and on the events the triggers yield; the few that need time to
pass either move a clock the code reads or wait for an observable event, and assert floors (a gap of at
least one second), never upper timing margins.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import weakref
from pathlib import Path
from typing import Any, cast

import pytest
from airflow.providers.common.compat.sdk import AirflowSkipException, TaskDeferred
from conftest import child_env, only_event

from airflow_provider_dialnexa.exceptions import (
    DialNexaAuthError,
    DialNexaNotFoundError,
    DialNexaServerError,
)
from airflow_provider_dialnexa.hooks import _transport as transport_module
from airflow_provider_dialnexa.hooks import dialnexa as hook_module
from airflow_provider_dialnexa.hooks.dialnexa import close_async_clients
from airflow_provider_dialnexa.sensors.dialnexa import DialNexaCallSensor
from airflow_provider_dialnexa.simulator import Fault, LogEntry, Simulator
from airflow_provider_dialnexa.simulator.app import HUNG_UP
from airflow_provider_dialnexa.triggers.dialnexa import DialNexaCallTrigger

CONN_ID = "dialnexa_default"
FAST: dict[str, Any] = {"poll_interval": 1, "poll_growth": 1, "poll_jitter": 0, "first_poll_delay": 0}
MODES = ("per_call", "batched")


def use_connection(monkeypatch: pytest.MonkeyPatch, sim: Simulator | None, api_key: str, **extra: Any) -> None:
    """``dialnexa_default`` -> the simulator (or a closed port), no rate budget, no retries unless asked."""
    extras = {"timeout": 10, "max_retries": 0, "rate_limit_per_minute": 0, **extra}
    host = sim.url if sim is not None else closed_port_url()
    conn = {"conn_type": "dialnexa", "host": host, "password": api_key, "extra": extras}
    monkeypatch.setenv("AIRFLOW_CONN_DIALNEXA_DEFAULT", json.dumps(conn))


def closed_port_url() -> str:
    """A loopback URL nobody listens on (connection refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


pytestmark = pytest.mark.usefixtures("close_shared_clients")


def ended_call(sim: Simulator, outcome: str = "completed", **spec: Any) -> str:
    return sim.create_call(outcome=outcome, queued_s=0, ring_s=0, talk_s=0, **spec)


def endless_call(sim: Simulator) -> str:
    return sim.create_call(outcome="completed", queued_s=0, ring_s=3600, talk_s=0)


def gaps(entries: list[LogEntry]) -> list[float]:
    times = sorted(e.t for e in entries)
    return [round(b - a, 3) for a, b in itertools.pairwise(times)]


def figures(what: str, **values: object) -> None:
    """Numbers for docs/reliability.md (``pytest tests/test_defects.py -s | grep ^DEFECTS``)."""
    print(f"DEFECTS {what}: " + ", ".join(f"{k}={v}" for k, v in values.items()))


# -- 1. refused List Calls: one Get Call per interval, never more than one a second ----------------------


async def test_refused_list_calls_polls_each_call_once_per_interval(
    simulator: Simulator, api_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """List Calls answers 403: the batched waits fall back to Get Call at their own interval (1 s here).

    ``first`` finds out the route is refused; ``later`` starts when the refusal is already known.
    """
    use_connection(monkeypatch, simulator, api_key, polling="batched")
    simulator.configure(list_route="forbidden")
    first, later = ended_call(simulator), ended_call(simulator)
    for call_id in (first, later):
        simulator.script(call_id, ["initiated"] * 4 + ["completed"])
    started = time.monotonic()
    events = await asyncio.gather(
        only_event(DialNexaCallTrigger(first, polling="batched", **FAST)),
        only_event(DialNexaCallTrigger(later, polling="batched", **{**FAST, "first_poll_delay": 2})),
    )
    span = time.monotonic() - started
    assert [e["status"] for e in events] == ["completed", "completed"]
    for call_id in (first, later):
        gets = simulator.requests(call_id=call_id, route="get")
        assert len(gets) == 5, gets  # one per poll: 4 x initiated, then completed
        assert min(gaps(gets)) >= 1.0, gaps(gets)
        figures("refused-list", call=call_id[-6:], get_calls=len(gets), min_gap_s=min(gaps(gets)))
    assert len(simulator.requests(route="list")) == 1  # refused once, then never asked again
    figures("refused-list", get_calls_per_call_per_minute=round(5 / span * 60, 1), span_s=round(span, 2))


async def test_a_refused_list_calls_is_asked_again_after_the_connection_ttl(
    simulator: Simulator, api_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The deployment refused List Calls, then the key was given the permission: batching resumes within
    ``CONNECTION_TTL`` (the clock is moved, not waited for) instead of only after a triggerer restart.
    """
    now = [1000.0]
    monkeypatch.setattr(transport_module, "_clock", lambda: now[0])
    use_connection(monkeypatch, simulator, api_key, polling="batched")
    simulator.configure(list_route="forbidden")
    call_id = endless_call(simulator)
    wait = asyncio.ensure_future(only_event(DialNexaCallTrigger(call_id, polling="batched", **FAST), timeout=60))

    def listed() -> list[LogEntry]:
        return [e for e in simulator.requests(route="list") if e.status_code == 200]

    while not simulator.requests(call_id=call_id, route="get") and not wait.done():
        await asyncio.sleep(0.02)  # an observable event: the first Get Call after the refusal
    simulator.configure(list_route="ok")
    now[0] += hook_module.CONNECTION_TTL + 1
    give_up = time.monotonic() + 20  # bounds the failure case only: a poll every second lists it at once
    while not listed() and not wait.done() and time.monotonic() < give_up:
        await asyncio.sleep(0.02)
    simulator.set_status(call_id, "completed")
    event = await wait
    assert event["status"] == "completed"
    assert listed(), "List Calls was never asked again after the refusal"


# -- 2. one slow or failing call must not stall the batch -------------------------------------------------


@pytest.mark.parametrize("fault", ["slow", "500"])
async def test_a_slow_fallback_delays_only_its_own_wait(
    fault: str, simulator: Simulator, api_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three batched waits in one tick: a finished call, a call the list does not show (foreign: Get Call
    fallback) whose Get Call is slow (30 s) or answers 500 through 5 retries, and a running call whose
    deadline is 5 s away. The first two must not wait for the third's fallback. (The deadline was 3 s: about
    two batch ticks, so "polled at least twice" depended on the machine's load; 5 s leaves a margin of two.)
    """
    use_connection(monkeypatch, simulator, api_key, polling="batched", timeout=60, max_retries=5)
    done, running = ended_call(simulator), endless_call(simulator)
    stuck = ended_call(simulator, foreign=True)  # never listed: its wait needs Get Call
    if fault == "slow":
        simulator.add_fault(Fault("slow", route="get", call_id=stuck, delay_s=30))
    else:
        simulator.add_fault(Fault("500", route="get", call_id=stuck))
    started = time.monotonic()
    stuck_task = asyncio.create_task(only_event(DialNexaCallTrigger(stuck, polling="batched", **FAST), 120))
    try:
        healthy, late = await asyncio.wait_for(
            asyncio.gather(
                timed(only_event(DialNexaCallTrigger(done, polling="batched", **FAST)), started),
                timed(
                    only_event(DialNexaCallTrigger(running, polling="batched", end_time=time.time() + 5, **FAST)),
                    started,
                ),
            ),
            20,
        )
        stuck_gets = simulator.requests(call_id=stuck, route="get")
        assert not stuck_task.done()
    finally:
        stuck_task.cancel()
    (healthy_event, healthy_s), (late_event, late_s) = healthy, late
    assert healthy_event["event"] == "success"
    assert late_event["event"] == "timeout"
    # The stuck call's fallback had not finished when both other waits had ended.
    assert len(stuck_gets) < 6 if fault == "500" else stuck_gets == []
    assert len(simulator.requests(call_id=running, route="list")) >= 2  # kept polling every second meanwhile
    figures(f"slow-neighbour/{fault}", healthy_detected_s=round(healthy_s, 2), timeout_5s_reported_s=round(late_s, 2))


async def timed(aw: Any, started: float) -> tuple[dict[str, Any], float]:
    result = await aw
    return result, time.monotonic() - started


@pytest.mark.parametrize("polling", MODES)
async def test_deadline_is_honoured_while_a_read_is_in_flight(
    polling: str, simulator: Simulator, api_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The only read of a wait hangs for 30 s; its deadline (2 s away) ends the wait, not the answer."""
    use_connection(monkeypatch, simulator, api_key, timeout=60)
    call_id = endless_call(simulator)
    simulator.add_fault(Fault("slow", route="any", call_id=call_id, delay_s=30))
    started = time.monotonic()
    trigger = DialNexaCallTrigger(call_id, polling=polling, end_time=time.time() + 2, **FAST)
    event = await only_event(trigger, timeout=20)
    elapsed = time.monotonic() - started
    assert event["event"] == "timeout"
    # No answer came back: the held read is logged only once the client hung up, as such.
    assert {r.status_code for r in simulator.requests(call_id=call_id)} <= {HUNG_UP}
    figures(f"deadline-in-flight/{polling}", deadline_s=2, timeout_reported_s=round(elapsed, 2))


# -- 3. soft_fail skips only a timeout or a declared failure status --------------------------------------


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("auth", DialNexaAuthError),
        ("not_found", DialNexaNotFoundError),
        ("server", DialNexaServerError),
        ("timeout", AirflowSkipException),
        ("failure_status", AirflowSkipException),
    ],
)
@pytest.mark.parametrize("polling", MODES)
def test_soft_fail_skips_only_timeouts_and_failure_statuses_after_deferral(
    case: str,
    expected: type[Exception],
    polling: str,
    simulator: Simulator,
    api_key: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A deferred ``soft_fail`` sensor: something happens after its first poke; it resumes through Airflow's
    own ``resume_execution`` with the event of the real trigger.
    """
    use_connection(monkeypatch, simulator, api_key)
    ring_s = 2.5 if case == "failure_status" else 3600  # failure_status: the call fails after the first poke
    call_id = simulator.create_call(outcome="failed", queued_s=0, ring_s=ring_s, talk_s=0)
    sensor = DialNexaCallSensor(
        task_id="wait",
        call_id=call_id,
        deferrable=True,
        soft_fail=True,
        poke_interval=1,
        timeout=3 if case == "timeout" else 60,
        failure_statuses={"failed"},
        max_consecutive_failures=0,
        polling=polling,
    )
    context = cast("Any", {})
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute(context)
    if case == "auth":
        simulator.configure(api_key="dnx_rotated:n3w-k3y")  # the key was rotated after the first poke
    elif case == "not_found":
        simulator.reset()  # the call is gone: 404
    elif case == "server":
        simulator.add_fault(Fault("500", route="any"))
    trigger = deferred.value.trigger
    assert isinstance(trigger, DialNexaCallTrigger)
    event = asyncio.run(first_event_closing(trigger))
    with pytest.raises(expected) as info:
        sensor.resume_execution("execute_complete", {"event": event}, context)
    if expected is not AirflowSkipException:
        assert call_id in str(info.value)


async def first_event_closing(trigger: DialNexaCallTrigger) -> dict[str, Any]:
    try:
        return await only_event(trigger)
    finally:
        await close_async_clients()


# -- 4. a changed connection is picked up within a bounded time --------------------------------------------


async def test_a_fixed_connection_is_picked_up_after_the_ttl(
    simulator: Simulator, api_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The host was wrong; the user fixes it. Within the TTL the cached settings still apply (no lookup per
    poll); once the TTL has passed (the clock is moved, not waited for) the next wait reads the new host.
    """
    now = [1000.0]
    monkeypatch.setattr(transport_module, "_clock", lambda: now[0])
    use_connection(monkeypatch, None, api_key)  # nobody listens
    call_id = ended_call(simulator)

    def wait() -> DialNexaCallTrigger:
        return DialNexaCallTrigger(call_id, polling="per_call", max_consecutive_failures=0, **FAST)

    broken = await only_event(wait())
    assert (broken["event"], broken["kind"]) == ("error", "server")
    use_connection(monkeypatch, simulator, api_key)  # fixed
    now[0] += hook_module.CONNECTION_TTL / 2
    still_cached = await only_event(wait())
    assert (still_cached["event"], still_cached["kind"]) == ("error", "server")
    now[0] += hook_module.CONNECTION_TTL
    fixed = await only_event(wait())
    assert fixed["event"] == "success"
    assert len(simulator.requests(call_id=call_id)) == 1


async def test_after_the_ttl_an_unchanged_connection_keeps_its_client_and_a_failed_lookup_keeps_it_too(
    simulator: Simulator, api_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Re-reading the connection is no reason to drop a working client: same settings, same client (no new
    dial); a lookup that fails for another reason than the connection itself keeps the waits going.
    """
    now = [1000.0]
    monkeypatch.setattr(transport_module, "_clock", lambda: now[0])
    use_connection(monkeypatch, simulator, api_key)
    calls = [ended_call(simulator) for _ in range(3)]

    async def wait(call_id: str) -> dict[str, Any]:
        return await only_event(DialNexaCallTrigger(call_id, polling="per_call", **FAST))

    assert (await wait(calls[0]))["event"] == "success"
    state = hook_module._loop_states[asyncio.get_running_loop()]
    client = state.clients[CONN_ID]
    now[0] += hook_module.CONNECTION_TTL + 1
    assert (await wait(calls[1]))["event"] == "success"
    assert state.clients[CONN_ID] is client
    assert not client.client.is_closed

    async def lookup_fails(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the API server is restarting")

    monkeypatch.setattr(transport_module, "get_async_connection", lookup_fails)
    now[0] += hook_module.CONNECTION_TTL + 1
    assert (await wait(calls[2]))["event"] == "success"
    assert state.clients[CONN_ID] is client
    assert simulator.stats()["connections"] == 1


async def test_a_replaced_client_closes_only_after_its_request_in_flight(
    simulator: Simulator, api_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection changes while a slow request is in flight: the next wait gets a new client, the slow
    request still gets its answer on the old one, which closes right after.
    """
    now = [1000.0]
    monkeypatch.setattr(transport_module, "_clock", lambda: now[0])
    use_connection(monkeypatch, simulator, api_key)
    slow, quick = ended_call(simulator), ended_call(simulator)
    simulator.add_fault(Fault("slow", route="get", call_id=slow, delay_s=4))
    slow_wait = asyncio.create_task(only_event(DialNexaCallTrigger(slow, polling="per_call", **FAST)))
    while not (state := hook_module._loop_states.get(asyncio.get_running_loop())) or not any(
        c.in_flight for c in state.clients.values()
    ):
        await asyncio.sleep(0.01)
    old = state.clients[CONN_ID]
    use_connection(monkeypatch, simulator, api_key, timeout=11)  # a changed extra: new settings, new client
    now[0] += hook_module.CONNECTION_TTL + 1
    assert (await only_event(DialNexaCallTrigger(quick, polling="per_call", **FAST)))["event"] == "success"
    assert state.clients[CONN_ID] is not old
    assert old.retired
    assert not old.client.is_closed  # the slow request still holds it
    assert (await slow_wait)["event"] == "success"
    assert old.client.is_closed


# -- 5. a 401 ends every wait with the auth error, never "client has been closed" --------------------------


async def test_rotated_key_ends_every_concurrent_wait_with_the_auth_error(
    simulator: Simulator, api_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """40 per-call waits start together after the key was rotated, under the default rate budget (burst 20):
    half of the first polls leave at once, half wait for a token while the first 401s come back.
    """
    use_connection(monkeypatch, simulator, api_key, max_retries=3, rate_limit_per_minute=120)
    calls = [endless_call(simulator) for _ in range(40)]
    simulator.configure(api_key="dnx_rotated:n3w-k3y")
    events = await asyncio.gather(*(only_event(DialNexaCallTrigger(c, polling="per_call", **FAST)) for c in calls))
    kinds = [(e["event"], e.get("kind")) for e in events]
    wrong = [e for e in events if e.get("kind") != "auth"]
    assert kinds == [("error", "auth")] * len(calls), (len(wrong), wrong[:2])
    for event in events:
        assert "HTTP 401" in event["message"]
    assert simulator.stats()["by_status"] == {401: len(calls)}  # one request per wait: no retry of a 401


# -- 6. nothing survives its event loop --------------------------------------------------------------------


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_nothing_survives_its_event_loop(simulator: Simulator, api_key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``dag.test()`` runs each deferral in its own ``asyncio.run``: 30 of them leave no loop, client or socket."""
    use_connection(monkeypatch, simulator, api_key)
    loops: list[weakref.ref[asyncio.AbstractEventLoop]] = []

    async def one_deferral(polling: str) -> None:
        loops.append(weakref.ref(asyncio.get_running_loop()))
        event = await only_event(DialNexaCallTrigger(ended_call(simulator), polling=polling, **FAST))
        assert event["event"] == "success"

    asyncio.run(one_deferral("per_call"))  # warm up: imports, the simulator's own sockets
    gc.collect()
    fds_before, entries_before = open_fds(), len(hook_module._loop_states)
    for i in range(30):
        asyncio.run(one_deferral(MODES[i % 2]))
    gc.collect()
    alive = [loop for ref in loops[1:] if (loop := ref()) is not None]
    fds_after = open_fds()
    figures("loops", runs=30, loops_alive=len(alive), new_fds=fds_after - fds_before)
    # asgiref (the async connection lookup) keeps the latest loop in a thread-local: at most that one.
    assert len(alive) <= 1, alive
    assert not any(loop in hook_module._loop_states for loop in alive)
    assert len(hook_module._loop_states) <= entries_before
    assert fds_after - fds_before < 5, (fds_before, fds_after)
    del alive


# -- 7. an unusable id in one List Calls item does not fail the batch --------------------------------------


async def test_list_item_with_an_object_id_is_dropped_not_fatal(
    simulator: Simulator, api_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_connection(monkeypatch, simulator, api_key, polling="batched")
    calls = [ended_call(simulator) for _ in range(3)]
    simulator.add_fault(Fault("object_id", route="list", count=1))  # every item's id is a JSON object, once
    events = await asyncio.gather(*(only_event(DialNexaCallTrigger(c, polling="batched", **FAST)) for c in calls))
    assert [e["event"] for e in events] == ["success"] * 3, events
    assert [e.route for e in simulator.requests()].count("list") == 1
    assert len(simulator.requests(route="get")) == 3  # the dropped ids fell back to Get Call in the same poll


# -- 8. a missing connection is a config error naming it ---------------------------------------------------


@pytest.mark.parametrize("polling", [*MODES, None])
async def test_missing_connection_is_a_config_error(polling: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_DNX_NOWHERE", raising=False)
    event = await only_event(DialNexaCallTrigger("call_abc123", "dnx_nowhere", polling=polling, **FAST))
    assert (event["event"], event["kind"]) == ("error", "config"), event
    assert "'dnx_nowhere'" in event["message"]
    assert "unexpectedly" not in event["message"]
    assert isinstance(event["message"], str)
    assert "Traceback" not in event["message"]


# -- 3, end to end: dag.test() with the key revoked after the first poke ----------------------------------

SOFT_FAIL_DAG = textwrap.dedent(
    '''
    """dag.test() of one deferrable soft_fail sensor; prints the task's final state."""
    import json
    import os
    from datetime import datetime

    from airflow.providers.common.compat.sdk import DAG

    from airflow_provider_dialnexa.sensors.dialnexa import DialNexaCallSensor

    with DAG("dnx_soft_fail_error", schedule=None, start_date=datetime(2024, 1, 1), catchup=False) as dag:
        DialNexaCallSensor(
            task_id="wait", call_id=os.environ["DNX_CALL"], deferrable=True, poke_interval=1, timeout=60,
            soft_fail=True, polling="per_call",
        )

    if __name__ == "__main__":
        run = dag.test()
        ti = run.get_task_instance("wait")
        print("DNX_RESULT " + json.dumps({"run": str(run.state), "ti": str(ti.state)}))
    '''
)


def test_dag_test_soft_fail_sensor_fails_when_the_key_is_revoked_after_the_first_poke(
    simulator: Simulator, api_key: str, tmp_path: Path
) -> None:
    """The issue's reproduction through Airflow's own task runner: the run must fail, not skip and succeed."""
    home = tmp_path / "airflow_home"
    (home / "dags").mkdir(parents=True)
    airflow = Path(sys.executable).with_name("airflow")
    env = child_env(home)
    migrated = subprocess.run([str(airflow), "db", "migrate"], env=env, capture_output=True, text=True, check=False)
    assert migrated.returncode == 0, migrated.stderr[-3000:]
    call_id = endless_call(simulator)
    extras = {"timeout": 5, "max_retries": 0, "rate_limit_per_minute": 0}
    conn = {"conn_type": "dialnexa", "host": simulator.url, "password": api_key, "extra": extras}
    dag_file = home / "dags" / "soft_fail_dag.py"
    dag_file.write_text(SOFT_FAIL_DAG)
    env.update(AIRFLOW_CONN_DIALNEXA_DEFAULT=json.dumps(conn), DNX_CALL=call_id)
    child = subprocess.Popen(
        [sys.executable, str(dag_file)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        while not simulator.requests(call_id=call_id) and child.poll() is None:  # the sensor's first poke
            time.sleep(0.01)
        simulator.configure(api_key="dnx_rotated:n3w-k3y")  # revoked before the trigger's first poll (1 s later)
        output, _ = child.communicate(timeout=300)
    finally:
        if child.poll() is None:
            child.kill()
    lines = [line for line in output.splitlines() if line.startswith("DNX_RESULT ")]
    assert lines, output[-5000:]
    result = json.loads(lines[-1].removeprefix("DNX_RESULT "))
    assert result == {"run": "failed", "ti": "failed"}, output[-5000:]
    assert "DialNexaAuthError" in output
    statuses = [e.status_code for e in simulator.requests(call_id=call_id)]
    # The poke, then the trigger's polls until the first with the revoked key: [200, 401] unless this thread
    # revoked the key later than the trigger's first poll (a loaded machine), then one more 200 first.
    assert statuses[0] == 200
    assert statuses[-1] == 401
    assert set(statuses[1:-1]) <= {200}
