"""The export's asset alias in a real Airflow (issue #21): an export run resolves it to the file it wrote, and the
scheduler runs the DAG scheduled on the alias (``dialnexa_call_export_check``) with that event.

One stack (the components of ``test_fullstack.py``, parsing only ``dags/dialnexa_call_export.py``) with the
scheduler's own scheduling on, since it is what creates asset-triggered runs; so unpausing the export DAG also
starts its latest hourly run, an export like any other: the check below holds for every export run. The
OpenLineage provider writes its events to files, and the export task's COMPLETE event is checked too.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from _assets import EVENTS_SQL, TRIGGERED_RUN_TYPE, as_events
from _compat import AIRFLOW_V_3
from test_fullstack import API_KEY, Stack, airflow_stack

from airflow_provider_dialnexa.simulator import SimulatorProcess

pytestmark = [pytest.mark.fullstack, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[1]
EXPORT_DAG = "dialnexa_call_export"
CHECK_DAG = "dialnexa_call_export_check"
ALIAS = "dialnexa-export/dialnexa_call_export/export_calls"
RUN_ID = "assets_run"
CALLS = 45  # per seeded hour


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("fullstack_assets_home")
    dags = home / "dags"
    dags.mkdir()
    (dags / f"{EXPORT_DAG}.py").symlink_to(ROOT / "dags" / f"{EXPORT_DAG}.py")
    settings = {
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "True",  # asset-triggered runs are part of the scheduler's scheduling
        "DIALNEXA_EXPORT_DIR": str(home / "exports"),  # the DAGs' defaults, also for the runs the scheduler starts
        "DIALNEXA_DEMO_DB": str(home / "outcomes.db"),
        "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(
            {"type": "file", "log_file_path": str(home / "openlineage" / "event"), "append": False}
        ),
    }
    (home / "openlineage").mkdir()
    with SimulatorProcess(api_key=API_KEY, seed=5) as sim, airflow_stack(home, sim, dags, **settings) as stack:
        yield stack


def xcoms(stack: Stack, dag_id: str, task_id: str) -> dict[str, Any]:
    """``return_value`` of one task in every run of a DAG, by run id."""
    rows = stack.query(
        "SELECT run_id, value FROM xcom WHERE dag_id = ? AND task_id = ? AND key = 'return_value'", dag_id, task_id
    )
    return {run_id: json.loads(value) if isinstance(value, str | bytes) else value for run_id, value in rows}


def runs(stack: Stack, dag_id: str) -> dict[str, tuple[str, str]]:
    """run id -> (state, run type) of every run of a DAG."""
    rows = stack.query("SELECT run_id, state, run_type FROM dag_run WHERE dag_id = ?", dag_id)
    return {run_id: (state, run_type) for run_id, state, run_type in rows}


def seed_recent_hours(stack: Stack) -> list[float]:
    """Ended calls in the last three whole hours and the current one so far (whichever hour a run exports, on
    either Airflow line, it has calls unless the hour turned meanwhile); returns their creation times."""
    now = datetime.now(UTC).timestamp()
    hour = now - now % 3600
    created: list[float] = []
    for start, end in [(hour - 3600 * k, hour - 3600 * (k - 1)) for k in (3, 2, 1)] + [(hour, now - 1)]:
        if end > start:
            stack.sim.seed_calls(CALLS, start, end)
            step = (end - start) / CALLS
            created += [start + i * step for i in range(CALLS)]  # as the simulator spreads them
    return created


def test_each_export_resolves_the_alias_to_its_file_and_triggers_the_check_dag(stack: Stack) -> None:
    created = seed_recent_hours(stack)
    stack.wait_for(
        "both DAGs to be parsed",
        lambda: (
            len(stack.query("SELECT 1 FROM serialized_dag WHERE dag_id IN (?, ?)", EXPORT_DAG, CHECK_DAG)) == 2 or None
        ),
        timeout=180,
    )
    stack.airflow("dags", "unpause", CHECK_DAG)  # asset events queue runs only for unpaused DAGs
    stack.airflow("dags", "unpause", EXPORT_DAG)
    # A manual run needs a logical date to have a data interval. An hour back, so that it exports the hour
    # before the one the scheduler's own latest run exports: two runs writing the same file at the same moment
    # race in Airflow's asset registration (both INSERT the alias's new asset; the second one fails the task).
    when = (datetime.now(UTC) - timedelta(hours=1)).replace(microsecond=0).isoformat()
    stack.airflow("dags", "trigger", EXPORT_DAG, "--run-id", RUN_ID, "--logical-date" if AIRFLOW_V_3 else "-e", when)

    def every_export_checked() -> dict[str, Any] | None:
        exports, checks = runs(stack, EXPORT_DAG), runs(stack, CHECK_DAG)
        failed = [run for run, (state, _) in {**exports, **checks}.items() if state == "failed"]
        if failed:
            tis = [
                row
                for row in stack.query("SELECT dag_id, run_id, task_id, state FROM task_instance")
                if row[1] in failed
            ]
            pytest.fail(f"runs failed: {failed}, task instances: {tis}\n{stack.logs()}")
        if exports.get(RUN_ID, ("",))[0] != "success" or any(
            s != "success" for s, _ in [*exports.values(), *checks.values()]
        ):
            return None
        written = {summary["path"] for summary in xcoms(stack, EXPORT_DAG, "export_calls").values()}
        checked = {item["path"] for result in xcoms(stack, CHECK_DAG, "check_exports").values() for item in result}
        return {"written": written, "checked": checked} if written <= checked else None

    seen = stack.wait_for("the check DAG to run after every export", every_export_checked, timeout=420)

    # The manual run exported its hour and resolved the alias to that file, its summary as the event's extra.
    summary = xcoms(stack, EXPORT_DAG, "export_calls")[RUN_ID]
    start, end = (datetime.fromisoformat(summary[k]) for k in ("window_start", "window_end"))
    assert end - start == timedelta(hours=1)
    target = stack.home / "exports" / f"calls_{start:%Y%m%dT%H%M}.jsonl.gz"
    assert summary["path"] == str(target)
    assert summary["calls"] == sum(start.timestamp() <= t < end.timestamp() for t in created)
    events = as_events(stack.query(EVENTS_SQL))
    mine = [e for e in events if e.run_id == RUN_ID]
    assert len(mine) == 1
    assert mine[0].uri == f"file://{target}"
    assert mine[0].extra == summary
    assert mine[0].aliases == (ALIAS,)
    # Every export run (the scheduler's own hourly one too) has exactly one event, through the alias.
    export_runs = runs(stack, EXPORT_DAG)
    assert sorted(str(e.run_id) for e in events if e.dag_id == EXPORT_DAG) == sorted(export_runs)
    assert {e.aliases for e in events} == {(ALIAS,)}
    assert seen["written"] == {e.extra["path"] for e in events}

    # The check DAG ran only from asset events, found the file as the event says, and recorded the window.
    checks = runs(stack, CHECK_DAG)
    assert {run_type for _, run_type in checks.values()} == {TRIGGERED_RUN_TYPE}
    checked = [item for result in xcoms(stack, CHECK_DAG, "check_exports").values() for item in result]
    assert {"path": str(target), "window_start": summary["window_start"], "calls": summary["calls"]} in checked
    import sqlite3

    with sqlite3.connect(stack.home / "outcomes.db") as db:
        windows = dict(db.execute("SELECT window_start, calls FROM export_windows").fetchall())
    assert windows[summary["window_start"]] == summary["calls"]

    # OpenLineage: the export task's COMPLETE event reads DialNexa's calls and writes the file, with its row count.
    complete = [
        event
        for file in sorted((stack.home / "openlineage").iterdir())
        for event in [json.loads(file.read_text())]
        if event.get("eventType") == "COMPLETE" and event["job"]["name"] == f"{EXPORT_DAG}.export_calls"
    ]
    ours = [e for e in complete if [o["name"] for o in e.get("outputs", [])] == [str(target)]]
    assert ours, [e.get("outputs") for e in complete]  # the scheduler's own run may have written the same hour
    for event in ours:
        assert [(i["namespace"], i["name"]) for i in event["inputs"]] == [(stack.sim.url, "calls")]
        (output,) = event["outputs"]
        assert output["namespace"] == "file"
        assert output["outputFacets"]["outputStatistics"]["rowCount"] == summary["calls"]
