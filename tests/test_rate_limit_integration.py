"""The per-key rate budget through real sockets (issue #11): the hook against the simulator's key-wide limit.

Each test reads the simulator's request log. They fail when a piece of the mechanism is removed:
the ``reserve`` in ``DialNexaHook._get``/``_aget`` (via ``RateBudget.delays``), the ``budget.pause``
in ``DialNexaHook._answer``, the re-check of a slot after the sleep, ``budget.observe`` of the rate
headers, or one budget per key. Time is never measured by the test: the assertions compare the
simulator's own timestamps of requests with each other.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from _clock import _Shim
from conftest import FakeClock

from airflow_provider_dialnexa.exceptions import DialNexaRateLimitError
from airflow_provider_dialnexa.hooks import dialnexa as hook_module
from airflow_provider_dialnexa.hooks.dialnexa import DialNexaHook
from airflow_provider_dialnexa.policy import RateBudget, RetryPolicy
from airflow_provider_dialnexa.simulator import Fault, LogEntry, Simulator, SimulatorError


def use_connection(monkeypatch: pytest.MonkeyPatch, conn_id: str, sim: Simulator, api_key: str, **extra: Any) -> None:
    extras = {"timeout": 10, "max_retries": 3, "polling": "per_call", **extra}
    conn = {"conn_type": "dialnexa", "host": sim.url, "password": api_key, "extra": extras}
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))


pytestmark = pytest.mark.usefixtures("close_shared_clients")


@pytest.fixture
def hooks() -> Iterator[list[DialNexaHook]]:
    made: list[DialNexaHook] = []
    yield made
    for hook in made:
        hook.close()


def ended(sim: Simulator, n: int) -> list[str]:
    return sim.create_calls(n, queued_s=0, ring_s=0, talk_s=0)


def statuses(log: list[LogEntry]) -> list[int]:
    return [entry.status_code for entry in sorted(log, key=lambda e: e.t)]


# -- the budget spaces requests ----------------------------------------------------------------------


async def test_async_requests_wait_for_the_budget(
    simulator: Simulator, api_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """60/min = one a second after a burst of 10: 13 concurrent reads span about 3 s, not a few ms."""
    use_connection(monkeypatch, "dialnexa_default", simulator, api_key, rate_limit_per_minute=60)
    hook = DialNexaHook()
    calls = ended(simulator, 13)
    await asyncio.gather(*(hook.aget_call(call_id) for call_id in calls))
    times = sorted(entry.t for entry in simulator.requests(route="get"))
    assert len(times) == 13
    assert times[-1] - times[0] >= 2.0, "requests went out faster than the rate budget allows"


def test_sync_requests_wait_for_the_budget(
    simulator: Simulator, api_key: str, monkeypatch: pytest.MonkeyPatch, hooks: list[DialNexaHook]
) -> None:
    use_connection(monkeypatch, "dialnexa_default", simulator, api_key, rate_limit_per_minute=60)
    hooks.append(hook := DialNexaHook())
    for call_id in ended(simulator, 13):
        hook.get_call(call_id)
    times = sorted(entry.t for entry in simulator.requests(route="get"))
    assert times[-1] - times[0] >= 2.0, "requests went out faster than the rate budget allows"


# -- a 429 pauses the key, including requests already waiting for their slot -----------------------------------


async def test_a_429_pauses_requests_already_queued(
    simulator: Simulator, api_key: str, monkeypatch: pytest.MonkeyPatch, clock: FakeClock
) -> None:
    """Review finding: requests that had their slot before the 429 arrived were still sent during the pause.

    120/min = one slot every 0.5 s after a burst of 20. The budget's clock stands still (``clock``), so the three
    reads after the burst get slots exactly 0.5, 1 and 1.5 s ahead, and the two later ones are held in their
    slot's sleep until the first one's 429 has paused the key. Before, this was left to timing, and on a loaded
    machine it failed (1 of 804 tests): a slow burst refilled the bucket, or the 429's round trip outlasted the
    next slot, so the later reads went out before the 429 instead of queueing behind it.
    """
    clock.now = time.time()
    simulator.configure(rate_headers=False)  # the configured rate alone paces (no window to spread over)
    use_connection(monkeypatch, "dialnexa_default", simulator, api_key, rate_limit_per_minute=120)
    hook = DialNexaHook()
    burst, queued = ended(simulator, 20), ended(simulator, 3)
    for call_id in burst:  # spend the burst: from here on, one slot every 0.5 s
        await hook.aget_call(call_id)
    simulator.add_fault(Fault("429", route="get", call_id=queued[0], count=1, retry_after="2"))
    paused = asyncio.Event()
    real_pause = RateBudget.pause

    def pause(self: RateBudget, seconds: float, *, slow_down: bool = True) -> None:
        real_pause(self, seconds, slow_down=slow_down)
        paused.set()

    reading: contextvars.ContextVar[str] = contextvars.ContextVar("reading", default="")

    async def slot_sleep(delay: float) -> None:
        if reading.get() != queued[0]:
            await paused.wait()  # the later reads are still queued when the 429 arrives
        await real_sleep(delay)

    async def read(call_id: str) -> dict[str, Any]:
        reading.set(call_id)
        return await hook.aget_call(call_id)

    real_sleep = asyncio.sleep
    monkeypatch.setattr(RateBudget, "pause", pause)
    monkeypatch.setattr(hook_module, "asyncio", _Shim(asyncio, sleep=slot_sleep))
    await asyncio.gather(*(read(call_id) for call_id in queued))
    log = sorted(simulator.requests(route="get"), key=lambda e: e.t)
    refused = next(entry for entry in log if entry.status_code == 429)
    later = [entry for entry in log if entry.t > refused.t]
    assert len(later) == 3, "the refused read is retried and the two queued reads are sent"
    assert min(entry.t for entry in later) - refused.t >= 2.0, "a request went out during the 429's pause"


def test_two_connections_with_one_key_share_the_pause(
    simulator: Simulator, api_key: str, monkeypatch: pytest.MonkeyPatch, hooks: list[DialNexaHook]
) -> None:
    """One key, one budget: a 429 seen through one connection holds the other's requests too."""
    use_connection(monkeypatch, "dialnexa_a", simulator, api_key, rate_limit_per_minute=120, max_retries=0)
    use_connection(monkeypatch, "dialnexa_b", simulator, api_key, rate_limit_per_minute=100)
    first, second = ended(simulator, 2)
    simulator.add_fault(Fault("429", route="get", call_id=first, count=1, retry_after="2"))
    hooks.extend([DialNexaHook("dialnexa_a"), DialNexaHook("dialnexa_b")])
    with pytest.raises(DialNexaRateLimitError):
        hooks[0].get_call(first)
    hooks[1].get_call(second)
    refused, sent = (simulator.requests(call_id=call_id)[0] for call_id in (first, second))
    assert refused.status_code == 429
    assert sent.t - refused.t >= 2.0, "the other connection's request went out during the key's pause"


async def test_a_429_on_the_key_limit_pauses_every_wait_of_the_process(
    simulator: Simulator, api_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The simulator's own key-wide limit (no headers): one 429, then nothing until the window reopens."""
    simulator.configure(key_limit=12, key_window_s=3, rate_headers=False)
    use_connection(monkeypatch, "dialnexa_default", simulator, api_key, rate_limit_per_minute=6000)
    hook = DialNexaHook()
    calls = ended(simulator, 15)
    await asyncio.gather(*(hook.aget_call(call_id) for call_id in calls[:10]))  # 10 of 12 used
    await asyncio.gather(*(hook.aget_call(call_id) for call_id in calls[10:]))  # 2 fit, 3 do not
    log = sorted(simulator.requests(route="get"), key=lambda e: e.t)
    refusals = [entry for entry in log if entry.status_code == 429]
    assert refusals, "the key's limit was not reached"
    first = refusals[0]
    assert all(entry.t - first.t >= 1.0 for entry in log if entry.t > first.t and entry.status_code == 200), (
        "a request went out right after a 429 instead of waiting for Retry-After"
    )
    assert sorted(set(calls)) == sorted({entry.call_ids[0] for entry in log if entry.status_code == 200})


# -- rate headers pace the key ---------------------------------------------------------------------------------


@pytest.mark.parametrize("reset_style", ["seconds", "epoch"])
def test_rate_headers_keep_a_task_inside_the_key_limit(
    simulator: Simulator,
    api_key: str,
    monkeypatch: pytest.MonkeyPatch,
    hooks: list[DialNexaHook],
    reset_style: str,
) -> None:
    """4 requests per 1.5 s window, a budget of 6,000/min: the headers alone keep 9 reads free of 429s."""
    simulator.configure(key_limit=4, key_window_s=1.5, rate_headers=True, reset_style=reset_style)
    use_connection(monkeypatch, "dialnexa_default", simulator, api_key, rate_limit_per_minute=6000)
    hooks.append(hook := DialNexaHook(retry_policy=RetryPolicy(min_wait=0.0)))
    for call_id in ended(simulator, 9):
        hook.get_call(call_id)
    assert statuses(simulator.requests(route="get")) == [200] * 9


@pytest.mark.parametrize("reset_style", ["seconds", "epoch"])
async def test_rate_headers_pace_concurrent_waits(
    simulator: Simulator, api_key: str, monkeypatch: pytest.MonkeyPatch, reset_style: str
) -> None:
    simulator.configure(key_limit=4, key_window_s=1.5, rate_headers=True, reset_style=reset_style)
    use_connection(monkeypatch, "dialnexa_default", simulator, api_key, rate_limit_per_minute=6000)
    hook = DialNexaHook(retry_policy=RetryPolicy(min_wait=0.0))
    first, *rest = ended(simulator, 9)
    await hook.aget_call(first)  # the first answer tells the process about the key's window
    await asyncio.gather(*(hook.aget_call(call_id) for call_id in rest))
    assert statuses(simulator.requests(route="get")) == [200] * 9


# -- the simulator's key-wide limit ---------------------------------------------------------------------------


@pytest.mark.parametrize("reset_style", ["seconds", "epoch"])
def test_simulator_limits_the_key_across_clients(simulator: Simulator, api_key: str, reset_style: str) -> None:
    simulator.configure(key_limit=3, key_window_s=30, reset_style=reset_style)
    call_id = ended(simulator, 1)[0]
    headers = {"Authorization": f"Bearer {api_key}"}
    with (
        httpx.Client(base_url=simulator.url, headers=headers) as one,
        httpx.Client(base_url=simulator.url, headers=headers) as two,
    ):
        answers = [client.get(f"/v1/calls/{call_id}") for client in (one, two, one, two)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429], "one budget for every client of the key"
    assert [a.headers["X-RateLimit-Remaining"] for a in answers] == ["2", "1", "0", "0"]
    assert {a.headers["X-RateLimit-Limit"] for a in answers} == {"3"}
    reset = int(answers[0].headers["X-RateLimit-Reset"])
    assert (0 < reset <= 30) if reset_style == "seconds" else (time.time() < reset <= time.time() + 31)
    refused = answers[-1]
    assert 1 <= int(refused.headers["Retry-After"]) <= 30
    assert refused.json()["error"] == "Too Many Requests"
    assert simulator.stats()["by_status"] == {200: 3, 429: 1}


def test_simulator_rate_headers_can_be_switched_off(simulator: Simulator, api_key: str) -> None:
    simulator.configure(key_limit=1, key_window_s=30, rate_headers=False)
    call_id = ended(simulator, 1)[0]
    with httpx.Client(base_url=simulator.url, headers={"Authorization": f"Bearer {api_key}"}) as client:
        ok, refused = client.get(f"/v1/calls/{call_id}"), client.get(f"/v1/calls/{call_id}")
    assert (ok.status_code, refused.status_code) == (200, 429)
    assert not any(name.lower().startswith("x-ratelimit") for name in [*ok.headers, *refused.headers])
    assert "Retry-After" in refused.headers, "429 keeps its Retry-After"


def test_simulator_refuses_a_bad_limit(simulator: Simulator) -> None:
    with pytest.raises(SimulatorError):
        simulator.configure(key_limit=5, key_window="leaky")
    with pytest.raises(SimulatorError):
        simulator.configure(reset_style="iso")
