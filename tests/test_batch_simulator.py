"""The simulator's batch calls (issue #20): one running batch per organization, calling hours, schedule,
DialNexa-style retries, pause/resume/cancel, and a clock the tests move instead of waiting."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from airflow_provider_dialnexa.hooks.dialnexa import DialNexaHook
from airflow_provider_dialnexa.simulator import Simulator

AGENT = "agent_2g7Xy3tY53gRlp"
#: 2026-10-05 20:00 UTC, a Monday evening.
EVENING = datetime(2026, 10, 5, 20, 0, tzinfo=UTC).timestamp()


@pytest.fixture
def sim(simulator: Simulator, api_key: str, monkeypatch: pytest.MonkeyPatch) -> Simulator:
    extra = {"timeout": 5, "max_retries": 0, "rate_limit_per_minute": 0}
    conn = {"conn_type": "dialnexa", "host": simulator.url, "password": api_key, "extra": extra}
    monkeypatch.setenv("AIRFLOW_CONN_DIALNEXA_DEFAULT", json.dumps(conn))
    simulator.set_clock(EVENING)
    simulator.configure_batches(dial_interval_s=60, call_s=120, retry_wait_s=1800, mix={"completed": 1})
    return simulator


@pytest.fixture
def hook(sim: Simulator) -> Iterator[DialNexaHook]:
    result = DialNexaHook()
    yield result
    result.close()


def upload(hook: DialNexaHook, n: int, name: str, **kwargs: Any) -> str:
    rows = [{"phone_number": f"+1415555{i:04d}"} for i in range(n)]
    return str(hook.create_batch_call(rows, name, AGENT, correlation_id=name, **kwargs)["id"])


def status(sim: Simulator, batch_id: str) -> dict[str, Any]:
    return next(b for b in sim.batches() if b["id"] == batch_id)


def test_batches_run_one_at_a_time_in_creation_order(sim: Simulator, hook: DialNexaHook) -> None:
    first, second, third = (upload(hook, 10, name) for name in ("first", "second", "third"))
    assert [status(sim, b)["status"] for b in (first, second, third)] == ["running", "waiting", "waiting"]

    sim.advance_clock(9 * 60 + 120)  # the tenth lead is dialled at 9 minutes and talks for 2
    assert [status(sim, b)["status"] for b in (first, second, third)] == ["completed", "running", "waiting"]
    sim.advance_clock(3600)
    assert all(status(sim, b)["status"] == "completed" for b in (first, second, third))
    assert status(sim, third)["sent_lead_count"] == 10


def test_calling_hours_hold_dialling_until_the_window_opens(sim: Simulator, hook: DialNexaHook) -> None:
    batch_id = upload(hook, 3, "hours", calling_hours_start="09:00", calling_hours_end="18:00")
    sim.advance_clock(12 * 3600)  # 08:00 next morning
    assert status(sim, batch_id)["sent_lead_count"] == 0
    sim.advance_clock(2 * 3600)  # 10:00
    calls = list(hook.iter_batch_calls(batch_id))
    assert len(calls) == 3
    assert calls[0]["createdAt"] == "2026-10-06T09:00:00.000Z"


def test_a_scheduled_batch_waits_for_its_start(sim: Simulator, hook: DialNexaHook) -> None:
    batch_id = upload(hook, 2, "later", starts_at="2026-10-05T22:00:00Z")
    assert status(sim, batch_id)["status"] == "scheduled"
    sim.advance_clock(2 * 3600)
    assert status(sim, batch_id)["status"] == "running"


def test_unanswered_leads_are_redialled_up_to_the_retry_count(sim: Simulator, hook: DialNexaHook) -> None:
    sim.configure_batches(
        retries=2,
        outcomes={"+14155550000": ["no_answer"], "+14155550001": ["failed"], "+14155550002": ["busy", "completed"]},
    )
    batch_id = upload(hook, 3, "retries")
    sim.advance_clock(300)
    record = status(sim, batch_id)
    assert (record["first_retry_count"], record["status"]) == (2, "running")  # children scheduled, not yet dialled
    assert sorted(c["status"] for c in hook.iter_batch_calls(batch_id)) == [
        "busy",
        "created",
        "created",
        "failed",
        "no_answer",
    ]

    sim.advance_clock(2 * 3600)
    record = status(sim, batch_id)
    assert record["status"] == "completed"
    assert (record["first_retry_count"], record["second_retry_count"]) == (2, 1)
    assert record["finals"] == {"+14155550000": "no_answer", "+14155550001": "failed", "+14155550002": "completed"}
    assert record["attempts"] == 6  # 3 + 2 + 1: 'failed' is never redialled
    assert record["attempt_stages"] == [
        {"depth": 0, "attempted": 3, "total": 3},
        {"depth": 1, "attempted": 2, "total": 2},
        {"depth": 2, "attempted": 1, "total": 1},
    ]


def test_ends_at_stops_dialling_and_expires_waiting_retries(sim: Simulator, hook: DialNexaHook) -> None:
    sim.configure_batches(outcomes={"+14155550000": ["no_answer"]})
    batch_id = upload(hook, 10, "short", ends_at="2026-10-05T20:05:30Z")
    sim.advance_clock(3600)
    record = status(sim, batch_id)
    assert record["status"] == "completed"
    assert record["sent_lead_count"] == 6  # 20:00 ... 20:05
    assert record["finals"]["+14155550000"] == "retry_expired"


def test_pause_frees_the_slot_and_cancel_cancels_waiting_retries(sim: Simulator, hook: DialNexaHook) -> None:
    sim.configure_batches(outcomes={"+14155550000": ["busy"]})
    first, second = upload(hook, 5, "first"), upload(hook, 5, "second")
    sim.advance_clock(200)
    hook.pause_batch_call(first)
    sim.advance_clock(1)
    assert status(sim, second)["status"] == "running"  # a paused batch does not hold the organization's slot
    answer = hook.cancel_batch_call(first)
    assert answer["affectedCalls"]["cancelledCallLogs"] == 1
    assert status(sim, first)["finals"]["+14155550000"] == "cancelled"
    assert [c["status"] for c in hook.iter_batch_calls(first)].count("cancelled") == 1


def test_batch_calls_are_calls_too(sim: Simulator, hook: DialNexaHook) -> None:
    batch_id = upload(hook, 4, "calls")
    sim.advance_clock(3600)
    by_batch = hook._get(hook.settings.calls_url, params={"batch_call_id": batch_id}, subject="t", call_id=None)
    assert sorted(c["id"] for c in by_batch) == sorted(c["id"] for c in hook.iter_batch_calls(batch_id))
    one = hook.get_call(by_batch[0]["id"])
    assert one["status"] == "completed"
    assert one["batch_id"] == batch_id


def test_reset_forgets_batches_and_the_clock(sim: Simulator, hook: DialNexaHook) -> None:
    upload(hook, 2, "gone")
    sim.reset()
    assert sim.batches() == []
    assert abs(sim.advance_clock(0) - datetime.now(UTC).timestamp()) < 60
