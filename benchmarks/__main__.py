"""``python -m benchmarks``: N concurrent call-waits per mode against the simulator, then hook overhead.

The simulator runs in its own process (its CPU is not billed to the client). Every mode runs in a fresh
child process (``benchmarks.load``), so CPU, RSS and event-loop lag are that mode's alone. Children are
started (and import Airflow) up front, then idle on stdin until their turn. Before each mode the
simulator is reset with the same seed, so every mode waits for the same calls (ids, outcomes, lengths).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import math
import os
import platform
import select
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import psutil

from airflow_provider_dialnexa.simulator import DEFAULT_API_KEY, SimulatorProcess
from benchmarks import create as create_bench
from benchmarks import export as export_bench
from benchmarks.load import CONN_OURS, CONN_PEER, PREFIX


@dataclasses.dataclass(frozen=True)
class Mode:
    """One way of waiting: our trigger (``polling``, growth, rate budget) or the HTTP provider's."""

    kind: str  # "ours" or "peer"
    description: str
    polling: str | None = None
    growth: float = 1.0  # 1.0 = fixed interval, comparable with the peer's
    max_interval: float = 60.0
    rate_limit_per_minute: float | None = 0  # None = the connection default (120/min)


MODES: dict[str, Mode] = {
    "per_call": Mode("ours", "Get Call per wait, fixed interval, no rate budget", polling="per_call"),
    "batched": Mode(
        "ours",
        "List Calls shared by all waits, fixed interval, default rate budget (120/min)",
        polling="batched",
        rate_limit_per_minute=None,
    ),
    "batched_unlimited": Mode(
        "ours", "List Calls shared by all waits, fixed interval, no rate budget", polling="batched"
    ),
    "per_call_growth": Mode(
        "ours", "Get Call per wait, default growing interval (x1.5 up to 60 s), no rate budget", "per_call", growth=1.5
    ),
    "peer": Mode("peer", "apache-airflow-providers-http HttpEventTrigger, GET per poll, fixed interval"),
}
PACKAGES = (
    "apache-airflow",
    "apache-airflow-task-sdk",
    "apache-airflow-providers-http",
    "apache-airflow-providers-common-compat",
    "airflow-provider-dialnexa",
    "httpx",
    "aiohttp",
    "requests",
    "uvicorn",
    "uvloop",
)
ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--n", type=int, default=1000, help="concurrent call-waits per mode (default %(default)s)")
    parser.add_argument("--duration", type=float, default=60.0, help="mean call length D, s (default %(default)s)")
    parser.add_argument("--interval", type=float, default=10.0, help="poll interval P, s (default %(default)s)")
    parser.add_argument(
        "--modes",
        default="per_call,batched,peer",
        help=f"comma list of {', '.join(MODES)} (default %(default)s)",
    )
    parser.add_argument("--hook-calls", type=int, default=2000, help="sequential calls per client (0 = skip)")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "latest.json")
    parser.add_argument("--seed", type=int, default=7, help="seed of the calls and the wait start times")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio", help="the triggerer uses asyncio")
    parser.add_argument("--profile-hook", action="store_true", help="profile the hook even if within target")
    parser.add_argument("--creates", type=int, help="mapped Create Calls under faults (default: --n; 0 = skip)")
    parser.add_argument("--export-calls", type=int, default=100_000, help="export benchmark window size (0 = skip)")
    args = parser.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in args.modes if m not in MODES]
    if unknown:
        parser.error(f"unknown mode(s) {unknown}; choose from {list(MODES)}")
    if args.n < 1 or args.duration <= 0 or args.interval < 1:
        parser.error("need --n >= 1, --duration > 0 and --interval >= 1 (DialNexa's minimum poll interval)")
    return args


# -- child processes ---------------------------------------------------------------------------------


def connection_env(url: str, mode: Mode) -> dict[str, str]:
    extra: dict[str, Any] = {}
    if mode.rate_limit_per_minute is not None:
        extra["rate_limit_per_minute"] = mode.rate_limit_per_minute
    if mode.polling:
        extra["polling"] = mode.polling
    ours = {"conn_type": "dialnexa", "host": url, "password": DEFAULT_API_KEY, "extra": extra}
    host, port = url.removeprefix("http://").rsplit(":", 1)
    peer = {
        "conn_type": "http",
        "host": host,
        "port": int(port),
        "schema": "http",
        "extra": {"Authorization": f"Bearer {DEFAULT_API_KEY}", "Accept": "application/json"},
    }
    return {
        f"AIRFLOW_CONN_{CONN_OURS.upper()}": json.dumps(ours),
        f"AIRFLOW_CONN_{CONN_PEER.upper()}": json.dumps(peer),
    }


class Child:
    """A benchmark child process speaking the ``BENCH `` line protocol."""

    def __init__(self, module: str, env: dict[str, str], workdir: Path) -> None:
        home = Path(tempfile.mkdtemp(prefix="airflow_home_", dir=workdir))
        self.stderr_path = home / "stderr.txt"
        self._stderr: IO[str] = self.stderr_path.open("w")
        full_env = {
            **os.environ,
            **env,
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            cwd=ROOT,
            env=full_env,
        )

    def send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message) + "\n")
        self.proc.stdin.flush()

    def receive(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if select.select([self.proc.stdout], [], [], 1.0)[0]:
                line = self.proc.stdout.readline()
                if not line:
                    break
                if line.startswith(PREFIX):
                    return dict(json.loads(line[len(PREFIX) :]))
            elif self.proc.poll() is not None:
                break
        self.close()
        tail = self.stderr_path.read_text()[-3000:]
        raise RuntimeError(f"benchmark child {self.proc.args!r} gave no answer (exit {self.proc.poll()}):\n{tail}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self._stderr):
            if stream is not None:
                stream.close()


# -- one load run ------------------------------------------------------------------------------------


def create_calls(sim: SimulatorProcess, n: int, duration: float) -> list[list[str]]:
    """N calls of 0.8-1.2 x D with DialNexa's outcome mix; half spelled camelCase, half snake_case+hyphens."""
    talk = (round(0.8 * duration, 3), round(1.2 * duration, 3))
    first = sim.create_calls(n - n // 2, queued_s=0, ring_s=0, talk_s=talk)
    second = (
        sim.create_calls(n // 2, queued_s=0, ring_s=0, talk_s=talk, spelling="snake", hyphenated=True) if n > 1 else []
    )
    return [first, second]


class Plans:
    """Outcome and terminal time of every call; lengths are fetched once (same seed = same calls each mode)."""

    def __init__(self) -> None:
        self._known: dict[str, tuple[str, float]] = {}

    def fetch(self, sim: SimulatorProcess, batches: list[list[str]]) -> dict[str, tuple[str, float, float]]:
        """``{call_id: (outcome, created_at, terminal_at)}``."""
        plans: dict[str, tuple[str, float, float]] = {}
        for ids in filter(None, batches):
            created_at = sim.plan(ids[0]).created_at  # one create_calls() stamps every call of its batch alike
            for call_id in ids:
                if call_id not in self._known:
                    plan = sim.plan(call_id)
                    self._known[call_id] = (plan.outcome, plan.terminal_at - plan.created_at)
                outcome, length = self._known[call_id]
                plans[call_id] = (outcome, created_at, created_at + length)
        return plans


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (0 <= q <= 100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def tcp_active_opens() -> int:
    """Connections opened (``connect()``) in this network namespace so far (``/proc/net/snmp``)."""
    try:
        lines = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines() if line.startswith("Tcp:")]
        return int(lines[1][lines[0].index("ActiveOpens")])
    except (OSError, IndexError, ValueError):
        return -1


def run_mode(name: str, child: Child, sim: SimulatorProcess, plans: Plans, args: argparse.Namespace) -> dict[str, Any]:
    mode, n, d, p = MODES[name], args.n, args.duration, args.interval
    ready = child.receive(timeout=300)
    sim.reset(args.seed)
    batches = create_calls(sim, n, d)
    call_ids = [call_id for ids in batches for call_id in ids]
    slowest = mode.max_interval if mode.growth > 1 else p
    deadline = time.time() + 1.2 * d + 2 * slowest + 20
    sim_proc = psutil.Process(sim.pid)
    sim_cpu, opens = sum(sim_proc.cpu_times()[:2]), tcp_active_opens()
    child.send(
        {
            "mode": dataclasses.asdict(mode),
            "call_ids": call_ids,
            "interval": p,
            "deadline": deadline,
            "seed": args.seed,
            "loop": args.loop,
        }
    )
    result = child.receive(timeout=deadline - time.time() + 120)
    sim_cpu = sum(sim_proc.cpu_times()[:2]) - sim_cpu
    opens = tcp_active_opens() - opens if opens >= 0 else -1
    child.close()
    stats = sim.stats()
    log = sim.requests()
    planned = plans.fetch(sim, batches)
    return summarize(name, mode, args, ready, result, stats, log, planned, sim_cpu, opens)


def summarize(
    name: str,
    mode: Mode,
    args: argparse.Namespace,
    ready: dict[str, Any],
    result: dict[str, Any],
    stats: dict[str, Any],
    log: Sequence[Any],
    planned: dict[str, tuple[str, float, float]],
    sim_cpu: float,
    opens: int,
) -> dict[str, Any]:
    n, p = args.n, args.interval
    wall, cpu = result["wall_s"], result["cpu_s"]
    # One "status poll" = one wait learning its call's status once: a Get Call, or one id of a List Calls.
    polls = sum(len(entry.call_ids) for entry in log if entry.route in ("get", "list"))
    requests = int(stats["requests"])
    delays, mismatches, ideal = [], Counter[str](), 0
    for call_id, (outcome, _created, terminal_at) in planned.items():
        at, got, first_poll = result["events"][call_id]
        # Polls a perfect fixed-P poller needs when its first poll is at ``first_poll``.
        ideal += max(0, math.ceil((terminal_at - first_poll) / p)) + 1
        if got != outcome:
            mismatches[f"expected {outcome}, got {got}"] += 1
        elif at is not None:
            delays.append(at - terminal_at)
    floor = sum(math.ceil((t - c) / p) + 1 for _o, c, t in planned.values()) / n
    lags = result["lags_s"]
    resolved = n - result["unfinished"]
    return {
        "mode": name,
        "description": mode.description,
        "n": n,
        "wall_s": wall,
        "cpu_s": cpu,
        "cpu_pct": 100 * cpu / wall if wall else math.nan,
        "import_cpu_s": ready["import_cpu_s"],
        "cpu_per_poll_ms": 1000 * cpu / polls if polls else math.nan,
        "cpu_per_request_ms": 1000 * cpu / requests if requests else math.nan,
        "cpu_per_wait_ms": 1000 * cpu / resolved if resolved else math.nan,
        "rss_before_mb": result["rss_before_mb"],
        "peak_rss_mb": result["peak_rss_mb"],
        "rss_per_1000_waits_mb": (result["peak_rss_mb"] - result["rss_before_mb"]) * 1000 / n,
        "loop_lag_ms": {
            "p50": 1000 * percentile(lags, 50),
            "p99": 1000 * percentile(lags, 99),
            "max": 1000 * max(lags, default=math.nan),
            "samples": len(lags),
        },
        "requests": requests,
        "requests_by_route": stats["by_route"],
        "requests_by_status": {str(k): v for k, v in sorted(stats["by_status"].items())},
        "requests_not_200": sum(v for k, v in stats["by_status"].items() if int(k) != 200),
        "status_polls": polls,
        "requests_per_call": requests / n,
        "polls_per_call": polls / n,
        "floor_per_call": floor,
        "ideal_per_call": ideal / n,
        "requests_per_min": 60 * requests / wall if wall else math.nan,
        "connections": stats["connections"],
        "tcp_active_opens": opens,
        "detection_delay_s": {
            "p50": percentile(delays, 50),
            "p99": percentile(delays, 99),
            "max": max(delays, default=math.nan),
        },
        "unfinished": result["unfinished"],
        "rescued": result["rescued"],
        "correct": n - sum(mismatches.values()),
        "correct_pct": 100 * (n - sum(mismatches.values())) / n,
        "mismatches": dict(mismatches.most_common(10)),
        "errors": result["errors"],
        "simulator_cpu_s": sim_cpu,
        "simulator_cpu_pct": 100 * sim_cpu / wall if wall else math.nan,
        "fd_limit": ready["fd_limit"],
    }


def run_hook_overhead(child: Child, sim: SimulatorProcess, args: argparse.Namespace) -> dict[str, Any]:
    child.receive(timeout=300)
    sim.reset(args.seed)
    call_id = sim.create_call(outcome="completed", queued_s=0, ring_s=0, talk_s=0)
    child.send({"call_id": call_id, "calls": args.hook_calls, "profile": args.profile_hook})
    result = child.receive(timeout=600)
    child.close()
    return result


# -- report ------------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    versions: dict[str, str | None] = {}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    cpu_model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    return {
        "cpus": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": os.getloadavg(),
        "versions": versions,
    }


ROWS: tuple[tuple[str, str], ...] = (
    ("wall_s", "wall time (s)"),
    ("cpu_s", "client CPU (s)"),
    ("cpu_pct", "client CPU (% of one core)"),
    ("cpu_per_poll_ms", "CPU per status poll (ms)"),
    ("cpu_per_request_ms", "CPU per request (ms)"),
    ("cpu_per_wait_ms", "CPU per resolved wait (ms)"),
    ("peak_rss_mb", "peak RSS (MB)"),
    ("rss_per_1000_waits_mb", "RSS per 1,000 waits (MB)"),
    ("loop_lag_ms.p50", "loop lag p50 (ms)"),
    ("loop_lag_ms.p99", "loop lag p99 (ms)"),
    ("loop_lag_ms.max", "loop lag max (ms)"),
    ("requests", "requests to simulator"),
    ("requests_by_route.get", "  Get Call"),
    ("requests_by_route.list", "  List Calls"),
    ("requests_not_200", "  answered other than 200"),
    ("requests_per_call", "requests per call"),
    ("polls_per_call", "status polls per call"),
    ("floor_per_call", "floor per call, ceil(d/P)+1"),
    ("ideal_per_call", "ideal for these start times"),
    ("requests_per_min", "requests per minute"),
    ("connections", "TCP connections (sim, distinct)"),
    ("tcp_active_opens", "TCP connects (kernel)"),
    ("detection_delay_s.p50", "detection delay p50 (s)"),
    ("detection_delay_s.p99", "detection delay p99 (s)"),
    ("correct_pct", "correct outcomes (%)"),
    ("unfinished", "waits without an event by the deadline"),
    ("simulator_cpu_pct", "simulator CPU (% of one core)"),
)
RATIOS = ("cpu_per_poll_ms", "cpu_per_wait_ms", "peak_rss_mb", "requests_per_call", "connections", "loop_lag_ms.p99")


def lookup(result: dict[str, Any], key: str) -> Any:
    value: Any = result
    for part in key.split("."):
        value = value.get(part, 0) if isinstance(value, dict) else math.nan
    return value


def fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def ratios(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """``ours / peer`` for the headline metrics, per mode of ours."""
    if "peer" not in results:
        return {}
    peer = results["peer"]
    out = {}
    for name, result in results.items():
        if name != "peer":
            complete = not result["unfinished"] and not peer["unfinished"]  # a stalled run has no ratios
            pairs = ((key, lookup(result, key), lookup(peer, key)) for key in RATIOS)
            out[name] = {key: ours / theirs if theirs and complete else math.nan for key, ours, theirs in pairs}
    return out


def table(results: dict[str, dict[str, Any]], comparison: dict[str, dict[str, float]]) -> str:
    names = list(results)
    header = ["metric", *names]
    rows = [[label, *(fmt(lookup(results[name], key)) for name in names)] for key, label in ROWS]
    if comparison:
        rows.append(["ratio ours/peer:", *("" for _ in names)])
        for key in RATIOS:
            label = next(label for k, label in ROWS if k == key).strip()
            rows.append([f"  {label}", *(fmt(comparison.get(name, {}).get(key, math.nan)) for name in names)])
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        " | ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in [header, *rows]
    ]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def hook_lines(hook: dict[str, Any]) -> str:
    verdict = "within" if hook["ratio"] <= hook["target"] else "OVER"
    text = (
        f"hook overhead ({hook['calls_each']:,} sequential Get Calls each, keep-alive, interleaved):\n"
        f"  DialNexaHook.get_call    median {hook['hook_us']:.0f} us, mean {hook['hook_mean_us']:.0f} us, "
        f"client CPU {hook['hook_cpu_us']:.0f} us per call\n"
        f"  requests.Session.get+json median {hook['bare_us']:.0f} us, mean {hook['bare_mean_us']:.0f} us, "
        f"client CPU {hook['bare_cpu_us']:.0f} us per call\n"
        f"  ratio {hook['ratio']:.3f}x (median call), {hook['ratio_mean']:.3f}x (mean), "
        f"{hook['cpu_ratio']:.3f}x client CPU: {verdict} the {hook['target']}x target"
    )
    if "profile" in hook:
        text += "\n" + hook["profile"]
    return text


def clean(value: Any) -> Any:
    """JSON-safe copy: NaN becomes null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    return str(value) if isinstance(value, Path) else value


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if list(argv[:1]) == ["ratelimit"]:  # python -m benchmarks ratelimit: several processes on one key
        from benchmarks import ratelimit

        return ratelimit.main(argv[1:])
    if list(argv[:1]) == ["batch"]:  # python -m benchmarks batch: campaigns (upload, wait, export, exactly once)
        from benchmarks import batch

        return batch.main(argv[1:])
    args = parse_args(argv)
    info = machine()
    print(
        f"N={args.n} D={args.duration:g}s P={args.interval:g}s modes={','.join(args.modes)} loop={args.loop} "
        f"on {info['cpus']} CPUs, Python {info['python']}, Airflow {info['versions']['apache-airflow']}",
        flush=True,
    )
    results: dict[str, dict[str, Any]] = {}
    hook: dict[str, Any] | None = None
    create: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory(prefix="dialnexa_bench_") as tmp, SimulatorProcess(seed=args.seed) as sim:
        children = {
            name: Child("benchmarks.load", connection_env(sim.url, MODES[name]), Path(tmp)) for name in args.modes
        }
        hook_child = None
        if args.hook_calls > 0:
            hook_env = connection_env(sim.url, MODES["per_call"])  # no rate budget: 2,000 calls at full speed
            hook_child = Child("benchmarks.hook_overhead", hook_env, Path(tmp))
        try:
            plans = Plans()
            for name in args.modes:
                print(f"running {name}: {MODES[name].description} ...", flush=True)
                results[name] = run_mode(name, children[name], sim, plans, args)
                r = results[name]
                print(
                    f"  {r['wall_s']:.0f} s, CPU {r['cpu_s']:.1f} s, {r['requests']:,} requests, "
                    f"correct {r['correct_pct']:.1f}%",
                    flush=True,
                )
            if hook_child is not None:
                print("running hook overhead ...", flush=True)
                hook = run_hook_overhead(hook_child, sim, args)
            creates = args.n if args.creates is None else args.creates
            if creates > 0:
                print(f"running create: {creates} mapped Create Calls under faults ...", flush=True)
                create = create_bench.run_child(sim.url, creates, args.seed)
        finally:
            for child in [*children.values(), hook_child]:
                if child is not None:
                    child.close()
    comparison = ratios(results)
    print()
    print(table(results, comparison))
    if hook is not None:
        print()
        print(hook_lines(hook))
    if create is not None:
        print(f"\n{create['n']} mapped Create Calls under faults:\n{create_bench.report(create)}")
    export = export_bench.run(args.export_calls) if args.export_calls > 0 else None
    if export is not None:
        print()
        print(export_bench.lines(export))
    report = {
        "machine": info,
        "args": vars(args),
        "modes": results,
        "ratios_vs_peer": comparison,
        "hook_overhead": hook,
        "create": create,
        "export": export,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(clean(report), indent=2, allow_nan=False) + "\n")
    print(f"\nwrote {args.json}")
    exactly_once = create is None or (create["duplicates"] == 0 and create["leads_without_a_call"] == 0)
    return 0 if exactly_once and all(r["correct"] == r["n"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
