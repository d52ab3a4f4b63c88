"""``DialNexaHook.get_call`` against a bare ``requests.Session().get`` on the same endpoint.

Runs in its own process (``python -m benchmarks.hook_overhead``, spec as one JSON line on stdin, result
as one ``BENCH `` line on stdout). Both clients keep their connection alive and send the same headers;
the bare client also parses the JSON body, as any real caller would. After a warm-up the two run in
alternating blocks of ten calls, each call timed on its own, so drift in the simulator or the machine
hits both; the verdict uses the median call (robust to the scheduler pausing a process on a busy
machine), and the mean is reported next to it.
"""

from __future__ import annotations

import cProfile
import io
import json
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from benchmarks.load import CONN_OURS, send

TARGET_RATIO = 1.1
BLOCK = 10  # calls per client before switching to the other one


def sample(fn: Callable[[], Any], calls: int, walls: list[float], cpus: list[float]) -> None:
    """Time ``calls`` sequential calls one by one (wall and CPU seconds each)."""
    for _ in range(calls):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)


def profile(fn: Callable[[], Any], calls: int, top: int = 18) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        fn()
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def main() -> None:
    import requests

    from airflow_provider_dialnexa.hooks.dialnexa import DialNexaHook

    send({"ready": True})
    spec = json.loads(sys.stdin.readline())

    hook = DialNexaHook(CONN_OURS)
    call_id, calls = spec["call_id"], int(spec["calls"])
    url = hook.settings.call_url(call_id)
    session = requests.Session()
    session.headers.update(hook.settings.headers)

    def bare() -> Any:
        response = session.get(url, timeout=(10, 30))
        response.raise_for_status()
        return response.json()

    def ours() -> Any:
        return hook.get_call(call_id)

    assert bare() == ours(), "the two clients must read the same record"
    for fn in (bare, ours):  # warm-up: connections, caches, lazy imports
        sample(fn, min(200, calls), [], [])
    walls: dict[str, list[float]] = {"hook": [], "bare": []}
    cpus: dict[str, list[float]] = {"hook": [], "bare": []}
    for block in range(max(1, calls // BLOCK)):
        order = [("hook", ours), ("bare", bare)]
        for name, fn in order if block % 2 == 0 else reversed(order):
            sample(fn, BLOCK, walls[name], cpus[name])
    n = len(walls["hook"])
    mean = {name: statistics.fmean(values) for name, values in walls.items()}
    median = {name: statistics.median(values) for name, values in walls.items()}
    cpu = {name: statistics.fmean(values) for name, values in cpus.items()}
    result: dict[str, Any] = {
        "calls_each": n,
        "hook_us": median["hook"] * 1e6,
        "bare_us": median["bare"] * 1e6,
        "hook_mean_us": mean["hook"] * 1e6,
        "bare_mean_us": mean["bare"] * 1e6,
        "hook_cpu_us": cpu["hook"] * 1e6,
        "bare_cpu_us": cpu["bare"] * 1e6,
        "ratio": median["hook"] / median["bare"],
        "ratio_mean": mean["hook"] / mean["bare"],
        "cpu_ratio": cpu["hook"] / cpu["bare"],
        "target": TARGET_RATIO,
    }
    if result["ratio"] > TARGET_RATIO or spec.get("profile"):
        result["profile"] = profile(ours, min(n, 1000))
    send(result)


if __name__ == "__main__":
    main()
