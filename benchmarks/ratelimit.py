"""``python -m benchmarks ratelimit``: several Airflow processes on one API key against a key-wide limit.

Three triggerer-like processes (``benchmarks.load``: 1,000 waits each through the real trigger and
its batch poller) and one worker-like process (this module run as ``python -m benchmarks.ratelimit``:
threads calling the sync ``DialNexaHook.get_call`` in a loop) share one key. The simulator (its own
process) enforces ``--limit`` requests per ``--window`` seconds on that key across all clients and
answers 429 + ``Retry-After`` beyond it. Each variant runs with the ``X-RateLimit-*`` headers on
(``Reset`` read as seconds remaining, as seen live, or as a Unix timestamp, as documented) or off.

Measured from the simulator's request log: 429s as a share of all requests after the first minute,
the share of the key's limit used while every process still has more to send (demand exceeds the
limit), each process's share of the accepted requests, and whether every wait ended correctly.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

VARIANTS = ("headers", "headers_epoch", "no_headers")
ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks ratelimit", description=__doc__)
    parser.add_argument("--limit", type=int, default=150, help="key-wide limit per window (default %(default)s)")
    parser.add_argument("--window", type=float, default=60.0, help="window length, s (default %(default)s)")
    parser.add_argument("--window-kind", choices=("fixed", "sliding"), default="fixed")
    parser.add_argument("--triggerers", type=int, default=3, help="triggerer-like processes (default %(default)s)")
    parser.add_argument("--waits", type=int, default=1000, help="waits per triggerer (default %(default)s)")
    parser.add_argument("--duration", type=float, default=120.0, help="mean call length D, s; calls last 0.5-1.5 D")
    parser.add_argument("--interval", type=float, default=1.0, help="poll interval P, s (default %(default)s)")
    parser.add_argument("--polling", choices=("batched", "per_call"), default="batched")
    parser.add_argument("--worker-threads", type=int, default=2, help="threads of the worker-like process")
    parser.add_argument("--rate", type=float, default=None, help="rate_limit_per_minute (default: the connection's)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "ratelimit.json")
    args = parser.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if unknown := [v for v in args.variants if v not in VARIANTS]:
        parser.error(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    return args


# -- the worker-like child ---------------------------------------------------------------------------------


def worker() -> None:
    """Child: fetch records with the sync hook from several threads until the parent says stop."""
    from airflow_provider_dialnexa.exceptions import DialNexaError
    from airflow_provider_dialnexa.hooks.dialnexa import DialNexaHook
    from benchmarks.load import CONN_OURS, send

    send({"ready": True})
    spec = json.loads(sys.stdin.readline())
    stop = threading.Event()
    fetched: Counter[str] = Counter()
    lock = threading.Lock()

    def fetch_loop(offset: int) -> None:
        hook = DialNexaHook(CONN_OURS)
        ids = spec["call_ids"]
        i = offset
        while not stop.is_set():
            try:
                hook.get_call(ids[i % len(ids)])
                outcome = "ok"
            except DialNexaError as exc:
                outcome = exc.kind
            with lock:
                fetched[outcome] += 1
            i += spec["threads"]
        hook.close()

    threads = [threading.Thread(target=fetch_loop, args=(n,), daemon=True) for n in range(spec["threads"])]
    for thread in threads:
        thread.start()
    sys.stdin.readline()  # the parent's stop line
    stop.set()
    for thread in threads:
        thread.join(timeout=180)
    send({"fetched": dict(fetched), "stuck_threads": sum(t.is_alive() for t in threads)})


# -- the parent ----------------------------------------------------------------------------------------------


def run_variant(name: str, args: argparse.Namespace, sim: Any, workdir: Path) -> dict[str, Any]:
    from benchmarks.__main__ import Child, Mode, Plans, connection_env

    mode = Mode(
        "ours",
        f"{args.polling}, P={args.interval:g} s",
        polling=args.polling,
        max_interval=args.interval,
        rate_limit_per_minute=args.rate,
    )
    env = connection_env(sim.url, mode)
    triggerers = [Child("benchmarks.load", env, workdir) for _ in range(args.triggerers)]
    worker_child = Child("benchmarks.ratelimit", env, workdir)
    try:
        for child in [*triggerers, worker_child]:
            child.receive(timeout=300)
        sim.reset(args.seed)
        sim.configure(
            key_limit=args.limit,
            key_window_s=args.window,
            key_window=args.window_kind,
            rate_headers=name != "no_headers",
            reset_style="epoch" if name == "headers_epoch" else "seconds",
        )
        talk = (round(0.5 * args.duration, 3), round(1.5 * args.duration, 3))
        owned = [sim.create_calls(args.waits, queued_s=0, ring_s=0, talk_s=talk) for _ in triggerers]
        records = sim.create_calls(50, queued_s=0, ring_s=0, talk_s=0)
        deadline = time.time() + 1.5 * args.duration + 180
        for index, (child, ids) in enumerate(zip(triggerers, owned, strict=True)):
            spec = {
                "mode": dataclasses.asdict(mode),
                "call_ids": ids,
                "interval": args.interval,
                "deadline": deadline,
                "seed": args.seed + index,
                "loop": "asyncio",
            }
            child.send(spec)
        worker_child.send({"call_ids": records, "threads": args.worker_threads})
        results = [child.receive(timeout=deadline - time.time() + 120) for child in triggerers]
        worker_child.send({"stop": True})
        worker_result = worker_child.receive(timeout=300)
    finally:
        for child in [*triggerers, worker_child]:
            child.close()
    planned = Plans().fetch(sim, owned)
    return summarize(name, args, sim.requests(), owned, records, results, worker_result, planned)


def summarize(
    name: str,
    args: argparse.Namespace,
    log: Sequence[Any],
    owned: list[list[str]],
    records: list[str],
    results: list[dict[str, Any]],
    worker_result: dict[str, Any],
    planned: dict[str, tuple[str, float, float]],
) -> dict[str, Any]:
    owner = {call_id: f"triggerer {i + 1}" for i, ids in enumerate(owned) for call_id in ids}
    owner.update({call_id: "worker" for call_id in records})
    processes = [*(f"triggerer {i + 1}" for i in range(len(owned))), "worker"]
    t0 = min(result["started"] for result in results)
    # Demand exceeds the limit while every triggerer still has waits to poll (the worker never stops).
    busy_until = min(result["finished"] for result in results)
    settled = t0 + args.window  # "after the first minute": the first window is every process's cold start
    after = [e for e in log if e.t >= settled]
    busy = [e for e in after if e.t < busy_until]
    throttled = sum(1 for e in after if e.status_code == 429)
    accepted = [e for e in busy if e.status_code != 429]
    span = max(busy_until - settled, 1e-9)
    per_process = Counter(owner.get(e.call_ids[0], "?") if e.call_ids else "?" for e in accepted)
    shares = {p: per_process.get(p, 0) / len(accepted) if accepted else 0.0 for p in processes}
    minute_use = []
    start = settled
    while start + args.window <= busy_until:
        count = sum(1 for e in busy if start <= e.t < start + args.window and e.status_code != 429)
        minute_use.append(round(100 * count / args.limit, 1))
        start += args.window
    slices: dict[str, list[int]] = {p: [] for p in processes}  # accepted per process per 10 s, from t0
    for entry in log:
        if entry.status_code != 429 and entry.call_ids:
            row = slices.setdefault(owner.get(entry.call_ids[0], "?"), [])
            index = int((entry.t - t0) // 10)
            row.extend([0] * (index + 1 - len(row)))
            row[index] += 1
    wrong: Counter[str] = Counter()
    for result in results:
        for call_id, (_at, got, _first) in result["events"].items():
            expected = planned[call_id][0]
            if got != expected:
                wrong[f"expected {expected}, got {got}"] += 1
    waits = sum(len(ids) for ids in owned)
    lowest = min(shares.values())
    return {
        "variant": name,
        "requests": len(log),
        "requests_429": sum(1 for e in log if e.status_code == 429),
        "requests_after_first_window": len(after),
        "share_429_after_first_window_pct": 100 * throttled / len(after) if after else 0.0,
        "busy_s": busy_until - t0,
        "limit_used_while_busy_pct": 100 * len(accepted) / (args.limit * span / args.window),
        "limit_used_per_window_pct": minute_use,
        "accepted_per_process": {p: per_process.get(p, 0) for p in processes},
        "share_per_process_pct": {p: round(100 * s, 1) for p, s in shares.items()},
        "max_over_min_share": max(shares.values()) / lowest if lowest else float("inf"),
        "accepted_per_10s": slices,
        "waits": waits,
        "waits_correct": waits - sum(wrong.values()),
        "wrong": dict(wrong.most_common(5)),
        "wall_s": max(result["finished"] for result in results) - t0,
        "worker": worker_result,
        "errors": [e for result in results for e in result["errors"]][:10],
    }


def report_lines(result: dict[str, Any]) -> str:
    shares = ", ".join(f"{p} {s:.1f}%" for p, s in result["share_per_process_pct"].items())
    return (
        f"{result['variant']}: {result['requests']:,} requests, {result['requests_429']} x 429 in all; "
        f"after the first window {result['share_429_after_first_window_pct']:.2f}% 429s "
        f"({result['requests_after_first_window']:,} requests)\n"
        f"  limit used while demand exceeds it ({result['busy_s']:.0f} s): "
        f"{result['limit_used_while_busy_pct']:.1f}% (per window after the first: "
        f"{result['limit_used_per_window_pct']})\n"
        f"  share of accepted requests: {shares} (max/min {result['max_over_min_share']:.2f})\n"
        f"  waits ended correctly: {result['waits_correct']:,} of {result['waits']:,} "
        f"(wall {result['wall_s']:.0f} s); worker {result['worker']['fetched']}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    from airflow_provider_dialnexa.simulator import SimulatorProcess
    from benchmarks.__main__ import clean, machine

    args = parse_args(argv)
    print(
        f"{args.triggerers} triggerers x {args.waits} waits ({args.polling}, P={args.interval:g} s, calls "
        f"{0.5 * args.duration:g}-{1.5 * args.duration:g} s) + 1 worker ({args.worker_threads} threads), "
        f"one key limited to {args.limit} per {args.window:g} s ({args.window_kind} window)",
        flush=True,
    )
    results = {}
    with tempfile.TemporaryDirectory(prefix="dialnexa_ratelimit_") as tmp, SimulatorProcess(seed=args.seed) as sim:
        for name in args.variants:
            print(f"running {name} ...", flush=True)
            results[name] = run_variant(name, args, sim, Path(tmp))
            print(report_lines(results[name]), flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    report = {"machine": machine(), "args": vars(args), "variants": results}
    args.json.write_text(json.dumps(clean(report), indent=2) + "\n")
    print(f"\nwrote {args.json}")
    return 0 if all(r["waits_correct"] == r["waits"] for r in results.values()) else 1


if __name__ == "__main__":
    worker()
