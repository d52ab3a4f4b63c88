"""Test DAG for ``tests/test_operator.py``: the operator mapped over call ids from the run conf, and templated.

Not an example: it waits with a 1 s poll and per-call polling so a test run against the simulator is quick
and its request counts are exact.
"""

from __future__ import annotations

from datetime import datetime

from airflow.providers.common.compat.sdk import DAG, Param, get_current_context, task

from airflow_provider_dialnexa.operators.dialnexa import DialNexaGetCallOperator

with DAG(
    dag_id="dialnexa_operator_mapping",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    params={"call_ids": Param([], type="array", items={"type": "string"})},
) as dag:

    @task
    def call_ids() -> list[str]:
        ids: list[str] = get_current_context()["params"]["call_ids"]
        return ids

    DialNexaGetCallOperator.partial(
        task_id="fetch",
        wait_for_completion=True,
        poll_interval=1,
        max_poll_interval=1,
        timeout=120,
        polling="per_call",
        exclude_fields=["transcript", "recording_url"],
        mask_phone_numbers=True,
    ).expand(call_id=call_ids())

    DialNexaGetCallOperator(
        task_id="fetch_templated",
        call_id="{{ params.call_ids[-1] }}",
        include_fields=["id", "status"],
    )
