"""``python -m benchmarks.webhook_sender``: how fast the simulator delivers webhooks, and that its API does not wait.

The simulator runs in its own process; a minimal ASGI receiver (uvicorn, answers 200) runs in a thread
here. ``--calls`` calls end at once (back-dated) with ``--duplicates`` of the deliveries sent twice;
printed: deliveries sent, wall time, deliveries/s, and Get Call latency p50/p99 on the simulator's API
while the deliveries are in flight, against the same with nothing to deliver.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from collections.abc import Sequence
from typing import Any

import httpx

from airflow_provider_dialnexa.simulator import DEFAULT_API_KEY, SimulatorProcess
from airflow_provider_dialnexa.simulator.server import bind_socket, build_server, url_of


class _Count:
    def __init__(self) -> None:
        self.n = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        self.n += 1
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})


def _latencies(client: httpx.Client, call_id: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        started = time.perf_counter()
        client.get(f"/v1/calls/{call_id}").raise_for_status()
        out.append((time.perf_counter() - started) * 1000)
    return out


def _pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.webhook_sender", description=__doc__)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--duplicates", type=float, default=0.1)
    parser.add_argument("--probes", type=int, default=300, help="Get Call requests timed per phase")
    args = parser.parse_args(argv)

    app = _Count()
    sock = bind_socket("127.0.0.1", 0)
    server = build_server(app)  # type: ignore[arg-type]
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    while not server.started:
        time.sleep(0.01)
    receiver = url_of(sock) + "/dialnexa/webhooks/dialnexa_default"
    with SimulatorProcess(api_key=DEFAULT_API_KEY) as sim:
        client = httpx.Client(base_url=sim.url, headers={"Authorization": f"Bearer {DEFAULT_API_KEY}"}, timeout=60)
        probe = sim.create_call(outcome="completed", queued_s=0, ring_s=1, talk_s=1, age_s=10)
        idle = _latencies(client, probe, args.probes)
        body = {"url": receiver, "events": ["call_ended"], "secret": "bench-secret-0123456789"}
        client.post("/v1/user-webhooks", json=body).raise_for_status()
        sim.configure_webhooks(duplicate_rate=args.duplicates, retry_backoff_s=0)
        started = time.perf_counter()
        for first in range(0, args.calls, 500):
            sim.create_calls(min(500, args.calls - first), queued_s=0, ring_s=1, talk_s=0, age_s=60)
        busy = _latencies(client, probe, args.probes)
        log = sim.wait_for_deliveries(timeout=600)
        elapsed = time.perf_counter() - started
        sent = [d for d in log if d.call_id]
        client.close()
    server.should_exit = True
    ok = sum(d.is_success for d in sent)
    print(f"calls ended at once: {args.calls}, duplicate rate {args.duplicates:.0%}")
    dups = sum(d.duplicate for d in sent)
    print(f"deliveries: {len(sent)} ({ok} answered 2xx, {dups} duplicates); receiver got {app.n}")
    print(f"wall time {elapsed:.2f} s -> {len(sent) / elapsed:.0f} deliveries/s")
    print(f"Get Call latency idle:       p50 {_pct(idle, 50):.2f} ms, p99 {_pct(idle, 99):.2f} ms")
    print(f"Get Call latency delivering: p50 {_pct(busy, 50):.2f} ms, p99 {_pct(busy, 99):.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
