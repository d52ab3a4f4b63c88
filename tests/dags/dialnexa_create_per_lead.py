"""Test DAG for ``tests/test_defects_paging.py``: one call per lead per day, across DAG runs.

Not an example of scheduling: the correlation value is chosen by the DAG (``lead-<id>-<day>``), so two runs
for the same lead and day must place one call between them.
"""

from __future__ import annotations

from datetime import datetime

from airflow.providers.common.compat.sdk import DAG, Param

from airflow_provider_dialnexa.operators.dialnexa import DialNexaCreateCallOperator

with DAG(
    dag_id="dialnexa_create_per_lead",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    params={"lead_id": Param("L-7"), "day": Param("2026-10-05")},
) as dag:
    DialNexaCreateCallOperator(
        task_id="place_call",
        phone_number="+14155550123",
        agent_id="agent_2g7Xy3tY53gRlp",
        metadata={
            "lead_id": "{{ params.lead_id }}",
            "airflow_correlation_id": "lead-{{ params.lead_id }}-{{ params.day }}",
        },
    )
