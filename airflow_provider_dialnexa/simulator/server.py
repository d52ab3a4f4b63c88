"""Run the simulator on loopback: :class:`Simulator` in a background thread of this process, or
:class:`SimulatorProcess` in a child process (so a benchmark does not bill the server's CPU to the client).

Both expose the same Python control methods (:class:`SimulatorControls`); the thread version runs them
directly against the shared state, the process version sends them to the ``/_sim`` control API.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, Unpack
from urllib.parse import quote, unquote

import httpx

from airflow_provider_dialnexa.simulator.app import SimulatorApp, control, install_log_filter
from airflow_provider_dialnexa.simulator.state import DEFAULT_API_KEY, CallPlan, CallSpec, Fault, LogEntry, SimState
from airflow_provider_dialnexa.simulator.webhooks import Delivery

if TYPE_CHECKING:
    import uvicorn

DEFAULT_HOST = "127.0.0.1"
URL_PREFIX = "DIALNEXA_SIMULATOR_URL="


class SimulatorError(RuntimeError):
    """A control request was refused (unknown call id, invalid plan or fault, ...)."""

    def __init__(self, status: int, message: Any) -> None:
        super().__init__(f"simulator control API answered {status}: {message}")
        self.status = status


def build_server(app: SimulatorApp, log_level: str = "warning", *, configure_logging: bool = False) -> uvicorn.Server:
    """A uvicorn server tuned for many keep-alive clients. Logging config is left alone unless asked (CLI).

    uvicorn is imported here, not at module level: it comes with the ``simulator`` extra, and the provider
    (which never serves anything) must import without it.
    """
    try:
        import uvicorn
        from uvicorn.config import LOGGING_CONFIG
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError(
            "the DialNexa simulator needs uvicorn: pip install 'airflow-provider-dialnexa[simulator]'"
        ) from exc
    config = uvicorn.Config(
        app,
        log_level=log_level,
        log_config=LOGGING_CONFIG if configure_logging else None,
        access_log=False,
        http="httptools" if importlib.util.find_spec("httptools") else "h11",
        loop="auto",  # uvloop when installed
        ws="none",
        lifespan="off",
        backlog=4096,
        limit_concurrency=None,
        timeout_keep_alive=75,
        timeout_graceful_shutdown=3,
        server_header=False,
    )
    install_log_filter()
    return uvicorn.Server(config)


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket, so the real port of ``port=0`` is known before the server starts."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=4096)


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    if host in ("0.0.0.0", "::"):
        host = DEFAULT_HOST
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def raise_fd_limit() -> None:
    """Lift the soft open-files limit to the hard one: 10,000 keep-alive connections need 10,000 descriptors."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        if soft != resource.RLIM_INFINITY and soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ImportError, ValueError, OSError):  # pragma: no cover - platform without the limit
        pass


class SimulatorControls:
    """Python methods of the simulator; subclasses say how a control request travels (``_control``)."""

    _url: str | None = None

    @property
    def url(self) -> str:
        """Base URL (``http://127.0.0.1:PORT``) to put in the Airflow connection; only valid once started."""
        if self._url is None:
            raise RuntimeError("the simulator is not running; call start() or use it as a context manager")
        return self._url

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _control(
        self, method: str, path: str, body: Mapping[str, Any] | None = None, query: Mapping[str, str] | None = None
    ) -> Any:
        raise NotImplementedError

    def create_call(self, **spec: Unpack[CallSpec]) -> str:
        """Create a call (see :class:`CallSpec`; unset fields come from the seeded RNG/config); returns its id."""
        return str(self._control("POST", "/_sim/calls", dict(spec))["id"])

    def create_calls(self, n: int, mix: Mapping[str, float] | None = None, **spec: Unpack[CallSpec]) -> list[str]:
        """Create ``n`` calls whose outcomes follow ``mix`` (default: the config's); returns their ids."""
        body = {"n": n, "mix": dict(mix) if mix is not None else None, **spec}
        return list(self._control("POST", "/_sim/calls/batch", body)["ids"])

    def seed_calls(self, n: int, start: float, end: float, **options: Any) -> int:
        """Create ``n`` ended calls spread over creation times ``[start, end)`` (see :meth:`SimState.seed_calls`)."""
        return int(self._control("POST", "/_sim/calls/seed", {"n": n, "start": start, "end": end, **options})["seeded"])

    def delete_call(self, call_id: str) -> None:
        """Make the call disappear (Get Call answers 404, List Calls no longer shows it), as a deleted call does."""
        self._control("DELETE", f"/_sim/calls/{quote(call_id, safe='')}")

    def set_status(self, call_id: str, status: str) -> None:
        """Force the status shown from now on, verbatim (terminal statuses fill the end-of-call fields)."""
        self._control("POST", f"/_sim/calls/{quote(call_id, safe='')}/status", {"status": status})

    def script(self, call_id: str, statuses: Sequence[str]) -> None:
        """Show ``statuses`` verbatim, advancing one per Get Call of this call and staying on the last."""
        self._control("POST", f"/_sim/calls/{quote(call_id, safe='')}/script", {"statuses": list(statuses)})

    def add_fault(self, fault: Fault) -> None:
        self._control("POST", "/_sim/faults", dataclasses.asdict(fault))

    def clear_faults(self) -> None:
        self._control("DELETE", "/_sim/faults")

    def configure(self, **changes: Any) -> dict[str, Any]:
        """Change :class:`SimConfig` fields (``list_style``, ``list_route``, ``latency_s``, ``api_key``, ...)."""
        return dict(self._control("POST", "/_sim/config", changes))

    def plan(self, call_id: str) -> CallPlan:
        """The call's plan, including ``created_at`` and ``terminal_at`` (epoch seconds)."""
        return CallPlan.from_dict(self._control("GET", f"/_sim/calls/{quote(call_id, safe='')}/plan"))

    def record(self, call_id: str) -> dict[str, Any]:
        """What Get Call would return now, without counting a request or advancing a script."""
        return dict(self._control("GET", f"/_sim/calls/{quote(call_id, safe='')}"))

    def stats(self) -> dict[str, Any]:
        """Counters since the last reset (``by_status`` keyed by int status; ``0`` = connection reset)."""
        stats = dict(self._control("GET", "/_sim/stats"))
        stats["by_status"] = {int(k): v for k, v in stats["by_status"].items()}
        return stats

    def requests(self, call_id: str | None = None, route: str | None = None) -> list[LogEntry]:
        """The request log, optionally only entries naming ``call_id`` and/or on ``route``."""
        query = {k: v for k, v in (("call_id", call_id), ("route", route)) if v is not None}
        rows = self._control("GET", "/_sim/requests", query=query)["requests"]
        return [LogEntry(t, method, r, tuple(ids), status) for t, method, r, ids, status in rows]

    def get_count(self, call_id: str) -> int:
        """How many Get Call requests named ``call_id`` since the last reset."""
        return int(self.stats()["get_by_call"].get(call_id, 0))

    def calls_by_metadata(self, key: str = "airflow_correlation_id") -> dict[str, int]:
        """Calls per value of ``metadata[key]`` (default: the provider's correlation key); >1 is a duplicate."""
        return {str(k): int(v) for k, v in self._control("GET", "/_sim/correlations", query={"key": key}).items()}

    def reset(self, seed: int | None = None) -> None:
        """Forget calls, faults, counters and log and restore the config (see :meth:`SimState.reset`)."""
        self._control("POST", "/_sim/reset", {"seed": seed})

    # -- webhooks (simulator/webhooks.py) --------------------------------------------------------------

    def configure_webhooks(self, **changes: Any) -> dict[str, Any]:
        """Change :class:`WebhookConfig` fields (``signature_header``, ``event_style``, ``retry_count``, faults...)."""
        return dict(self._control("POST", "/_sim/webhooks/config", changes))

    def webhooks(self) -> list[dict[str, Any]]:
        """The registered webhooks as List Webhooks shows them (secrets masked)."""
        return list(self._control("GET", "/_sim/webhooks")["webhooks"])

    def deliveries(self, call_id: str | None = None, event: str | None = None) -> list[Delivery]:
        """The delivery log (one entry per HTTP attempt, verification pings included), optionally filtered."""
        query = {k: v for k, v in (("call_id", call_id), ("event", event)) if v is not None}
        rows = self._control("GET", "/_sim/webhooks/deliveries", query=query)["deliveries"]
        return [Delivery(**row) for row in rows]

    def wait_for_deliveries(self, timeout: float = 60.0) -> list[Delivery]:
        """Wait until no delivery is due or in flight (retries included); returns the log. ``TimeoutError`` if not.

        Calls still ringing or talking do not count: their events are not due yet.
        """
        deadline = time.monotonic() + timeout
        while self._control("GET", "/_sim/webhooks/deliveries", query={"event": "-"})["pending"]:
            if time.monotonic() > deadline:
                raise TimeoutError(f"webhook deliveries still pending after {timeout:.0f} s")
            time.sleep(0.05)
        return self.deliveries()

    # -- batch calls (simulator/batches.py) ---------------------------------------------------------

    def configure_batches(self, **changes: Any) -> dict[str, Any]:
        """Change how batches behave (:class:`~airflow_provider_dialnexa.simulator.batches.BatchConfig`)."""
        return dict(self._control("POST", "/_sim/batches/config", changes))

    def batches(self) -> list[dict[str, Any]]:
        """Every batch as List Batch Calls shows it, plus ``attempts`` and each lead's ``finals`` (by number)."""
        return list(self._control("GET", "/_sim/batches")["batches"])

    def advance_clock(self, seconds: float) -> float:
        """Move the batch clock ``seconds`` ahead (running every batch event meanwhile); returns its time."""
        return float(self._control("POST", "/_sim/clock/advance", {"seconds": seconds})["now"])

    def set_clock(self, when: float) -> float:
        """Set the batch clock to ``when`` (epoch seconds; later is safe, earlier only before any batch)."""
        return float(self._control("POST", "/_sim/clock", {"time": when})["now"])


class Simulator(SimulatorControls):
    """The simulator served by uvicorn from a background thread of this process.

    ``with Simulator(api_key="k:s", seed=7) as sim: ... sim.url ...``. Port 0 picks a free port.
    """

    def __init__(
        self,
        api_key: str = DEFAULT_API_KEY,
        seed: int = 0,
        *,
        host: str = DEFAULT_HOST,
        port: int = 0,
        calls: int = 0,
        log_level: str = "warning",
    ) -> None:
        self.state = SimState(api_key=api_key, seed=seed)
        if calls:
            self.state.create_calls(calls)
        self.host, self.port, self.log_level = host, port, log_level
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 15.0) -> Self:
        """Serve in a daemon thread; returns once the server accepts connections."""
        if self._thread is not None:
            return self
        raise_fd_limit()
        sock = bind_socket(self.host, self.port)
        server = build_server(SimulatorApp(self.state), self.log_level)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="dialnexa-simulator", daemon=True)
        thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                server.should_exit = True
                thread.join(5)
                sock.close()
                raise RuntimeError("the DialNexa simulator did not start")
            time.sleep(0.005)
        self._server, self._thread, self._url = server, thread, url_of(sock)
        return self

    def stop(self, timeout: float = 15.0) -> None:
        """Stop serving and join the thread (uvicorn closes the listening socket)."""
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():  # pragma: no cover - only if a handler hangs past the graceful timeout
            self._server.force_exit = True
            self._thread.join(timeout)
        self.state.webhooks.close()
        self._server = self._thread = self._url = None

    def _control(
        self, method: str, path: str, body: Mapping[str, Any] | None = None, query: Mapping[str, str] | None = None
    ) -> Any:
        status, payload = control(
            self.state, method, unquote(path), {k: [v] for k, v in (query or {}).items()}, dict(body or {})
        )
        if status >= 400:
            raise SimulatorError(status, payload["message"])
        return payload

    def get_count(self, call_id: str) -> int:
        return self.state.get_count(call_id)

    def wait_for_deliveries(self, timeout: float = 60.0) -> list[Delivery]:
        if not self.state.webhooks.wait_idle(timeout):
            raise TimeoutError(f"webhook deliveries still pending after {timeout:.0f} s")
        return self.state.webhooks.deliveries()


class SimulatorProcess(SimulatorControls):
    """The simulator in a child process (``python -m airflow_provider_dialnexa.simulator``), driven over HTTP."""

    def __init__(
        self,
        api_key: str = DEFAULT_API_KEY,
        seed: int = 0,
        *,
        host: str = DEFAULT_HOST,
        port: int = 0,
        calls: int = 0,
        log_level: str = "warning",
    ) -> None:
        self.command = [
            sys.executable,
            "-m",
            "airflow_provider_dialnexa.simulator",
            *("--host", host, "--port", str(port), "--api-key", api_key, "--rng-seed", str(seed)),
            *("--calls", str(calls), "--log-level", log_level),
        ]
        self._proc: subprocess.Popen[str] | None = None
        self._client: httpx.Client | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self, timeout: float = 60.0) -> Self:
        """Spawn the child, read the URL it prints, then poll its port until the control API answers."""
        if self._proc is not None:
            return self
        deadline = time.monotonic() + timeout
        self._proc = proc = subprocess.Popen(self.command, stdout=subprocess.PIPE, text=True)
        try:
            url = self._read_url(proc, deadline)
            self._client = httpx.Client(base_url=url, timeout=60.0)
            while True:
                try:
                    if self._client.get("/_sim/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the DialNexa simulator at {url} did not become ready")
                time.sleep(0.02)
        except BaseException:
            self.stop()
            raise
        self._url = url
        return self

    @staticmethod
    def _read_url(proc: subprocess.Popen[str], deadline: float) -> str:
        assert proc.stdout is not None
        while time.monotonic() < deadline and proc.poll() is None:
            if select.select([proc.stdout], [], [], 0.1)[0]:
                line = proc.stdout.readline().strip()
                if line.startswith(URL_PREFIX):
                    return line.removeprefix(URL_PREFIX)
                if not line:
                    break
        raise RuntimeError(f"the DialNexa simulator did not print its URL (exit code {proc.poll()})")

    def stop(self, timeout: float = 15.0) -> None:
        """Terminate the child (SIGTERM: uvicorn shuts down gracefully), killing it if it does not exit."""
        if self._client is not None:
            self._client.close()
        proc, self._proc, self._client, self._url = self._proc, None, None, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    def _control(
        self, method: str, path: str, body: Mapping[str, Any] | None = None, query: Mapping[str, str] | None = None
    ) -> Any:
        if self._client is None:
            raise RuntimeError("the simulator process is not running")
        response = self._client.request(
            method, path, json=dict(body) if body is not None else None, params=dict(query or {})
        )
        payload = response.json()
        if response.status_code >= 400:
            raise SimulatorError(response.status_code, payload.get("message"))
        return payload
