"""``python -m benchmarks.webhooks``: DialNexa webhook deliveries against a real api-server (webserver on 2.11).

A throwaway Airflow (SQLite, one api-server worker, scheduler, dag-processor; ``benchmarks.webhook_stack``)
with a DAG scheduled on the calls asset whose task reads its run's calls with ``calls_from_events`` (no
request). The connection's host is the DialNexa simulator, so any status request would be counted.

The client retries a 5xx or a failed connection up to 3 times, 1 s apart, as DialNexa does.
The load: ``--deliveries`` requests (default 2,000) in bursts of ``--burst`` sent by ``--concurrency``
client threads, ``--pause`` seconds apart; ``--duplicates`` of them (10 %) repeat an authentic delivery,
half at once in the same burst, half in a later burst (DialNexa's retries); ``--forged`` of them (5 %)
are unsigned, signed with a wrong secret, or carry another body's signature. Every burst is shuffled.

Reported: correctness (events recorded = unique authentic calls, 0 forged), deliveries/s while sending,
response time p50/p99 (client side), delivery -> DAG-run-queued latency p50/p99/max (the receipt's
server time to the consuming run's ``queued_at``), status requests to DialNexa, and the load average.
Not a test: it prints numbers, it asserts nothing about time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil

from airflow_provider_dialnexa.simulator import DEFAULT_API_KEY, SimulatorProcess
from airflow_provider_dialnexa.webhooks import calls_asset_uri
from airflow_provider_dialnexa.webhooks.signature import sign
from benchmarks.webhook_stack import (
    AIRFLOW_3,
    CONSUMED_TABLE,
    EVENT_TABLE,
    AirflowStack,
    PrivateCluster,
    call_ended,
    postgres_bin,
)

CONN_ID = "dialnexa_bench"
SECRET = "whsec_bench_0123456789abcdef"
DAG_ID = "dialnexa_webhook_bench"
STATUSES = ("completed", "completed", "completed", "busy", "no_answer", "failed", "hangup")
BENCH_DAG = f'''
from datetime import UTC, datetime
from airflow.providers.common.compat.sdk import DAG, task
from airflow_provider_dialnexa.webhooks import calls_ended_asset, calls_from_events

with DAG("{DAG_ID}", schedule=[calls_ended_asset("{CONN_ID}")], start_date=datetime(2026, 1, 1), catchup=False):
    @task
    def read_calls():
        return len(calls_from_events(conn_id="{CONN_ID}"))

    read_calls()
'''


@dataclass(frozen=True)
class Delivery:
    kind: str  # "authentic", "duplicate", "forged"
    call_id: str
    body: bytes
    headers: dict[str, str]


def plan(n: int, duplicates: float, forged: float, burst: int, seed: int) -> list[list[Delivery]]:
    """The deliveries, in shuffled bursts."""
    rng = random.Random(seed)
    n_dup, n_forged = round(n * duplicates), round(n * forged)
    n_unique = n - n_dup - n_forged
    authentic = []
    for index in range(n_unique):
        call_id = f"call_bench_{index:05d}"
        body = call_ended(call_id, rng.choice(STATUSES), duration=rng.randint(5, 600), to_number="12137771234")
        header = rng.choice(("x-nexa-signature", "x-dialnexa-signature"))
        authentic.append(Delivery("authentic", call_id, body, {header: sign(body, SECRET)}))
    bursts = [authentic[i : i + burst] for i in range(0, n_unique, burst)]
    for index, original in enumerate(rng.sample(range(n_unique), n_dup)):
        at = original // burst if index % 2 == 0 else min(len(bursts) - 1, original // burst + rng.randint(1, 3))
        copy = authentic[original]
        bursts[at].append(Delivery("duplicate", copy.call_id, copy.body, copy.headers))
    for index in range(n_forged):
        call_id = f"call_forged_{index:05d}"
        body = call_ended(call_id, "completed")
        kind = index % 3
        if kind == 0:
            headers: dict[str, str] = {}
        elif kind == 1:
            headers = {"x-nexa-signature": sign(body, "not-the-secret")}
        else:
            headers = {"x-nexa-signature": sign(authentic[rng.randrange(n_unique)].body, SECRET)}  # another body's
        bursts[rng.randrange(len(bursts))].append(Delivery("forged", call_id, body, headers))
    for group in bursts:
        rng.shuffle(group)
    return bursts


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def _epoch(value: Any) -> float:
    """Epoch seconds of a DB timestamp (SQLite hands back naive UTC strings)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return float(value.timestamp())


def run(args: argparse.Namespace) -> dict[str, Any]:
    cluster = None
    if args.postgres:
        bin_dir = postgres_bin()
        if bin_dir is None:
            raise SystemExit("--postgres needs PostgreSQL server binaries: run `make postgresql`")
        cluster = PrivateCluster(bin_dir).start()
    try:
        return _run(args, cluster.url if cluster else None)
    finally:
        if cluster:
            cluster.stop()


def _run(args: argparse.Namespace, db_url: str | None) -> dict[str, Any]:
    load_before = os.getloadavg()
    keep = tempfile.mkdtemp(prefix="dialnexa-webhook-bench-") if args.keep else None
    with (
        contextlib.nullcontext(keep) if keep else tempfile.TemporaryDirectory(prefix="dialnexa-webhook-bench-") as tmp,
        SimulatorProcess(seed=3) as sim,
    ):
        home = Path(tmp)
        dag_file = home / "bench_dag.py"
        dag_file.write_text(BENCH_DAG)
        conn = {
            "conn_type": "dialnexa",
            "host": sim.url,
            "password": DEFAULT_API_KEY,
            "extra": {"webhook_secret": SECRET},
        }
        env = {f"AIRFLOW_CONN_{CONN_ID.upper()}": json.dumps(conn), "AIRFLOW__CORE__PARALLELISM": "2"}
        if args.web_threads and not AIRFLOW_3:  # gunicorn's threaded worker (gthread) in the one webserver worker
            env["GUNICORN_CMD_ARGS"] = f"--threads {args.web_threads}"
        stack = AirflowStack(home=home / "airflow", dags=[dag_file], db_url=db_url, extra_env=env, sqlite_wal=args.wal)
        try:
            stack.start_all()
            stack.wait_ready(CONN_ID, SECRET)
            ref_table = "dag_schedule_asset_reference" if AIRFLOW_3 else "dag_schedule_dataset_reference"
            stack.wait_for(
                "the bench DAG",
                lambda: stack.query(f"SELECT 1 FROM {ref_table} WHERE dag_id = :d", d=DAG_ID) or None,  # noqa: S608
            )
            if args.warmup:
                _warm_up(stack)
            sim.reset()
            result = _deliver(stack, plan(args.deliveries, args.duplicates, args.forged, args.burst, args.seed), args)
            result["status_requests_to_dialnexa"] = len(sim.requests())
        finally:
            stack.stop()
    result["load_average_before"] = [round(x, 2) for x in load_before]
    result["airflow"] = "3" if AIRFLOW_3 else "2.11"
    result["metadata_db"] = "postgresql" if db_url else "sqlite" + (" (WAL set by the benchmark)" if args.wal else "")
    if args.web_threads and not AIRFLOW_3:
        result["webserver_threads"] = args.web_threads
    if keep:
        result["kept_home"] = keep
    return result


WARMUP_CALL = "call_warmup_0"


def _warm_up(stack: AirflowStack) -> None:
    """One delivery, and wait until its DAG run succeeded: the api-server has served a task's execution API.

    Airflow 3's execution API builds its versioned routers (Cadwyn) on its first request, on the event loop:
    seconds of CPU during which the api-server answers nothing. A long-running api-server has paid that once;
    the measured deliveries start after it (``--no-warmup`` measures a cold start).
    """
    body = call_ended(WARMUP_CALL, "completed")
    response = httpx.post(
        f"{stack.url}/dialnexa/webhooks/{CONN_ID}", content=body, headers={"x-nexa-signature": sign(body, SECRET)}
    )
    response.raise_for_status()
    stack.wait_for(
        "the warm-up run",
        lambda: stack.query("SELECT 1 FROM dag_run WHERE dag_id = :d AND state = 'success'", d=DAG_ID) or None,
        timeout=600,
        every=1.0,
    )


def _deliver(stack: AirflowStack, bursts: list[list[Delivery]], args: argparse.Namespace) -> dict[str, Any]:
    url = f"{stack.url}/dialnexa/webhooks/{CONN_ID}"
    latencies: list[float] = []
    outcomes: Counter[tuple[str, int, str]] = Counter()
    sending = 0.0

    retries: list[int] = []

    def send(client: httpx.Client, delivery: Delivery) -> None:
        """One delivery, retried like DialNexa (up to 3 times) after a 5xx or a failed connection."""
        for _attempt in range(4):
            start = time.perf_counter()
            try:
                response = client.post(url, content=delivery.body, headers=delivery.headers)
            except httpx.HTTPError:
                code = 0
            else:
                code = response.status_code
            latencies.append(time.perf_counter() - start)
            if 0 < code < 500:
                break
            retries.append(code)
            time.sleep(1.0)
        status = response.json().get("status", "") if code == 200 else ""
        outcomes[(delivery.kind, code, status)] += 1

    web = psutil.Process(stack.procs["web"].pid)

    def web_cpu() -> float:
        processes = [web, *web.children(recursive=True)]
        return float(sum(p.cpu_times().user + p.cpu_times().system for p in processes if p.is_running()))

    cpu_before = web_cpu()
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    with httpx.Client(timeout=60, limits=limits) as client, ThreadPoolExecutor(args.concurrency) as pool:
        load_during = []
        for group in bursts:
            start = time.perf_counter()
            list(pool.map(lambda d: send(client, d), group))
            sending += time.perf_counter() - start
            load_during.append(os.getloadavg()[0])
            time.sleep(args.pause)
    web_cpu_s = web_cpu() - cpu_before  # includes the sweeper and the execution API serving the DAG's tasks
    total = sum(len(group) for group in bursts)
    unique = sorted({d.call_id for group in bursts for d in group if d.kind == "authentic"})

    # Every unique call must reach a DAG run with no further delivery; then measure receipt -> run queued.
    def consumed() -> list[tuple[Any, ...]] | None:
        rows = stack.query(
            f"SELECT r.call_id, r.received_at, MIN(d.queued_at) FROM dialnexa_webhook_receipt r "  # noqa: S608
            f"JOIN {CONSUMED_TABLE} c ON c.event_id = r.asset_event_id JOIN dag_run d ON d.id = c.dag_run_id "
            "WHERE r.conn_id = :c AND r.call_id != :w GROUP BY r.call_id, r.received_at",
            c=CONN_ID,
            w=WARMUP_CALL,
        )
        return rows if len(rows) >= len(unique) else None

    rows = stack.wait_for("every delivered call to reach a DAG run", consumed, timeout=args.settle, every=1.0)
    queue_latency = [_epoch(queued) - received for _, received, queued in rows]
    events = [event for event in stack.events(calls_asset_uri(CONN_ID)) if event["call_id"] != WARMUP_CALL]
    event_ids = [event["call_id"] for event in events]
    runs = stack.query("SELECT COUNT(*) FROM dag_run WHERE dag_id = :d", d=DAG_ID)[0][0] - (1 if args.warmup else 0)
    return {
        "deliveries": total,
        "unique_authentic_calls": len(unique),
        "events_recorded": len(events),
        "events_correct": sorted(event_ids) == unique,
        "forged_recorded": sum(1 for call_id in event_ids if call_id.startswith("call_forged")),
        "outcomes": {
            f"{kind} {code} {status}".strip(): count for (kind, code, status), count in sorted(outcomes.items())
        },
        "retries_after_5xx": len(retries),
        "deliveries_per_s_while_sending": round(total / sending, 1),
        "web_server_cpu_ms_per_delivery": round(web_cpu_s / total * 1000, 2),
        "web_server_capacity_per_idle_core_per_s": round(total / web_cpu_s, 1),
        "response_ms_p50": round(percentile(latencies, 50) * 1000, 1),
        "response_ms_p99": round(percentile(latencies, 99) * 1000, 1),
        "response_ms_max": round(max(latencies) * 1000, 1),
        "queued_latency_s_p50": round(percentile(queue_latency, 50), 2),
        "queued_latency_s_p99": round(percentile(queue_latency, 99), 2),
        "queued_latency_s_max": round(max(queue_latency), 2),
        "calls_reaching_a_run": len(rows),
        "dag_runs": runs,
        "load_average_during_max": round(max(load_during), 2),
        "load_average_during_mean": round(statistics.mean(load_during), 2),
        "bursts": len(bursts),
        "concurrency": args.concurrency,
        "events_table": EVENT_TABLE,
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.webhooks", description=__doc__)
    parser.add_argument("--deliveries", type=int, default=2000)
    parser.add_argument("--duplicates", type=float, default=0.10)
    parser.add_argument("--forged", type=float, default=0.05)
    parser.add_argument("--burst", type=int, default=100, help="authentic deliveries per burst (before copies)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--pause", type=float, default=0.5, help="seconds between bursts")
    parser.add_argument("--settle", type=float, default=600, help="max seconds for every call to reach a run")
    parser.add_argument("--seed", type=int, default=19)
    parser.add_argument("--postgres", action="store_true", help="a private PostgreSQL metadata DB instead of SQLite")
    parser.add_argument("--json", type=Path, help="also write the result here")
    parser.add_argument("--wal", action="store_true", help="switch the SQLite DB to WAL (2.11; Airflow 3 does it)")
    parser.add_argument("--web-threads", type=int, default=0, help="2.11: threads of the one webserver worker")
    parser.add_argument(
        "--no-warmup", dest="warmup", action="store_false", help="no warm-up delivery and run before measuring"
    )
    parser.add_argument("--keep", action="store_true", help="keep the Airflow home (logs, SQLite DB) and print it")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    result = run(args)
    width = max(map(len, result))
    for key, value in result.items():
        print(f"WEBHOOKS {key:<{width}}  {value}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
