"""Test DAG for ``tests/test_task_output.py``: the batch operators' templated fields filled from task output.

``leads`` and ``title`` come from TaskFlow tasks, the export's ``batch_id`` from the create task's
``multiple_outputs`` and its ``destination`` from a classic operator's ``.output``. Values come from the run
conf, so a run can also hand the operators bad values that only exist at run time.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.providers.common.compat.sdk import DAG, Param, get_current_context, task
from airflow.providers.common.compat.standard.operators import PythonOperator

from airflow_provider_dialnexa.operators.dialnexa import (
    DialNexaCreateBatchCallOperator,
    DialNexaExportBatchCallsOperator,
)

with DAG(
    dag_id="dialnexa_batch_task_output",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    params={"title": Param("Renewals"), "phone_number": Param("+14155550101"), "destination": Param("")},
) as dag:

    @task
    def leads() -> list[dict[str, str]]:
        first = str(get_current_context()["params"]["phone_number"])
        return [{"phone_number": first, "lead_id": "L-1"}, {"phone_number": "+14155550102", "lead_id": "L-2"}]

    @task
    def title() -> str:
        return str(get_current_context()["params"]["title"])

    def _destination(params: dict[str, Any]) -> str:
        return str(params["destination"])

    destination = PythonOperator(task_id="destination", python_callable=_destination)
    create = DialNexaCreateBatchCallOperator(
        task_id="create_batch", leads=leads(), title=title(), agent_id="agent_2g7Xy3tY53gRlp"
    )
    DialNexaExportBatchCallsOperator(
        task_id="export",
        batch_id=create.output["batch_id"],  # type: ignore[index]  # an XComArg of one key
        destination=destination.output,
        require_ended=False,  # the calls made so far: no wait in this test
    )
