"""``python -m benchmarks.defects``: the figures of issue #14's fixed findings (docs/reliability.md).

Each scenario runs real triggers against the embedded simulator over loopback and prints one
``DEFECTS`` line: Get Calls per call after List Calls is refused, the detection delay of a healthy wait
next to a slow or failing one, what 40 waits see when their key is revoked, and what 30 event loops
leave behind. Timings vary with machine load; request counts and outcomes do not.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import time
import weakref
from collections import Counter
from typing import Any

from airflow_provider_dialnexa.hooks import dialnexa as hook_module
from airflow_provider_dialnexa.simulator import Fault, Simulator
from airflow_provider_dialnexa.triggers.dialnexa import DialNexaCallTrigger

KEY = "dnx_bench:defects-s3cret"
FAST: dict[str, Any] = {"poll_interval": 1, "poll_growth": 1, "poll_jitter": 0, "first_poll_delay": 0}


def connect(sim: Simulator, **extra: Any) -> None:
    extras = {"timeout": 60, "max_retries": 0, "rate_limit_per_minute": 0, **extra}
    conn = {"conn_type": "dialnexa", "host": sim.url, "password": KEY, "extra": extras}
    os.environ["AIRFLOW_CONN_DIALNEXA_DEFAULT"] = json.dumps(conn)


def show(what: str, **values: object) -> None:
    print(f"DEFECTS {what}: " + ", ".join(f"{k}={v}" for k, v in values.items()), flush=True)


async def event_of(trigger: DialNexaCallTrigger) -> dict[str, Any]:
    async for event in trigger.run():
        return dict(event.payload)
    raise AssertionError("no event")


async def refused_list(sim: Simulator, waits: int, seconds: float, **extra: Any) -> None:
    """Batched waits on running calls while List Calls answers 403."""
    sim.reset()
    sim.configure(list_route="forbidden")
    connect(sim, **extra)
    calls = [sim.create_call(queued_s=0, ring_s=3600, talk_s=0) for _ in range(waits)]
    tasks = [asyncio.create_task(event_of(DialNexaCallTrigger(c, polling="batched", **FAST))) for c in calls]
    await asyncio.sleep(seconds)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    gets = len(sim.requests(route="get"))
    show(
        "refused-list",
        waits=waits,
        poll_interval_s=1,
        budget=extra.get("rate_limit_per_minute", 0),
        seconds=seconds,
        get_calls=gets,
        per_call_per_minute=round(gets / waits / seconds * 60, 1),
    )
    await hook_module.close_async_clients()


async def slow_neighbour(sim: Simulator, fault: str) -> None:
    """A finished call, a never-listed call whose Get Call is slow (12 s) or 500s, and a 3 s deadline."""
    sim.reset()
    connect(sim, max_retries=5)  # the default retries
    done, running = (sim.create_call(queued_s=0, ring_s=r, talk_s=0) for r in (0, 3600))
    stuck = sim.create_call(queued_s=0, ring_s=0, talk_s=0, foreign=True)
    sim.add_fault(
        Fault("slow", route="get", call_id=stuck, delay_s=12)
        if fault == "slow"
        else Fault("500", route="get", call_id=stuck)
    )
    started = time.monotonic()

    async def timed(trigger: DialNexaCallTrigger) -> tuple[str, float]:
        event = await event_of(trigger)
        return event["event"], round(time.monotonic() - started, 2)

    stuck_task = asyncio.create_task(event_of(DialNexaCallTrigger(stuck, polling="batched", **FAST)))
    healthy, late = await asyncio.gather(
        timed(DialNexaCallTrigger(done, polling="batched", **FAST)),
        timed(DialNexaCallTrigger(running, polling="batched", end_time=time.time() + 3, **FAST)),
    )
    stuck_task.cancel()
    await asyncio.gather(stuck_task, return_exceptions=True)
    show(f"slow-neighbour/{fault}", healthy=healthy, deadline_3s=late)
    await hook_module.close_async_clients()


async def revoked_key(sim: Simulator) -> None:
    sim.reset()
    connect(sim, max_retries=3, rate_limit_per_minute=120)
    calls = [sim.create_call(queued_s=0, ring_s=3600, talk_s=0) for _ in range(40)]
    sim.configure(api_key="dnx_rotated:other")
    events = await asyncio.gather(*(event_of(DialNexaCallTrigger(c, polling="per_call", **FAST)) for c in calls))
    show("revoked-key", waits=40, kinds=dict(Counter(e.get("kind") for e in events)), requests=sim.stats()["requests"])
    await hook_module.close_async_clients()


def loops(sim: Simulator, runs: int) -> None:
    sim.reset()
    connect(sim)
    refs: list[weakref.ref[asyncio.AbstractEventLoop]] = []

    async def one(polling: str) -> None:
        refs.append(weakref.ref(asyncio.get_running_loop()))
        await event_of(DialNexaCallTrigger(sim.create_call(queued_s=0, ring_s=0, talk_s=0), polling=polling, **FAST))

    asyncio.run(one("per_call"))
    gc.collect()
    fds = len(os.listdir("/proc/self/fd"))
    for i in range(runs):
        asyncio.run(one(("per_call", "batched")[i % 2]))
    gc.collect()
    alive = sum(ref() is not None for ref in refs[1:])
    show("loops", runs=runs, loops_alive=alive, new_fds=len(os.listdir("/proc/self/fd")) - fds)


def main() -> None:
    with Simulator(api_key=KEY, seed=14) as sim:
        asyncio.run(refused_list(sim, waits=10, seconds=10))
        asyncio.run(refused_list(sim, waits=1, seconds=10, rate_limit_per_minute=120))
        for fault in ("slow", "500"):
            asyncio.run(slow_neighbour(sim, fault))
        asyncio.run(revoked_key(sim))
        loops(sim, 30)


if __name__ == "__main__":
    main()
