"""``python -m benchmarks.batch``: campaigns (batch calls) against the simulator in its own process.

1. Upload memory: a child process uploads a 1,000-lead, a 10,000-lead and a 70,000-lead CSV (9 MB, near
   DialNexa's 10 MB cap) through ``create_batch_call`` (checked, then streamed as multipart) and reports its
   peak RSS growth over a warmed-up baseline; the same files sent with ``requests.post(files=...)`` (the
   whole body built in memory) are the contrast.
2. Wait cost: ``DialNexaBatchTrigger`` waits for the 10,000-lead batch (a lead a second, two-minute calls,
   retries after 30 minutes: hours of batch time) on a fake clock that moves the simulator's batch clock as
   it sleeps; reported: polls, requests, requests per poll.
3. Export: ``DialNexaExportBatchCallsOperator`` writes every call log of that batch (retry children
   included) against a bare ``requests`` loop paging the same ``callLogs``; records/s, best of 3.
4. Exactly once: 200 batch uploads from 8 threads with ~10 % ambiguous faults on Create Batch Call (answer
   lost after creating: reset, 502, 504, held past the 1 s read timeout; or refused: 500, HTML 502), plus 5 %
   of uploads re-run as a retried task would (``adopt_existing``); then the batches per title are counted.

Prints a report and writes ``--json``; exits 1 if any title has more than one batch or any upload is lost.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

PREFIX = "BENCH "
AGENT = "agent_2g7Xy3tY53gRlp"
KEY = "bench_key:bench_secret"
ROOT = Path(__file__).resolve().parents[1]
AMBIGUOUS = ("reset", "lost_502", "lost_504", "lost_slow", "500", "502_html")
READ_TIMEOUT = 1.0


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _conn_env(url: str, **extra: Any) -> dict[str, str]:
    conn = {"conn_type": "dialnexa", "host": url, "password": KEY, "extra": {"rate_limit_per_minute": 0, **extra}}
    return {**os.environ, "AIRFLOW_CONN_DIALNEXA_DEFAULT": json.dumps(conn), "PYTHONPATH": str(ROOT)}


def write_leads(path: Path, n: int) -> Path:
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["phone_number", "lead_id", "customer_name", "policy", "renewal_date", "notes"])
        for i in range(n):
            note = "Prefers a call after lunch; asked about the multi-car discount last year."
            writer.writerow([f"+1415{i:07d}", f"L-{i:06d}", f"Customer {i}", f"POL-{i:08d}", "2026-11-30", note])
    return path


# -- 1. upload memory (child process) --------------------------------------------------------------------


def child_upload(path: str, tool: str, url: str) -> dict[str, Any]:
    """Warm up with a one-lead upload, then upload ``path``; RSS before and after."""
    warm = Path(tempfile.mkdtemp()) / "warm.csv"
    write_leads(warm, 1)
    if tool == "hook":
        from airflow_provider_dialnexa.hooks.dialnexa import DialNexaHook

        hook = DialNexaHook()
        hook.create_batch_call(warm, "warm-up", AGENT)
        baseline = _peak_rss_mb()
        tracemalloc.start()
        started = time.perf_counter()
        created = hook.create_batch_call(path, "bench upload", AGENT)
        total = created["total_records"]
    else:
        import requests

        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {KEY}"

        def post(file: str) -> Any:
            with open(file, "rb") as handle:
                data = {"title": "bench upload", "agent_id": AGENT}
                response = session.post(f"{url}/v1/batch-calls", data=data, files={"file": handle}, timeout=60)
            response.raise_for_status()
            return response.json()

        post(str(warm))
        baseline = _peak_rss_mb()
        tracemalloc.start()
        started = time.perf_counter()
        total = post(path)["total_records"]
    seconds = time.perf_counter() - started
    traced_peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return {
        "tool": tool,
        "leads": total,
        "file_mb": os.path.getsize(path) / 2**20,
        "baseline_rss_mb": baseline,
        "peak_rss_mb": _peak_rss_mb(),
        "growth_mb": _peak_rss_mb() - baseline,
        "traced_peak_mb": traced_peak,
        "seconds": seconds,
    }


def run_child(args: list[str], env: dict[str, str]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.batch", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=ROOT,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith(PREFIX)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"child {args} failed: {proc.stdout[-2000:]} {proc.stderr[-3000:]}")
    return dict(json.loads(lines[-1].removeprefix(PREFIX)))


# -- 2. wait cost -----------------------------------------------------------------------------------------


def measure_wait(sim: Any, batch_id: str) -> dict[str, Any]:
    """Run the trigger on a fake clock whose sleeps move the simulator's batch clock; count its requests."""
    from airflow_provider_dialnexa.hooks.dialnexa import close_async_clients
    from airflow_provider_dialnexa.triggers import _loop as loop_module
    from airflow_provider_dialnexa.triggers import batch as module

    now = [time.time()]
    sleeps: list[float] = []
    real_sleep = asyncio.sleep

    async def fake_sleep(delay: float) -> None:
        sleeps.append(delay)
        now[0] += delay
        sim.advance_clock(delay)
        await real_sleep(0)

    class Clock:
        def __getattr__(self, name: str) -> Any:
            return getattr(time, name)

        @staticmethod
        def time() -> float:
            return now[0]

    class Loop:
        def __getattr__(self, name: str) -> Any:
            return getattr(asyncio, name)

        sleep = staticmethod(fake_sleep)

    patches = [(loop_module, "time", Clock()), (loop_module, "asyncio", Loop())]  # the batch trigger's poll loop
    saved = [(target, name, getattr(target, name)) for target, name, _ in patches]
    for target, name, value in patches:
        setattr(target, name, value)
    try:
        before = sim.stats()["by_route"]
        trigger = module.DialNexaBatchTrigger(batch_id, end_time=now[0] + 7 * 24 * 3600)

        async def run() -> dict[str, Any]:
            try:
                async for event in trigger.run():
                    return dict(event.payload)
            finally:
                await close_async_clients()
            raise RuntimeError("no event")

        event = asyncio.run(run())
    finally:
        for target, name, value in saved:
            setattr(target, name, value)
    after = sim.stats()["by_route"]
    reads = sum(after.get(r, 0) - before.get(r, 0) for r in ("batch_list", "batch_get"))
    return {
        "event": event["event"],
        "status": event.get("status"),
        "progress": event.get("progress"),
        "polls": len(sleeps),
        "requests": reads,
        "requests_per_poll": reads / max(1, len(sleeps)),
        "batch_hours_waited": sum(sleeps) / 3600,
        "longest_interval_s": max(sleeps),
    }


# -- 3. export ------------------------------------------------------------------------------------------


def bare_export(url: str, batch_id: str, out: Path) -> int:
    """The floor: ``requests`` paging the batch's call logs, one JSON line per record."""
    import requests

    session = requests.Session()
    session.headers.update({"Authorization": f"Bearer {KEY}", "Accept": "application/json"})
    page, written = 1, 0
    with out.open("wb") as file:
        while True:
            params = {"page": str(page), "limit": "200", "created_at": "asc"}
            response = session.get(f"{url}/v1/batch-calls/{batch_id}", params=params, timeout=30)
            response.raise_for_status()
            records = response.json()["callLogs"]
            for record in records:
                file.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode() + b"\n")
            written += len(records)
            if len(records) < 200:
                return written
            page += 1


def measure_export(url: str, batch_id: str, tmp: Path) -> dict[str, Any]:
    from airflow_provider_dialnexa.operators.dialnexa import DialNexaExportBatchCallsOperator

    runs: dict[str, list[dict[str, float]]] = {"ours": [], "bare": []}
    for i in range(3):
        for tool in ("ours", "bare"):
            out = tmp / f"{tool}_{i}.jsonl"
            started, cpu = time.perf_counter(), time.process_time()
            if tool == "ours":
                op = DialNexaExportBatchCallsOperator(task_id=f"export_{i}", batch_id=batch_id, destination=str(out))
                records = op.execute({})["records"]  # type: ignore[arg-type]
            else:
                records = bare_export(url, batch_id, out)
            wall, cpu = time.perf_counter() - started, time.process_time() - cpu
            runs[tool].append({"records": records, "seconds": wall, "cpu_s": cpu, "records_per_s": records / wall})
    best = {tool: max(r["records_per_s"] for r in rows) for tool, rows in runs.items()}
    return {"runs": runs, "best_records_per_s": best, "ratio_bare_over_ours": best["bare"] / best["ours"]}


# -- 4. exactly once ----------------------------------------------------------------------------------------


def install_faults(sim: Any, rate: float) -> None:
    share = rate / len(AMBIGUOUS)
    for i, kind in enumerate(AMBIGUOUS):
        scaled = min(1.0, share / max(1e-9, 1 - share * i))  # rules are tried in order: each gets ``share``
        sim.add_fault(_fault(kind=kind, route="batch_create", rate=scaled, delay_s=2 * READ_TIMEOUT))


def _fault(**kwargs: Any) -> Any:
    from airflow_provider_dialnexa.simulator import Fault

    return Fault(**kwargs)


def measure_exactly_once(sim: Any, n: int, seed: int) -> dict[str, Any]:
    from airflow_provider_dialnexa.exceptions import DialNexaError
    from airflow_provider_dialnexa.hooks.dialnexa import DialNexaHook
    from airflow_provider_dialnexa.policy import RetryPolicy

    install_faults(sim, 0.10)
    rng = random.Random(seed)
    crashed = {i for i in range(n) if rng.random() < 0.05}
    outcomes: Counter[str] = Counter()
    rows = [{"phone_number": "+14155550100", "lead_id": "L-1"}, {"phone_number": "+14155550101", "lead_id": "L-2"}]
    policy = RetryPolicy(backoff_base=0.05, backoff_max=0.5, min_wait=0)

    def upload(i: int) -> None:
        hook = DialNexaHook(retry_policy=policy)
        try:
            for attempt in range(1, 5):  # Airflow's task retries
                try:
                    hook.create_batch_call(
                        rows, f"bench {i}", AGENT, correlation_id=f"bench-{i}", adopt_existing=attempt > 1
                    )
                    if i in crashed and attempt == 1:
                        outcomes["task retried after its upload returned"] += 1
                        continue  # the worker "died" right after: the retry must adopt
                    outcomes[f"done in try {attempt}"] += 1
                    return
                except DialNexaError as exc:
                    outcomes[f"try failed: {type(exc).__name__}"] += 1
            outcomes["gave up"] += 1
        finally:
            hook.close()

    from benchmarks.create import warm_up_airflow

    warm_up_airflow()  # threads, not worker processes: nothing of Airflow's left to import lazily between them
    started = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(upload, range(n)))
    per_title = Counter(b["title"].rsplit(" #", 1)[0] for b in sim.batches())
    stats = sim.stats()
    return {
        "uploads": n,
        "seconds": time.perf_counter() - started,
        "batches_in_simulator": sum(per_title.values()),
        "titles": len(per_title),
        "duplicates": sum(c - 1 for c in per_title.values() if c > 1),
        "uploads_without_a_batch": n - len(per_title),
        "faults_fired": stats["faults_fired"],
        "requests_by_route": stats["by_route"],
        "tasks": dict(outcomes),
    }


# -- main -------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["upload"]:
        print(PREFIX + json.dumps(child_upload(argv[1], argv[2], argv[3])), flush=True)
        return 0
    parser = argparse.ArgumentParser(prog="python -m benchmarks.batch", description=__doc__)
    parser.add_argument("--leads", type=int, default=10_000)
    parser.add_argument("--small", type=int, default=1_000)
    parser.add_argument("--cap", type=int, default=70_000, help="leads of a file near the 10 MB cap (0 = skip)")
    parser.add_argument("--creates", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--parts", default="upload,wait,export,once", help="comma list of the parts to run")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "batch.json")
    args = parser.parse_args(argv)

    from airflow_provider_dialnexa.simulator import SimulatorProcess

    load_before = os.getloadavg()
    report: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "loadavg_before": load_before}}
    with (
        tempfile.TemporaryDirectory(prefix="dialnexa_batch_bench_") as tmp_name,
        SimulatorProcess(api_key=KEY, seed=args.seed) as sim,
    ):
        tmp = Path(tmp_name)
        parts = set(args.parts.split(","))
        os.environ.update(_conn_env(sim.url, timeout=30, max_retries=3))
        env = _conn_env(sim.url, timeout=60)
        wanted = (args.small, args.leads, *([args.cap] if args.cap else [])) if "upload" in parts else (args.leads,)
        for n in wanted:
            write_leads(tmp / f"leads_{n}.csv", n)
        print(f"upload memory: {args.small:,} and {args.leads:,} leads, hook vs requests files= ...", flush=True)
        uploads = []
        for n in wanted if "upload" in parts else ():
            for tool in ("hook", "requests"):
                uploads.append(run_child(["upload", str(tmp / f"leads_{n}.csv"), tool, sim.url], env))
        report["upload"] = uploads

        print(f"wait: the trigger waits for the {args.leads:,}-lead batch (hours of batch time) ...", flush=True)
        sim.reset(seed=args.seed)
        sim.configure_batches(dial_interval_s=1.0, call_s=120.0, retry_wait_s=1800.0)
        from airflow_provider_dialnexa.hooks.dialnexa import DialNexaHook

        if parts & {"wait", "export"}:
            hook = DialNexaHook()
            batch = hook.create_batch_call(tmp / f"leads_{args.leads}.csv", "bench wait", AGENT)
            report["wait"] = measure_wait(sim, batch["id"])  # the export needs the batch ended
        if "export" in parts:
            print("export: every call log of that batch, ours vs a bare requests loop (best of 3) ...", flush=True)
            report["export"] = measure_export(sim.url, batch["id"], tmp)
        if "once" in parts:
            print(f"exactly once: {args.creates} uploads, ~10 % ambiguous faults, 5 % retried tasks ...", flush=True)
            sim.reset(seed=args.seed)
            os.environ.update(_conn_env(sim.url, timeout=READ_TIMEOUT, max_retries=5))
            report["exactly_once"] = measure_exactly_once(sim, args.creates, args.seed)
    report["machine"]["loadavg_after"] = os.getloadavg()
    print()
    print(lines(report))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.json}")
    once = report.get("exactly_once", {"duplicates": 0, "uploads_without_a_batch": 0})
    return 0 if once["duplicates"] == 0 and once["uploads_without_a_batch"] == 0 else 1


def lines(report: dict[str, Any]) -> str:
    out = []
    if report["upload"]:
        out.append("upload (a warmed-up child process; tracemalloc's peak while uploading, and peak-RSS growth):")
    for u in report["upload"]:
        out.append(
            f"  {u['tool']:<8} {u['leads']:>6,} leads ({u['file_mb']:.2f} MB): Python heap peak during the upload "
            f"{u['traced_peak_mb']:.2f} MB; RSS +{u['growth_mb']:.1f} MB (peak {u['peak_rss_mb']:.0f} MB); "
            f"{u['seconds']:.2f} s"
        )
    if "wait" in report:
        w = report["wait"]
        out.append(
            f"wait: {w['event']} ({w['status']}) after {w['batch_hours_waited']:.1f} h of batch time: "
            f"{w['polls']} polls, {w['requests']} requests ({w['requests_per_poll']:.2f} per poll), "
            f"longest interval {w['longest_interval_s']:.0f} s"
        )
    if "export" in report:
        e = report["export"]
        out.append(
            f"export: {e['runs']['ours'][0]['records']:,} call logs; ours {e['best_records_per_s']['ours']:,.0f}/s, "
            f"bare requests {e['best_records_per_s']['bare']:,.0f}/s (bare/ours {e['ratio_bare_over_ours']:.2f}x)"
        )
    if "exactly_once" in report:
        o = report["exactly_once"]
        out.append(
            f"exactly once: {o['uploads']} uploads -> {o['batches_in_simulator']} batches, {o['duplicates']} "
            f"duplicates, {o['uploads_without_a_batch']} lost; faults fired {o['faults_fired']}; tasks {o['tasks']}"
        )
    m = report["machine"]
    out.append(f"machine: {m['cpus']} CPUs, load average before {m['loadavg_before']}, after {m['loadavg_after']}")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
