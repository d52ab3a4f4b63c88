"""Scheduled call-outcome ETL: every hour, export every DialNexa call created in that hour, then load it.

No call ids needed: each run exports exactly the calls created in its data interval
``[data_interval_start, data_interval_end)`` to one gzipped JSON Lines file (phone numbers masked), waiting
in the triggerer for calls of the interval that are still ringing or talking, and then upserts one row per
call into SQLite keyed by ``call_id`` (the same table and upsert as ``dialnexa_call_outcomes``). Adjacent
runs never share a call and never miss one, so backfilling (``catchup=True`` or ``airflow dags backfill``)
loads each hour once, and re-running an hour rewrites its file and updates its rows instead of duplicating.

Files go to the ``export_dir`` param (default ``$DIALNEXA_EXPORT_DIR`` or ``/tmp/dialnexa_exports``; any
object-storage URL such as ``s3://bucket/dialnexa`` works), the table to ``sqlite_path`` (default
``$DIALNEXA_DEMO_DB`` or ``/tmp/dialnexa_call_outcomes.db``). Parsing this file does no I/O; the connection
is ``dialnexa_default``.

A second DAG here, ``dialnexa_call_export_check``, is scheduled on the export task's asset alias
(``export_alias("dialnexa_call_export", "export_calls")``): the scheduler runs it after each export, with the
asset events of the files written. It re-counts each file against its event's ``calls`` and records the
window in the table ``export_windows`` of the same SQLite file: the place to hang a load or a dbt run.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
import sqlite3
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from airflow.providers.common.compat.sdk import DAG, ObjectStoragePath, Param, get_current_context, task
from airflow.timetables.interval import CronDataIntervalTimetable

from airflow_provider_dialnexa import status as call_status
from airflow_provider_dialnexa.operators.dialnexa import DialNexaExportCallsOperator, export_alias

log = logging.getLogger(__name__)

DEFAULT_EXPORT_DIR = os.environ.get("DIALNEXA_EXPORT_DIR", "/tmp/dialnexa_exports")  # noqa: S108
DEFAULT_SQLITE_PATH = os.environ.get("DIALNEXA_DEMO_DB", "/tmp/dialnexa_call_outcomes.db")  # noqa: S108
CHUNK = 1000

# The table of dialnexa_call_outcomes.py, so both DAGs can load into one table.
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
CREATE_WINDOWS_TABLE = """
CREATE TABLE IF NOT EXISTS export_windows (
    window_start TEXT PRIMARY KEY,
    window_end TEXT NOT NULL,
    calls INTEGER NOT NULL,
    statuses TEXT NOT NULL,
    path TEXT NOT NULL,
    checked_by_run TEXT
)
"""
#: What the check DAG is scheduled on: the asset alias the export task resolves to each file it writes.
EXPORTS = export_alias("dialnexa_call_export", "export_calls")
UPSERT = (
    f"INSERT INTO call_outcomes ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))}) "  # noqa: S608
    "ON CONFLICT(call_id) DO UPDATE SET " + ", ".join(f"{col} = excluded.{col}" for col in COLUMNS[1:])
)


def first_of(record: dict[str, Any], *keys: str) -> Any:
    """The first non-null value among the spellings DialNexa uses for one field."""
    return next((record[key] for key in keys if record.get(key) is not None), None)


def to_row(record: dict[str, Any], run_id: str) -> tuple[Any, ...]:
    """One call record as a table row, whichever field spellings DialNexa used."""
    transcript = record.get("transcript")
    duration = first_of(record, "duration_seconds", "duration_sec", "duration")
    row = {
        "call_id": record["id"],
        "status": call_status.normalise(record.get("status")),
        "end_reason": record.get("end_reason"),
        "duration_seconds": None if duration is None else float(duration),
        "sentiment": record.get("sentiment"),
        "created_at": first_of(record, "created_at", "createdAt"),
        "ended_at": first_of(record, "ended_at", "endedAt"),
        "summary": record.get("summary"),
        "transcript_chars": len(transcript) if isinstance(transcript, str) else 0,
        "loaded_by_run": run_id,
    }
    return tuple(row[col] for col in COLUMNS)


def read_records(path: str) -> Iterator[dict[str, Any]]:
    """Stream the records of an export file (gzip when the name ends ``.gz``)."""
    with ObjectStoragePath(path).open("rb") as raw:
        stream = gzip.GzipFile(fileobj=raw) if path.endswith(".gz") else raw
        for line in io.TextIOWrapper(stream, encoding="utf-8"):
            if line.strip():
                yield json.loads(line)


with DAG(
    dag_id="dialnexa_call_export",
    description="Hourly: export every DialNexa call of the interval to JSONL, then upsert it into SQLite",
    # Hourly *intervals*: on Airflow 3 a bare "@hourly" gives each run a zero-length data interval.
    schedule=CronDataIntervalTimetable("@hourly", timezone="UTC"),
    start_date=datetime(2026, 1, 1),
    catchup=False,  # True backfills every hour since start_date, each exactly once
    max_active_runs=4,
    doc_md=__doc__,
    tags=["dialnexa", "example"],
    params={
        "export_dir": Param(DEFAULT_EXPORT_DIR, type="string", minLength=1, description="Folder or URL for files."),
        "sqlite_path": Param(DEFAULT_SQLITE_PATH, type="string", minLength=1, description="SQLite file to load."),
    },
) as dag:
    export = DialNexaExportCallsOperator(
        task_id="export_calls",
        destination="{{ params.export_dir }}/calls_{{ data_interval_start.strftime('%Y%m%dT%H%M') }}.jsonl.gz",
        mask_phone_numbers=True,
        timeout=timedelta(hours=2),  # calls of the last hour that still ring or talk: wait, deferred
    )

    @task
    def load(summary: dict[str, Any]) -> dict[str, Any]:
        """Upsert the file's calls keyed by call_id, in one transaction, streaming in chunks."""
        context = get_current_context()
        run_id = context["run_id"]
        db = sqlite3.connect(context["params"]["sqlite_path"])
        loaded = 0
        try:
            with db:  # one transaction: committed on success, rolled back on error
                db.execute(CREATE_TABLE)
                chunk: list[tuple[Any, ...]] = []
                for record in read_records(summary["path"]):
                    chunk.append(to_row(record, run_id))
                    if len(chunk) == CHUNK:
                        db.executemany(UPSERT, chunk)
                        loaded, chunk = loaded + len(chunk), []
                db.executemany(UPSERT, chunk)
                loaded += len(chunk)
        finally:
            db.close()
        log.info("Upserted %d calls of [%s, %s)", loaded, summary["window_start"], summary["window_end"])
        return {"window_start": summary["window_start"], "calls": summary["calls"], "rows": loaded}

    load(export.output)  # type: ignore[arg-type]  # Airflow resolves the XComArg at run time


def exported_files(context: Any) -> list[dict[str, Any]]:
    """The export summaries (asset event ``extra``) behind this run, one per file, the latest event winning.

    Airflow 3 keys the triggering events by asset and by alias; Airflow 2.11 by dataset URI only.
    """
    if "triggering_asset_events" in context:
        events = list(context["triggering_asset_events"].get(EXPORTS, []))
    else:  # pragma: no cover - Airflow 2.11 leg
        events = [event for group in context["triggering_dataset_events"].values() for event in group]
    latest: dict[str, dict[str, Any]] = {}
    for event in sorted(events, key=lambda e: e.timestamp):
        extra = dict(event.extra or {})
        if "path" in extra and "window_start" in extra:
            latest[extra["path"]] = extra
    return list(latest.values())


with DAG(
    dag_id="dialnexa_call_export_check",
    description="After each export: re-count the file against its asset event and record the window in SQLite",
    schedule=[EXPORTS],
    start_date=datetime(2026, 1, 1),
    catchup=False,
    doc_md=__doc__,
    tags=["dialnexa", "example"],
    params={
        "sqlite_path": Param(DEFAULT_SQLITE_PATH, type="string", minLength=1, description="SQLite file to write."),
    },
) as check_dag:

    @task
    def check_exports() -> list[dict[str, Any]]:
        """Each new file holds as many calls as its event says; record its window (upsert by window start)."""
        context = get_current_context()
        checked = []
        for summary in exported_files(context):
            rows = sum(1 for _ in read_records(summary["path"]))
            if rows != summary["calls"]:
                raise ValueError(f"{summary['path']} holds {rows} calls, its asset event says {summary['calls']}")
            checked.append(summary)
        db = sqlite3.connect(context["params"]["sqlite_path"])
        try:
            with db:
                db.execute(CREATE_WINDOWS_TABLE)
                db.executemany(
                    "INSERT INTO export_windows VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(window_start) DO UPDATE SET "
                    "window_end = excluded.window_end, calls = excluded.calls, statuses = excluded.statuses, "
                    "path = excluded.path, checked_by_run = excluded.checked_by_run",
                    [
                        (
                            s["window_start"],
                            s["window_end"],
                            s["calls"],
                            json.dumps(s["statuses"]),
                            s["path"],
                            context["run_id"],
                        )
                        for s in checked
                    ],
                )
        finally:
            db.close()
        log.info("Checked %d exported file(s): %s", len(checked), [s["path"] for s in checked])
        return [{"path": s["path"], "window_start": s["window_start"], "calls": s["calls"]} for s in checked]

    check_exports()
