"""Event-driven call-outcome ETL: DialNexa's webhooks start this DAG as calls end, and it loads them. No polling.

The provider's receiver (``POST /dialnexa/webhooks/dialnexa_default`` on the api-server / webserver) turns
every signed call-ended delivery into one event on the connection's calls asset, exactly once per call.
This DAG is scheduled on that asset, so a run starts as calls end; ``calls_from_events`` turns the run's
triggering events (every one of them, each call once) into call records, and the load upserts one row per
call into SQLite, keyed by ``call_id``: the table of ``dialnexa_call_outcomes`` and ``dialnexa_call_export``.

By default it sends **no request to DialNexa**: the events carry the id, the normalised status, the end
reason and duration. DialNexa's ``call_ended`` says ``hangup`` for every call that never connected (busy,
no answer, ...); set the ``full_records`` param (or a run conf) to fetch each call's full record with one
Get Call instead (real status, transcript length, summary, sentiment).

Pair it with the hourly ``dialnexa_call_export``: a delivery DialNexa gives up on (after its retries) is
still loaded by the export within the hour, and both upsert the same row. A slim row never overwrites what
the export (or a full record) already loaded: its missing fields and its coarser status keep the values
in the table.

Register the webhook once (``DialNexaHook().ensure_webhook(url)``, see docs/webhooks-registration.md).
Parsing this file does no I/O; the table goes to the ``sqlite_path`` param (default ``$DIALNEXA_WEBHOOK_DB``,
else ``$DIALNEXA_DEMO_DB``, else ``/tmp/dialnexa_call_outcomes.db``).
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections import Counter
from datetime import datetime
from typing import Any

from airflow.providers.common.compat.sdk import DAG, Param, get_current_context, task

from airflow_provider_dialnexa import status as call_status
from airflow_provider_dialnexa.webhooks import calls_ended_asset, calls_from_events

log = logging.getLogger(__name__)

CONN_ID = "dialnexa_default"
DEFAULT_SQLITE_PATH = os.environ.get(
    "DIALNEXA_WEBHOOK_DB",
    os.environ.get("DIALNEXA_DEMO_DB", "/tmp/dialnexa_call_outcomes.db"),  # noqa: S108
)

# The table of dialnexa_call_outcomes.py and dialnexa_call_export.py, so all three load into one table.
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
_INSERT = f"INSERT INTO call_outcomes ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))}) "  # noqa: S608
#: Full records: the same upsert as the other example DAGs.
UPSERT_FULL = _INSERT + "ON CONFLICT(call_id) DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in COLUMNS[1:])
#: Slim records (from the events alone): fill what the row lacks, never replace what a fuller load wrote.
UPSERT_SLIM = (
    _INSERT
    + "ON CONFLICT(call_id) DO UPDATE SET status = call_outcomes.status, "
    + ", ".join(f"{c} = COALESCE(call_outcomes.{c}, excluded.{c})" for c in COLUMNS[2:-1])
    + ", loaded_by_run = call_outcomes.loaded_by_run"
)


def first_of(record: dict[str, Any], *keys: str) -> Any:
    """The first non-null value among the spellings DialNexa uses for one field."""
    return next((record[key] for key in keys if record.get(key) is not None), None)


def to_row(record: dict[str, Any], run_id: str, *, full: bool) -> tuple[Any, ...]:
    """One call (slim from an event, or a full record) as a table row; unknown fields stay NULL."""
    transcript = record.get("transcript")
    duration = first_of(record, "duration_seconds", "duration_sec", "duration")
    row = {
        "call_id": record["id"],
        "status": call_status.normalise(record.get("status")),
        "end_reason": first_of(record, "end_reason", "hangup_reason", "disconnection_reason"),
        "duration_seconds": None if duration is None else float(duration),
        "sentiment": record.get("sentiment"),
        "created_at": first_of(record, "created_at", "createdAt"),
        "ended_at": first_of(record, "ended_at", "endedAt"),
        "summary": record.get("summary"),
        "transcript_chars": len(transcript) if isinstance(transcript, str) else (0 if full else None),
        "loaded_by_run": run_id,
    }
    return tuple(row[col] for col in COLUMNS)


with DAG(
    dag_id="dialnexa_webhook_outcomes",
    description="Event-driven: load DialNexa calls as their webhooks report them ended (no polling)",
    schedule=[calls_ended_asset(CONN_ID)],
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,  # events that arrive during a run start the next one
    doc_md=__doc__,
    tags=["dialnexa", "example", "webhooks"],
    params={
        "full_records": Param(
            False,
            type="boolean",
            description="Fetch each call's full record (one Get Call per call) instead of loading the events alone.",
        ),
        "sqlite_path": Param(DEFAULT_SQLITE_PATH, type="string", minLength=1, description="SQLite file to load."),
    },
) as dag:

    @task
    def load_ended_calls() -> dict[str, Any]:
        """Every call the run's webhook events report, upserted once each, in one transaction.

        Reads and loads in one task, so full records (transcripts) never pass through XCom.
        """
        context: Any = get_current_context()
        full = bool(context["params"]["full_records"])
        calls = calls_from_events(context, conn_id=CONN_ID, full_records=full)
        values = [to_row(call, context["run_id"], full=full) for call in calls]
        path = context["params"]["sqlite_path"]
        db = sqlite3.connect(path, timeout=60)
        try:
            with db:  # one transaction: committed on success, rolled back on error
                db.execute(CREATE_TABLE)
                db.executemany(UPSERT_FULL if full else UPSERT_SLIM, values)
        finally:
            db.close()
        statuses = Counter(row[1] for row in values)
        log.info("Upserted %d calls into %s (%s)", len(values), path, dict(statuses))
        return {"calls": len(values), "full_records": full, "statuses": dict(statuses)}

    load_ended_calls()
