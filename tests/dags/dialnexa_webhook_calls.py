"""Test DAG for the webhook tests: scheduled on a connection's calls asset, it upserts the calls its run's
events carry into SQLite (``$DIALNEXA_WEBHOOK_TEST_DB``), one row per call with the run that loaded it.

Not the example DAG (``dags/dialnexa_webhook_outcomes.py``): it sends no request to DialNexa and keeps
only what the tests check.
"""

from __future__ import annotations

import os
import sqlite3
from datetime import datetime
from typing import Any

from airflow.providers.common.compat.sdk import DAG, get_current_context, task

from airflow_provider_dialnexa.webhooks import calls_ended_asset, calls_from_events

#: The connection the webhook tests deliver to.
CONN_ID = "dialnexa_webhooks_test"

with DAG(
    dag_id="dialnexa_webhook_calls",
    schedule=[calls_ended_asset(CONN_ID)],
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["test"],
):

    @task
    def load() -> list[str]:
        context: Any = get_current_context()
        calls = calls_from_events(context, conn_id=CONN_ID)
        path = os.environ.get("DIALNEXA_WEBHOOK_TEST_DB", "/tmp/dialnexa_webhook_test.db")
        with sqlite3.connect(path, timeout=60) as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS loaded "
                "(call_id TEXT, status TEXT, run_id TEXT, PRIMARY KEY (call_id, run_id))"
            )
            db.executemany(
                "INSERT INTO loaded VALUES (?, ?, ?)", [(c["id"], c["status"], context["run_id"]) for c in calls]
            )
        return [call["id"] for call in calls]

    load()
