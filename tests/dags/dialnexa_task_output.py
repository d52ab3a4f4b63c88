"""Test DAG for ``tests/test_first_hour.py`` (#17 defect 9): templated fields filled from task output.

``phone_number`` comes from a TaskFlow task (``upstream()``), the export's ``destination`` from a classic
operator's ``.output``, its window and ``filters`` from a ``multiple_outputs`` task. Values come from the
run conf, so a run can also hand the operators bad values that only exist at run time.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.providers.common.compat.sdk import DAG, Param, get_current_context, task
from airflow.providers.common.compat.standard.operators import PythonOperator

from airflow_provider_dialnexa.operators.dialnexa import DialNexaCreateCallOperator, DialNexaExportCallsOperator

with DAG(
    dag_id="dialnexa_task_output",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    params={
        "phone_number": Param("+14155550101"),
        "destination": Param(""),
        "window_start": Param("2026-10-05T09:00:00Z"),
        "window_end": Param("2026-10-05T10:00:00Z"),
        "status": Param("completed"),
    },
) as dag:

    @task
    def lead() -> str:
        return str(get_current_context()["params"]["phone_number"])

    @task(multiple_outputs=True)
    def export_args() -> dict[str, Any]:
        params = get_current_context()["params"]
        return {
            "window_start": params["window_start"],
            "window_end": params["window_end"],
            "filters": {"status": params["status"]},
        }

    def _destination(params: dict[str, Any]) -> str:
        return str(params["destination"])

    destination = PythonOperator(task_id="destination", python_callable=_destination)
    args: Any = export_args()  # multiple_outputs: args[key] is that key's XComArg
    DialNexaCreateCallOperator(task_id="place", phone_number=lead(), agent_id="agent_2g7Xy3tY53gRlp")
    DialNexaExportCallsOperator(
        task_id="export",
        destination=destination.output,
        window_start=args["window_start"],
        window_end=args["window_end"],
        filters=args["filters"],
        wait_for_running=False,
    )
