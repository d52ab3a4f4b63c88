"""Test DAG for ``tests/test_create_call.py``: one create that waits, with an immediate retry.

Not an example: ``retry_delay=0`` and per-call polling so a failed first try (after its POST returned)
is retried at once inside ``dag.test()``, and the test can check that the retry adopted the call.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.providers.common.compat.sdk import DAG

from airflow_provider_dialnexa.operators.dialnexa import DialNexaCreateCallOperator

with DAG(dag_id="dialnexa_create_retry", schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
    DialNexaCreateCallOperator(
        task_id="place_call",
        phone_number="+14155550123",
        agent_id="agent_2g7Xy3tY53gRlp",
        metadata={"lead_id": "L-9"},
        wait_for_completion=True,
        poll_interval=1,
        polling="per_call",
        retries=1,
        retry_delay=timedelta(0),
    )
