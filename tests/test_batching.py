"""Coalesced polling (issue #7): the triggers of one event loop and connection share List Calls requests.

The ``BatchPoller`` collects the ids asked for during one ``BATCH_WINDOW`` (1 s), then fetches them with
``GET /v1/calls?call_id=a,b,...`` (up to 200 ids each). These tests run many real triggers in one loop
against the simulator and read its request log and counters.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import pytest
from conftest import only_event

from airflow_provider_dialnexa import _poller as poller_module
from airflow_provider_dialnexa import policy
from airflow_provider_dialnexa import status as call_status
from airflow_provider_dialnexa._poller import BatchPoller, active_pollers
from airflow_provider_dialnexa.hooks.dialnexa import MAX_LIST_LIMIT, DialNexaHook
from airflow_provider_dialnexa.simulator import Fault, LogEntry, Simulator
from airflow_provider_dialnexa.triggers.dialnexa import DialNexaCallTrigger

CONN_ID = "dialnexa_default"
FAST: dict[str, Any] = {"poll_interval": 1, "poll_growth": 1, "poll_jitter": 0, "first_poll_delay": 0}
POLLER_TASK = "dialnexa-batch-poller"


def use_connection(monkeypatch: pytest.MonkeyPatch, sim: Simulator, api_key: str, **extra: Any) -> None:
    """``dialnexa_default`` -> the simulator, batched, without a rate budget (budgets are process-wide)."""
    extras = {"timeout": 10, "max_retries": 0, "rate_limit_per_minute": 0, "polling": "batched", **extra}
    conn = {"conn_type": "dialnexa", "host": sim.url, "password": api_key, "extra": extras}
    monkeypatch.setenv("AIRFLOW_CONN_DIALNEXA_DEFAULT", json.dumps(conn))


@pytest.fixture
def sim(simulator: Simulator, api_key: str, monkeypatch: pytest.MonkeyPatch) -> Simulator:
    use_connection(monkeypatch, simulator, api_key)
    return simulator


pytestmark = pytest.mark.usefixtures("close_shared_clients")


def trigger(call_id: str, **kwargs: Any) -> DialNexaCallTrigger:
    return DialNexaCallTrigger(call_id, polling="batched", **{**FAST, **kwargs})


async def events_of(triggers: list[DialNexaCallTrigger], timeout: float = 30) -> list[dict[str, Any]]:
    return list(await asyncio.gather(*(only_event(t, timeout) for t in triggers)))


async def first_event(trig: DialNexaCallTrigger) -> Any:
    return await trig.run().__anext__()


async def until(condition: Callable[[], bool], timeout: float = 5) -> None:
    """Yield to the loop until ``condition()`` holds (bounded)."""

    async def spin() -> None:
        while not condition():
            await asyncio.sleep(0)

    await asyncio.wait_for(spin(), timeout)


def ticks(entries: list[LogEntry]) -> list[list[LogEntry]]:
    """Requests grouped by batch tick: a tick's requests leave together, ticks are >= 1 s apart."""
    groups: list[list[LogEntry]] = []
    for entry in sorted(entries, key=lambda e: e.t):
        if groups and entry.t - groups[-1][-1].t < 0.5:
            groups[-1].append(entry)
        else:
            groups.append([entry])
    return groups


def poller_tasks() -> list[asyncio.Task[Any]]:
    return [task for task in asyncio.all_tasks() if task.get_name() == POLLER_TASK and not task.done()]


def ended_calls(sim: Simulator, n: int, **spec: Any) -> list[str]:
    return sim.create_calls(n, queued_s=0, ring_s=0, talk_s=0, **spec)


def ending_calls(sim: Simulator, n: int, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Calls that are ``initiated`` at the poller's first tick and ``busy`` from its second on.

    Not a ring time (a loaded machine can delay the first tick past it): the calls ring until the poller,
    having finished its first tick, starts waiting for the next, and only then end.
    """
    calls = [sim.create_call(outcome="busy", queued_s=0, ring_s=3600, talk_s=0) for _ in range(n)]
    windows = 0

    class _Asyncio:  # the poller's view of asyncio: its window sleeps are counted
        def __getattr__(self, name: str) -> Any:
            return getattr(asyncio, name)

        async def sleep(self, delay: float) -> None:
            nonlocal windows
            windows += 1
            if windows == 2:  # the first tick is over; the second has not started
                for call_id in calls:
                    sim.set_status(call_id, "busy")
            await asyncio.sleep(delay)

    monkeypatch.setattr(poller_module, "asyncio", _Asyncio())
    return calls


def expect_success(sim: Simulator, events: list[dict[str, Any]]) -> None:
    """Every event is the success of its call, with the simulator's raw status and its normalised form."""
    for event in events:
        raw = sim.record(event["call_id"])["status"]
        assert event == {
            "event": "success",
            "call_id": event["call_id"],
            "status": call_status.normalise(raw),
            "raw_status": raw,
        }
        assert call_status.is_terminal(raw)


# -- scale -------------------------------------------------------------------------------------------


async def test_a_thousand_waits_share_five_list_requests(sim: Simulator) -> None:
    mix = {
        "completed": 3,
        "no_answer": 2,
        "busy": 2,
        "did_not_pick": 1,
        "failed": 1,
        "voicemail": 1,
        "retry_expired": 1,
    }
    calls = ended_calls(sim, 600, mix=mix) + ended_calls(sim, 400, mix=mix, hyphenated=True)
    events = await events_of([trigger(call_id) for call_id in calls])
    expect_success(sim, events)
    assert {event["raw_status"] for event in events} >= {"no-answer", "did-not-pick", "no_answer", "completed"}
    assert len({event["status"] for event in events}) == len(mix)
    stats = sim.stats()
    assert stats["by_route"] == {"list": math.ceil(1000 / MAX_LIST_LIMIT)}  # all due in one tick; no Get Call
    lists = sim.requests(route="list")
    assert all(len(entry.call_ids) <= MAX_LIST_LIMIT for entry in lists)
    assert sorted(i for entry in lists for i in entry.call_ids) == sorted(calls)
    assert active_pollers() == {}
    assert poller_tasks() == []


async def test_each_tick_sends_one_list_request_per_200_due_waits(
    sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    ended, running = ended_calls(sim, 250), ending_calls(sim, 200, monkeypatch)
    events = await events_of([trigger(call_id) for call_id in ended + running])
    expect_success(sim, events)
    assert {event["status"] for event in events[250:]} == {"busy"}
    per_tick = ticks(sim.requests())
    assert [len(tick) for tick in per_tick] == [math.ceil(450 / 200), 1]
    assert all(entry.route == "list" for tick in per_tick for entry in tick)
    assert sorted(i for entry in per_tick[1] for i in entry.call_ids) == sorted(running)


# -- ids the list leaves out -------------------------------------------------------------------------


async def test_ids_missing_from_the_list_fall_back_to_get_call(sim: Simulator) -> None:
    ok = ended_calls(sim, 3)
    foreign_403 = sim.create_call(outcome="completed", foreign=True, foreign_status=403)
    foreign_404 = sim.create_call(outcome="completed", foreign=True, foreign_status=404)
    unknown, bad_format = "call_doesnotexist00", "not.a.call.id"
    expected = {foreign_403: "permission", foreign_404: "not_found", unknown: "not_found", bad_format: "bad_request"}
    events = await events_of([trigger(call_id) for call_id in [*ok, *expected]])
    expect_success(sim, events[:3])
    for event in events[3:]:
        assert (event["event"], event["kind"]) == ("error", expected[event["call_id"]])
        assert repr(event["call_id"]) in event["message"]
    [listed] = sim.requests(route="list")
    assert sorted(listed.call_ids) == sorted([*ok, *expected])
    gets = sim.requests(route="get")
    assert sorted(i for entry in gets for i in entry.call_ids) == sorted(expected)  # each missing id once


async def test_invalid_call_id_does_not_fail_the_batch_it_would_join(sim: Simulator) -> None:
    ok = ended_calls(sim, 2)
    events = await events_of([trigger("call/../../admin"), *(trigger(call_id) for call_id in ok)])
    assert (events[0]["event"], events[0]["kind"]) == ("error", "bad_request")
    expect_success(sim, events[1:])
    assert [sorted(entry.call_ids) for entry in sim.requests()] == [sorted(ok)]


async def test_an_unexpected_error_in_a_batch_ends_its_waits(sim: Simulator, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug or an unmapped client error while listing must end the waits with an event, not strand them."""

    async def broken(self: DialNexaHook, call_ids: list[str], *, limit: int = MAX_LIST_LIMIT) -> Any:
        raise RuntimeError("unexpected list failure")

    monkeypatch.setattr(DialNexaHook, "alist_calls", broken)
    calls = ended_calls(sim, 3)
    events = await events_of([trigger(call_id) for call_id in calls], timeout=10)
    for event in events:
        assert (event["event"], event["kind"]) == ("error", "error")
        assert "unexpected list failure" in event["message"]
    assert active_pollers() == {}
    assert poller_tasks() == []


# -- deployments that list differently ---------------------------------------------------------------


async def test_envelope_list_capped_at_100_ids(sim: Simulator, monkeypatch: pytest.MonkeyPatch) -> None:
    """Mintlify's List Calls: ``{data, meta}`` and a limit capped at 100. The poller learns the cap from
    ``meta.limit``, lists the ids a capped page could not hold, and batches 100 ids from then on.
    """
    sim.configure(list_style="envelope")
    ended, running = ended_calls(sim, 250), ending_calls(sim, 150, monkeypatch)
    events = await events_of([trigger(call_id) for call_id in ended + running])
    expect_success(sim, events)
    assert sim.requests(route="get") == []  # every id was listed; none needed Get Call
    per_tick = ticks(sim.requests())
    listed_first = [i for entry in per_tick[0] for i in entry.call_ids]
    assert sorted(set(listed_first)) == sorted(ended + running)
    assert [len(entry.call_ids) for entry in per_tick[1]] == [100, 50]  # the second tick batches 100 at a time


@pytest.mark.parametrize("list_route", ["missing", "forbidden"])
async def test_refused_list_route_falls_back_to_get_call_for_the_process(
    sim: Simulator, list_route: str, caplog: pytest.LogCaptureFixture
) -> None:
    sim.configure(list_route=list_route)
    first = ended_calls(sim, 250)
    with caplog.at_level(logging.INFO, logger="airflow_provider_dialnexa"):
        expect_success(sim, await events_of([trigger(call_id) for call_id in first]))
        refused = [(e.route, e.status_code) for e in sim.requests(route="list")]
        assert refused
        assert all(status == (404 if list_route == "missing" else 403) for _, status in refused)
        assert sorted(i for entry in sim.requests(route="get") for i in entry.call_ids) == sorted(first)
        # Later waits of this process go straight to Get Call: no new List Calls attempt, no new warning.
        later = ended_calls(sim, 5)
        expect_success(sim, await events_of([trigger(call_id) for call_id in later]))
    assert len(sim.requests(route="list")) == len(refused)
    assert sim.stats()["by_route"]["get"] == 255
    warnings = [
        r for r in caplog.records if r.levelno == logging.WARNING and "List Calls is not available" in r.message
    ]
    assert len(warnings) == 1, [r.message for r in warnings]


async def test_a_429_on_the_list_route_pauses_every_wait_once(
    simulator: Simulator, api_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 429 on a batch pauses the key: the refused batch, a later batch and a wait polling by itself all hold off.

    The later waits start once the 429 has paused the key (an event), not at a time chosen to fall inside the
    pause: on a loaded machine the first batch (and its 429) can come later than any such time.
    """
    # With a rate budget: the pause of the key's budget (not only the retry's own wait) holds the late batch.
    use_connection(monkeypatch, simulator, api_key, max_retries=3, rate_limit_per_minute=600)
    simulator.add_fault(Fault("429", route="list", count=1, retry_after="2"))
    early, late = ended_calls(simulator, 200), ended_calls(simulator, 50)
    single = ended_calls(simulator, 1)[0]
    first = asyncio.ensure_future(events_of([trigger(call_id) for call_id in early]))
    await until(lambda: any(budget._paused_until > time.monotonic() for budget in policy._budgets.values()), 60)
    # A later batch, and a wait that polls by itself (Get Call), both inside the key's pause.
    triggers = [trigger(call_id) for call_id in late]
    triggers.append(DialNexaCallTrigger(single, polling="per_call", **FAST))
    expect_success(simulator, [*await first, *await events_of(triggers)])
    lists = sorted(simulator.requests(route="list"), key=lambda e: e.t)
    assert [e.status_code for e in lists].count(429) == 1
    refused = next(e for e in lists if e.status_code == 429)
    after = [e for e in lists if e.t > refused.t]
    assert after, "the refused batch was sent again"
    assert min(e.t for e in after) - refused.t >= 2.0, "a list request went out before Retry-After"
    assert sorted(i for e in after for i in e.call_ids) == sorted([*early, *late])
    [get] = simulator.requests(route="get")
    assert get.call_ids == (single,)
    assert get.t - refused.t >= 2.0, "a Get Call went out during the key's pause"


# -- lifecycle of the shared poller ------------------------------------------------------------------


async def test_cancelled_waits_unregister(sim: Simulator) -> None:
    calls = ended_calls(sim, 100)
    for call_id in calls:
        sim.set_status(call_id, "initiated")
    tasks = [asyncio.create_task(first_event(trigger(call_id))) for call_id in calls]
    await until(lambda: CONN_ID in active_pollers() and active_pollers()[CONN_ID].pending == 100)
    poller: BatchPoller = active_pollers()[CONN_ID]
    assert poller.users == 100
    cancelled, kept = tasks[:50], tasks[50:]
    for task in cancelled:
        task.cancel()
    results = await asyncio.gather(*cancelled, return_exceptions=True)
    assert all(isinstance(result, asyncio.CancelledError) for result in results)
    assert poller.pending == 50
    assert poller.users == 50
    for call_id in calls[50:]:
        sim.set_status(call_id, "completed")
    events = [event.payload for event in await asyncio.wait_for(asyncio.gather(*kept), 10)]
    assert {(event["event"], event["status"]) for event in events} == {("success", "completed")}
    assert [sorted(entry.call_ids) for entry in sim.requests()] == [sorted(calls[50:])]  # cancelled ids never sent
    assert poller.pending == 0
    assert active_pollers() == {}
    assert poller_tasks() == []


async def test_cancelling_every_wait_stops_the_poller(sim: Simulator) -> None:
    calls = ended_calls(sim, 20)
    tasks = [asyncio.create_task(first_event(trigger(call_id))) for call_id in calls]
    await until(lambda: CONN_ID in active_pollers() and active_pollers()[CONN_ID].pending == 20)
    flushers = poller_tasks()
    assert len(flushers) == 1
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.wait(flushers, timeout=5)
    assert all(flusher.done() for flusher in flushers)
    assert active_pollers() == {}
    assert sim.requests() == []


async def test_two_copies_of_one_trigger_get_the_same_event(sim: Simulator) -> None:
    """HA triggerers (or a restart) may run one trigger twice at once: both get the same event."""
    [call_id] = ended_calls(sim, 1, mix={"no_answer": 1}, hyphenated=True)
    first, second = await events_of([trigger(call_id), trigger(call_id)])
    assert first == second == {"event": "success", "call_id": call_id, "status": "no_answer", "raw_status": "no-answer"}
    assert [entry.call_ids for entry in sim.requests()] == [(call_id,)]


async def test_per_call_copies_get_the_same_event_too(sim: Simulator) -> None:
    [call_id] = ended_calls(sim, 1, mix={"busy": 1})
    copies = [DialNexaCallTrigger(call_id, polling="per_call", **FAST) for _ in range(2)]
    first, second = await events_of(copies)
    assert first == second
    assert first["status"] == "busy"
    assert sim.get_count(call_id) == 2
