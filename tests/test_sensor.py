"""DialNexaCallSensor (issue #3): poke first, defer to DialNexaCallTrigger, resume, and a real ``dag.test()``.

Unit tests call the sensor directly against the simulator. The ``dag.test()`` tests run in a child process
with its own throwaway ``AIRFLOW_HOME`` (migrated once per session), so this process's Airflow
configuration is never touched; the child reaches the simulator of this process over loopback.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import textwrap
import time
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pytest
from _compat import AIRFLOW_V_3, TRIGGER_FAIL_REPR, trigger_timeout_kwargs
from airflow.providers.common.compat.sdk import AirflowSensorTimeout, AirflowSkipException, TaskDeferred
from conftest import child_env

from airflow_provider_dialnexa.exceptions import (
    DialNexaAuthError,
    DialNexaBadRequestError,
    DialNexaCallFailedError,
    DialNexaConfigError,
    DialNexaError,
    DialNexaMalformedResponseError,
    DialNexaNotFoundError,
    DialNexaPermissionError,
    DialNexaRateLimitError,
    DialNexaServerError,
)
from airflow_provider_dialnexa.policy import DEFAULT_MAX_POLL_INTERVAL
from airflow_provider_dialnexa.sensors.dialnexa import DEFAULT_CALL_TIMEOUT, DialNexaCallSensor
from airflow_provider_dialnexa.simulator import Simulator
from airflow_provider_dialnexa.triggers.dialnexa import DEFAULT_MAX_CONSECUTIVE_FAILURES, DialNexaCallTrigger

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context

CONN_ID = "dialnexa_default"
CONTEXT = cast("Context", {})


def conn_json(sim: Simulator, api_key: str) -> str:
    extra = {"timeout": 5, "max_retries": 0, "rate_limit_per_minute": 0}
    return json.dumps({"conn_type": "dialnexa", "host": sim.url, "password": api_key, "extra": extra})


@pytest.fixture
def sim(simulator: Simulator, api_key: str, monkeypatch: pytest.MonkeyPatch) -> Simulator:
    monkeypatch.setenv("AIRFLOW_CONN_DIALNEXA_DEFAULT", conn_json(simulator, api_key))
    return simulator


def running_call(sim: Simulator) -> str:
    return sim.create_call(outcome="completed", queued_s=0, ring_s=3600, talk_s=0)


def ended_call(sim: Simulator, outcome: str = "completed", **spec: Any) -> str:
    return sim.create_call(outcome=outcome, queued_s=0, ring_s=0, talk_s=0, **spec)


def sensor(call_id: str = "call_abc123", **kwargs: Any) -> DialNexaCallSensor:
    kwargs.setdefault("deferrable", True)
    return DialNexaCallSensor(task_id="wait_for_call", call_id=call_id, **kwargs)


def success(call_id: str, raw: str) -> dict[str, Any]:
    return {"event": "success", "call_id": call_id, "status": raw.lower().replace("-", "_"), "raw_status": raw}


# -- deferring ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("timeout", [600, timedelta(minutes=10)])
def test_defers_to_the_trigger_while_the_call_runs(sim: Simulator, timeout: float | timedelta) -> None:
    call_id = running_call(sim)
    task = sensor(call_id, poke_interval=3, timeout=timeout, polling="per_call")
    before = time.time()
    with pytest.raises(TaskDeferred) as info:
        task.execute(CONTEXT)
    after = time.time()
    deferred = info.value
    assert deferred.method_name == "execute_complete"
    assert deferred.timeout == timedelta(seconds=task.timeout) == timedelta(seconds=600)
    trigger = deferred.trigger
    assert isinstance(trigger, DialNexaCallTrigger)
    classpath, kwargs = trigger.serialize()
    assert classpath == "airflow_provider_dialnexa.triggers.dialnexa.DialNexaCallTrigger"
    end_time = kwargs.pop("end_time")
    assert before + 600 <= end_time <= after + 600
    assert kwargs == {
        "call_id": call_id,
        "dialnexa_conn_id": CONN_ID,
        "poll_interval": 3.0,
        "max_poll_interval": DEFAULT_MAX_POLL_INTERVAL,
        "poll_growth": 1.5,
        "poll_jitter": 0.1,
        "first_poll_delay": None,  # the sensor has just looked: the trigger waits one interval first
        "max_consecutive_failures": DEFAULT_MAX_CONSECUTIVE_FAILURES,
        "polling": "per_call",
    }
    assert sim.get_count(call_id) == 1  # the one poke before deferring


def test_default_timeout_and_connection_reach_the_trigger(sim: Simulator) -> None:
    task = DialNexaCallSensor(
        task_id="wait_for_call",
        call_id=running_call(sim),
        deferrable=True,
        poke_interval=timedelta(seconds=5),
        max_poll_interval=120,
        max_consecutive_failures=3,
    )
    before = time.time()
    with pytest.raises(TaskDeferred) as info:
        task.execute(CONTEXT)
    after = time.time()
    assert info.value.timeout == timedelta(seconds=DEFAULT_CALL_TIMEOUT)
    _, kwargs = info.value.trigger.serialize()
    assert before + DEFAULT_CALL_TIMEOUT <= kwargs["end_time"] <= after + DEFAULT_CALL_TIMEOUT
    assert (kwargs["poll_interval"], kwargs["max_poll_interval"], kwargs["max_consecutive_failures"]) == (5.0, 120, 3)
    assert kwargs["polling"] is None  # the trigger reads the connection's polling extra itself


@pytest.mark.parametrize("raw", ["completed", "no-answer", "Did-Not-Pick", "VOICEMAIL"])
def test_no_deferral_when_the_call_already_ended(sim: Simulator, raw: str) -> None:
    call_id = ended_call(sim)
    sim.set_status(call_id, raw)
    assert sensor(call_id).execute(CONTEXT) == {"call_id": call_id, "status": success(call_id, raw)["status"]}
    assert sim.get_count(call_id) == 1


def test_deferrable_sensor_rejects_sub_second_polling() -> None:
    with pytest.raises(ValueError, match="poll_interval"):
        sensor(poke_interval=0.5)
    assert sensor(poke_interval=0.5, deferrable=False).poke_interval == 0.5  # poke mode: Airflow's rules


# -- failure statuses --------------------------------------------------------------------------------


def test_failure_statuses_are_validated_at_construction() -> None:
    assert sensor(failure_statuses={"Failed", "no-answer"}).failure_statuses == {"failed", "no_answer"}
    assert sensor(failure_statuses="busy").failure_statuses == {"busy"}
    for wrong in ({"initiated"}, {"failed", "exploded"}, "in-progress"):
        with pytest.raises(ValueError, match="not terminal"):
            sensor(failure_statuses=wrong)


def test_failure_status_fails_the_first_poke(sim: Simulator) -> None:
    call_id = ended_call(sim, "failed")
    with pytest.raises(DialNexaCallFailedError, match="failed") as info:
        sensor(call_id, failure_statuses={"failed"}).execute(CONTEXT)
    assert info.value.call_id == call_id
    # other terminal statuses are still outcomes, not failures
    busy = ended_call(sim, "busy")
    assert sensor(busy, failure_statuses={"failed"}).execute(CONTEXT) == {"call_id": busy, "status": "busy"}


def test_failure_status_on_the_first_poke_is_skipped_with_soft_fail(sim: Simulator) -> None:
    """Deferrable mode pokes once before deferring: a declared failure found there obeys ``soft_fail`` too."""
    call_id = ended_call(sim, "failed")
    task = sensor(call_id, failure_statuses={"failed"}, soft_fail=True)
    with pytest.raises(AirflowSkipException) as info:
        task.execute(CONTEXT)
    assert isinstance(info.value.__cause__, DialNexaCallFailedError)


def test_failure_status_fails_execute_complete() -> None:
    task = sensor("call_abc123", failure_statuses={"failed"})
    with pytest.raises(DialNexaCallFailedError):
        task.execute_complete(CONTEXT, success("call_abc123", "Failed"))


# -- execute_complete --------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", ["completed", "no-answer", "BUSY", "retry_expired"])
def test_execute_complete_success(raw: str) -> None:
    result = sensor("call_abc123").execute_complete(CONTEXT, success("call_abc123", raw))
    assert result == {"call_id": "call_abc123", "status": raw.lower().replace("-", "_")}


@pytest.mark.parametrize(
    ("kind", "error"),
    [
        ("auth", DialNexaAuthError),
        ("permission", DialNexaPermissionError),
        ("not_found", DialNexaNotFoundError),
        ("bad_request", DialNexaBadRequestError),
        ("server", DialNexaServerError),
        ("rate_limited", DialNexaRateLimitError),
        ("malformed", DialNexaMalformedResponseError),
        ("config", DialNexaConfigError),
        ("error", DialNexaError),
        ("from_a_newer_version", DialNexaError),
    ],
)
def test_execute_complete_error_kinds_raise_typed_errors(kind: str, error: type[DialNexaError]) -> None:
    event = {"event": "error", "call_id": "call_abc123", "kind": kind, "message": f"DialNexa said {kind}"}
    with pytest.raises(DialNexaError) as info:
        sensor("call_abc123").execute_complete(CONTEXT, event)
    assert type(info.value) is error
    assert str(info.value) == f"DialNexa said {kind}"
    assert info.value.call_id == "call_abc123"


def test_execute_complete_timeout_raises_sensor_timeout() -> None:
    event = {"event": "timeout", "call_id": "call_abc123", "message": "not ended by the deadline", "last_status": "x"}
    with pytest.raises(AirflowSensorTimeout, match="not ended by the deadline"):
        sensor("call_abc123").execute_complete(CONTEXT, event)


@pytest.mark.parametrize(
    "event",
    [
        None,
        {},
        {"event": "bogus", "call_id": "call_abc123"},
        {"event": "success", "call_id": "call_abc123"},
        {"event": "success", "call_id": "call_abc123", "status": ""},
        {"status": "success"},
        "success",
        [],
    ],
)
def test_execute_complete_rejects_malformed_events(event: Any) -> None:
    with pytest.raises(DialNexaError, match="call_abc123"):
        sensor("call_abc123").execute_complete(CONTEXT, event)


# -- soft_fail, through Airflow's own resume path ----------------------------------------------------


TIMEOUT_EVENT = {"event": "timeout", "call_id": "call_abc123", "message": "late", "last_status": "initiated"}
AUTH_EVENT = {"event": "error", "call_id": "call_abc123", "kind": "auth", "message": "HTTP 401"}


@pytest.mark.parametrize(
    ("next_method", "next_kwargs", "error"),
    [
        ("execute_complete", {"event": TIMEOUT_EVENT}, AirflowSensorTimeout),
        ("execute_complete", {"event": AUTH_EVENT}, DialNexaAuthError),
        ("execute_complete", {"event": success("call_abc123", "failed")}, DialNexaCallFailedError),
        ("execute_complete", {"event": None}, DialNexaError),
        (TRIGGER_FAIL_REPR, trigger_timeout_kwargs(), AirflowSensorTimeout),
    ],
)
@pytest.mark.parametrize("soft_fail", [False, True])
def test_resume_failures_and_soft_fail(
    next_method: str, next_kwargs: dict[str, Any], error: type[Exception], soft_fail: bool
) -> None:
    task = sensor("call_abc123", failure_statuses={"failed"}, soft_fail=soft_fail)
    skips = soft_fail and error in (AirflowSensorTimeout, DialNexaCallFailedError)  # errors fail (issue #14)
    with pytest.raises(AirflowSkipException if skips else error) as info:
        task.resume_execution(next_method, next_kwargs, CONTEXT)
    if skips:
        assert isinstance(info.value.__cause__, error)


@pytest.mark.parametrize("soft_fail", [False, True])
def test_resume_success_is_not_skipped(soft_fail: bool) -> None:
    task = sensor("call_abc123", failure_statuses={"failed"}, soft_fail=soft_fail)
    result = task.resume_execution("execute_complete", {"event": success("call_abc123", "busy")}, CONTEXT)
    assert result == {"call_id": "call_abc123", "status": "busy"}


# -- poke mode ---------------------------------------------------------------------------------------


def test_poke_mode_waits_for_a_scripted_call(sim: Simulator) -> None:
    call_id = ended_call(sim)
    sim.script(call_id, ["initiated", "in-progress", "No-Answer"])
    task = sensor(call_id, deferrable=False, mode="poke", poke_interval=1, timeout=30)
    assert task.execute(CONTEXT) == {"call_id": call_id, "status": "no_answer"}
    log = sim.requests(call_id=call_id)
    assert [entry.route for entry in log] == ["get"] * 3
    assert all(later.t - earlier.t >= 1.0 for earlier, later in itertools.pairwise(log))


@pytest.mark.parametrize("soft_fail", [False, True])
def test_poke_mode_failure_status(sim: Simulator, soft_fail: bool) -> None:
    call_id = ended_call(sim, "failed")
    task = sensor(call_id, deferrable=False, mode="poke", failure_statuses={"failed"}, soft_fail=soft_fail)
    with pytest.raises(AirflowSkipException if soft_fail else DialNexaCallFailedError):
        task.execute(CONTEXT)


# -- templating --------------------------------------------------------------------------------------


class _FakeTI:
    def xcom_pull(self, task_ids: str | None = None, key: str = "return_value", **kwargs: Any) -> Any:
        return {"create_call": {"id": "call_from_xcom1"}}.get(task_ids or "")


def test_call_id_and_connection_are_templated(sim: Simulator, monkeypatch: pytest.MonkeyPatch, api_key: str) -> None:
    assert set(DialNexaCallSensor.template_fields) >= {"call_id", "dialnexa_conn_id"}
    call_id = running_call(sim)
    monkeypatch.setenv("AIRFLOW_CONN_DIALNEXA_EU", conn_json(sim, api_key))
    task = sensor("{{ params.call_id }}", dialnexa_conn_id="{{ params.conn }}")
    task.render_template_fields(cast("Context", {"params": {"call_id": call_id, "conn": "dialnexa_eu"}}))
    assert (task.call_id, task.dialnexa_conn_id) == (call_id, "dialnexa_eu")
    with pytest.raises(TaskDeferred) as info:
        task.execute(CONTEXT)
    _, kwargs = info.value.trigger.serialize()
    assert (kwargs["call_id"], kwargs["dialnexa_conn_id"]) == (call_id, "dialnexa_eu")

    from_xcom = sensor("{{ ti.xcom_pull(task_ids='create_call')['id'] }}")
    from_xcom.render_template_fields(cast("Context", {"ti": _FakeTI()}))
    assert from_xcom.call_id == "call_from_xcom1"


# -- dag.test(): the real deferral loop (task runner, serde, inline trigger, resume) --------------------

DAG_FILE = textwrap.dedent(
    '''
    """DAGs for tests/test_sensor.py: run as a script, it dag.test()s each and prints the outcome."""
    from __future__ import annotations

    import json
    import os
    from datetime import datetime, timedelta

    from airflow.providers.common.compat.sdk import DAG

    from airflow_provider_dialnexa.sensors.dialnexa import DialNexaCallSensor


    def wait_dag(dag_id, call_id, **sensor):
        with DAG(dag_id, schedule=None, start_date=datetime(2024, 1, 1), catchup=False) as dag:
            DialNexaCallSensor(task_id="wait", call_id=call_id, deferrable=True, poke_interval=1, **sensor)
        return dag


    DAGS = [
        wait_dag("dnx_wait_ok", os.environ.get("DNX_OK_CALL", "call_unset"), timeout=60, polling="per_call"),
        wait_dag(
            "dnx_wait_late",
            os.environ.get("DNX_ENDLESS_CALL", "call_unset"),
            timeout=2,
            retries=2,
            retry_delay=timedelta(0),
        ),
        wait_dag("dnx_wait_soft", os.environ.get("DNX_ENDLESS_CALL", "call_unset"), timeout=2, soft_fail=True),
    ]

    if __name__ == "__main__":
        from airflow.models.log import Log
        from airflow.models.taskinstance import TaskInstance
        from airflow.models.trigger import Trigger
        try:
            from airflow.models.xcom import XComModel
        except ImportError:  # Airflow 2.11
            from airflow.models.xcom import XCom as XComModel
        from airflow.utils.session import create_session

        # Airflow 2.11's dag.test() runs a deferred task's trigger inline, in this process, and keeps no
        # trigger row: record what it runs. Airflow 3 runs it through the triggerer's code and keeps the row.
        inline = []
        try:
            from airflow.models import dag as dag_module

            run_inline = dag_module._run_inline_trigger
        except (ImportError, AttributeError):
            run_inline = None
        if run_inline is not None:
            def recording(trigger):
                classpath, kwargs = trigger.serialize()
                inline.append([classpath, kwargs.get("call_id")])
                return run_inline(trigger)

            dag_module._run_inline_trigger = recording

        results = {}
        for dag in DAGS:
            inline.clear()
            run = dag.test()
            with create_session() as session:
                keys = {"dag_id": dag.dag_id, "run_id": run.run_id, "task_id": "wait"}
                ti = session.query(TaskInstance).filter_by(**keys).one()
                xcom = session.query(XComModel).filter_by(**keys, key="return_value").one_or_none()
                trigger = session.get(Trigger, ti.trigger_id) if ti.trigger_id else None
                events = [row.event for row in session.query(Log).filter_by(**keys)]
                results[dag.dag_id] = {
                    "run": str(run.state),
                    "ti": str(ti.state),
                    "try_number": ti.try_number,
                    "xcom": xcom.value if xcom else None,
                    "trigger": [trigger.classpath, trigger.kwargs.get("call_id")] if trigger else None,
                    "inline_triggers": list(inline),
                    "audit": events,
                }
        print("DAG_TEST_RESULTS " + json.dumps(results, default=str))
    '''
)


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite metadata DB in a temporary AIRFLOW_HOME (once per session)."""
    home = tmp_path_factory.mktemp("airflow_home")
    (home / "dags").mkdir()
    airflow = Path(sys.executable).with_name("airflow")
    result = subprocess.run(
        [str(airflow), "db", "migrate"], env=child_env(home), capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return home


def test_dag_test_defers_resumes_and_times_out(sim: Simulator, api_key: str, airflow_home: Path) -> None:
    ok = ended_call(sim)
    sim.script(ok, ["initiated", "in-progress", "completed"])  # poke, then two trigger polls
    endless = running_call(sim)
    dag_file = airflow_home / "dags" / "dialnexa_wait_dags.py"
    dag_file.write_text(DAG_FILE)
    env = child_env(airflow_home)
    env.update(AIRFLOW_CONN_DIALNEXA_DEFAULT=conn_json(sim, api_key), DNX_OK_CALL=ok, DNX_ENDLESS_CALL=endless)
    child = subprocess.run(
        [sys.executable, str(dag_file)], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    output = child.stdout + child.stderr
    lines = [line for line in child.stdout.splitlines() if line.startswith("DAG_TEST_RESULTS ")]
    assert child.returncode == 0, output[-5000:]
    assert lines, output[-5000:]
    results = json.loads(lines[-1].removeprefix("DAG_TEST_RESULTS "))
    classpath = "airflow_provider_dialnexa.triggers.dialnexa.DialNexaCallTrigger"

    def deferred_with(result: dict[str, Any]) -> list[Any]:
        """The trigger the task deferred to. Airflow 3: its row, and a ``deferred`` audit entry. Airflow 2.11's
        dag.test() runs the trigger inline (no row, no deferred state): the one trigger it ran."""
        if AIRFLOW_V_3:
            assert "deferred" in result["audit"], result
            assert result["inline_triggers"] == []
            return cast("list[Any]", result["trigger"])
        assert result["trigger"] is None, result
        assert len(result["inline_triggers"]) == 1, result
        return cast("list[Any]", result["inline_triggers"][0])

    done = results["dnx_wait_ok"]
    assert (done["run"], done["ti"]) == ("success", "success"), output[-5000:]
    assert done["xcom"] == {"call_id": ok, "status": "completed"}
    assert deferred_with(done) == [classpath, ok]  # the task deferred with our trigger ...
    assert sim.get_count(ok) == 3  # ... which polled twice after the sensor's one poke

    late = results["dnx_wait_late"]
    assert (late["run"], late["ti"]) == ("failed", "failed"), output[-5000:]
    assert late["try_number"] == 1  # a sensor timeout is final: the two retries were not used
    assert deferred_with(late) == [classpath, endless]
    assert "AirflowSensorTimeout" in output

    soft = results["dnx_wait_soft"]
    assert soft["ti"] == "skipped", output[-5000:]
    assert deferred_with(soft) == [classpath, endless]
    assert sim.get_count(endless) >= 2  # one poke per timed-out DAG, then the trigger
