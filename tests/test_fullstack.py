"""The example DAG in a real Airflow: scheduler, dag-processor, triggerer and api-server, against the simulator.

Airflow 3.3 runs LocalExecutor on SQLite without complaint (``airflow standalone`` makes the same choice), so
the stack is the four components ``standalone`` would start, each in its own process group, in a throwaway
``AIRFLOW_HOME``. The api-server serves only the execution API (what task processes talk to).

The calls ring until the test says otherwise: the test waits (polling the metadata DB, with a deadline)
until every sensor is DEFERRED, only then ends the calls in the simulator, and waits for the run to
succeed. Deferral is therefore certain, not a matter of timing, and is checked three ways: the observed
``deferred`` state, the audit log's ``deferred`` events, and List Calls requests that only the
triggerer's batched polling sends.

On Airflow 2.11 the stack is scheduler (which also parses DAGs) and triggerer, with SequentialExecutor
(2.11 refuses LocalExecutor on SQLite), and the audit log has no ``deferred`` events.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from _compat import AIRFLOW_V_3

from airflow_provider_dialnexa.simulator import SimulatorProcess

pytestmark = [pytest.mark.fullstack, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[1]
DAG_ID = "dialnexa_call_outcomes"
RUN_ID = "fullstack_run"
API_KEY = "fullstack_key:fullstack_secret"
OUTCOMES = {
    "call_fs_completed": "completed",
    "call_fs_busy": "busy",
    "call_fs_no_answer": "no_answer",
    "call_fs_failed": "failed",
}
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Stack:
    """The running Airflow components, their environment and the simulator they talk to."""

    home: Path
    env: dict[str, str]
    sim: SimulatorProcess
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def db_path(self) -> Path:
        return self.home / "airflow.db"

    def airflow(self, *args: str, timeout: float = 120) -> str:
        """Run an ``airflow`` CLI command; fail the test with its output if it fails."""
        done = subprocess.run(
            [sys.executable, "-m", "airflow", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert done.returncode == 0, f"airflow {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done.stdout

    def start(self, name: str, *args: str) -> None:
        log = (self.home / f"{name}.log").open("wb")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "airflow", name, *args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped with every child it forks
        )
        log.close()

    def stop(self) -> None:
        """SIGTERM every component's process group, then SIGKILL whatever is left."""
        for proc in self.procs.values():
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, deadline - time.monotonic()))
            _signal_group(proc, signal.SIGKILL)
            proc.wait()

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """Read the metadata DB (read-only; the components keep writing it)."""
        db = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=30)
        try:
            return db.execute(sql, params).fetchall()
        finally:
            db.close()

    def logs(self) -> str:
        """The tail of every component's log, for failure messages."""
        parts = []
        for name in self.procs:
            lines = (self.home / f"{name}.log").read_text(errors="replace").splitlines()
            parts.append(f"--- {name}.log (last 25 lines) ---\n" + "\n".join(lines[-25:]))
        return "\n".join(parts)

    def wait_for(self, what: str, probe: Callable[[], T | None], timeout: float) -> T:
        """Poll ``probe`` (a DB read) until it returns something, a component dies, or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while True:
            result = probe()
            if result is not None:
                return result
            dead = {name: proc.returncode for name, proc in self.procs.items() if proc.poll() is not None}
            if dead or time.monotonic() > deadline:
                problem = f"components exited: {dead}" if dead else f"no result within {timeout:.0f} s"
                pytest.fail(f"waiting for {what}: {problem}\n{self.logs()}")
            time.sleep(0.5)


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Simulator (child process) + migrated SQLite metadata DB + the four Airflow components."""
    home = tmp_path_factory.mktemp("fullstack_airflow_home")
    with SimulatorProcess(api_key=API_KEY, seed=4) as sim, airflow_stack(home, sim, ROOT / "dags") as stack:
        yield stack


@contextlib.contextmanager
def airflow_stack(home: Path, sim: SimulatorProcess, dags: Path, **settings: str) -> Iterator[Stack]:
    """A migrated SQLite metadata DB in ``home`` and the Airflow components parsing ``dags``, stopped on exit.

    ``settings`` are extra environment variables (Airflow config, DAG params' defaults); by default only
    triggered runs happen (``[scheduler] use_job_schedule = False``).
    """
    api_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            # Airflow 2.11 refuses LocalExecutor on SQLite: it runs one task at a time (deferred ones
            # free their slot, so the four sensors still all defer).
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor" if AIRFLOW_V_3 else "SequentialExecutor",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
            "AIRFLOW__API_AUTH__JWT_SECRET": "fullstack-test-jwt-secret-0123456789abcdef",
            # Only the triggered run: no @hourly run appears when the DAG is unpaused.
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
            "AIRFLOW_CONN_DIALNEXA_DEFAULT": json.dumps(
                {"conn_type": "dialnexa", "host": sim.url, "password": API_KEY}
            ),
            "DIALNEXA_DEMO_DB": str(home / "unused_default.db"),
            # Executors start `airflow tasks run ...` by name: this interpreter's `airflow` first.
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
            **settings,
        }
    )
    stack = Stack(home, env, sim)
    stack.airflow("db", "migrate", timeout=300)
    try:
        if AIRFLOW_V_3:
            stack.start("api-server", "--apps", "execution", "--host", "127.0.0.1", "--port", str(api_port))
            stack.start("scheduler")
            stack.start("dag-processor")
        else:  # Airflow 2.11: tasks talk to the DB directly, and the scheduler parses DAGs itself
            stack.start("scheduler")
        stack.start("triggerer")
        yield stack
    finally:
        stack.stop()


def test_example_dag_defers_and_loads_in_a_real_airflow(stack: Stack, tmp_path: Path) -> None:
    sim = stack.sim
    for call_id in OUTCOMES:  # ringing until the test ends them
        sim.create_call(call_id=call_id, outcome="completed", queued_s=0, ring_s=3600, talk_s=0)
    outcomes_db = tmp_path / "call_outcomes.db"

    stack.wait_for(
        "the dag-processor to serialize the DAG",
        lambda: stack.query("SELECT 1 FROM serialized_dag WHERE dag_id = ?", DAG_ID) or None,
        timeout=180,
    )
    stack.airflow("dags", "unpause", DAG_ID)
    conf = json.dumps({"call_ids": list(OUTCOMES), "sqlite_path": str(outcomes_db)})
    stack.airflow("dags", "trigger", DAG_ID, "--run-id", RUN_ID, "--conf", conf)

    def sensor_states() -> list[str]:
        rows = stack.query(
            "SELECT state FROM task_instance WHERE dag_id = ? AND run_id = ? AND task_id = 'wait_for_call'",
            DAG_ID,
            RUN_ID,
        )
        return [row[0] for row in rows]

    stack.wait_for(
        "all four sensors to be DEFERRED",
        lambda: True if sensor_states() == ["deferred"] * len(OUTCOMES) else None,
        timeout=180,
    )
    for call_id, outcome in OUTCOMES.items():
        sim.set_status(call_id, outcome)

    def run_state() -> str | None:
        rows = stack.query("SELECT state FROM dag_run WHERE dag_id = ? AND run_id = ?", DAG_ID, RUN_ID)
        return rows[0][0] if rows and rows[0][0] in ("success", "failed") else None

    assert stack.wait_for("the DAG run to finish", run_state, timeout=240) == "success", stack.logs()

    # Every task succeeded, each sensor once, each after a deferral recorded in the audit log.
    tis = stack.query(
        "SELECT task_id, map_index, state, try_number FROM task_instance WHERE dag_id = ? AND run_id = ?",
        DAG_ID,
        RUN_ID,
    )
    assert {state for _, _, state, _ in tis} == {"success"}
    assert sorted(m for t, m, _, _ in tis if t == "wait_for_call") == [0, 1, 2, 3]
    deferred = stack.query(
        "SELECT DISTINCT map_index FROM log WHERE dag_id = ? AND run_id = ? AND task_id = 'wait_for_call' "
        "AND event = 'deferred'",
        DAG_ID,
        RUN_ID,
    )
    # Airflow 2.11 writes no `deferred` audit entry; there the observed DEFERRED states above and the
    # triggerer's List Calls below are the evidence.
    assert sorted(m for (m,) in deferred) == ([0, 1, 2, 3] if AIRFLOW_V_3 else [])
    # The triggerer polled with batched List Calls requests naming the calls (tasks only send Get Call).
    listed = {call_id for entry in sim.requests(route="list") for call_id in entry.call_ids}
    assert set(OUTCOMES) <= listed

    # XCom holds the sensors' outcomes and the fetched records (phone numbers masked).
    xcom: dict[tuple[str, int], Any] = {
        (task, index): json.loads(value) if isinstance(value, str | bytes) else value  # 2.11 stores bytes
        for task, index, value in stack.query(
            "SELECT task_id, map_index, value FROM xcom WHERE dag_id = ? AND run_id = ? AND key = 'return_value'",
            DAG_ID,
            RUN_ID,
        )
    }
    ids = list(OUTCOMES)
    for index, call_id in enumerate(ids):
        assert xcom[("wait_for_call", index)] == {"call_id": call_id, "status": OUTCOMES[call_id]}
        record = xcom[("fetch_call", index)]
        assert record["id"] == call_id
        assert record["status"] == OUTCOMES[call_id]
        assert "*" in record["to_number"]
        assert record["to_number"] != sim.record(call_id)["to_number"]
    assert xcom[("load", -1)] == len(OUTCOMES)

    # The load upserted one row per call.
    with sqlite3.connect(outcomes_db) as db:
        rows = db.execute("SELECT call_id, status, loaded_by_run FROM call_outcomes ORDER BY call_id").fetchall()
    assert rows == sorted((call_id, status, RUN_ID) for call_id, status in OUTCOMES.items())
