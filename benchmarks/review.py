"""``python -m benchmarks.review``: the figures of issue #17's fixed findings 5-7 (docs/reliability.md).

Each scenario runs the hook or a trigger against the embedded simulator over loopback and prints one
``REVIEW`` line: how many log lines and errors show a phone number DialNexa echoed, what the export's per-id
wait reports when one of its calls disappears and how many of its tasks are left after it returned, and how
long the next task's requests wait after ``rate_limit_per_minute`` was raised. Uses public APIs only, so the
same script measures the code before the fixes. Timings vary with machine load; counts and outcomes do not.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow_provider_dialnexa.hooks import dialnexa as hook_module
from airflow_provider_dialnexa.hooks.dialnexa import DialNexaHook
from airflow_provider_dialnexa.policy import RetryPolicy
from airflow_provider_dialnexa.simulator import Fault, Simulator
from airflow_provider_dialnexa.simulator.echo import spellings
from airflow_provider_dialnexa.triggers.dialnexa import DialNexaCallTrigger, DialNexaWindowTrigger

KEY = "dnx_bench:review-s3cret"
NUMBER = "+14155550123"
FAST = RetryPolicy(backoff_base=0.01, backoff_max=0.02, min_wait=0)


def connect(sim: Simulator, **extra: Any) -> None:
    extras = {"timeout": 60, "max_retries": 1, "rate_limit_per_minute": 0, **extra}
    conn = {"conn_type": "dialnexa", "host": sim.url, "password": KEY, "extra": extras}
    os.environ["AIRFLOW_CONN_DIALNEXA_DEFAULT"] = json.dumps(conn)


def show(what: str, **values: object) -> None:
    print(f"REVIEW {what}: " + ", ".join(f"{k}={v}" for k, v in values.items()), flush=True)


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def logged(run: Callable[[], object]) -> list[str]:
    """Every log line (standard logging and structlog) and the error text of ``run()``."""
    handler = _Lines()
    loggers = [logging.getLogger(), logging.getLogger("airflow.task")]
    for logger in loggers:
        logger.addHandler(handler)
    capture_logs: Any = None
    with contextlib.suppress(ImportError):  # Airflow 2.11 logs through the standard library only
        from structlog.testing import capture_logs
    texts: list[str] = []
    try:
        if capture_logs is not None:
            with capture_logs() as events:
                texts += _outcome(run)
            texts += [str(event.get("event")) for event in events]
        else:
            texts += _outcome(run)
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    return texts + handler.lines


def _outcome(run: Callable[[], object]) -> list[str]:
    try:
        result = run()
    except Exception as exc:
        cause = [str(exc.__cause__)] if exc.__cause__ else []
        return [str(exc), *cause]
    return [json.dumps(result, default=str)]


def masking(sim: Simulator) -> None:
    """Faults whose message quotes the number in six spellings: count the texts that still show one."""

    def get_call() -> object:
        call_id = sim.create_call(queued_s=0, ring_s=3600, talk_s=0, to_number=NUMBER)
        sim.add_fault(Fault("503", route="get", call_id=call_id, echo_number=True))
        return DialNexaHook(max_retries=2, retry_policy=FAST).get_call(call_id)

    def create(kind: str) -> Callable[[], object]:
        def run() -> object:
            sim.add_fault(Fault(kind, route="create", echo_number=True))
            sim.add_fault(Fault("503", route="list", echo_number=True))
            return DialNexaHook(retry_policy=FAST).create_call(NUMBER, "agent_2g7Xy3tY53gRlp")

        return run

    def trigger() -> object:
        call_id = sim.create_call(queued_s=0, ring_s=3600, talk_s=0, to_number=NUMBER)
        sim.add_fault(Fault("502", route="get", call_id=call_id, echo_number=True))
        trigger = DialNexaCallTrigger(
            call_id, polling="per_call", poll_interval=1, first_poll_delay=0, max_consecutive_failures=1
        )
        event = asyncio.run(_event(trigger))
        raise RuntimeError(event.get("message"))

    scenarios = {
        "get_call_503_x3": get_call,
        "create_400": create("400"),
        "create_429_x2": create("429"),
        "create_503_then_list_503": create("503"),
        "trigger_502_event": trigger,
    }
    for name, run in scenarios.items():
        sim.reset()
        connect(sim, max_retries=1)
        texts = logged(run)
        leaking = [text for text in texts if any(spelling in text for spelling in spellings(NUMBER))]
        show(f"masking/{name}", texts=len(texts), leaking=len(leaking), masked=sum("*****0123" in t for t in texts))


async def _event(trigger: Any) -> dict[str, Any]:
    try:
        async for event in trigger.run():
            return dict(event.payload)
        raise AssertionError("no event")
    finally:
        await hook_module.close_async_clients()


async def _window_wait(sim: Simulator, calls: int, act: Callable[[list[str]], None]) -> None:
    """A per-id window wait on ``calls`` running calls; ``act`` runs once the trigger has listed the window."""
    now = datetime.now(UTC)
    ids = [sim.create_call(queued_s=0, ring_s=3600, talk_s=0) for _ in range(calls)]
    before = asyncio.all_tasks()
    trigger = DialNexaWindowTrigger(
        (now - timedelta(hours=1)).isoformat(), (now + timedelta(hours=1)).isoformat(), mode="per_call", poll_interval=1
    )
    started = time.monotonic()
    task = asyncio.create_task(_event(trigger))
    for _ in range(10_000):  # until the trigger has listed the window (its first poll comes after ~1 s)
        if sim.requests(route="list"):
            break
        await asyncio.sleep(0.005)
    act(ids)
    event = await task
    left = asyncio.all_tasks() - before - {asyncio.current_task()}
    show(
        f"window/{act.__name__}",
        calls=calls,
        event=event["event"],
        kind=event.get("kind"),
        polls=event.get("polls"),
        seconds=round(time.monotonic() - started, 2),
        list_requests=len(sim.requests(route="list")),
        get_requests=len(sim.requests(route="get")),
        tasks_left=len(left),
    )
    for leftover in left:
        leftover.cancel()


def vanished(sim: Simulator) -> None:
    """50 running calls; after the listing one is deleted (Get Call 404) and the others end."""

    def one_deleted_others_end(ids: list[str]) -> None:
        sim.delete_call(ids[0])
        for call_id in ids[1:]:
            sim.set_status(call_id, "completed")

    def one_refused_one_held(ids: list[str]) -> None:
        sim.configure(list_route="forbidden")  # the reads by id fall back to Get Call
        sim.add_fault(Fault("403", route="get", call_id=ids[0]))
        sim.add_fault(Fault("slow", route="get", call_id=ids[1], delay_s=30))

    sim.reset()
    connect(sim, max_retries=0)
    asyncio.run(_window_wait(sim, 50, one_deleted_others_end))
    sim.reset()
    connect(sim, max_retries=0)
    asyncio.run(_window_wait(sim, 2, one_refused_one_held))


def raised_rate(sim: Simulator) -> None:
    """A task on 30/min (one request every 2 s after a burst of 5), then the next task after a raise to 3,000/min."""
    sim.reset()
    sim.configure(rate_headers=False)
    calls = [sim.create_call(queued_s=0, ring_s=0, talk_s=0) for _ in range(10)]

    def task(per_minute: float) -> float:
        connect(sim, rate_limit_per_minute=per_minute)
        hook, started = DialNexaHook(), time.monotonic()
        for call_id in calls:
            hook.get_call(call_id)
        hook.close()
        return round(time.monotonic() - started, 2)

    first = task(30)
    after_raise = task(3000)
    show("rate/raised", first_task_s=first, reads=len(calls), next_task_after_raise_s=after_raise)


def main() -> None:
    with Simulator(api_key=KEY, seed=17) as sim:
        masking(sim)
        vanished(sim)
        raised_rate(sim)


if __name__ == "__main__":
    main()
