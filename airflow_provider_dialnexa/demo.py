"""``make demo``: run the example call-outcome ETL against the embedded simulator, in a throwaway Airflow.

Starts the simulator in a child process, creates four calls with mixed outcomes that end within seconds,
builds a fresh ``.demo/airflow_home`` (SQLite, the repo's ``dags/``, the connection as an env var), runs
``airflow db migrate`` and ``airflow dags test dialnexa_call_outcomes`` with those call ids, then prints
what reached XCom and the rows loaded into SQLite. Then it seeds three past hours of calls (the first of each
hour exactly on the hour edge) and runs ``dialnexa_call_export`` once per hour, printing each interval's
count and checking every call was loaded exactly once.

Then a real Airflow runs (api-server with the provider's webhook receiver and the execution API, and a
scheduler; ``AirflowComponents``) for the asset-scheduled DAGs, unpaused beforehand (all others stay
paused): ``dialnexa_call_export_check``, scheduled on the export's asset alias, runs until it has checked
every exported file; then the event-driven path: ``ensure_webhook`` registers the receiver with the
simulator, six calls end, the simulator posts signed deliveries (some twice, ``call_initiated`` after
``call_ended``), the receiver records one asset event per call and ``dialnexa_webhook_outcomes`` loads each
call once, without a request to DialNexa. Last, the campaign DAG runs once with ``dags test``.

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
        unpause_scheduled_dags(env, demo)
        # One running Airflow serves every asset-scheduled step: the check after the exports, the webhooks. Its
        # api-server boots while the exports run; the scheduler starts after them (no run competes with them).
        stack_env = {
            **env,
            "DIALNEXA_DEMO_DB": str(demo / "exported_calls.db"),  # the check records windows next to the rows
            "DIALNEXA_WEBHOOK_DB": str(demo / "webhook_outcomes.db"),
        }
        with AirflowComponents(stack_env, demo) as stack:
            stack.start("web")
            export_runs = run_export_demo(sim, env, demo)
            stack_started = time.monotonic()
            stack.start("scheduler")
            step(f"Airflow at {stack.url}: api-server (webhook receiver, execution API) and scheduler")
            webhook = register_receiver(stack)  # while the scheduler starts the check's run
            checks = run_check_demo(stack)
            webhooks = run_webhook_demo(sim, stack, webhook)
        step(f"Airflow stopped ({time.monotonic() - stack_started:.0f} s after the exports, both steps included)")
        run_campaign_demo(sim, env, demo)
        step(f"The simulator answered {sim.stats()['requests']} API requests")
    step("Simulator stopped")
    report(home / "airflow.db", outcomes_db)
    report_exports(home / "airflow.db", demo / "exported_calls.db", export_runs)
    report_checks(checks)
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


def shown_path(path: str) -> str:
    """A file path relative to the current directory when it lies below it (``.demo/exports/...``), else whole."""
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


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
                (x["window_start"], x["window_end"], x["calls"], loads.get(x["window_start"]), shown_path(x["path"]))
                for x in exports
            ],
            ("window_start", "window_end (exclusive)", "calls", "rows loaded", "file"),
            100,
        )
    )
    with sqlite3.connect(export_db) as db:
        total, distinct = db.execute("SELECT COUNT(*), COUNT(DISTINCT call_id) FROM call_outcomes").fetchone()
    print(f"Rows in {export_db}: {total} ({distinct} distinct call ids; {sum(expected.values())} calls seeded)")
    got = {x["window_start"]: x["calls"] for x in exports}
    if got != expected or total != distinct or total != sum(expected.values()):
        raise DemoError(f"expected {expected} calls per hour loaded once each, got {got} and {total} rows")


# -- after each export: the DAG scheduled on the export's asset alias ------------------------------------

CHECK_DAG_ID = "dialnexa_call_export_check"


def unpause_scheduled_dags(env: dict[str, str], demo: Path) -> None:
    """Write the DAGs to the metadata DB and unpause the asset-scheduled ones: only then does an export's asset
    event (or a webhook's) queue a run (every other DAG stays paused, so a scheduler starts nothing else)."""
    airflow(["dags", "reserialize"], env, demo / "reserialize.log", timeout=300)
    pattern = f"^({CHECK_DAG_ID}|{WEBHOOK_DAG_ID})$"
    airflow(["dags", "unpause", "--treat-dag-id-as-regex", "-y", pattern], env, demo / "unpause.log", timeout=120)


def run_check_demo(stack: AirflowComponents, timeout: float = 300) -> list[tuple[str, str, str, str]]:
    """Wait until the check DAG has succeeded on every file the exports wrote.

    The exports ran with ``dags test``, which records their asset events (queuing the check DAG) but schedules
    nothing; the running scheduler turns the queue into an asset-triggered run. Returns ``(run id, run type,
    state, files checked)`` per run of the check DAG.
    """
    step(f"Waiting for {CHECK_DAG_ID} (scheduled on the export's asset alias) to check every exported file")

    def probe() -> list[tuple[str, str, str, str]] | None:
        written = {
            json.loads(v)["path"]
            for (v,) in stack.query(
                "SELECT value FROM xcom WHERE dag_id = ? AND task_id = 'export_calls' AND key = 'return_value'",
                EXPORT_DAG_ID,
            )
        }
        runs = stack.query(
            "SELECT r.run_id, r.run_type, r.state, x.value FROM dag_run r LEFT JOIN xcom x ON x.dag_id = "
            "r.dag_id AND x.run_id = r.run_id AND x.key = 'return_value' WHERE r.dag_id = ? ORDER BY r.id",
            CHECK_DAG_ID,
        )
        checked = [(run_id, kind, state, json.loads(v) if v else []) for run_id, kind, state, v in runs]
        if any(state == "failed" for _, _, state, _ in checked):
            raise DemoError(f"{CHECK_DAG_ID} failed; see .demo/scheduler.log")
        done = {item["path"] for _, _, state, items in checked if state == "success" for item in items}
        if not written or not written <= done:
            return None
        return [(r, k, s, ", ".join(Path(i["path"]).name for i in items)) for r, k, s, items in checked]

    return stack.wait_for(f"{CHECK_DAG_ID} to check every export", probe, timeout, every=1.0)


def report_checks(checks: list[tuple[str, str, str, str]]) -> None:
    print(f"\nAfter the exports ({CHECK_DAG_ID}, scheduled on export_alias('{EXPORT_DAG_ID}', 'export_calls')):")
    print(table(checks, ("run_id", "run_type", "state", "files checked"), 90))


# -- the campaign (dags/dialnexa_campaign.py) ------------------------------------------------------------

CAMPAIGN_DAG_ID = "dialnexa_campaign"


def run_campaign_demo(sim: SimulatorControls, env: dict[str, str], demo: Path) -> None:
    """Run the campaign DAG once: 12 leads from SQLite become one batch (its first upload's answer is lost, so
    it is found in List Batch Calls instead of uploaded twice), dialled within seconds with two leads
    redialled, waited for in the triggerer, exported and upserted. Prints the outcomes; raises ``DemoError``."""
    from airflow_provider_dialnexa.simulator import Fault

    sim.configure_batches(
        dial_interval_s=0.3,
        call_s=1.0,
        retry_wait_s=2.0,
        mix={"completed": 3, "no_answer": 1},
        outcomes={"+14155550101": ["no_answer", "completed"], "+14155550102": ["busy", "busy", "busy"]},
    )
    sim.add_fault(Fault(kind="lost_504", route="batch_create", count=1))
    db = demo / "campaign.db"
    conf = json.dumps({"sqlite_path": str(db), "storage": f"file://{demo / 'campaign'}"})
    step(f"airflow dags test {CAMPAIGN_DAG_ID} (one batch; its first upload's answer is lost on purpose)")
    campaign_env = {**env, "DIALNEXA_CAMPAIGN_POLL_S": "2"}
    airflow(["dags", "test", CAMPAIGN_DAG_ID, "-c", conf], campaign_env, demo / "campaign.log", timeout=600)
    batches = sim.batches()
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT lead_id, status, attempts, call_id FROM lead_outcomes ORDER BY lead_id").fetchall()
    print(
        f"\nCampaign ({CAMPAIGN_DAG_ID}): {len(batches)} batch(es) in DialNexa, uploads sent: "
        f"{len(sim.requests(route='batch_create'))}"
    )
    print(table(rows, ("lead_id", "status (last attempt)", "attempts", "call_id")))
    if len(batches) != 1 or len(rows) != batches[0]["total_lead_count"]:
        raise DemoError(f"expected one batch and one outcome per lead, got {len(batches)} batches, {len(rows)} rows")


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


def register_receiver(stack: AirflowComponents) -> dict[str, Any]:
    """Wait for the api-server and ``WEBHOOK_DAG_ID``, then ``ensure_webhook`` its receiver URL with the simulator."""
    started = time.monotonic()
    stack.wait_until_up()
    stack.wait_until_parsed(WEBHOOK_DAG_ID)
    stack.wait_until_unpaused(WEBHOOK_DAG_ID)
    from airflow_provider_dialnexa.webhooks import webhook_path

    url = stack.url + webhook_path("dialnexa_default")
    webhook = register_webhook(stack.env, url)
    step(
        f"ensure_webhook registered {webhook['id']} for {url} (secret {webhook['secret']}) in "
        f"{time.monotonic() - started:.0f} s; DialNexa's signed verification request was answered by the receiver"
    )
    return webhook


def run_webhook_demo(sim: SimulatorControls, airflow_: AirflowComponents, webhook: dict[str, Any]) -> dict[str, Any]:
    """End calls, wait until their asset-triggered runs loaded them, and collect the evidence.

    ``airflow_`` runs with the receiver registered (``webhook``); its ``DIALNEXA_WEBHOOK_DB`` is where the DAG loads.
    """
    from airflow_provider_dialnexa.webhooks import calls_asset_uri

    loaded_db = Path(airflow_.env["DIALNEXA_WEBHOOK_DB"])
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
        "webhook": webhook["id"],
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
    print(
        f"\nEvent-driven ({WEBHOOK_DAG_ID}): the simulator's deliveries to the receiver (webhook "
        f"{result['webhook']}), in order sent:"
    )
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


def main() -> int:
    started = time.monotonic()
    try:
        run_demo()
    except DemoError as exc:
        print(f"\nDEMO FAILED: {exc}", file=sys.stderr)
        return 1
    step(f"Demo finished in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
