"""Test DAG for ``tests/test_export.py``: the export operator over a window and destination from the run conf.

Not an example: it polls every second so a ``dag.test()`` run against the simulator is quick.
"""

from __future__ import annotations

from datetime import datetime

from airflow.providers.common.compat.sdk import DAG, Param

from airflow_provider_dialnexa.operators.dialnexa import DialNexaExportCallsOperator

with DAG(
    dag_id="dialnexa_export_window",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    params={"window_start": Param(""), "window_end": Param(""), "destination": Param("")},
) as dag:
    DialNexaExportCallsOperator(
        task_id="export",
        dialnexa_conn_id="dialnexa_export",
        destination="{{ params.destination }}",
        window_start="{{ params.window_start }}",
        window_end="{{ params.window_end }}",
        poll_interval=1,
        max_poll_interval=1,
        timeout=120,
    )
