"""``python -m benchmarks.create``: N mapped Create Calls under faults; every lead must be called exactly once.

Each lead is one mapped task instance of ``DialNexaCreateCallOperator`` (map index = lead number), run
through ``execute()`` from a thread pool the way workers would run them. About ``--fault-rate`` of the
POSTs hit an ambiguous fault (the call is created and the answer lost: reset, 502, 504, held past the
client's timeout; or refused before creation: 500, HTML 502), 2 % more a 429. ``--crash-rate`` of the
task instances "die" right after the POST returned and run again as try 2; a task that fails outright
is retried as Airflow would (up to 4 tries). The simulator then counts calls per correlation value.

Standalone it starts its own simulator process; ``python -m benchmarks`` runs it against its simulator
(``--url``). The last stdout line is ``BENCH {json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any, cast

import httpx

from airflow_provider_dialnexa.simulator import DEFAULT_API_KEY, Fault, SimulatorControls, SimulatorProcess

PREFIX = "BENCH "
AGENT = "agent_2g7Xy3tY53gRlp"
#: Ambiguous Create Call faults: the first four create the call and lose the answer, the last two refuse it.
AMBIGUOUS = ("reset", "lost_502", "lost_504", "lost_slow", "500", "502_html")
READ_TIMEOUT = 1.0  # the connection's read timeout; ``lost_slow`` holds the answer twice as long
MAX_TRIES = 4


class RemoteSimulator(SimulatorControls):
    """Control API of a simulator someone else started (``--url``)."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._client = httpx.Client(base_url=url, timeout=60.0)

    def _control(
        self, method: str, path: str, body: Any = None, query: Any = None
    ) -> Any:  # same shape as SimulatorProcess._control
        response = self._client.request(method, path, json=body, params=dict(query or {}))
        response.raise_for_status()
        return response.json()

    def stop(self) -> None:
        self._client.close()


def install_faults(sim: SimulatorControls, fault_rate: float) -> None:
    """Rate-based rules on Create Call: ``fault_rate`` ambiguous in total (split evenly), plus 2 % 429s."""
    share = fault_rate / len(AMBIGUOUS)
    for i, kind in enumerate(AMBIGUOUS):
        # Rules are tried in order and the first that fires wins: scale so each kind gets ``share`` overall.
        rate = min(1.0, share / max(1e-9, 1 - share * i))
        sim.add_fault(Fault(kind=kind, route="create", rate=rate, delay_s=2 * READ_TIMEOUT))  # type: ignore[arg-type]
    sim.add_fault(Fault(kind="429", route="create", rate=0.02, retry_after="1"))


def _allow_execute_in_this_thread() -> None:
    """Let ``operator.execute`` run in a pool thread on Airflow 2.11 too (as workers run tasks).

    2.11's ``ExecutorSafeguard`` keeps thread-local state that only the importing thread has, so a direct call
    from another thread fails with an AttributeError that real tasks never see. Airflow 3 has no such check.
    """
    from airflow.providers.common.compat.version_compat import AIRFLOW_V_3_0_PLUS

    if AIRFLOW_V_3_0_PLUS:
        return
    from airflow.models.baseoperator import ExecutorSafeguard

    if not hasattr(ExecutorSafeguard._sentinel, "callers"):
        ExecutorSafeguard._sentinel.callers = {}


def warm_up_airflow() -> None:
    """Do in this thread what the first ``execute()`` imports and configures lazily.

    Workers run each task in its own process; this benchmark runs them as threads of one process. On Airflow
    2.11 the first ``execute()`` imports ``airflow.decorators`` (and with it SQLAlchemy models) while another
    thread's connection lookup configures the mappers: the import lock and SQLAlchemy's configure lock taken
    in opposite orders deadlocked a run of the benchmark. Importing and configuring first leaves nothing lazy.
    """
    import airflow.decorators  # noqa: F401  (what 2.11's ExecutorSafeguard imports on the first execute)
    from sqlalchemy.orm import configure_mappers

    configure_mappers()


def run_scenario(
    sim: SimulatorControls, n: int, seed: int, workers: int, fault_rate: float, crash_rate: float
) -> dict[str, Any]:
    """Place ``n`` calls through the operator under faults; return what the simulator saw."""
    from airflow_provider_dialnexa.operators.dialnexa import DialNexaCreateCallOperator

    sim.reset(seed)
    install_faults(sim, fault_rate)
    rng = random.Random(seed)
    crashes = set(rng.sample(range(n), round(n * crash_rate)))
    tally: Counter[str] = Counter()
    lock = threading.Lock()

    def lead(index: int) -> str | None:
        _allow_execute_in_this_thread()
        phone = f"+1415{5550000 + index:07d}"
        first_id: str | None = None
        for try_number in range(1, MAX_TRIES + 1):
            op = DialNexaCreateCallOperator(
                task_id="place_call", phone_number=phone, agent_id=AGENT, metadata={"lead": index}
            )
            ti = SimpleNamespace(
                dag_id="bench_place", run_id="bench__1", task_id="place_call", map_index=index, try_number=try_number
            )
            try:
                result = op.execute(cast("Any", {"ti": ti}))
            except Exception as exc:  # the task fails: Airflow retries it
                with lock:
                    tally[f"task failed: {type(exc).__name__}"] += 1
                continue
            finally:
                op.hook.close()
            call_id = str(result["call_id"])
            if first_id is None and index in crashes:  # the worker dies before the try is recorded
                first_id = call_id
                with lock:
                    tally["worker crashes after the POST"] += 1
                continue
            if first_id is not None:
                with lock:
                    tally[
                        "retries that adopted the earlier call" if call_id == first_id else "retries placing anew"
                    ] += 1
            return call_id
        return None

    warm_up_airflow()
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(lead, range(n)))
    wall = time.perf_counter() - started
    stats = sim.stats()
    per_value = sim.calls_by_metadata()
    by_route = stats["by_route"]
    fired = {str(k): v for k, v in stats["faults_fired"].items()}
    ambiguous = sum(v for k, v in fired.items() if k in AMBIGUOUS)
    return {
        "n": n,
        "workers": workers,
        "fault_rate": fault_rate,
        "crash_rate": crash_rate,
        "wall_s": round(wall, 2),
        "calls_in_simulator": stats["calls"],
        "correlation_values": len(per_value),
        "duplicates": sum(count - 1 for count in per_value.values()),
        "leads_without_a_call": n - len(per_value),
        "tasks_without_a_result": sum(1 for r in results if r is None),
        "posts": by_route.get("create", 0),
        "extra_posts": by_route.get("create", 0) - n,
        "list_requests": by_route.get("list", 0),
        "get_requests": by_route.get("get", 0),
        "faults_fired": fired,
        "ambiguous_faults": ambiguous,
        "list_requests_per_ambiguous_fault": round(by_route.get("list", 0) / ambiguous, 2) if ambiguous else None,
        "tasks": dict(tally),
    }


def report(result: dict[str, Any]) -> str:
    keys = (
        "n",
        "wall_s",
        "calls_in_simulator",
        "duplicates",
        "leads_without_a_call",
        "posts",
        "extra_posts",
        "ambiguous_faults",
        "list_requests",
        "list_requests_per_ambiguous_fault",
        "get_requests",
        "faults_fired",
        "tasks",
    )
    return "\n".join(f"  {key:34} {result[key]}" for key in keys)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.create", description=__doc__)
    parser.add_argument("--n", type=int, default=1000, help="leads = mapped task instances (default %(default)s)")
    parser.add_argument("--workers", type=int, default=16, help="concurrent task instances (default %(default)s)")
    parser.add_argument("--fault-rate", type=float, default=0.10, help="ambiguous POST faults (default %(default)s)")
    parser.add_argument(
        "--crash-rate", type=float, default=0.05, help="tasks dying after the POST (default %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--url", help="an already running simulator (default: start one)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="dialnexa_bench_create_") as home:
        sim: SimulatorControls = RemoteSimulator(args.url) if args.url else SimulatorProcess(seed=args.seed).start()
        try:
            conn = {
                "conn_type": "dialnexa",
                "host": sim.url,
                "password": DEFAULT_API_KEY,
                "extra": {"timeout": READ_TIMEOUT, "max_retries": 5, "rate_limit_per_minute": 0},
            }
            os.environ["AIRFLOW_CONN_DIALNEXA_DEFAULT"] = json.dumps(conn)
            os.environ.setdefault("AIRFLOW_HOME", home)
            os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "ERROR")  # a warning per fault otherwise
            result = run_scenario(sim, args.n, args.seed, args.workers, args.fault_rate, args.crash_rate)
        finally:
            sim.stop()
    print(
        f"{args.n} mapped Create Calls, ~{args.fault_rate:.0%} ambiguous faults, {args.crash_rate:.0%} crashed tries:"
    )
    print(report(result))
    print(PREFIX + json.dumps(result), flush=True)
    return 0 if result["duplicates"] == 0 and result["leads_without_a_call"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())


def run_child(url: str, n: int, seed: int) -> dict[str, Any]:
    """Run the scenario in a fresh process against the simulator at ``url`` (for ``python -m benchmarks``)."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory(prefix="airflow_home_") as home:
        env = {**os.environ, "AIRFLOW_HOME": home, "AIRFLOW__LOGGING__LOGGING_LEVEL": "ERROR"}
        command = [sys.executable, "-m", "benchmarks.create", "--url", url, "--n", str(n), "--seed", str(seed)]
        proc = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=3600, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(PREFIX)]
    if not lines:
        raise RuntimeError(f"benchmarks.create gave no result (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return dict(json.loads(lines[-1][len(PREFIX) :]))
