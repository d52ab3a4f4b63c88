"""#17 defect 9: templated fields accept task output (``XComArg``, ``upstream()``, ``.output``) at parse time.

Literal values are still checked when the DAG is parsed; values that arrive at run time (task output,
templates) are checked when the task runs, before any request, with the same message. The DAG
``tests/dags/dialnexa_task_output.py`` runs through a real ``dag.test()`` against the simulator.
"""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from _compat import dag_bag, return_values
from airflow.providers.common.compat.sdk import DAG, task

from airflow_provider_dialnexa.exceptions import InvalidPhoneNumberError
from airflow_provider_dialnexa.operators.dialnexa import DialNexaCreateCallOperator, DialNexaExportCallsOperator
from airflow_provider_dialnexa.simulator import Simulator

DAG_ID = "dialnexa_task_output"
ROOT = Path(__file__).resolve().parents[1]
#: The hour the DAG exports by default (its params), well in the past.
HOUR_START = datetime(2026, 10, 5, 9, 0, tzinfo=UTC)


def _run(dags: Path, conf: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    bag = dag_bag(str(dags))
    assert bag.import_errors == {}
    run = bag.dags[DAG_ID].test(run_conf=conf)
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    return states, {task_id: by_index[-1] for task_id, by_index in return_values(run.run_id, DAG_ID).items()}


def test_the_dag_with_task_output_in_templated_fields_parses() -> None:
    bag = dag_bag(str(ROOT / "tests" / "dags" / f"{DAG_ID}.py"))
    assert bag.import_errors == {}
    assert DAG_ID in bag.dags


def test_task_output_reaches_the_operators_in_a_real_dag_run(
    dialnexa_conn: Simulator, airflow_db: Path, tmp_path: Path
) -> None:
    sim = dialnexa_conn
    sim.seed_calls(30, HOUR_START.timestamp(), HOUR_START.timestamp() + 3600, mix={"completed": 2, "busy": 1})
    target = tmp_path / "calls.jsonl.gz"

    states, xcoms = _run(airflow_db, {"destination": str(target)})

    assert states == {"lead": "success", "export_args": "success", "destination": "success"} | {
        "place": "success",
        "export": "success",
    }
    assert xcoms["place"]["call_id"].startswith("call_")
    assert sim.record(xcoms["place"]["call_id"])["to_number"] == "+14155550101"
    lines = [json.loads(line) for line in gzip.decompress(target.read_bytes()).splitlines()]
    assert xcoms["export"]["calls"] == len(lines) > 0
    assert {record["status"] for record in lines} == {"completed"}  # the filter came from task output too


def test_bad_values_from_task_output_fail_at_run_time_before_any_request(
    dialnexa_conn: Simulator, airflow_db: Path, tmp_path: Path
) -> None:
    sim = dialnexa_conn
    conf = {"phone_number": "14155550101", "status": "complted", "destination": str(tmp_path / "x.jsonl")}

    states, _ = _run(airflow_db, conf)

    assert states["place"] == "failed"
    assert states["export"] == "failed"
    assert sim.stats()["requests"] == 0
    assert not (tmp_path / "x.jsonl").exists()


# -- the same checks, one operator at a time ----------------------------------------------------------


def test_literal_values_are_still_checked_at_parse_time() -> None:
    with pytest.raises(InvalidPhoneNumberError, match=r"not E\.164"):
        DialNexaCreateCallOperator(task_id="place", phone_number="14155550101", agent_id="agent_1")
    with pytest.raises(ValueError, match="window end"):
        DialNexaExportCallsOperator(
            task_id="export", destination="calls.jsonl", window_start="2026-10-05T10:00Z", window_end="2026-10-05T09Z"
        )
    with pytest.raises(ValueError, match="destination"):
        DialNexaExportCallsOperator(task_id="export", destination="  ")


def test_a_number_from_task_output_is_checked_with_the_literal_message(
    dialnexa_conn: Simulator,
) -> None:
    with DAG("dnx_output_number", schedule=None, start_date=datetime(2026, 1, 1)):

        @task
        def lead() -> str:
            return "14155550101"

        op = DialNexaCreateCallOperator(task_id="place", phone_number=lead(), agent_id="agent_1")
    with pytest.raises(InvalidPhoneNumberError) as literal:
        DialNexaCreateCallOperator(task_id="literal", phone_number="14155550101", agent_id="agent_1")
    op.phone_number = "14155550101"  # what rendering the task output gives
    with pytest.raises(InvalidPhoneNumberError) as at_run_time:
        op.execute({})  # type: ignore[typeddict-item]
    assert str(at_run_time.value) == str(literal.value)
    assert dialnexa_conn.stats()["requests"] == 0
