"""The example campaign DAG (``dags/dialnexa_campaign.py``, issue #20) end to end through ``dag.test()``.

Leads from SQLite, a CSV in object storage, one batch (its first upload's answer lost), a deferred wait in the
triggerer, the export and the upsert, against the simulator over real sockets.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from _compat import dag_bag, return_values

from airflow_provider_dialnexa.simulator import Fault, Simulator

DAG_ID = "dialnexa_campaign"


def run_dag(dags: Path, conf: dict[str, Any]) -> tuple[str, str, dict[str, dict[int, Any]]]:
    bag = dag_bag(str(dags))
    assert bag.import_errors == {}
    run = bag.dags[DAG_ID].test(run_conf=conf)
    return str(run.state), run.run_id, return_values(run.run_id, DAG_ID)


def test_the_campaign_dag_uploads_once_waits_exports_and_upserts(
    simulator: Simulator, api_key: str, airflow_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    extra = {"timeout": 5, "max_retries": 2, "rate_limit_per_minute": 0}
    conn = {"conn_type": "dialnexa", "host": simulator.url, "password": api_key, "extra": extra}
    monkeypatch.setenv("AIRFLOW_CONN_DIALNEXA_DEFAULT", json.dumps(conn))
    monkeypatch.setenv("DIALNEXA_CAMPAIGN_POLL_S", "1")
    simulator.configure_batches(
        dial_interval_s=0.05,
        call_s=0.1,
        retry_wait_s=0.2,
        mix={"completed": 1},
        outcomes={"+14155550101": ["no_answer", "completed"], "+14155550102": ["busy", "busy", "busy"]},
    )
    simulator.add_fault(Fault(kind="lost_504", route="batch_create", count=1))  # created, answer lost
    db = tmp_path / "campaign.db"

    state, run_id, xcoms = run_dag(airflow_db, {"sqlite_path": str(db), "storage": f"file://{tmp_path}/store"})

    assert state == "success"
    [batch] = simulator.batches()
    assert len(simulator.requests(route="batch_create")) == 1  # reconciled through List Batch Calls, not re-sent
    assert xcoms["create_batch"][-1]["batch_id"] == batch["id"]
    assert xcoms["wait_for_batch"][-1]["status"] == "completed"
    exported = xcoms["export_outcomes"][-1]
    assert (exported["leads"], exported["calls"]) == (12, 12 + 1 + 2)
    assert xcoms["upsert_outcomes"][-1] == {
        "batch_id": batch["id"],
        "rows": 12,
        "statuses": {"busy": 1, "completed": 11},
    }
    with sqlite3.connect(db) as con:
        rows = dict(con.execute("SELECT lead_id, attempts || ':' || status FROM lead_outcomes").fetchall())
    assert len(rows) == 12
    assert rows["L-101"] == "2:completed"
    assert rows["L-102"] == "3:busy"
    store = Path(tmp_path / "store")
    [folder] = list(store.iterdir())
    assert sorted(p.name for p in folder.iterdir()) == ["leads.csv", "outcomes.jsonl"]
    del run_id
