"""A running Airflow for ``make demo``: start and stop its components, wait for DAG runs, say what happened.

The demo's other parts use ``airflow dags test`` (one process, inline triggers). Asset-scheduled DAGs need
the real thing: the api-server (Airflow 3; it also serves the webhook receiver and the execution API),
the scheduler and the dag-processor, or the webserver and the scheduler on Airflow 2.11. Each component
runs in its own process group with its output in ``<logs>/<component>.log``; waits poll the SQLite
metadata DB (read-only) with a deadline and end early, with the logs' tails, when a component dies.

Any demo step can use one ``AirflowComponents``: unpause its DAG (before, with ``airflow dags unpause``, or with
``unpause``), make something happen, ``wait_for_runs`` (or ``wait_for`` with its own probe of the DB).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx

T = TypeVar("T")
_JWT_SECRET = "demo-jwt-secret-" + "0123456789abcdef" * 4  # signs the demo's task tokens only


class DemoError(Exception):
    """A step of the demo failed; the message says which and where its log is."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def airflow_3() -> bool:
    """Whether the installed Airflow is 3.x (read without importing Airflow into the demo process)."""
    from importlib.metadata import version

    return int(version("apache-airflow").split(".")[0]) >= 3


class AirflowComponents:
    """Airflow's long-running components in the demo's ``AIRFLOW_HOME`` (``env``), on ``127.0.0.1:port``."""

    def __init__(self, env: dict[str, str], logs: Path, *, port: int | None = None) -> None:
        self.port = port or free_port()
        self.v3 = airflow_3()
        self.logs = logs
        self.env = {
            **env,
            # Tasks reach the execution API on the api-server; Airflow 2.11 ignores these.
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{self.port}/execution/",
            "AIRFLOW__API_AUTH__JWT_SECRET": env.get(
                "AIRFLOW__API_AUTH__JWT_SECRET", "demo-jwt-secret-0123456789abcdef"
            ),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__WEBSERVER__WORKERS": "1",
            "AIRFLOW__WEBSERVER__SECRET_KEY": "demo-webserver-secret-key",
            # Airflow 2.11 refuses LocalExecutor on SQLite.
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor" if self.v3 else "SequentialExecutor",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
            # The scheduler's log server: a free port, not 8793 (another Airflow on the machine may hold it).
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            # Executors start `airflow ...` by name: this interpreter's first.
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        }
        self.db_path = Path(self.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].removeprefix("sqlite:///"))
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._commands: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        """Base URL of the api-server (webserver): where DialNexa's webhooks would be sent."""
        return f"http://127.0.0.1:{self.port}"

    # -- processes ------------------------------------------------------------------------------------

    def start(self, *components: str) -> Self:
        """Start ``components`` (default: the web server, the scheduler and, on Airflow 3, the dag-processor).

        ``"web"`` is the api-server (Airflow 3, every app, so provider plugins are mounted) or the webserver.
        Other components start only once it answers (tasks need its execution API from their first second);
        ``start("web")`` alone returns at once, so it can boot while the caller does something else.
        """
        names = list(components or ("web", "scheduler", *(("dag-processor",) if self.v3 else ())))
        if "web" in names:
            names.remove("web")
            self._spawn("web")
        if names and "web" in self.procs:
            self.wait_until_up()
        for name in names:
            self._spawn(name)
        return self

    def _spawn(self, name: str) -> None:
        """One component in its own process group, its output in ``<logs>/<name>.log``."""
        if name == "web":
            args = ["api-server", "--port", str(self.port)] if self.v3 else ["webserver", "--port", str(self.port)]
            args += ["--host" if self.v3 else "--hostname", "127.0.0.1", "--workers", "1"]
        else:
            args = [name]
        with (self.logs / f"{name}.log").open("ab") as log:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "airflow", *args],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stopped with every child it forks
            )

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM every component's process group, then SIGKILL what is left."""
        procs, self.procs, self._commands = [*self.procs.values(), *self._commands], {}, []
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def __enter__(self) -> Self:
        """``with AirflowComponents(...) as stack: stack.start(...)``: whatever was started stops at the block's end."""
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop(timeout=10)  # throwaway components: a short grace, then SIGKILL

    def tails(self, lines: int = 20) -> str:
        parts = []
        for name in self.procs or ("web", "scheduler", "dag-processor"):
            path = self.logs / f"{name}.log"
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {path} (last {lines} lines) ---\n" + "\n".join(tail))
        return "\n".join(parts)

    # -- waiting --------------------------------------------------------------------------------------

    def wait_for(self, what: str, probe: Callable[[], T | None], timeout: float, every: float = 0.5) -> T:
        """Poll ``probe`` until it returns something; ``DemoError`` when a component dies or time runs out."""
        deadline = time.monotonic() + timeout
        while True:
            result = probe()
            if result is not None:
                return result
            dead = {name: proc.returncode for name, proc in self.procs.items() if proc.poll() is not None}
            if dead or time.monotonic() > deadline:
                problem = f"components exited: {dead}" if dead else f"nothing after {timeout:.0f} s"
                raise DemoError(f"waiting for {what}: {problem}\n{self.tails()}")
            time.sleep(every)

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """Read the metadata DB (read-only; the components keep writing it); [] while a table is missing."""
        db = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=30)
        try:
            return db.execute(sql, params).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return []
            raise
        finally:
            db.close()

    def wait_until_up(self, timeout: float = 180) -> None:
        """The web server answers its health check."""
        path = "/api/v2/monitor/health" if self.v3 else "/health"

        def probe() -> bool | None:
            try:
                return True if httpx.get(self.url + path, timeout=5).status_code == 200 else None
            except httpx.HTTPError:
                return None

        self.wait_for(f"the {'api-server' if self.v3 else 'webserver'} at {self.url}", probe, timeout)

    def wait_until_parsed(self, dag_id: str, timeout: float = 180) -> None:
        """The DAG is in the metadata DB (serialized by the dag-processor / scheduler)."""
        self.wait_for(
            f"DAG {dag_id} to be parsed",
            lambda: self.query("SELECT 1 FROM serialized_dag WHERE dag_id = ?", dag_id) or None,
            timeout,
        )

    def unpause(self, dag_id: str) -> None:
        """Start ``airflow dags unpause`` in the background (the DAG must be in the DB); see ``wait_until_unpaused``."""
        with (self.logs / f"unpause_{dag_id}.log").open("ab") as log:
            self._commands.append(
                subprocess.Popen(
                    [sys.executable, "-m", "airflow", "dags", "unpause", dag_id],
                    env=self.env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )

    def wait_until_unpaused(self, dag_id: str, timeout: float = 180) -> None:
        """The scheduler may now create runs for the DAG (its schedule, its assets)."""
        self.wait_for(
            f"DAG {dag_id} to be unpaused (log: {self.logs / f'unpause_{dag_id}.log'})",
            lambda: True if self.query("SELECT 1 FROM dag WHERE dag_id = ? AND is_paused = 0", dag_id) else None,
            timeout,
        )

    def dag_runs(self, dag_id: str) -> list[tuple[str, str, str]]:
        """``(run_id, run_type, state)`` of the DAG's runs, oldest first."""
        return [
            (str(run_id), str(run_type), str(state))
            for run_id, run_type, state in self.query(
                "SELECT run_id, run_type, state FROM dag_run WHERE dag_id = ? ORDER BY id", dag_id
            )
        ]

    def wait_for_runs(
        self, dag_id: str, done: Callable[[], bool], timeout: float, *, what: str | None = None
    ) -> list[tuple[str, str, str]]:
        """Wait until ``done()`` holds and none of the DAG's runs is still queued or running; returns its runs."""

        def probe() -> list[tuple[str, str, str]] | None:
            runs = self.dag_runs(dag_id)
            if any(state not in ("success", "failed") for _, _, state in runs) or not done():
                return None
            return runs

        return self.wait_for(what or f"the runs of {dag_id}", probe, timeout)
