"""Test DAG for ``tests/test_lineage.py``: a mapped export (one file per call direction) over a window from the conf.

Not an example: it shows that every map index resolves the task's one asset alias to its own file.
"""

from __future__ import annotations

from datetime import datetime

from airflow.providers.common.compat.sdk import DAG, Param

from airflow_provider_dialnexa.operators.dialnexa import DialNexaExportCallsOperator

with DAG(
    dag_id="dialnexa_export_mapped",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    params={"window_start": Param(""), "window_end": Param(""), "folder": Param("")},
) as dag:
    DialNexaExportCallsOperator.partial(
        task_id="export",
        dialnexa_conn_id="dialnexa_export",
        destination="{{ params.folder }}/calls_{{ ti.map_index }}.jsonl",
        window_start="{{ params.window_start }}",
        window_end="{{ params.window_end }}",
    ).expand(filters=[{"call_direction": "inbound"}, {"call_direction": "outbound"}])
