"""A throwaway Airflow that receives DialNexa webhooks: for the webhook full-stack tests and ``benchmarks.webhooks``.

``AirflowStack`` runs real components in their own process groups, in a temporary ``AIRFLOW_HOME``:
Airflow 3: api-server (all apps: the plugin is mounted with the core apps), scheduler, dag-processor;
Airflow 2.11: webserver (gunicorn, one worker) and scheduler (which parses DAGs itself). The metadata DB
is SQLite unless a URL is given (``PrivateCluster`` starts a private PostgreSQL for the replica test).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
from airflow.providers.common.compat.version_compat import AIRFLOW_V_3_0_PLUS

from airflow_provider_dialnexa.webhooks.signature import sign

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[1]
AIRFLOW_3 = bool(AIRFLOW_V_3_0_PLUS)
#: Metadata DB tables of the asset (dataset) events and their consumption, per Airflow line.
EVENT_TABLE = "asset_event" if AIRFLOW_3 else "dataset_event"
CONSUMED_TABLE = "dagrun_asset_event" if AIRFLOW_3 else "dagrun_dataset_event"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def connection_env(conn_id: str, secret: str | None, api_key: str = "k:s") -> tuple[str, str]:
    """An ``AIRFLOW_CONN_*`` variable defining a DialNexa connection with a webhook secret (or none)."""
    extra = {"webhook_secret": secret} if secret else {}
    value = json.dumps({"conn_type": "dialnexa", "password": api_key, "extra": extra})
    return f"AIRFLOW_CONN_{conn_id.upper()}", value


@dataclass
class AirflowStack:
    """Real Airflow components in a throwaway home; ``url`` is the api-server's (webserver's) base URL."""

    home: Path
    dags: list[Path]
    db_url: str | None = None
    extra_env: Mapping[str, str] = field(default_factory=dict)
    #: Switch the throwaway SQLite DB to WAL journaling after migrating it (Airflow 3 does it itself; 2.11 not).
    sqlite_wal: bool = False
    web_port: int = field(default_factory=free_port)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        dags_folder = self.home / "dags"
        dags_folder.mkdir(parents=True, exist_ok=True)
        for dag in self.dags:
            target = dags_folder / dag.name
            if not target.exists():
                target.symlink_to(dag)
        db_url = self.db_url or f"sqlite:///{self.home / 'airflow.db'}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        env.update(
            {
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db_url,
                "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
                "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
                # Airflow 2.11 refuses LocalExecutor on SQLite.
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor" if AIRFLOW_3 or self.db_url else "SequentialExecutor",
                "AIRFLOW__CORE__PARALLELISM": "4",
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{self.web_port}/execution/",
                "AIRFLOW__API_AUTH__JWT_SECRET": "webhook-stack-jwt-secret-0123456789abcdef",
                "AIRFLOW__API__WORKERS": "1",
                "AIRFLOW__WEBSERVER__WORKERS": "1",
                "AIRFLOW__WEBSERVER__SECRET_KEY": "webhook-stack-secret-key",
                "AIRFLOW__WEBSERVER__WEB_SERVER_PORT": str(self.web_port),
                "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "True",
                "PYTHONUNBUFFERED": "1",
                # Executors start `airflow tasks run ...` by name: this interpreter's `airflow` first.
                "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
            }
        )
        env.update(self.extra_env)
        self.env = env

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    @property
    def engine_url(self) -> str:
        return self.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]

    def airflow(self, *args: str, timeout: float = 600) -> str:
        """Run an ``airflow`` CLI command; raise with its output if it fails."""
        done = subprocess.run(
            [sys.executable, "-m", "airflow", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"airflow {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return done.stdout

    def start(self, name: str, *args: str) -> None:
        """Start one component (``name`` is its log file's name and the key to stop it)."""
        log = (self.home / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "airflow", *args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped with every child it forks
        )
        log.close()

    def start_web(self, name: str = "web", port: int | None = None) -> None:
        """The api-server (Airflow 3, all apps, one worker) or the webserver (2.11, one gunicorn worker)."""
        port = port or self.web_port
        if AIRFLOW_3:
            self.start(name, "api-server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1")
        else:  # its own pid file: two webservers may share one AIRFLOW_HOME
            pid = str(self.home / f"{name}.pid")
            self.start(
                name, "webserver", "--hostname", "127.0.0.1", "--port", str(port), "--workers", "1", "--pid", pid
            )

    def start_all(self) -> None:
        """Migrate the DB, then start the web server and the scheduler (and the dag-processor on Airflow 3)."""
        self.airflow("db", "migrate")
        if self.sqlite_wal and not self.db_url:
            import sqlite3

            with contextlib.closing(sqlite3.connect(self.home / "airflow.db")) as db:
                db.execute("PRAGMA journal_mode=WAL")
        self.start_web()
        self.start("scheduler", "scheduler")
        if AIRFLOW_3:
            self.start("dag-processor", "dag-processor")

    def stop(self, *names: str, timeout: float = 60) -> None:
        """SIGTERM the named components' process groups (all when none is named), SIGKILL what is left."""
        procs = [self.procs.pop(name) for name in (names or list(self.procs)) if name in self.procs]
        for proc in procs:
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, deadline - time.monotonic()))
            _signal_group(proc, signal.SIGKILL)
            proc.wait()

    def logs(self, lines: int = 30) -> str:
        parts = []
        for path in sorted(self.home.glob("*.log")):
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path.name} (last {lines} lines) ---\n" + "\n".join(tail))
        return "\n".join(parts)

    def wait_for(self, what: str, probe: Callable[[], T | None], timeout: float = 300, every: float = 0.5) -> T:
        """Poll ``probe`` until it returns something; fail with the logs when a component dies or time runs out."""
        deadline = time.monotonic() + timeout
        while True:
            result = probe()
            if result is not None:
                return result
            dead = {name: proc.returncode for name, proc in self.procs.items() if proc.poll() is not None}
            if dead or time.monotonic() > deadline:
                problem = f"components exited: {dead}" if dead else f"nothing within {timeout:.0f} s"
                raise AssertionError(f"waiting for {what}: {problem}\n{self.logs()}")
            time.sleep(every)

    def query(self, sql: str, **params: Any) -> list[tuple[Any, ...]]:
        """Read the metadata DB (SQLite or PostgreSQL) with plain SQL."""
        from sqlalchemy import create_engine, text

        engine = _engines.get(self.engine_url)
        if engine is None:
            engine = _engines[self.engine_url] = create_engine(self.engine_url)
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(text(sql), params)]

    def wait_ready(self, conn_id: str, secret: str, url: str | None = None, timeout: float = 300) -> None:
        """Wait until the receiver answers a signed verification ping with 200."""
        ping = json.dumps({"event_type": "verification", "message": "verify", "timestamp": 0}).encode()
        target = f"{url or self.url}/dialnexa/webhooks/{conn_id}"

        def probe() -> bool | None:
            try:
                response = httpx.post(
                    target, content=ping, headers={"x-nexa-signature": sign(ping, secret)}, timeout=10
                )
            except httpx.HTTPError:
                return None
            return True if response.status_code == 200 else None

        self.wait_for(f"the receiver at {target}", probe, timeout=timeout, every=1.0)

    def receipts(self, conn_id: str) -> list[tuple[str, str, int | None]]:
        """(call id, status, asset event id) of every receipt of the connection, or [] before the first."""
        try:
            rows = self.query(
                "SELECT call_id, status, asset_event_id FROM dialnexa_webhook_receipt WHERE conn_id = :c", c=conn_id
            )
        except Exception:  # the table is created by the first recorded delivery
            return []
        return sorted((str(a), str(b), c) for a, b, c in rows)

    def events(self, uri: str) -> list[dict[str, Any]]:
        """The ``extra`` of every asset (dataset) event on ``uri``."""
        asset_table, asset_col = ("asset", "asset_id") if AIRFLOW_3 else ("dataset", "dataset_id")
        rows = self.query(
            f"SELECT e.extra FROM {EVENT_TABLE} e JOIN {asset_table} a ON a.id = e.{asset_col} "  # noqa: S608
            "WHERE a.uri = :uri ORDER BY e.id",
            uri=uri,
        )
        return [json.loads(extra) if isinstance(extra, str | bytes) else extra for (extra,) in rows]


_engines: dict[str, Any] = {}


def post(
    client: httpx.Client,
    url: str,
    body: bytes,
    secret: str | None,
    header: str = "x-nexa-signature",
    headers: Mapping[str, str] | None = None,
) -> httpx.Response:
    """POST a delivery signed with ``secret`` (unsigned when None)."""
    sent = dict(headers or {})
    if secret is not None:
        sent[header] = sign(body, secret)
    return client.post(url, content=body, headers={"content-type": "application/json", **sent})


def call_ended(call_id: str, status: str = "completed", event: str = "call_ended", **call: Any) -> bytes:
    """A delivery body in the envelope shape (``call_ended``) or the dotted shape (``call.completed``, ...)."""
    if event.startswith("call_"):
        payload: dict[str, Any] = {"event_type": event, "payload": {"call": {"id": call_id, "status": status, **call}}}
    else:
        payload = {"event": event, "data": {"id": call_id, "status": status, **call}}
    return json.dumps(payload).encode()


# -- PostgreSQL --------------------------------------------------------------------------------------------


def postgres_bin() -> Path | None:
    """The directory of Debian's PostgreSQL server binaries (newest version), or of ``initdb`` on PATH."""
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3] or 0))
    if candidates:
        return candidates[-1].parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


class PrivateCluster:
    """A private PostgreSQL cluster: initdb in a temporary directory, its own port and socket, trust auth.

    As root (CI, this machine), the server runs as the ``postgres`` user Debian's package creates (PostgreSQL
    refuses to run as root). ``url`` names a fresh database ``airflow``.
    """

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.port = free_port()
        self.base = Path(tempfile.mkdtemp(prefix="dialnexa-pg-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self._as: list[str] = []
        if os.geteuid() == 0:
            import pwd

            user = pwd.getpwnam("postgres")
            os.chown(self.base, user.pw_uid, user.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/airflow"

    def start(self, timeout: float = 120) -> PrivateCluster:
        data = self.base / "data"
        subprocess.run(
            [*self._as, str(self.bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
            check=True,
            capture_output=True,
            timeout=timeout,
        )
        log = (self.base / "postgres.log").open("ab")
        settings = ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "max_connections=200"]
        server = [str(self.bin_dir / "postgres"), "-D", str(data), "-p", str(self.port), "-k", str(self.base)]
        self.proc = subprocess.Popen(
            [*self._as, *server, "-h", "127.0.0.1", *settings],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        import psycopg2

        deadline = time.monotonic() + timeout
        while True:
            try:
                conn = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres")
                break
            except psycopg2.OperationalError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        "PostgreSQL did not start:\n" + (self.base / "postgres.log").read_text()[-3000:]
                    ) from None
                time.sleep(0.3)
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute("CREATE DATABASE airflow")
        conn.close()
        return self

    def stop(self) -> None:
        for engine in [e for url, e in _engines.items() if str(self.port) in url]:
            engine.dispose()
        if self.proc is not None:
            _signal_group(self.proc, signal.SIGINT)  # fast shutdown
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                _signal_group(self.proc, signal.SIGKILL)
                self.proc.wait()
        shutil.rmtree(self.base, ignore_errors=True)


def unique(items: Iterable[T]) -> list[T]:
    return list(dict.fromkeys(items))
