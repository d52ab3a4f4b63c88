"""Export benchmark: ``DialNexaExportCallsOperator`` against a bare ``requests`` pagination loop.

The simulator (its own process) holds 10,000 calls in one day and 100,000 in another, every call ended,
60% of them with a transcript. Each run is a fresh child process (``python -m benchmarks.export <tool>
...``) that exports one window to JSON Lines and reports wall time, CPU, and peak RSS before and after;
the parent counts the List Calls requests and checks that both tools wrote byte-identical files. Before the
timed export each child runs one export of an empty minute (a warm-up: imports, connection lookup, object
storage and lineage set-up, paid once per worker process), reported as ``warm_up_s``. The bare
loop is the floor: ``requests.Session`` paging ``created_at=asc`` at 200 a page, ``json.loads`` of each
page and one ``json.dumps`` line per record, no retries, no rate budget, no window check, no temporary
object. The operator runs with no rate budget too (with the default 120 requests/min, 100,000 calls =
501 requests take about 4 minutes: the budget, not the client, is then the bound).

Targets: records/s within 1.25x of the bare loop; peak RSS growth from 10,000 to 100,000 calls < 50 MB.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

PREFIX = "BENCH "
TARGET_RATIO = 1.25
TARGET_RSS_GROWTH_MB = 50.0
PAGE = 200
#: The two windows: (start, number of calls). 100,000 calls in one day, 10,000 in the day before.
DAY = timedelta(days=1)
WINDOWS = {"large": datetime(2026, 10, 4, tzinfo=UTC), "small": datetime(2026, 10, 3, tzinfo=UTC)}
ROOT = Path(__file__).resolve().parents[1]


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _bare(url: str, key: str, start: str, end: str, out: Path) -> int:
    """The floor: the shortest correct pagination loop a user could write with ``requests``."""
    import requests

    session = requests.Session()
    session.headers.update({"Authorization": f"Bearer {key}", "Accept": "application/json"})
    page, written = 1, 0
    with out.open("wb") as file:
        while True:
            params = {"start_date": start, "end_date": end, "created_at": "asc", "limit": str(PAGE), "page": str(page)}
            response = session.get(f"{url}/v1/calls", params=params, timeout=30)
            response.raise_for_status()
            records = response.json()
            for record in records:
                file.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode() + b"\n")
            written += len(records)
            if len(records) < PAGE:
                return written
            page += 1


def _ours(start: str, end: str, out: Path) -> int:
    from airflow_provider_dialnexa.operators.dialnexa import DialNexaExportCallsOperator

    op = DialNexaExportCallsOperator(
        task_id="export",
        destination=str(out),
        window_start=start,
        window_end=end,
        wait_for_running=False,
    )
    return int(op.execute({})["calls"])  # type: ignore[arg-type]


def child(tool: str, url: str, key: str, start: str, end: str, out: str) -> None:
    """One export in this (fresh) process; prints one ``BENCH`` JSON line."""
    # Warm-up: one export of an empty minute (one request: an empty first page) pays imports, the connection
    # lookup and object-storage/lineage set-up once, as a long-running worker has; reported, not timed. The
    # minute lies far from every seeded call: a minute next to a window would list its edge call, and a
    # short first page costs a second request to prove it was the last.
    warm_end = (datetime.fromisoformat(start) - 30 * DAY).isoformat()
    warm_start = (datetime.fromisoformat(warm_end) - timedelta(minutes=1)).isoformat()
    warm = time.perf_counter()
    if tool == "ours":
        _ours(warm_start, warm_end, Path(out))
    else:
        _bare(url, key, warm_start, warm_end, Path(out))
    warm = time.perf_counter() - warm
    rss_before = _peak_rss_mb()
    wall, cpu = time.perf_counter(), time.process_time()
    records = _ours(start, end, Path(out)) if tool == "ours" else _bare(url, key, start, end, Path(out))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    result = {
        "records": records,
        "wall_s": wall,
        "cpu_s": cpu,
        "rss_before_mb": rss_before,
        "peak_rss_mb": _peak_rss_mb(),
        "warm_up_s": warm,
    }
    sys.stdout.write(PREFIX + json.dumps(result) + "\n")


def _run_child(tool: str, url: str, key: str, window: datetime, out: Path, home: Path) -> dict[str, Any]:
    conn = {"conn_type": "dialnexa", "host": url, "password": key, "extra": {"rate_limit_per_minute": 0}}
    env = {
        **os.environ,
        "AIRFLOW_CONN_DIALNEXA_DEFAULT": json.dumps(conn),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    start, end = window.isoformat(), (window + DAY).isoformat()
    command = [sys.executable, "-m", "benchmarks.export", tool, url, key, start, end, str(out)]
    proc = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(PREFIX)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"export benchmark child {tool} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return dict(json.loads(lines[-1][len(PREFIX) :]))


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def run(n: int, small: int | None = None, repeats: int = 3, seed: int = 7) -> dict[str, Any]:
    """Seed the simulator, run bare and ours at ``small`` and ``n`` calls (alternating), return the numbers."""
    from airflow_provider_dialnexa.simulator import DEFAULT_API_KEY, SimulatorProcess

    small = small if small is not None else max(1, n // 10)
    sizes = {"small": small, "large": n}
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        "small": {"bare": [], "ours": []},
        "large": {"bare": [], "ours": []},
    }
    with tempfile.TemporaryDirectory(prefix="dialnexa_export_bench_") as tmp, SimulatorProcess(seed=seed) as sim:
        started = time.perf_counter()
        for name, count in sizes.items():
            start = WINDOWS[name].timestamp()
            sim.seed_calls(count, start, start + DAY.total_seconds())
        seeded_s = time.perf_counter() - started
        for name in ("small", "large"):
            for _ in range(repeats if name == "large" else 1):
                for tool in ("bare", "ours"):
                    out = Path(tmp) / f"{name}_{tool}.jsonl"
                    before = int(sim.stats()["by_route"].get("list", 0))
                    result = _run_child(tool, sim.url, DEFAULT_API_KEY, WINDOWS[name], out, Path(tmp))
                    result["requests"] = int(sim.stats()["by_route"].get("list", 0)) - before - 1  # minus the warm-up
                    result["sha256"] = _digest(out)
                    result["bytes"] = out.stat().st_size
                    runs[name][tool].append(result)
    best = {
        name: {tool: min(rs, key=lambda r: r["wall_s"]) for tool, rs in by_tool.items()}
        for name, by_tool in runs.items()
    }
    large, small_runs = best["large"], best["small"]
    rate = {tool: large[tool]["records"] / large[tool]["wall_s"] for tool in ("bare", "ours")}
    growth = {tool: large[tool]["peak_rss_mb"] - small_runs[tool]["peak_rss_mb"] for tool in ("bare", "ours")}
    return {
        "calls": n,
        "small_calls": small,
        "page_size": PAGE,
        "expected_requests": math.ceil(n / PAGE) + (1 if n % PAGE == 0 else 0),
        "seed_s": seeded_s,
        "runs": runs,
        "records_per_s": rate,
        "ratio_bare_over_ours": rate["bare"] / rate["ours"],
        "rss_growth_mb": growth,
        # The bare loop trusts the server's window: where the simulator's inclusive end_date also returns the
        # call created exactly at the end (it belongs to the next window), its file has one record more.
        "identical_output": {name: best[name]["bare"]["sha256"] == best[name]["ours"]["sha256"] for name in best},
        "within_target": rate["bare"] / rate["ours"] <= TARGET_RATIO and growth["ours"] < TARGET_RSS_GROWTH_MB,
    }


def _best(results: list[dict[str, Any]]) -> dict[str, Any]:
    return min(results, key=lambda r: float(r["wall_s"]))


def lines(result: dict[str, Any]) -> str:
    """The human summary printed by ``python -m benchmarks``."""
    out = [f"export: {result['calls']:,} calls in one window (page {result['page_size']}), best of the runs"]
    out.append(
        f"  {'tool':<6} {'calls':>8} {'wall s':>7} {'CPU s':>6} {'rec/s':>8} {'requests':>8} {'peak RSS MB':>12} "
        f"{'warm-up s':>9}"
    )
    for name in ("small", "large"):
        for tool in ("bare", "ours"):
            r = _best(result["runs"][name][tool])
            out.append(
                f"  {tool:<6} {r['records']:>8,} {r['wall_s']:>7.2f} {r['cpu_s']:>6.2f} "
                f"{r['records'] / r['wall_s']:>8,.0f} {r['requests']:>8} {r['peak_rss_mb']:>12.1f} "
                f"{r['warm_up_s']:>9.2f}"
            )
    out.append(
        f"  records/s ratio bare/ours {result['ratio_bare_over_ours']:.2f} (target <= {TARGET_RATIO}); "
        f"RSS growth {result['small_calls']:,} -> {result['calls']:,} calls: ours "
        f"{result['rss_growth_mb']['ours']:+.1f} MB, bare {result['rss_growth_mb']['bare']:+.1f} MB "
        f"(target < {TARGET_RSS_GROWTH_MB:g}); requests expected {result['expected_requests']}; "
        f"identical files: {result['identical_output']}"
        + (
            f" (bare wrote {small_bare - result['small_calls']} call(s) of the next window: it trusts the server's "
            "inclusive end_date)"
            if (small_bare := _best(result["runs"]["small"]["bare"])["records"]) != result["small_calls"]
            else ""
        )
    )
    return "\n".join(out)


if __name__ == "__main__":
    if len(sys.argv) == 7:
        child(*sys.argv[1:])
    else:
        calls = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
        report = run(calls)
        print(lines(report))
        print(json.dumps({k: v for k, v in report.items() if k != "runs"}, indent=2))
