"""``make demo``: run the example call-outcome ETL against the embedded simulator, in a throwaway Airflow.

Starts the simulator in a child process, creates four calls with mixed outcomes that end within seconds,
builds a fresh ``.demo/airflow_home`` (SQLite, the repo's ``dags/``, the connection as an env var), runs
``airflow db migrate`` and ``airflow dags test dialnexa_call_outcomes`` with those call ids, then prints
what reached XCom and the rows loaded into SQLite. Then it seeds three past hours of calls (the first of each
hour exactly on the hour edge) and runs ``dialnexa_call_export`` once per hour, printing each interval's
count and checking every call was loaded exactly once. Finally the event-driven path: a real Airflow
(api-server with the provider's webhook receiver, scheduler, dag-processor) starts, ``ensure_webhook``
registers the receiver with the simulator, six calls end, the simulator posts signed deliveries (some
twice, ``call_initiated`` after ``call_ended``), the receiver records one asset event per call and
``dialnexa_webhook_outcomes`` runs on them and loads each call once, without a request to DialNexa.
The simulator and Airflow are stopped whatever happens; the exit code is non-zero when anything failed.
Airflow's own output goes to ``.demo/*.log``.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from airflow_provider_dialnexa._demo_airflow import AirflowComponents, DemoError
from airflow_provider_dialnexa.simulator import SimulatorControls, SimulatorProcess

DAG_ID = "dialnexa_call_outcomes"
DEMO_KEY = "demo_key:demo_secret"
#: call id -> how the simulated call goes. Each ends a few seconds after it is created, so the sensors
#: that poke before then defer to the trigger; ``call_demo_failed`` is over before anyone looks.
CALLS: dict[str, dict[str, Any]] = {
    "call_demo_completed": {"outcome": "completed", "queued_s": 0, "ring_s": 2, "talk_s": 15},
    "call_demo_busy": {"outcome": "busy", "queued_s": 0, "ring_s": 10},
    "call_demo_no_answer": {"outcome": "no_answer", "queued_s": 0, "ring_s": 20},
    "call_demo_failed": {"outcome": "failed", "queued_s": 0, "ring_s": 0, "age_s": 5},
}
ROW_COLUMNS = ("call_id", "status", "end_reason", "duration_seconds", "sentiment", "transcript_chars", "summary")


__all__ = ["DemoError", "main", "run_demo"]


def step(message: str) -> None:
    print(f"==> {message}", flush=True)


def project_root() -> Path:
    """The checkout holding ``dags/`` (the package is installed editable by ``make install``)."""
    for root in (Path(__file__).resolve().parents[1], Path.cwd()):
        if (root / "dags" / f"{DAG_ID}.py").is_file():
            return root
    raise DemoError(f"cannot find dags/{DAG_ID}.py; run the demo from the repository checkout (make demo)")


def airflow(args: Sequence[str], env: dict[str, str], log: Path, timeout: float) -> None:
    """Run ``airflow <args>`` with its output in ``log``; raise ``DemoError`` with the log's tail on failure."""
    started = time.monotonic()
    with log.open("w") as out:
        try:
            code = subprocess.run(
                [sys.executable, "-m", "airflow", *args],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
            ).returncode
        except subprocess.TimeoutExpired:
            code = None
    if code != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        what = "timed out" if code is None else f"exited with {code}"
        raise DemoError(f"`airflow {' '.join(args[:2])}` {what}; last lines of {log}:\n{tail}")
    step(f"airflow {' '.join(args[:2])} finished in {time.monotonic() - started:.0f} s (log: {log})")


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str], width: int = 40) -> str:
    """A small fixed-width text table; long cells are cut to ``width`` characters."""
    cells = [[str(h) for h in headers]] + [["" if v is None else str(v).replace("\n", " ") for v in r] for r in rows]
    cells = [[c if len(c) <= width else c[: width - 3] + "..." for c in r] for r in cells]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def summarise(raw: Any) -> str:
    """One line for an XCom value: a record's key fields and how many more it has, else the JSON itself."""
    value = json.loads(raw) if isinstance(raw, str | bytes) else raw  # SQLite hands back JSON numbers as numbers
    if not isinstance(value, dict) or len(value) <= 3:
        return json.dumps(value, ensure_ascii=False)
    keys = [k for k in ("id", "call_id", "status", "to_number", "from_number", "duration", "end_reason") if k in value]
    shown = ", ".join(f"{k}={value[k]}" for k in keys)
    return f"{shown} (+{len(value) - len(keys)} more fields)"


def report(metadata_db: Path, outcomes_db: Path) -> None:
    """Print the run's state, its XComs and the loaded rows; raise ``DemoError`` unless the run succeeded."""
    with sqlite3.connect(metadata_db) as db:
        run = db.execute(
            "SELECT run_id, state FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1", (DAG_ID,)
        ).fetchone()
        if run is None:
            raise DemoError("the DAG run was not created; see .demo/dags_test.log")
        run_id, state = run
        tis = db.execute(
            "SELECT task_id, map_index, state FROM task_instance WHERE dag_id = ? AND run_id = ? "
            "ORDER BY task_id, map_index",
            (DAG_ID, run_id),
        ).fetchall()
        deferred = db.execute(
            "SELECT DISTINCT task_id, map_index FROM log WHERE dag_id = ? AND run_id = ? AND event = 'deferred'",
            (DAG_ID, run_id),
        ).fetchall()
        xcoms = db.execute(
            "SELECT task_id, map_index, value FROM xcom WHERE dag_id = ? AND run_id = ? AND key = 'return_value' "
            "ORDER BY task_id, map_index",
            (DAG_ID, run_id),
        ).fetchall()
    print(f"\nDAG run {run_id}: {state}")
    print(table(tis, ("task", "map_index", "state")))
    if deferred:
        names = ", ".join(f"{task}[{index}]" for task, index in deferred)
        print(f"Deferred (dags test runs their trigger inline) while the call was still running: {names}")
    print("\nXCom return_value (fetch_call records have phone numbers masked):")
    print(table([(task, index, summarise(value)) for task, index, value in xcoms], ("task", "map_index", "value"), 110))
    if state != "success":
        raise DemoError(f"the DAG run ended {state!r}; see .demo/dags_test.log")
    with sqlite3.connect(outcomes_db) as db:
        rows = db.execute(f"SELECT {', '.join(ROW_COLUMNS)} FROM call_outcomes ORDER BY call_id").fetchall()  # noqa: S608
    print(f"\nRows in {outcomes_db} (table call_outcomes):")
    print(table(rows, ROW_COLUMNS, width=48))
    if sorted(r[0] for r in rows) != sorted(CALLS):
        raise DemoError(f"expected one row per demo call {sorted(CALLS)}, found {[r[0] for r in rows]}")


def run_demo() -> None:
    root = project_root()
    demo = root / ".demo"
    home = demo / "airflow_home"
    outcomes_db = demo / "call_outcomes.db"
    step(f"Fresh AIRFLOW_HOME in {home}")
    shutil.rmtree(demo, ignore_errors=True)
    home.mkdir(parents=True)
    step("Starting the DialNexa simulator (child process, ephemeral port)")
    with SimulatorProcess(api_key=DEMO_KEY, seed=7) as sim:
        step(f"Simulator listening at {sim.url}")
        connection = {
            "conn_type": "dialnexa",
            "host": sim.url,
            "password": DEMO_KEY,
            "extra": {"webhook_secret": DEMO_WEBHOOK_SECRET},
        }
        env = {
            **os.environ,
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(root / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW_CONN_DIALNEXA_DEFAULT": json.dumps(connection),
            "DIALNEXA_DEMO_DB": str(outcomes_db),
        }
        step("airflow db migrate (SQLite)")
        airflow(["db", "migrate"], env, demo / "db_migrate.log", timeout=300)
        step(
            f"Creating {len(CALLS)} calls in the simulator: "
            + ", ".join(f"{k} ({v['outcome']})" for k, v in CALLS.items())
        )
        for call_id, spec in CALLS.items():
            sim.create_call(call_id=call_id, **spec)
        conf = json.dumps({"call_ids": list(CALLS), "sqlite_path": str(outcomes_db)})
        step(f"airflow dags test {DAG_ID} -c '{conf}'")
        airflow(["dags", "test", DAG_ID, "-c", conf], env, demo / "dags_test.log", timeout=600)
        # The event-driven part needs a running Airflow: it starts now and boots while the export runs.
        with AirflowComponents({**env, "DIALNEXA_DEMO_DB": str(demo / "webhook_outcomes.db")}, demo) as stack:
            step(f"Starting Airflow at {stack.url} (api-server with the webhook receiver, scheduler, dag-processor)")
            stack.unpause(WEBHOOK_DAG_ID)  # the DAG is in the DB since the dags test above synced dags/
            export_runs = run_export_demo(sim, env, demo)
            webhooks = run_webhook_demo(sim, stack, demo)
        step("Airflow stopped")
        step(f"The simulator answered {sim.stats()['requests']} API requests")
    step("Simulator stopped")
    report(home / "airflow.db", outcomes_db)
    report_exports(home / "airflow.db", demo / "exported_calls.db", export_runs)
    report_webhooks(webhooks)


# -- the scheduled export (dags/dialnexa_call_export.py) ----------------------------------------------

EXPORT_DAG_ID = "dialnexa_call_export"
#: Calls seeded per hour of 2026-10-05 (UTC); the export DAG runs once per hour, like a catchup would.
EXPORT_HOURS: dict[str, int] = {"06:00": 800, "07:00": 1500, "08:00": 400}
EXPORT_DAY = "2026-10-05"


def run_export_demo(sim: SimulatorControls, env: dict[str, str], demo: Path) -> dict[str, int]:
    """Seed three past hours of calls (the first of each exactly on the hour), run the export DAG once per hour.

    Returns the number of calls seeded per window start (ISO, as the operator reports it).
    """
    from datetime import datetime, timedelta

    expected: dict[str, int] = {}
    for hour, count in EXPORT_HOURS.items():
        start = datetime.fromisoformat(f"{EXPORT_DAY}T{hour}:00+00:00")
        sim.seed_calls(count, start.timestamp(), (start + timedelta(hours=1)).timestamp())
        expected[f"{EXPORT_DAY}T{hour}:00.000Z"] = count
    step(f"Seeded {sum(EXPORT_HOURS.values())} ended calls over three hours of {EXPORT_DAY}: {EXPORT_HOURS}")
    conf = json.dumps({"export_dir": str(demo / "exports"), "sqlite_path": str(demo / "exported_calls.db")})
    for hour in EXPORT_HOURS:
        run_at = datetime.fromisoformat(f"{EXPORT_DAY}T{hour}:00+00:00") + timedelta(hours=1)
        step(f"airflow dags test {EXPORT_DAG_ID} {run_at.isoformat()} (exports the hour before it)")
        log = demo / f"export_{hour.replace(':', '')}.log"
        airflow(["dags", "test", EXPORT_DAG_ID, run_at.isoformat(), "-c", conf], env, log, timeout=300)
    return expected


def report_exports(metadata_db: Path, export_db: Path, expected: dict[str, int]) -> None:
    """Print each export run's window, file and counts; raise ``DemoError`` unless every hour loaded once."""
    with sqlite3.connect(metadata_db) as db:
        rows = db.execute(
            "SELECT task_id, value FROM xcom WHERE dag_id = ? AND key = 'return_value' ORDER BY run_id, task_id",
            (EXPORT_DAG_ID,),
        ).fetchall()
    exports = [json.loads(v) if isinstance(v, str | bytes) else v for t, v in rows if t == "export_calls"]
    loads = {x["window_start"]: x["rows"] for x in (json.loads(v) for t, v in rows if t == "load")}
    print(f"\nScheduled export ({EXPORT_DAG_ID}), one run per hour:")
    print(
        table(
            [
                (x["window_start"], x["window_end"], x["calls"], loads.get(x["window_start"]), Path(x["path"]).name)
                for x in exports
            ],
            ("window_start", "window_end (exclusive)", "calls", "rows loaded", "file"),
            60,
        )
    )
    with sqlite3.connect(export_db) as db:
        total, distinct = db.execute("SELECT COUNT(*), COUNT(DISTINCT call_id) FROM call_outcomes").fetchone()
    print(f"Rows in {export_db}: {total} ({distinct} distinct call ids; {sum(expected.values())} calls seeded)")
    got = {x["window_start"]: x["calls"] for x in exports}
    if got != expected or total != distinct or total != sum(expected.values()):
        raise DemoError(f"expected {expected} calls per hour loaded once each, got {got} and {total} rows")


def main() -> int:
    started = time.monotonic()
    try:
        run_demo()
    except DemoError as exc:
        print(f"\nDEMO FAILED: {exc}", file=sys.stderr)
        return 1
    step(f"Demo finished in {time.monotonic() - started:.0f} s")
    return 0


# -- the event-driven path (webhooks -> asset events -> dags/dialnexa_webhook_outcomes.py) --------------

WEBHOOK_DAG_ID = "dialnexa_webhook_outcomes"
DEMO_WEBHOOK_SECRET = "demo_whsec_7f3a9c1e5b2d4680"  # noqa: S105 - the demo's throwaway secret
#: Calls that end a few seconds after they are created, each with its own outcome.
WEBHOOK_CALLS: dict[str, dict[str, Any]] = {
    "call_wh_completed": {"outcome": "completed", "ring_s": 2, "talk_s": 6},
    "call_wh_voicemail": {"outcome": "voicemail", "ring_s": 3, "talk_s": 4},
    "call_wh_busy": {"outcome": "busy", "ring_s": 2, "talk_s": 0},
    "call_wh_no_answer": {"outcome": "no_answer", "ring_s": 8, "talk_s": 0},
    "call_wh_failed": {"outcome": "failed", "ring_s": 1, "talk_s": 0},
    "call_wh_completed_2": {"outcome": "completed", "ring_s": 4, "talk_s": 9},
}
WEBHOOK_COLUMNS = ("call_id", "status", "end_reason", "duration_seconds", "loaded_by_run")


def register_webhook(env: dict[str, str], url: str) -> dict[str, Any]:
    """``DialNexaHook().ensure_webhook(url)`` in this process, with the demo's Airflow settings."""
    os.environ.update({k: v for k, v in env.items() if k.startswith("AIRFLOW")})  # before Airflow is imported
    from airflow_provider_dialnexa.hooks.dialnexa import DEFAULT_WEBHOOK_EVENTS, DialNexaHook

    # call_initiated too, only to show the receiver ignoring it when it arrives after call_ended.
    return DialNexaHook().ensure_webhook(url, [*DEFAULT_WEBHOOK_EVENTS, "call_initiated"])


def _loaded(path: Path) -> dict[str, tuple[Any, ...]]:
    if not path.exists():
        return {}
    db = sqlite3.connect(path, timeout=30)
    try:
        rows = db.execute(f"SELECT {', '.join(WEBHOOK_COLUMNS)} FROM call_outcomes ORDER BY call_id").fetchall()  # noqa: S608
    except sqlite3.OperationalError:  # the table comes with the first run
        return {}
    finally:
        db.close()
    return {row[0]: row for row in rows}


def run_webhook_demo(sim: SimulatorControls, airflow_: AirflowComponents, demo: Path) -> dict[str, Any]:
    """Register the receiver, end calls, wait until their asset-triggered runs loaded them; the evidence.

    ``airflow_`` runs (started, ``WEBHOOK_DAG_ID`` being unpaused); its ``DIALNEXA_DEMO_DB`` is where the DAG loads.
    """
    from airflow_provider_dialnexa.webhooks import calls_asset_uri, webhook_path

    loaded_db = Path(airflow_.env["DIALNEXA_DEMO_DB"])
    started = time.monotonic()
    airflow_.wait_until_up()
    airflow_.wait_until_parsed(WEBHOOK_DAG_ID)
    airflow_.wait_until_unpaused(WEBHOOK_DAG_ID)
    step(f"Airflow is up and {WEBHOOK_DAG_ID} unpaused (waited {time.monotonic() - started:.0f} s more)")
    url = airflow_.url + webhook_path("dialnexa_default")
    webhook = register_webhook(airflow_.env, url)
    step(
        f"ensure_webhook registered {webhook['id']} for {url} (secret {webhook['secret']}); DialNexa's signed "
        "verification ping was answered by the receiver"
    )
    sim.configure_webhooks(duplicate_rate=0.5, reorder=True, retry_backoff_s=0.5)
    longest = max(_ends_in(spec) for spec in WEBHOOK_CALLS.values())
    step(
        f"Creating {len(WEBHOOK_CALLS)} calls that end within {longest:.0f} s; the simulator sends half of its "
        "deliveries twice and call_initiated after call_ended"
    )
    ended_at = time.monotonic()
    for call_id, spec in WEBHOOK_CALLS.items():
        sim.create_call(call_id=call_id, queued_s=0, **spec)
    runs = airflow_.wait_for_runs(
        WEBHOOK_DAG_ID,
        lambda: set(_loaded(loaded_db)) >= set(WEBHOOK_CALLS),
        timeout=240,
        what=f"{WEBHOOK_DAG_ID} to load every call",
    )
    waited = time.monotonic() - ended_at
    deliveries = sim.wait_for_deliveries()
    uri = calls_asset_uri("dialnexa_default")
    asset = "asset" if airflow_.v3 else "dataset"  # Airflow 2.11 names them datasets
    events = airflow_.query(
        f"SELECT e.id, e.extra FROM {asset}_event e JOIN {asset} a ON a.id = e.{asset}_id "  # noqa: S608
        "WHERE a.uri = ? ORDER BY e.id",
        uri,
    )
    consumed = dict(
        airflow_.query(
            f"SELECT r.run_id, COUNT(c.event_id) FROM dag_run r LEFT JOIN dagrun_{asset}_event c "  # noqa: S608
            "ON c.dag_run_id = r.id WHERE r.dag_id = ? GROUP BY r.id",
            WEBHOOK_DAG_ID,
        )
    )
    status_requests = [e for call_id in WEBHOOK_CALLS for e in sim.requests(call_id=call_id)]
    return {
        "deliveries": [d for d in deliveries if d.call_id in WEBHOOK_CALLS],
        "events": [json.loads(extra) if isinstance(extra, str | bytes) else extra for _, extra in events],
        "runs": [(run_id, state, consumed.get(run_id, 0)) for run_id, _, state in runs],
        "rows": _loaded(loaded_db),
        "status_requests": len(status_requests),
        "waited": waited,
        "loaded_db": loaded_db,
    }


def _ends_in(spec: dict[str, Any]) -> float:
    return float(spec.get("ring_s", 0)) + float(spec.get("talk_s", 0))


def report_webhooks(result: dict[str, Any]) -> None:
    """Print deliveries, asset events, runs and rows; raise ``DemoError`` unless each call loaded exactly once."""
    deliveries = result["deliveries"]
    print(f"\nEvent-driven ({WEBHOOK_DAG_ID}): the simulator's deliveries to the receiver, in order sent:")
    print(
        table(
            [
                (d.call_id, d.event, d.attempt, d.response_status or d.error_message, "yes" if d.duplicate else "")
                for d in deliveries
            ],
            ("call_id", "event", "attempt", "answer", "duplicate"),
        )
    )
    per_call: dict[str, int] = {}
    for extra in result["events"]:
        per_call[extra.get("call_id")] = per_call.get(extra.get("call_id"), 0) + 1
    once = sorted(per_call.values()) == [1] * len(per_call)
    print(
        f"{len(deliveries)} deliveries ({sum(d.duplicate for d in deliveries)} duplicates) -> {len(result['events'])} "
        f"asset events on dialnexa://dialnexa_default/calls (one per call: {once})"
    )
    print("\nAsset-triggered runs (events consumed by each):")
    print(table(result["runs"], ("run_id", "state", "events"), 60))
    rows = result["rows"]
    print(
        f"\nRows in {result['loaded_db']} (table call_outcomes), loaded {result['waited']:.0f} s after the calls began:"
    )
    print(table(list(rows.values()), WEBHOOK_COLUMNS, 60))
    print(f"Status requests to DialNexa for these calls: {result['status_requests']}")
    problems = []
    if set(rows) != set(WEBHOOK_CALLS):
        problems.append(f"rows {sorted(rows)} instead of {sorted(WEBHOOK_CALLS)}")
    if per_call != dict.fromkeys(WEBHOOK_CALLS, 1):
        problems.append(f"asset events per call {per_call}")
    if any(state != "success" for _, state, _ in result["runs"]):
        problems.append(f"runs {result['runs']}")
    if result["status_requests"]:
        problems.append(f"{result['status_requests']} status requests")
    if problems:
        raise DemoError("the event-driven path did not load each call exactly once: " + "; ".join(problems))


if __name__ == "__main__":
    sys.exit(main())
