"""Test DAG for ``tests/test_batch_export.py``: the batch export with its batch id and destination from the run conf.

Not an example: the templated destination makes the task declare its export alias, resolved at run time.
"""

from __future__ import annotations

from datetime import datetime

from airflow.providers.common.compat.sdk import DAG, Param

from airflow_provider_dialnexa.operators.dialnexa import DialNexaExportBatchCallsOperator

with DAG(
    dag_id="dialnexa_batch_export",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    params={"batch_id": Param(""), "destination": Param("")},
) as dag:
    DialNexaExportBatchCallsOperator(
        task_id="export",
        batch_id="{{ params.batch_id }}",
        destination="{{ params.destination }}",
        records="leads",
    )
