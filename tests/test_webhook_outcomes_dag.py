"""The example DAG ``dags/dialnexa_webhook_outcomes.py`` in real Airflow (``dag.test()``), on both lines.

``dag.test()`` creates its own run, so the run gets its triggering events the way the scheduler gives
them: asset (dataset) events in the metadata DB, consumed by the run. The events' ``extra`` is what the
receiver records for DialNexa-shaped deliveries (its own parser builds it), including a duplicate
report of one call under the dotted name.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from _compat import AIRFLOW_V_3, dag_bag, return_values

from airflow_provider_dialnexa.simulator import Simulator
from airflow_provider_dialnexa.webhooks import calls_asset_uri
from airflow_provider_dialnexa.webhooks.events import parse

DAG_ID = "dialnexa_webhook_outcomes"


def delivery(event: str, call_id: str, status: str, **fields: Any) -> dict[str, Any]:
    """A DialNexa-shaped delivery body (API-FACTS §5.4), as the receiver records it (its ``extra``)."""
    body = {"event_type": event, "payload": {"call": {"id": call_id, "status": status, **fields}}}
    return parse(json.dumps(body).encode()).asset_extra("dialnexa_default")


@contextmanager
def runs_consume(extras: list[dict[str, Any]]) -> Iterator[None]:
    """Make the run ``dag.test()`` creates consume one asset event per ``extra`` (as an asset-triggered run)."""
    from airflow_provider_dialnexa.webhooks._adapter import airflow_line, create_asset, find_asset

    line = airflow_line()
    import importlib

    # Where dag.test() creates its run: airflow.models.dagrun (3.x) / airflow.models.dag (2.11).
    module: Any = importlib.import_module("airflow.models.dagrun" if AIRFLOW_V_3 else "airflow.models.dag")
    name = "get_or_create_dagrun" if AIRFLOW_V_3 else "_get_or_create_dagrun"
    original: Callable[..., Any] = getattr(module, name)

    def create_with_events(*args: Any, **kwargs: Any) -> Any:
        run = original(*args, **kwargs)
        session = kwargs["session"]
        uri = calls_asset_uri("dialnexa_default")
        asset_id, _ = find_asset(session, uri) or create_asset(session, uri)  # (id, name)
        consumed = run.consumed_asset_events if AIRFLOW_V_3 else run.consumed_dataset_events
        for extra in extras:
            key = "asset_id" if AIRFLOW_V_3 else "dataset_id"
            event = line.asset_event(**{key: asset_id}, extra=extra)
            session.add(event)
            consumed.append(event)
        session.commit()
        return run

    patcher = pytest.MonkeyPatch()
    patcher.setattr(module, name, create_with_events)
    try:
        yield
    finally:
        patcher.undo()


def run_dag(folder: Path, extras: list[dict[str, Any]], **conf: Any) -> tuple[Any, Any]:
    dag = dag_bag(str(folder)).get_dag(DAG_ID)
    assert dag is not None
    with runs_consume(extras):
        run = dag.test(run_conf=conf)
    assert run.state == "success"
    return run, return_values(run.run_id, DAG_ID)["load_ended_calls"][-1]


def rows(path: Path) -> dict[str, dict[str, Any]]:
    with sqlite3.connect(path) as db:
        db.row_factory = sqlite3.Row
        return {row["call_id"]: dict(row) for row in db.execute("SELECT * FROM call_outcomes")}


EXTRAS = [
    delivery("call_ended", "call_wh_done", "completed", duration=42, hangup_reason="user_disconnected"),
    delivery("call_ended", "call_wh_busy", "hangup", hangup_reason="user_busy"),
    # the same call under the dotted name (the receiver records one event per call; a run may still hold two)
    delivery("call.completed", "call_wh_done", "completed", duration=42, hangup_reason="user_disconnected"),
    delivery("call.failed", "call_wh_failed", "failed"),
]


def test_loads_every_triggering_call_once_without_a_request(
    airflow_db: Path, dialnexa_conn: Simulator, tmp_path: Path
) -> None:
    db = tmp_path / "outcomes.db"
    run, summary = run_dag(airflow_db, EXTRAS, sqlite_path=str(db))
    assert summary == {
        "calls": 3,
        "full_records": False,
        "statuses": {"completed": 1, "hangup": 1, "failed": 1},
    }
    loaded = rows(db)
    assert set(loaded) == {"call_wh_done", "call_wh_busy", "call_wh_failed"}
    assert loaded["call_wh_done"]["duration_seconds"] == 42
    assert loaded["call_wh_done"]["end_reason"] == "user_disconnected"
    assert loaded["call_wh_busy"]["end_reason"] == "user_busy"
    assert {row["loaded_by_run"] for row in loaded.values()} == {run.run_id}
    assert loaded["call_wh_done"]["transcript_chars"] is None  # unknown, not "no transcript"
    assert dialnexa_conn.stats()["requests"] == 0  # zero requests to DialNexa


def test_a_slim_row_never_overwrites_a_fuller_load(airflow_db: Path, dialnexa_conn: Simulator, tmp_path: Path) -> None:
    db = tmp_path / "outcomes.db"
    run_dag(airflow_db, [], sqlite_path=str(db))  # creates the table, loads nothing
    with sqlite3.connect(db) as conn:  # what the hourly export loaded first for this call
        conn.execute(
            "INSERT INTO call_outcomes VALUES ('call_wh_busy', 'busy', 'user_busy', 0, 'unknown', "
            "'2026-10-05T06:00:00.000Z', '2026-10-05T06:00:12.000Z', NULL, 0, 'export_run')"
        )
    run_dag(airflow_db, EXTRAS[1:2], sqlite_path=str(db))
    assert rows(db)["call_wh_busy"] == {
        "call_id": "call_wh_busy",
        "status": "busy",  # not the webhook's coarser "hangup"
        "end_reason": "user_busy",
        "duration_seconds": 0,
        "sentiment": "unknown",
        "created_at": "2026-10-05T06:00:00.000Z",
        "ended_at": "2026-10-05T06:00:12.000Z",
        "summary": None,
        "transcript_chars": 0,
        "loaded_by_run": "export_run",
    }


def test_full_records_fetch_each_call_once(airflow_db: Path, dialnexa_conn: Simulator, tmp_path: Path) -> None:
    sim = dialnexa_conn
    done = sim.create_call(outcome="completed", queued_s=0, ring_s=1, talk_s=20, age_s=60)
    busy = sim.create_call(outcome="busy", queued_s=0, ring_s=1, talk_s=0, age_s=60)
    extras = [
        delivery("call_ended", done, "completed"),
        delivery("call_ended", busy, "hangup"),
        delivery("call.completed", done, "completed"),
    ]
    db = tmp_path / "outcomes.db"
    _, summary = run_dag(airflow_db, extras, sqlite_path=str(db), full_records=True)
    assert summary["statuses"] == {"completed": 1, "busy": 1}  # Get Call's status, not the webhook's "hangup"
    loaded = rows(db)
    assert loaded[done]["transcript_chars"] > 0
    assert loaded[done]["summary"]
    assert loaded[busy]["transcript_chars"] == 0
    assert (sim.get_count(done), sim.get_count(busy)) == (1, 1)
