"""Promises the README and docs make, each held by one test (issue #22).

An audit broke the production code on purpose, one small change at a time; these eleven breaks went unnoticed
by the suite. Each test below fails with its break applied (recorded in docs/reliability.md, "Promises held by
tests") and passes without it. Everything talks to the embedded simulator over real sockets; waiting is
simulated, never slept: triggers run on the fake clock of ``tests/_clock.py``, rate budgets on the ``clock``
fixture (``policy``'s clock) with the hook's sleeps recorded, and the Create Call loop's waits are recorded too.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterator, MutableMapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
import requests
from _clock import drive_time
from _compat import capture_logs
from conftest import FakeClock

from airflow_provider_dialnexa import _export_file as export_module
from airflow_provider_dialnexa import _placement as placement_module
from airflow_provider_dialnexa import policy
from airflow_provider_dialnexa._placement import CORRELATION_KEY
from airflow_provider_dialnexa.exceptions import (
    DialNexaBadRequestError,
    DialNexaRateLimitError,
    DialNexaUnconfirmedCallError,
)
from airflow_provider_dialnexa.hooks import _transport as transport_module
from airflow_provider_dialnexa.hooks.dialnexa import DialNexaHook
from airflow_provider_dialnexa.operators.dialnexa import (
    DialNexaCreateCallOperator,
    DialNexaExportCallsOperator,
    correlation_id_for,
)
from airflow_provider_dialnexa.policy import RateBudget, RetryPolicy
from airflow_provider_dialnexa.simulator import Fault, Simulator
from airflow_provider_dialnexa.simulator.app import HUNG_UP
from airflow_provider_dialnexa.simulator.echo import spellings
from airflow_provider_dialnexa.triggers.dialnexa import DialNexaWindowTrigger

NUMBER = "+14155550123"
MASKED = "+14*****0123"
AGENT = "agent_2g7Xy3tY53gRlp"
#: Retries without real backoff waits worth the name (and no 1 s floor), so what a test sees is the hook's choice.
FAST = RetryPolicy(backoff_base=0.01, backoff_max=0.02, min_wait=0)


def use_connection(monkeypatch: pytest.MonkeyPatch, sim: Simulator, api_key: str, **extra: Any) -> None:
    """``dialnexa_default`` -> the simulator; no rate budget and no retries unless asked."""
    extras = {"timeout": 10, "max_retries": 0, "rate_limit_per_minute": 0, **extra}
    conn = {"conn_type": "dialnexa", "host": sim.url, "password": api_key, "extra": extras}
    monkeypatch.setenv("AIRFLOW_CONN_DIALNEXA_DEFAULT", json.dumps(conn))


@pytest.fixture
def sim(simulator: Simulator, api_key: str, monkeypatch: pytest.MonkeyPatch) -> Simulator:
    use_connection(monkeypatch, simulator, api_key)
    return simulator


@pytest.fixture
def hook(sim: Simulator) -> Iterator[DialNexaHook]:
    result = DialNexaHook(retry_policy=FAST)
    yield result
    result.close()


@pytest.fixture
def logged(caplog: pytest.LogCaptureFixture) -> Iterator[Callable[[], list[str]]]:
    """What was logged so far in the test (standard logging and structlog), one string per line."""
    caplog.set_level(logging.DEBUG)
    events: list[MutableMapping[str, Any]]
    with capture_logs() as events:
        yield lambda: [*caplog.messages, *(str(event.get("event")) for event in events)]


def leaks(*texts: object) -> list[str]:
    """The texts that show ``NUMBER`` in any spelling the simulator echoes (none may)."""
    return [str(text) for text in texts if any(spelling in str(text) for spelling in spellings(NUMBER))]


def posts(sim: Simulator) -> int:
    return len(sim.requests(route="create"))


def lists(sim: Simulator) -> int:
    return len(sim.requests(route="list"))


def window() -> tuple[str, str]:
    now = datetime.now(UTC)
    return (now - timedelta(hours=1)).isoformat(), (now + timedelta(hours=1)).isoformat()


def task_context(try_number: int = 1, run_after: datetime | None = None) -> Any:
    ti = SimpleNamespace(dag_id="leads", run_id="manual__1", task_id="place_call", map_index=-1, try_number=try_number)
    context: dict[str, Any] = {"ti": ti}
    if run_after is not None:
        context["dag_run"] = SimpleNamespace(run_after=run_after)
    return cast("Any", context)


def hook_sleeps(monkeypatch: pytest.MonkeyPatch, clock: FakeClock, sim: Simulator) -> list[tuple[float, int]]:
    """The sync hook's rate-budget sleeps, as ``(seconds, requests the simulator had seen)``: recorded, and
    the budget's clock moved ahead by them instead of sleeping."""
    sleeps: list[tuple[float, int]] = []

    def sleep(seconds: float) -> None:
        sleeps.append((seconds, len(sim.requests())))
        clock.now += seconds

    monkeypatch.setattr(
        transport_module, "time", SimpleNamespace(sleep=sleep, time=time.time, monotonic=time.monotonic)
    )
    return sleeps


# -- the export -----------------------------------------------------------------------------------------------


def test_the_export_streams_with_memory_flat(sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Promise: "Records stream one page at a time" (docs/operator.md): memory holds two pages, not the window."""
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)
    sim.seed_calls(200, start.timestamp(), (start + timedelta(hours=1)).timestamp())
    page = 20
    asked: list[int] = []  # List Calls pages asked so far (counted when each request starts)
    real_get = DialNexaHook._get

    def counting_get(self: DialNexaHook, url: str, **kwargs: Any) -> Any:
        asked.append(1)
        return real_get(self, url, **kwargs)

    monkeypatch.setattr(DialNexaHook, "_get", counting_get)
    asked_when_written: list[int] = []
    real_to_json = export_module._to_json

    def to_json(record: Any) -> str:
        asked_when_written.append(len(asked))
        return real_to_json(record)

    monkeypatch.setattr(export_module, "_to_json", to_json)
    target = tmp_path / "calls.jsonl"
    op = DialNexaExportCallsOperator(
        task_id="export",
        destination=str(target),
        window_start=start,
        window_end=start + timedelta(hours=1),
        wait_for_running=False,
        page_size=page,
    )

    result = op.execute(cast("Any", {}))

    assert result["calls"] == 200
    assert len(target.read_text().splitlines()) == 200
    assert len(asked) == 11  # 10 full pages and the empty one that proves the end
    # Record n sits on page n // page + 1; the page after it may be read ahead, nothing further.
    held = [count - (n // page + 1) for n, count in enumerate(asked_when_written)]
    assert max(held) <= 1, f"pages asked beyond the record being written: up to {max(held)}"


# -- the window trigger ---------------------------------------------------------------------------------------


@pytest.mark.usefixtures("close_shared_clients")
async def test_a_waits_deadline_is_honoured_while_a_read_is_in_flight(
    simulator: Simulator, api_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Promise: "a read still in flight at the deadline ... is abandoned" (docs/reliability.md): the first probe too."""
    use_connection(monkeypatch, simulator, api_key, timeout=60)
    clock = drive_time(monkeypatch)
    # The first probe's answer is held 15 s; the deadline passes about half a second into it (first wait: 0.9-1 s
    # on the fake clock). The window holds no call, so an answer that came back would end the wait with success.
    simulator.add_fault(Fault("slow", route="list", count=1, delay_s=15))
    trigger = DialNexaWindowTrigger(*window(), poll_interval=1, end_time=clock.now + 1.5)

    event = (await asyncio.wait_for(anext(trigger.run()), 60)).payload

    assert event["event"] == "timeout", f"the wait ended with {event['event']!r}, not at its deadline: {event}"
    # No answer came back: the held read is logged only once the client hung up, as such.
    assert {r.status_code for r in simulator.requests(route="list")} <= {HUNG_UP}
    assert clock.now == pytest.approx(trigger.end_time)


@pytest.mark.usefixtures("close_shared_clients")
async def test_the_window_trigger_falls_back_to_per_id_reads_when_the_server_rejects_the_status_filter(
    simulator: Simulator, api_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Promise: "If the server ... rejects it (400), the trigger ... polls just those" (docs/operator.md)."""
    use_connection(monkeypatch, simulator, api_key)
    clock = drive_time(monkeypatch)
    running = simulator.create_call(outcome="completed", queued_s=0, ring_s=3600, talk_s=0)
    simulator.add_fault(Fault("400", route="list", count=1))  # the first List Calls: the running-status probe

    def on_window(n: int) -> None:
        if n == 2:  # the second read by id: the call has ended
            simulator.set_status(running, "completed")

    clock.on_window = on_window
    trigger = DialNexaWindowTrigger(*window(), poll_interval=1)

    event = (await asyncio.wait_for(anext(trigger.run()), 60)).payload

    outcome = (event["event"], event["mode"], event.get("polls"))
    assert outcome == ("success", "per_call", 2), f"{outcome}: {event.get('message')}"
    first, *then = [e.status_code for e in simulator.requests(route="list")]
    assert (first, set(then)) == (400, {200})  # the probe refused; then the listing of ids and the reads by id


# -- masking ------------------------------------------------------------------------------------------------------


def test_numbers_are_masked_in_every_log_line_of_the_create_operator(
    sim: Simulator, logged: Callable[[], list[str]]
) -> None:
    """Promise: phone numbers masked in every log line (docs/connection.md): the operator's own line included."""
    op = DialNexaCreateCallOperator(task_id="place_call", phone_number=NUMBER, agent_id=AGENT)

    result = op.execute(task_context())

    lines = logged()
    assert [line for line in lines if result["call_id"] in line and MASKED in line], lines
    assert not leaks(*lines), leaks(*lines)


@pytest.mark.parametrize("status", ["400", "422"])
def test_numbers_are_masked_in_every_error(
    status: str, sim: Simulator, hook: DialNexaHook, logged: Callable[[], list[str]]
) -> None:
    """Promise: "Phone numbers are masked in every error" (docs/connection.md): a refusal echoing the number."""
    sim.add_fault(Fault(status, route="create", echo_number=True))

    with pytest.raises(DialNexaBadRequestError) as info:
        hook.create_call(NUMBER, AGENT)

    error = info.value
    assert error.http_status == int(status)
    assert MASKED in str(error)
    texts = [str(error), repr(error), error.api_message, *error.args, *logged()]
    assert not leaks(*texts), leaks(*texts)


# -- placing a call at most once ---------------------------------------------------------------------------------


def test_after_a_timeout_the_lookup_waits_for_dialnexa_to_show_the_call(
    sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Promise: "after a timeout the hook waits one more read timeout first" (docs/operator.md), then looks."""
    read_timeout = 0.5
    sim.add_fault(Fault("lost_slow", route="create", count=1, delay_s=5))  # created, answer held past the timeout
    waits: list[tuple[float, int]] = []  # (seconds, List Calls requests sent before the wait)
    monkeypatch.setattr(
        placement_module, "time", SimpleNamespace(time=time.time, sleep=lambda s: waits.append((s, lists(sim))))
    )
    hook = DialNexaHook(timeout=read_timeout, retry_policy=FAST)
    try:
        created = hook.create_call(
            NUMBER, AGENT, correlation_id="lead-7", adopt_existing=False, placed_after=datetime.now(UTC)
        )
    finally:
        hook.close()

    assert waits, "the lookup did not wait at all"
    seconds, lists_before = waits[0]
    assert lists_before == 0
    assert seconds >= read_timeout, f"waited {seconds:.3f} s before the lookup, less than the {read_timeout} s timeout"
    assert sim.calls_by_metadata() == {"lead-7": 1}
    assert sim.record(created["id"])["metadata"][CORRELATION_KEY] == "lead-7"


def test_a_post_is_resent_only_when_the_search_saw_every_call(sim: Simulator, monkeypatch: pytest.MonkeyPatch) -> None:
    """Promise: a POST "is never sent again until List Calls proves that no call carries the value" (operator.md)."""
    monkeypatch.setattr(placement_module, "MAX_LOOKUP_PAGES", 2)  # 2 pages of 100 instead of 100 of 100
    # The POST creates the call and its answer is lost; while the hook waits, other tasks place 250 calls of the
    # same agent, so the search (newest first) would meet ours only on page 3.
    sim.add_fault(Fault("lost_504", route="create", count=1))
    monkeypatch.setattr(
        placement_module, "time", SimpleNamespace(time=time.time, sleep=lambda s: sim.create_calls(250, agent_id=AGENT))
    )

    hook = DialNexaHook(retry_policy=FAST, max_retries=1)  # a second POST is allowed, once proven safe
    outcome: object
    try:
        outcome = hook.create_call(
            NUMBER, AGENT, correlation_id="lead-7", adopt_existing=False, placed_after=datetime.now(UTC)
        )
    except DialNexaUnconfirmedCallError as exc:
        outcome = exc
    finally:
        hook.close()

    assert sim.calls_by_metadata() == {"lead-7": 1}, "the POST was sent again after a search cut off at its page cap"
    assert (posts(sim), lists(sim)) == (1, 2)
    assert isinstance(outcome, DialNexaUnconfirmedCallError), outcome
    assert "pages" in str(outcome)


def test_calls_placed_up_to_a_day_before_the_run_are_found(sim: Simulator) -> None:
    """Promise: "The search before placing reaches back to it minus a day" (docs/operator.md, placed_after)."""
    run_start = datetime.now(UTC) - timedelta(hours=1)
    correlation = correlation_id_for("leads", "manual__1", "place_call", -1)
    earlier = sim.create_call(
        agent_id=AGENT, to_number=NUMBER, metadata={CORRELATION_KEY: correlation}, age_s=24 * 3600
    )  # created 23 h before run_start
    op = DialNexaCreateCallOperator(task_id="place_call", phone_number=NUMBER, agent_id=AGENT)

    result = op.execute(task_context(try_number=2, run_after=run_start))

    assert result["call_id"] == earlier, "the call placed 23 h before the run was not found: a second call was placed"
    assert posts(sim) == 0
    assert sim.calls_by_metadata() == {correlation: 1}


# -- the rate budget ---------------------------------------------------------------------------------------------


def test_without_rate_headers_a_429_slows_the_process_down(
    simulator: Simulator, api_key: str, monkeypatch: pytest.MonkeyPatch, clock: FakeClock
) -> None:
    """Promise: "No rate headers. ... multiplicative decrease (x0.7) on each 429" (docs/polling.md)."""
    use_connection(monkeypatch, simulator, api_key, rate_limit_per_minute=60)
    simulator.configure(rate_headers=False)
    call_id = simulator.create_call()
    sleeps = hook_sleeps(monkeypatch, clock, simulator)
    hook = DialNexaHook(retry_policy=FAST)
    try:
        hook.get_call(call_id)
        budget = policy.budget_for(api_key, 60, conn_id="dialnexa_default")
        assert budget is not None
        assert budget.pace() == pytest.approx(1.0)  # 60 per minute
        simulator.add_fault(Fault("429", route="get", count=1))
        with pytest.raises(DialNexaRateLimitError):
            hook.get_call(call_id)

        assert budget.pace() == pytest.approx(0.7, rel=0.01), f"after a 429 the budget still sends {budget.pace()}/s"
        sleeps.clear()
        for _ in range(4):
            hook.get_call(call_id)
    finally:
        hook.close()
    spacing = [seconds for seconds, _ in sleeps[1:]]  # after the pause, one slot per request
    assert len(spacing) == 3
    assert min(spacing) > 1.3, f"requests after the 429 went out every {spacing} s: no slower than before (1 s)"


def test_every_request_reads_and_creates_shares_one_budget(
    simulator: Simulator, api_key: str, monkeypatch: pytest.MonkeyPatch, clock: FakeClock
) -> None:
    """Promise: "Every request a process sends with a key ... goes through that key's one budget" (polling.md)."""
    use_connection(monkeypatch, simulator, api_key, rate_limit_per_minute=60)
    call_id = simulator.create_call()
    simulator.add_fault(Fault("429", route="get", count=1, retry_after="5"))  # a read pauses the key for 5 s
    reservations: list[int] = []
    real_reserve = RateBudget.reserve

    def reserve(self: RateBudget) -> float:
        reservations.append(1)
        return real_reserve(self)

    monkeypatch.setattr(RateBudget, "reserve", reserve)
    sleeps = hook_sleeps(monkeypatch, clock, simulator)
    hook = DialNexaHook(retry_policy=FAST)
    try:
        with pytest.raises(DialNexaRateLimitError):
            hook.get_call(call_id)
        hook.create_call(NUMBER, AGENT)
    finally:
        hook.close()

    assert [e.route for e in simulator.requests()] == ["get", "create"]
    assert len(reservations) == 2, f"{len(reservations)} budget slot(s) taken for a GET and a POST"
    waited_before_post = sum(seconds for seconds, seen in sleeps if seen == 1)
    assert waited_before_post >= 5, f"the POST went out {waited_before_post} s into the key's 5 s pause"


@pytest.mark.parametrize("rate_headers", [True, False], ids=["reset", "no_headers"])
def test_a_429_without_retry_after_waits_for_the_windows_reset_or_a_safe_default(
    rate_headers: bool, simulator: Simulator, api_key: str, monkeypatch: pytest.MonkeyPatch, clock: FakeClock
) -> None:
    """Promise: a 429 "Pauses the whole key ... for Retry-After (else the window's Reset, else 1 s)" (polling.md)."""
    use_connection(monkeypatch, simulator, api_key, rate_limit_per_minute=6000, max_retries=1)  # slots: 1/70 s
    simulator.configure(rate_headers=rate_headers, reset_style="seconds")
    call_id = simulator.create_call()
    simulator.add_fault(Fault("429", route="get", count=1))  # no Retry-After
    sleeps = hook_sleeps(monkeypatch, clock, simulator)
    hook = DialNexaHook(retry_policy=FAST)
    answers: list[requests.Response] = []
    real_request = hook.session.request

    def request(*args: Any, **kwargs: Any) -> requests.Response:
        response = real_request(*args, **kwargs)
        answers.append(response)
        return response

    monkeypatch.setattr(hook.session, "request", request)
    try:
        hook.get_call(call_id)
    finally:
        hook.close()

    assert [r.status_code for r in answers] == [429, 200]
    assert "retry-after" not in answers[0].headers
    expected = float(answers[0].headers["x-ratelimit-reset"]) if rate_headers else 1.0
    assert expected >= 1
    waited = sum(seconds for seconds, seen in sleeps if seen == 1)  # between the 429 and the retry
    assert waited == pytest.approx(expected, abs=0.05), f"waited {waited} s after a 429, expected {expected} s"
