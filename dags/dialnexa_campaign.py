"""A campaign: leads from a SQLite table become one DialNexa batch call; its outcomes are upserted back.

1. ``pick_leads`` reads the ``leads`` table (seeding a few fictional demo leads if it is empty) and streams
   the leads that have no outcome yet to ``leads.csv`` in object storage (``storage`` param: a folder or URL,
   ``file://``, ``s3://``, ...), returning its URL.
2. ``create_batch`` (``DialNexaCreateBatchCallOperator``) uploads that file as one batch, exactly once: the
   file is checked first (a ``phone_number`` column, E.164 numbers), the title carries a token of this task
   instance, and an upload whose answer was lost is looked up in List Batch Calls, never sent twice.
3. ``wait_for_batch`` (``DialNexaBatchSensor``) waits in the triggerer, holding no worker slot, while
   DialNexa dials the leads (one batch at a time per organization, with its own retries of unanswered
   leads); the task log shows the batch's progress at every poll.
4. ``export_outcomes`` (``DialNexaExportBatchCallsOperator``) writes one line per lead, its last attempt
   (retry children included), to ``outcomes.jsonl`` next to the leads file, all or nothing.
5. ``upsert_outcomes`` upserts those lines into ``lead_outcomes`` keyed by ``lead_id`` (matched back by
   the number dialled).

Run it against the simulator with ``make demo``, or by hand::

    airflow dags test dialnexa_campaign -c '{"sqlite_path": "/tmp/campaign.db", "storage": "file:///tmp/campaign"}'

The connection is ``dialnexa_default``. ``DIALNEXA_CAMPAIGN_POLL_S`` sets the first poll interval (default
60 s; the demo uses 2). Parsing this file reads no connection and does no I/O.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import sqlite3
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

from airflow.providers.common.compat.sdk import DAG, ObjectStoragePath, Param, get_current_context, task

from airflow_provider_dialnexa.operators.dialnexa import (
    DialNexaCreateBatchCallOperator,
    DialNexaExportBatchCallsOperator,
)
from airflow_provider_dialnexa.sensors.batch import DialNexaBatchSensor

log = logging.getLogger(__name__)

DEFAULT_SQLITE_PATH = os.environ.get("DIALNEXA_DEMO_DB", "/tmp/dialnexa_campaign.db")  # noqa: S108
DEFAULT_STORAGE = os.environ.get("DIALNEXA_CAMPAIGN_STORAGE", "file:///tmp/dialnexa_campaign")
DEFAULT_AGENT_ID = "agent_2g7Xy3tY53gRlp"
POLL_S = float(os.environ.get("DIALNEXA_CAMPAIGN_POLL_S", "60"))
#: Fictional numbers (555-01xx) for an empty table.
DEMO_LEADS = [
    (f"L-{100 + i}", f"+1415555{100 + i:04d}", name)
    for i, name in enumerate(["Ana", "Ben", "Chloe", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jun", "Kai", "Lea"])
]
LEADS_TABLE = "CREATE TABLE IF NOT EXISTS leads (lead_id TEXT PRIMARY KEY, phone_number TEXT NOT NULL, name TEXT)"
OUTCOMES_TABLE = """
CREATE TABLE IF NOT EXISTS lead_outcomes (
    lead_id TEXT PRIMARY KEY,
    batch_id TEXT NOT NULL,
    call_id TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    end_reason TEXT,
    duration_seconds REAL,
    summary TEXT,
    called_at TEXT
)
"""
COLUMNS = (
    "lead_id",
    "batch_id",
    "call_id",
    "status",
    "attempts",
    "end_reason",
    "duration_seconds",
    "summary",
    "called_at",
)
UPSERT = (
    f"INSERT INTO lead_outcomes ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))}) "  # noqa: S608
    "ON CONFLICT(lead_id) DO UPDATE SET " + ", ".join(f"{col} = excluded.{col}" for col in COLUMNS[1:])
)


def digits(number: object) -> str:
    return "".join(ch for ch in str(number or "") if ch.isdigit())


def run_folder(storage: str, run_id: str) -> ObjectStoragePath:
    """This run's folder in object storage (run ids hold ':' and '+', which some stores dislike)."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in run_id)
    return ObjectStoragePath(storage.rstrip("/")) / safe


with DAG(
    dag_id="dialnexa_campaign",
    description="Leads from SQLite -> CSV in object storage -> one DialNexa batch -> wait -> export -> upsert",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    doc_md=__doc__,
    tags=["dialnexa", "example", "campaign"],
    params={
        "sqlite_path": Param(DEFAULT_SQLITE_PATH, type="string", minLength=1, description="Leads and outcomes DB."),
        "storage": Param(DEFAULT_STORAGE, type="string", minLength=1, description="Folder/URL for the files."),
        "agent_id": Param(DEFAULT_AGENT_ID, type="string", minLength=1, description="DialNexa agent."),
        "title": Param("Policy renewals", type="string", minLength=1, maxLength=35, description="Batch title."),
    },
) as dag:

    @task
    def pick_leads() -> str:
        """Stream the leads without an outcome to ``<storage>/<run>/leads.csv``; return its URL."""
        context = get_current_context()
        params = context["params"]
        db = sqlite3.connect(params["sqlite_path"])
        try:
            with db:
                db.execute(LEADS_TABLE)
                db.execute(OUTCOMES_TABLE)
                if db.execute("SELECT COUNT(*) FROM leads").fetchone()[0] == 0:
                    db.executemany("INSERT INTO leads VALUES (?, ?, ?)", DEMO_LEADS)
            rows = db.execute(
                "SELECT l.phone_number, l.lead_id, l.name FROM leads l "
                "LEFT JOIN lead_outcomes o ON o.lead_id = l.lead_id WHERE o.lead_id IS NULL ORDER BY l.lead_id"
            )
            target = run_folder(params["storage"], context["run_id"]) / "leads.csv"
            target.parent.mkdir(parents=True, exist_ok=True)
            count = 0
            with target.open("wb") as raw, io.TextIOWrapper(raw, encoding="utf-8", newline="") as out:
                writer = csv.writer(out)
                writer.writerow(["phone_number", "lead_id", "name"])  # every other column is an agent variable
                for row in rows:
                    writer.writerow(row)
                    count += 1
        finally:
            db.close()
        log.info("Wrote %d leads to %s", count, target)
        return str(target)

    create_batch = DialNexaCreateBatchCallOperator(
        task_id="create_batch",
        leads=pick_leads(),
        title="{{ params.title }}",
        agent_id="{{ params.agent_id }}",
        retries=2,  # a retry looks for the batch its earlier try created before uploading anything
    )
    batch_id = create_batch.output["batch_id"]  # type: ignore[index]  # an XComArg of one key

    wait_for_batch = DialNexaBatchSensor(
        task_id="wait_for_batch",
        batch_id=batch_id,  # type: ignore[arg-type]  # Airflow resolves the XComArg at run time
        poke_interval=POLL_S,
        max_poll_interval=max(POLL_S, 900.0),
        timeout=timedelta(hours=24),
    )

    export_outcomes = DialNexaExportBatchCallsOperator(
        task_id="export_outcomes",
        batch_id=batch_id,  # type: ignore[arg-type]
        destination="{{ ti.xcom_pull(task_ids='pick_leads') | replace('leads.csv', 'outcomes.jsonl') }}",
        records="leads",  # one line per lead: its last attempt, with lead_attempts
        exclude_fields=["transcript", "recording_url"],
    )

    @task
    def upsert_outcomes(summary: dict[str, Any]) -> dict[str, Any]:
        """Upsert one row per lead, keyed by lead_id (found through the number dialled), in one transaction."""
        params = get_current_context()["params"]
        db = sqlite3.connect(params["sqlite_path"])
        statuses: Counter[str] = Counter()
        try:
            with db:
                db.execute(OUTCOMES_TABLE)
                lead_of = {digits(phone): lead for lead, phone in db.execute("SELECT lead_id, phone_number FROM leads")}
                rows = []
                with ObjectStoragePath(summary["path"]).open("rb") as raw:
                    for line in io.TextIOWrapper(raw, encoding="utf-8"):
                        record = json.loads(line)
                        lead = lead_of.get(digits(record.get("to_number") or record.get("to_phone_number")))
                        if lead is None:
                            log.warning("Call %s dialled a number not in the leads table", record.get("id"))
                            continue
                        statuses[str(record.get("status"))] += 1
                        duration = record.get("duration_seconds", record.get("duration"))
                        rows.append(
                            (
                                lead,
                                summary["batch_id"],
                                record["id"],
                                record.get("status"),
                                record.get("lead_attempts", 1),
                                record.get("end_reason"),
                                None if duration is None else float(duration),
                                record.get("summary"),
                                record.get("createdAt", record.get("created_at")),
                            )
                        )
                db.executemany(UPSERT, rows)
        finally:
            db.close()
        log.info("Upserted %d lead outcomes of batch %s: %s", len(rows), summary["batch_id"], dict(statuses))
        return {"batch_id": summary["batch_id"], "rows": len(rows), "statuses": dict(sorted(statuses.items()))}

    wait_for_batch >> export_outcomes
    upsert_outcomes(export_outcomes.output)  # type: ignore[arg-type]
