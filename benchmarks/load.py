"""One load run in a fresh process: N call-waits on one asyncio loop, the way the triggerer runs them.

The parent (``python -m benchmarks``) starts ``python -m benchmarks.load`` once per mode, with the
connection in ``AIRFLOW_CONN_*`` variables. Protocol on stdin/stdout, one JSON line each, prefixed with
``BENCH `` (anything else on stdout is ignored):

1. child -> parent ``{"ready": true, ...}`` once Airflow and the triggers are imported;
2. parent -> child the run spec (mode, call ids, poll interval, deadline, seed);
3. child -> parent the result: one event per call plus CPU, RSS and event-loop lag of the run.

Each wait is a task that consumes ``trigger.run()`` until its first event, as the triggerer does. Waits
without an event at the deadline count as failures; if the loop is so overloaded that it cannot even
notice the deadline, a thread reports what arrived so far and ends the process.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import resource
import sys
import threading
import time
from typing import Any

PREFIX = "BENCH "
CONN_OURS = "dialnexa_default"
CONN_PEER = "dialnexa_peer"
LAG_TICK = 0.1  # the triggerer's block_watchdog sleeps 0.1 s too
RESCUE_GRACE = 20.0  # seconds past the deadline before a thread reports for a loop that is stuck


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (10,000 waits need more than 1,024 sockets)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def send(message: dict[str, Any]) -> None:
    sys.stdout.write(PREFIX + json.dumps(message) + "\n")
    sys.stdout.flush()


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def current_rss_mb() -> float:
    import psutil

    return float(psutil.Process().memory_info().rss) / 2**20


def make_trigger(mode: dict[str, Any], call_id: str, interval: float, first_delay: float) -> Any:
    if mode["kind"] == "peer":
        from airflow.providers.http.triggers.http import HttpEventTrigger

        return HttpEventTrigger(
            response_check_path="benchmarks.peer.call_ended",
            http_conn_id=CONN_PEER,
            method="GET",
            endpoint=f"v1/calls/{call_id}",
            poll_interval=interval,
        )
    from airflow_provider_dialnexa.triggers.dialnexa import DialNexaCallTrigger

    return DialNexaCallTrigger(
        call_id,
        dialnexa_conn_id=CONN_OURS,
        poll_interval=interval,
        max_poll_interval=max(interval, mode["max_interval"]),
        poll_growth=mode["growth"],
        first_poll_delay=first_delay,
        polling=mode["polling"],
    )


class Run:
    """The state of one run, written by the event loop and reported once (by the loop or a rescue thread)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.kind: str = spec["mode"]["kind"]
        self.arrivals: dict[str, tuple[float, Any]] = {}  # call id -> (event time, payload)
        self.crashes: dict[str, str] = {}
        self.first_poll: dict[str, float] = {}
        self.lags: list[float] = []
        self.started = self.cpu_before = self.rss_before = 0.0
        self._lock = threading.Lock()
        self._sent = False

    async def wait(self, call_id: str, trigger: Any, start_delay: float) -> None:
        """Run one trigger until its first event, as the triggerer does, and note when it arrived."""
        try:
            if start_delay > 0:  # the peer has no first-poll delay: start it later instead
                await asyncio.sleep(start_delay)
            events = trigger.run()
            try:
                event = await anext(events)
            finally:
                await events.aclose()
            self.arrivals[call_id] = (time.time(), event.payload)
        except Exception as exc:
            self.crashes[call_id] = f"{type(exc).__name__}: {exc}"[:200]

    async def watchdog(self) -> None:
        """Record how late each 0.1 s sleep wakes up: the event loop's lag."""
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(LAG_TICK)
            self.lags.append(max(0.0, loop.time() - before - LAG_TICK))

    def report(self, rescued: bool = False) -> bool:
        """Send the result once; True if this call sent it. Safe from another thread (copies first)."""
        cpu_after, now = cpu_seconds(), time.time()
        with self._lock:
            if self._sent:
                return False
            self._sent = True
        arrivals, crashes, lags = dict(self.arrivals), dict(self.crashes), list(self.lags)
        events: dict[str, list[Any]] = {}  # call id -> [event time, outcome, first poll time]
        for call_id, first_poll in self.first_poll.items():
            if call_id in arrivals:
                at, payload = arrivals[call_id]
                events[call_id] = [at, outcome(self.kind, payload), first_poll]
            else:
                events[call_id] = [None, "crash" if call_id in crashes else "no_event", first_poll]
        unfinished = len(self.first_poll) - len(arrivals)
        finished = max((at for at, _ in arrivals.values()), default=now) if not unfinished else now
        send(
            {
                "started": self.started,
                "finished": finished,
                "wall_s": finished - self.started,
                "cpu_s": cpu_after - self.cpu_before,
                "rss_before_mb": self.rss_before,
                "peak_rss_mb": peak_rss_mb(),
                "lags_s": lags,
                "events": events,
                "unfinished": unfinished,
                "rescued": rescued,
                "errors": [f"{call_id}: {message}" for call_id, message in list(crashes.items())[:20]],
            }
        )
        return True

    def rescue(self) -> None:
        """Runs in a thread at the hard deadline: an overloaded loop may never get back to us."""
        if self.report(rescued=True):
            os._exit(0)

    async def main(self) -> None:
        """Start one wait per call id, wait for their first events until the deadline, report."""
        spec, interval = self.spec, float(self.spec["interval"])
        rng = random.Random(spec["seed"])
        peer = self.kind == "peer"
        lag_task = asyncio.create_task(self.watchdog())
        self.rss_before, self.cpu_before, self.started = current_rss_mb(), cpu_seconds(), time.time()
        tasks = []
        for call_id in spec["call_ids"]:
            delay = rng.uniform(0, interval)  # waits arrive spread over one interval, as sensors defer
            self.first_poll[call_id] = self.started + delay
            trigger = make_trigger(spec["mode"], call_id, interval, 0.0 if peer else delay)
            tasks.append(asyncio.create_task(self.wait(call_id, trigger, delay if peer else 0.0)))
        _, pending = await asyncio.wait(tasks, timeout=max(1.0, spec["deadline"] - time.time()))
        lag_task.cancel()
        self.report()
        if pending:
            # An overloaded client can take minutes to cancel thousands of queued requests; the numbers
            # are out, so leave without cleaning up.
            os._exit(0)
        if not peer:
            from airflow_provider_dialnexa.hooks.dialnexa import close_async_clients

            await close_async_clients()


def outcome(kind: str, payload: Any) -> str:
    """The call status a wait ended with (``<event>:<kind>`` for anything that is not a status)."""
    if kind == "peer":
        if not isinstance(payload, dict) or payload.get("status") != "success":
            return f"error:{payload!r:.80}"
        body = json.loads(base64.standard_b64decode(payload["response"]["content"]))
        from airflow_provider_dialnexa.status import normalise

        return normalise(body.get("status"))
    if payload.get("event") == "success":
        return str(payload["status"])
    return f"{payload.get('event')}:{payload.get('kind', '')}"


def main() -> None:
    fd_limit = raise_fd_limit()
    cpu_start = cpu_seconds()
    # Import what the triggerer has imported before the first trigger runs.
    import airflow.providers.http.triggers.http  # noqa: F401

    import airflow_provider_dialnexa.triggers.dialnexa  # noqa: F401

    send({"ready": True, "import_cpu_s": cpu_seconds() - cpu_start, "fd_limit": fd_limit})
    spec = json.loads(sys.stdin.readline())
    run = Run(spec)
    rescue = threading.Timer(max(1.0, spec["deadline"] - time.time()) + RESCUE_GRACE, run.rescue)
    rescue.daemon = True
    rescue.start()
    if spec.get("loop") == "uvloop":
        import uvloop

        uvloop.run(run.main())
    else:
        asyncio.run(run.main())
    rescue.cancel()


if __name__ == "__main__":
    main()
