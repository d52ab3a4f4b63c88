"""Call-outcome ETL: wait for DialNexa calls to end, fetch their records, load one row per call into SQLite.

Whatever placed the calls (a CRM hook, a campaign job) triggers this DAG with their ids::

    airflow dags trigger dialnexa_call_outcomes -c '{"call_ids": ["call_x9y3zp4mq7r1", "call_mfgsn90vwcozgb"]}'

For each id, a deferred sensor waits for the call to end (no worker slot is held while calls ring and
talk), the operator fetches the finished record with phone numbers masked, a transform flattens it into
a row, and the load upserts the rows keyed by ``call_id``: re-running a day, or triggering twice for the
same calls, updates rows instead of duplicating them. ``busy``/``no_answer``/``failed`` calls are
outcomes to record, not task failures.

The table goes to the ``sqlite_path`` param (default: ``$DIALNEXA_DEMO_DB`` or
``/tmp/dialnexa_call_outcomes.db``). Parsing this file reads no connection and does no I/O; the
connection is ``dialnexa_default``.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from datetime import datetime
from typing import Any

from airflow.providers.common.compat.sdk import DAG, Param, get_current_context, task

from airflow_provider_dialnexa import status as call_status
from airflow_provider_dialnexa.operators.dialnexa import DialNexaGetCallOperator
from airflow_provider_dialnexa.sensors.dialnexa import DialNexaCallSensor

log = logging.getLogger(__name__)

#: The ids ``make demo`` creates in the simulator; a real deployment passes its own in the run conf.
DEFAULT_CALL_IDS = ["call_demo_completed", "call_demo_busy", "call_demo_no_answer", "call_demo_failed"]
DEFAULT_SQLITE_PATH = os.environ.get("DIALNEXA_DEMO_DB", "/tmp/dialnexa_call_outcomes.db")  # noqa: S108

COLUMNS = (
    "call_id",
    "status",
    "end_reason",
    "duration_seconds",
    "sentiment",
    "created_at",
    "ended_at",
    "summary",
    "transcript_chars",
    "loaded_by_run",
)
CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS call_outcomes (
    call_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    end_reason TEXT,
    duration_seconds REAL,
    sentiment TEXT,
    created_at TEXT,
    ended_at TEXT,
    summary TEXT,
    transcript_chars INTEGER,
    loaded_by_run TEXT
)
"""
UPSERT = (
    f"INSERT INTO call_outcomes ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))}) "  # noqa: S608
    "ON CONFLICT(call_id) DO UPDATE SET " + ", ".join(f"{col} = excluded.{col}" for col in COLUMNS[1:])
)


def first_of(record: dict[str, Any], *keys: str) -> Any:
    """The first non-null value among the spellings DialNexa uses for one field."""
    return next((record[key] for key in keys if record.get(key) is not None), None)


with DAG(
    dag_id="dialnexa_call_outcomes",
    description="Wait for DialNexa calls to end and upsert their outcomes into SQLite",
    schedule="@hourly",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["dialnexa", "example"],
    params={
        "call_ids": Param(
            DEFAULT_CALL_IDS,
            type="array",
            items={"type": "string", "minLength": 1},
            minItems=1,
            description="DialNexa call ids to wait for and load.",
        ),
        "sqlite_path": Param(DEFAULT_SQLITE_PATH, type="string", minLength=1, description="SQLite file to load."),
    },
) as dag:

    @task
    def call_ids() -> list[str]:
        """The run's call ids (from the params/conf), without duplicates, in order."""
        ids: list[str] = get_current_context()["params"]["call_ids"]
        return list(dict.fromkeys(ids))

    ids = call_ids()

    # One deferred wait per call. Every terminal status is success here: busy/no_answer are data.
    waits = DialNexaCallSensor.partial(
        task_id="wait_for_call",
        deferrable=True,
        poke_interval=5,
    ).expand(call_id=ids)

    # The full record, for XCom: nothing excluded (the transform needs transcript and summary), but
    # phone numbers masked, since XCom sits in the metadata DB. Use exclude_fields to slim it further.
    records = DialNexaGetCallOperator.partial(
        task_id="fetch_call",
        mask_phone_numbers=True,
    ).expand(call_id=ids)

    @task
    def to_row(record: dict[str, Any]) -> dict[str, Any]:
        """Flatten one call record into a table row, whichever field spellings DialNexa used."""
        transcript = record.get("transcript")
        duration = first_of(record, "duration_seconds", "duration_sec", "duration")
        return {
            "call_id": record["id"],
            "status": call_status.normalise(record.get("status")),
            "end_reason": record.get("end_reason"),
            "duration_seconds": None if duration is None else float(duration),
            "sentiment": record.get("sentiment"),
            "created_at": first_of(record, "created_at", "createdAt"),
            "ended_at": first_of(record, "ended_at", "endedAt"),
            "summary": record.get("summary"),
            "transcript_chars": len(transcript) if isinstance(transcript, str) else 0,
        }

    @task
    def load(rows: list[dict[str, Any]]) -> int:
        """Upsert the rows keyed by call_id, in one transaction, so re-runs never duplicate a call."""
        context = get_current_context()
        path = context["params"]["sqlite_path"]
        run_id = context["run_id"]
        # rows[:] reads every mapped row in one request (iterating would fetch them one by one).
        values = [tuple({**row, "loaded_by_run": run_id}[col] for col in COLUMNS) for row in rows[:]]
        db = sqlite3.connect(path)
        try:
            with db:  # one transaction: committed on success, rolled back on error
                db.execute(CREATE_TABLE)
                db.executemany(UPSERT, values)
        finally:
            db.close()
        log.info("Upserted %d call outcomes into %s", len(values), path)
        return len(values)

    waits >> records
    rows = to_row.expand(record=records.output)
    load(rows)  # type: ignore[arg-type]  # Airflow resolves the XComArg to the list of rows at run time
