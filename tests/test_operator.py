"""DialNexaGetCallOperator (issue #4), against the embedded simulator over real sockets.

``execute()``/``execute_complete()`` are called directly (no task runner needed: they only use the hook);
mapping, templating and the deferral loop run through a real ``dag.test()`` of ``tests/dags/``.
"""

from __future__ import annotations

import json
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from _compat import capture_logs, dag_bag, return_values
from airflow.providers.common.compat.sdk import TaskDeferred

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
    DialNexaWaitTimeoutError,
    InvalidCallIdError,
)
from airflow_provider_dialnexa.operators.dialnexa import DialNexaGetCallOperator
from airflow_provider_dialnexa.sensors.dialnexa import DEFAULT_CALL_TIMEOUT
from airflow_provider_dialnexa.simulator import Simulator
from airflow_provider_dialnexa.triggers.dialnexa import DialNexaCallTrigger

CONTEXT: Any = {}  # execute() and execute_complete() read nothing from the context
PHONE_KEYS = ("to_number", "from_number", "to_phone_number", "from_phone_number")


def op(**kwargs: Any) -> DialNexaGetCallOperator:
    kwargs.setdefault("task_id", "get_call")
    return DialNexaGetCallOperator(**kwargs)


def ended_call(sim: Simulator, outcome: str = "completed", **spec: Any) -> str:
    """A call that is already over (back-dated past its ring and talk time)."""
    spec = {"queued_s": 0, "ring_s": 1, "talk_s": 30, **spec}
    return sim.create_call(outcome=outcome, age_s=60, **spec)


def running_call(sim: Simulator) -> str:
    """A call that rings for an hour: ``initiated`` whenever it is read."""
    return sim.create_call(outcome="completed", queued_s=0, ring_s=3600, talk_s=0)


@pytest.fixture
def sim(dialnexa_conn: Simulator) -> Simulator:
    return dialnexa_conn


# -- DAG-parse-time validation ------------------------------------------------------------------------


def test_template_fields() -> None:
    assert set(DialNexaGetCallOperator.template_fields) == {"call_id", "dialnexa_conn_id"}


def test_defaults() -> None:
    task = op(call_id="call_abc123")
    assert task.dialnexa_conn_id == "dialnexa_default"
    assert task.wait_for_completion is False
    assert task.timeout == DEFAULT_CALL_TIMEOUT
    assert task.include_fields is None
    assert task.exclude_fields is None
    assert task.mask_phone_numbers is False
    assert task.failure_statuses == frozenset()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"include_fields": ["id"], "exclude_fields": ["transcript"]}, "not both"),
        ({"include_fields": []}, "include_fields is empty"),
        ({"include_fields": ["id", 7]}, "non-empty strings"),
        ({"exclude_fields": [""]}, "non-empty strings"),
        ({"exclude_fields": 3}, "list of field names"),
        ({"failure_statuses": ["in_progress"]}, "not terminal"),
        ({"wait_for_completion": True, "poll_interval": 0.5}, "poll_interval must be >= 1"),
        ({"wait_for_completion": True, "timeout": 0}, "timeout must be positive"),
        ({"wait_for_completion": True, "polling": "sometimes"}, "polling must be one of"),
    ],
)
def test_invalid_arguments_fail_at_parse_time(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        op(call_id="call_abc123", **kwargs)


def test_timeout_accepts_timedelta() -> None:
    assert op(call_id="call_abc123", timeout=timedelta(minutes=3)).timeout == 180.0


# -- execute(): plain fetch ---------------------------------------------------------------------------


def test_execute_returns_the_record_as_sent(sim: Simulator) -> None:
    call_id = ended_call(sim)
    result = op(call_id=call_id).execute(CONTEXT)
    assert result == sim.record(call_id)
    assert result["status"] == "completed"
    assert result["transcript"]
    assert json.loads(json.dumps(result)) == result, "the XCom value must be JSON-safe"
    assert sim.get_count(call_id) == 1


def test_execute_does_not_wait_by_default(sim: Simulator) -> None:
    call_id = running_call(sim)
    assert op(call_id=call_id).execute(CONTEXT)["status"] == "initiated"


def test_exclude_fields_and_masking(sim: Simulator) -> None:
    call_id = ended_call(sim, to_number="+919812345678")
    result = op(call_id=call_id, exclude_fields=["transcript", "recording_url"], mask_phone_numbers=True).execute(
        CONTEXT
    )
    full = sim.record(call_id)
    assert set(full) - set(result) == {"transcript", "recording_url"}
    assert result["to_number"] == "+91******5678"
    assert result["from_number"] == "+91******1234"
    assert {k: v for k, v in result.items() if k not in PHONE_KEYS} == {
        k: v for k, v in full.items() if k not in PHONE_KEYS and k not in ("transcript", "recording_url")
    }


def test_masking_covers_the_snake_case_spelling(sim: Simulator) -> None:
    call_id = ended_call(sim, spelling="snake", to_number="+14155550123")
    result = op(call_id=call_id, mask_phone_numbers=True).execute(CONTEXT)
    assert result["to_phone_number"] == "+14*****0123"
    assert result["from_phone_number"] == "+91******1234"
    assert "to_number" not in result


def test_include_fields_keeps_only_those_and_warns_about_names_that_match_nothing(sim: Simulator) -> None:
    call_id = ended_call(sim)  # camelCase record: createdAt, not created_at
    with capture_logs() as logs:
        result = op(call_id=call_id, include_fields=["id", "status", "created_at", "createdAt"]).execute(CONTEXT)
    assert set(result) == {"id", "status", "createdAt"}
    warnings = [entry for entry in logs if "include_fields" in str(entry)]
    assert len(warnings) == 1
    assert warnings[0]["log_level"] == "warning"
    text = str(warnings[0])
    assert "created_at" in text
    assert "+91" not in text, "the warning names fields, never values"


def test_include_fields_that_all_match_log_no_warning(sim: Simulator) -> None:
    call_id = ended_call(sim)
    with capture_logs() as logs:
        op(call_id=call_id, include_fields=["id", "status"]).execute(CONTEXT)
    assert [entry for entry in logs if "include_fields" in str(entry)] == []


def test_failure_statuses_apply_to_an_ended_call_even_without_waiting(sim: Simulator) -> None:
    call_id = ended_call(sim, outcome="busy")
    with pytest.raises(DialNexaCallFailedError, match="busy") as info:
        op(call_id=call_id, failure_statuses=["busy", "failed"]).execute(CONTEXT)
    assert info.value.call_id == call_id
    # still running: nothing to judge yet
    assert op(call_id=running_call(sim), failure_statuses=["busy"]).execute(CONTEXT)["status"] == "initiated"


def test_busy_is_data_unless_declared_a_failure(sim: Simulator) -> None:
    call_id = ended_call(sim, outcome="busy")
    assert op(call_id=call_id, failure_statuses=["failed"]).execute(CONTEXT)["status"] == "busy"


# -- errors from the hook -----------------------------------------------------------------------------


def test_unknown_call_is_a_typed_error_without_the_key(sim: Simulator, api_key: str) -> None:
    with pytest.raises(DialNexaNotFoundError) as info:
        op(call_id="call_doesnotexist1").execute(CONTEXT)
    assert "call_doesnotexist1" in str(info.value)
    assert "dialnexa_default" in str(info.value)
    assert api_key not in str(info.value)


def test_invalid_call_id_fails_before_any_request(sim: Simulator) -> None:
    with pytest.raises(InvalidCallIdError):
        op(call_id="../admin").execute(CONTEXT)
    assert sim.stats()["requests"] == 0


def test_wrong_key_is_an_auth_error(sim: Simulator, api_key: str) -> None:
    call_id = ended_call(sim)
    sim.configure(api_key="another:key")
    with pytest.raises(DialNexaAuthError) as info:
        op(call_id=call_id).execute(CONTEXT)
    assert api_key not in str(info.value)


def test_missing_connection_is_a_clear_error(sim: Simulator) -> None:
    with pytest.raises(Exception, match="dialnexa_nowhere"):
        op(call_id="call_abc123", dialnexa_conn_id="dialnexa_nowhere").execute(CONTEXT)


# -- execute(): wait_for_completion -------------------------------------------------------------------


def test_wait_for_an_ended_call_returns_at_once(sim: Simulator) -> None:
    call_id = ended_call(sim, outcome="no_answer")
    result = op(call_id=call_id, wait_for_completion=True, exclude_fields=["metadata"]).execute(CONTEXT)
    assert result["status"] == "no_answer"
    assert "metadata" not in result
    assert sim.get_count(call_id) == 1


def test_wait_for_a_running_call_defers_to_the_trigger(sim: Simulator) -> None:
    call_id = running_call(sim)
    task = op(
        call_id=call_id,
        dialnexa_conn_id="dialnexa_default",
        wait_for_completion=True,
        timeout=600,
        poll_interval=5,
        max_poll_interval=30,
        max_consecutive_failures=4,
        polling="per_call",
    )
    before = time.time()
    with pytest.raises(TaskDeferred) as info:
        task.execute(CONTEXT)
    after = time.time()
    deferred = info.value
    assert deferred.method_name == "execute_complete"
    assert deferred.timeout == timedelta(seconds=600)
    trigger = deferred.trigger
    assert isinstance(trigger, DialNexaCallTrigger)
    classpath, kwargs = trigger.serialize()
    assert classpath == "airflow_provider_dialnexa.triggers.dialnexa.DialNexaCallTrigger"
    end_time = kwargs.pop("end_time")
    assert before + 600 <= end_time <= after + 600, "a wall-clock deadline, timeout seconds from now"
    assert kwargs == {
        "call_id": call_id,
        "dialnexa_conn_id": "dialnexa_default",
        "poll_interval": 5.0,
        "max_poll_interval": 30.0,
        "poll_growth": 1.5,
        "poll_jitter": 0.1,
        "first_poll_delay": None,
        "max_consecutive_failures": 4,
        "polling": "per_call",
    }
    assert json.loads(json.dumps(kwargs)) == kwargs
    assert sim.get_count(call_id) == 1


def test_undocumented_status_keeps_waiting(sim: Simulator) -> None:
    call_id = running_call(sim)
    sim.set_status(call_id, "ringing")
    with pytest.raises(TaskDeferred):
        op(call_id=call_id, wait_for_completion=True).execute(CONTEXT)


# -- execute_complete() -------------------------------------------------------------------------------


def test_success_event_fetches_the_full_record(sim: Simulator) -> None:
    call_id = ended_call(sim)
    event = {"event": "success", "call_id": call_id, "status": "completed", "raw_status": "completed"}
    result = op(call_id=call_id, wait_for_completion=True, mask_phone_numbers=True).execute_complete(CONTEXT, event)
    assert result["id"] == call_id
    assert result["transcript"] == sim.record(call_id)["transcript"]
    assert "*" in result["to_number"]
    assert sim.get_count(call_id) == 1, "one Get Call after the event, for the full record"


def test_success_event_with_a_failure_status_fails_without_fetching(sim: Simulator) -> None:
    call_id = ended_call(sim, outcome="failed")
    event = {"event": "success", "call_id": call_id, "status": "failed", "raw_status": "failed"}
    task = op(call_id=call_id, wait_for_completion=True, failure_statuses=["failed"])
    with pytest.raises(DialNexaCallFailedError):
        task.execute_complete(CONTEXT, event)
    assert sim.get_count(call_id) == 0


def test_timeout_event_is_a_wait_timeout_error(sim: Simulator) -> None:
    event = {"event": "timeout", "call_id": "call_abc123", "message": "had not ended", "last_status": "initiated"}
    with pytest.raises(DialNexaWaitTimeoutError, match="had not ended") as info:
        op(call_id="call_abc123", wait_for_completion=True).execute_complete(CONTEXT, event)
    assert info.value.call_id == "call_abc123"
    assert sim.stats()["requests"] == 0


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
        ("something_new", DialNexaError),
    ],
)
def test_error_events_become_typed_errors(sim: Simulator, kind: str, error: type[DialNexaError]) -> None:
    event = {"event": "error", "call_id": "call_abc123", "kind": kind, "message": f"trigger says {kind}"}
    with pytest.raises(error, match=f"trigger says {kind}") as info:
        op(call_id="call_abc123", wait_for_completion=True).execute_complete(CONTEXT, event)
    assert type(info.value) is error
    assert sim.stats()["requests"] == 0, "an error event is final: no fetch"


@pytest.mark.parametrize(
    "event",
    [
        None,
        {},
        "success",
        ["success"],
        {"event": "succeeded", "call_id": "call_abc123"},
        {"status": "success", "call_id": "call_abc123"},
        {"event": "success", "call_id": "call_abc123"},
        {"event": "success", "call_id": "call_abc123", "status": ""},
    ],
)
def test_malformed_events_fail_loudly(sim: Simulator, event: Any) -> None:
    with pytest.raises(DialNexaError, match="call_abc123"):
        op(call_id="call_abc123", wait_for_completion=True).execute_complete(CONTEXT, event)
    assert sim.stats()["requests"] == 0


# -- dag.test(): mapping, templating and the deferral loop --------------------------------------------


def run_dag(dags: Path, dag_id: str, conf: dict[str, Any]) -> tuple[str, dict[str, dict[int, Any]]]:
    """``dag.test()`` the DAG; return the run's state and its ``return_value`` XComs by task id and map index."""
    bag = dag_bag(str(dags))
    assert bag.import_errors == {}
    run = bag.dags[dag_id].test(run_conf=conf)
    xcoms = return_values(run.run_id, dag_id)
    return str(run.state), xcoms


def test_mapped_operator_waits_for_each_call_in_a_real_dag_run(sim: Simulator, airflow_db: Path) -> None:
    # One call still running (it defers and the trigger polls it to the end), one already over.
    running = running_call(sim)
    sim.script(running, ["initiated", "in-progress", "completed"])
    ended = ended_call(sim, outcome="no_answer")

    state, xcoms = run_dag(airflow_db, "dialnexa_operator_mapping", {"call_ids": [running, ended]})

    assert state == "success"
    fetched = xcoms["fetch"]
    assert set(fetched) == {0, 1}
    assert [fetched[0]["id"], fetched[1]["id"]] == [running, ended]
    assert [fetched[0]["status"], fetched[1]["status"]] == ["completed", "no_answer"]
    for record in fetched.values():
        assert "transcript" not in record
        assert "recording_url" not in record
        assert record["to_number"].count("*") >= 3
        assert record["summary"] is None or isinstance(record["summary"], str)
    # Running call: the first look, two trigger polls (in-progress, completed), the full-record fetch.
    assert sim.get_count(running) == 4
    assert sim.get_count(ended) == 2  # the mapped fetch and the templated one, never deferred
    assert xcoms["fetch_templated"] == {-1: {"id": ended, "status": "no_answer"}}


def test_example_dag_loads_outcomes_in_a_real_dag_run(sim: Simulator, airflow_db: Path, tmp_path: Path) -> None:
    import sqlite3

    # All three calls are over: waiting is covered above and in test_fullstack.py. (A scripted call would
    # never end here: the DAG's sensor polls with batched List Calls, which do not advance scripts.)
    ids = [
        ended_call(sim, "completed", call_id="call_t_completed"),
        ended_call(sim, "busy", call_id="call_t_busy"),
        ended_call(sim, "failed", call_id="call_t_failed"),
    ]
    table = tmp_path / "outcomes.db"
    conf = {"call_ids": ids, "sqlite_path": str(table)}

    state, xcoms = run_dag(airflow_db, "dialnexa_call_outcomes", conf)
    assert state == "success"
    assert xcoms["load"] == {-1: 3}
    assert {r["status"] for r in xcoms["wait_for_call"].values()} == {"completed", "busy", "failed"}
    assert all("*" in r["to_number"] for r in xcoms["fetch_call"].values())

    state, _ = run_dag(airflow_db, "dialnexa_call_outcomes", conf)  # a re-run updates, never duplicates
    assert state == "success"
    with sqlite3.connect(table) as db:
        rows = db.execute("SELECT call_id, status, duration_seconds, transcript_chars FROM call_outcomes").fetchall()
    assert sorted(rows) == [
        ("call_t_busy", "busy", 0.0, 0),
        ("call_t_completed", "completed", 30.0, len(sim.record("call_t_completed")["transcript"])),
        ("call_t_failed", "failed", 0.0, 0),
    ]
