"""Place a call to every lead, wait for each call to end, and upsert the outcomes into SQLite.

One mapped task per lead places the call with ``DialNexaCreateCallOperator``, at most once per task
instance: the call's ``metadata`` carries a correlation value derived from the DAG id, run id, task id
and map index, a Create Call that may have reached DialNexa is reconciled through List Calls before it
is ever sent again, and a retried task (``retries=2``) adopts the call its earlier try placed. Each
task then defers until its call ends (no worker slot is held while calls ring and talk) and returns the
finished record, phone numbers masked and transcript left out. A transform flattens each record into
a row and the load upserts the rows keyed by ``call_id``.

Leads come from the ``leads`` param (a small inline list here; a real DAG would read them from the
warehouse)::

    airflow dags test dialnexa_place_and_load -c '{"leads": [{"lead_id": "L-1", "phone_number": "+14155550101"}]}'

The table goes to the ``sqlite_path`` param (default: ``$DIALNEXA_DEMO_DB`` or
``/tmp/dialnexa_placed_calls.db``); the connection is ``dialnexa_default``. Parsing this file reads no
connection and does no I/O.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from datetime import datetime
from typing import Any

from airflow.providers.common.compat.sdk import DAG, Param, get_current_context, task

from airflow_provider_dialnexa import status as call_status
from airflow_provider_dialnexa.operators.dialnexa import DialNexaCreateCallOperator

log = logging.getLogger(__name__)

#: Fictional numbers (555-01xx) and DialNexa's documented example agent id.
DEFAULT_LEADS = [
    {"lead_id": "L-1001", "phone_number": "+14155550101"},
    {"lead_id": "L-1002", "phone_number": "+14155550102"},
    {"lead_id": "L-1003", "phone_number": "+14155550103"},
]
DEFAULT_AGENT_ID = "agent_2g7Xy3tY53gRlp"
DEFAULT_SQLITE_PATH = os.environ.get("DIALNEXA_DEMO_DB", "/tmp/dialnexa_placed_calls.db")  # noqa: S108

COLUMNS = ("call_id", "lead_id", "status", "end_reason", "duration_seconds", "created_at", "ended_at", "summary")
CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS placed_calls (
    call_id TEXT PRIMARY KEY,
    lead_id TEXT NOT NULL,
    status TEXT NOT NULL,
    end_reason TEXT,
    duration_seconds REAL,
    created_at TEXT,
    ended_at TEXT,
    summary TEXT
)
"""
UPSERT = (
    f"INSERT INTO placed_calls ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))}) "  # noqa: S608
    "ON CONFLICT(call_id) DO UPDATE SET " + ", ".join(f"{col} = excluded.{col}" for col in COLUMNS[1:])
)


def first_of(record: dict[str, Any], *keys: str) -> Any:
    """The first non-null value among the spellings DialNexa uses for one field."""
    return next((record[key] for key in keys if record.get(key) is not None), None)


with DAG(
    dag_id="dialnexa_place_and_load",
    description="Place DialNexa calls to leads, wait for them to end, upsert the outcomes into SQLite",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    doc_md=__doc__,
    tags=["dialnexa", "example"],
    params={
        "leads": Param(
            DEFAULT_LEADS,
            type="array",
            items={
                "type": "object",
                "properties": {"lead_id": {"type": "string"}, "phone_number": {"type": "string"}},
                "required": ["lead_id", "phone_number"],
            },
            minItems=1,
            description="Leads to call: lead_id and an E.164 phone_number each.",
        ),
        "agent_id": Param(DEFAULT_AGENT_ID, type="string", minLength=1, description="Agent placing the calls."),
        "sqlite_path": Param(DEFAULT_SQLITE_PATH, type="string", minLength=1, description="SQLite file to load."),
    },
) as dag:

    @task
    def call_requests() -> list[dict[str, Any]]:
        """One Create Call per lead (first occurrence of each lead_id), as operator keyword arguments."""
        params = get_current_context()["params"]
        leads: dict[str, dict[str, Any]] = {}
        for lead in params["leads"]:
            leads.setdefault(lead["lead_id"], lead)
        return [
            {
                "phone_number": lead["phone_number"],
                "agent_id": params["agent_id"],
                "metadata": {"lead_id": lead_id},
            }
            for lead_id, lead in leads.items()
        ]

    # Placed once per task instance, even across the retries; waits deferred, then returns the
    # finished record without the transcript, recording URL and analysis, numbers masked.
    records = DialNexaCreateCallOperator.partial(
        task_id="place_call",
        wait_for_completion=True,
        poll_interval=5,
        exclude_fields=["transcript", "recording_url", "analysis", "post_call_analysis"],
        retries=2,
    ).expand_kwargs(call_requests())

    @task
    def to_row(record: dict[str, Any]) -> dict[str, Any]:
        """Flatten one finished call into a table row, whichever field spellings DialNexa used."""
        duration = first_of(record, "duration_seconds", "duration_sec", "duration")
        metadata = record.get("metadata")
        lead_id = metadata.get("lead_id") if isinstance(metadata, dict) else None
        return {
            "call_id": record["id"],
            "lead_id": "" if lead_id is None else str(lead_id),
            "status": call_status.normalise(record.get("status")),
            "end_reason": record.get("end_reason"),
            "duration_seconds": None if duration is None else float(duration),
            "created_at": first_of(record, "created_at", "createdAt"),
            "ended_at": first_of(record, "ended_at", "endedAt"),
            "summary": record.get("summary"),
        }

    @task
    def load(rows: list[dict[str, Any]]) -> int:
        """Upsert the rows keyed by call_id, in one transaction."""
        path = get_current_context()["params"]["sqlite_path"]
        values = [tuple(row[col] for col in COLUMNS) for row in rows[:]]  # rows[:]: one request for all
        db = sqlite3.connect(path)
        try:
            with db:
                db.execute(CREATE_TABLE)
                db.executemany(UPSERT, values)
        finally:
            db.close()
        log.info("Upserted %d placed calls into %s", len(values), path)
        return len(values)

    load(to_row.expand(record=records.output))  # type: ignore[arg-type]  # resolved to the list of rows at run time
