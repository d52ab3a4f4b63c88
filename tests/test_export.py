"""Scheduled call-outcome export (issue #10): ``DialNexaHook.iter_calls``, the export operator and its window
trigger, against the embedded simulator over real sockets; the deferral runs through a real ``dag.test()``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from airflow_provider_dialnexa.exceptions import DialNexaMalformedResponseError
from airflow_provider_dialnexa.hooks.dialnexa import DialNexaHook
from airflow_provider_dialnexa.simulator import Simulator

CONN_ID = "dialnexa_export"
HOUR = 3600.0
#: A fixed past hour the seeded calls live in (well before "now", so every seeded call has ended).
T0 = datetime(2026, 10, 5, 9, 0, tzinfo=UTC)


@pytest.fixture
def sim(simulator: Simulator, api_key: str, monkeypatch: pytest.MonkeyPatch) -> Simulator:
    """The simulator behind connection ``dialnexa_export`` (no rate budget, so paging tests are quick)."""
    conn = {
        "conn_type": "dialnexa",
        "host": simulator.url,
        "password": api_key,
        "extra": {"timeout": 5, "max_retries": 2, "rate_limit_per_minute": 0},
    }
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(conn))
    return simulator


@pytest.fixture
def hook(sim: Simulator) -> Iterator[DialNexaHook]:
    hook = DialNexaHook(CONN_ID)
    yield hook
    hook.close()


def seed(sim: Simulator, n: int, start: datetime = T0, hours: float = 1.0, **options: Any) -> None:
    sim.seed_calls(n, start.timestamp(), start.timestamp() + hours * HOUR, **options)


def list_requests(sim: Simulator) -> int:
    return int(sim.stats()["by_route"].get("list", 0))


def created(record: dict[str, Any]) -> str:
    return str(record.get("createdAt") or record.get("created_at"))


# -- iter_calls: paging ---------------------------------------------------------------------------------


def test_pages_a_bare_array_oldest_first_with_the_fewest_requests(sim: Simulator, hook: DialNexaHook) -> None:
    seed(sim, 450)
    seed(sim, 30, start=T0 + timedelta(hours=1))  # the next hour: not in the window
    seed(sim, 30, start=T0 - timedelta(hours=1))  # the previous hour
    records = list(hook.iter_calls(T0, T0 + timedelta(hours=1)))
    assert len(records) == 450
    assert len({r["id"] for r in records}) == 450
    assert [created(r) for r in records] == sorted(created(r) for r in records)
    assert list_requests(sim) == 3  # 200 + 200 + 50


def test_pages_the_envelope_at_the_limit_the_server_reports(sim: Simulator, hook: DialNexaHook) -> None:
    sim.configure(list_style="envelope")  # {data, meta}, limit capped at 100 and said so in meta.limit
    seed(sim, 250)
    records = list(hook.iter_calls(T0, T0 + timedelta(hours=1)))
    assert len({r["id"] for r in records}) == len(records) == 250
    assert list_requests(sim) == 3  # 100 + 100 + 50


@pytest.mark.parametrize(("n", "requests"), [(250, 3), (100, 2), (99, 1), (0, 1)])
def test_a_silent_cap_of_100_on_a_bare_array_loses_nothing(
    sim: Simulator, hook: DialNexaHook, n: int, requests: int
) -> None:
    sim.configure(list_cap=100)  # asked for 200, answers 100, says nothing
    seed(sim, n)
    records = list(hook.iter_calls(T0, T0 + timedelta(hours=1)))
    assert len({r["id"] for r in records}) == len(records) == n
    assert list_requests(sim) == requests


def test_both_spellings_of_the_creation_time(sim: Simulator, hook: DialNexaHook) -> None:
    sim.configure(spelling="snake")
    seed(sim, 10)
    records = list(hook.iter_calls(T0.isoformat(), (T0 + timedelta(hours=1)).isoformat()))
    assert len(records) == 10
    assert all("created_at" in r and "createdAt" not in r for r in records)


def test_calls_created_while_paging_are_neither_duplicated_nor_lost(sim: Simulator, hook: DialNexaHook) -> None:
    now = datetime.now(UTC)
    seed(sim, 300, start=now - timedelta(hours=2), hours=1.5)  # ended calls, before the growth
    sim.configure(grow_per_list=37)  # every List Calls request first creates 37 calls "now"
    start, end = now - timedelta(hours=3), now + timedelta(hours=1)
    ids = [r["id"] for r in hook.iter_calls(start, end, page_size=50)]
    sim.configure(grow_per_list=0)
    everything = {r["id"] for r in hook.iter_calls(start, end)}
    assert len(ids) == len(set(ids))
    assert set(ids) == everything  # every call that existed when the last page was read
    assert len(everything) > 300 + 37


def test_a_server_ignoring_the_sort_still_yields_each_call_once(sim: Simulator, hook: DialNexaHook) -> None:
    now = datetime.now(UTC)
    seed(sim, 300, start=now - timedelta(hours=2), hours=1.5)
    before = {r["id"] for r in hook.iter_calls(now - timedelta(hours=3), now + timedelta(hours=1))}
    sim.configure(grow_per_list=20, list_ignores=["created_at"])  # newest first: new calls shift every page
    ids = [r["id"] for r in hook.iter_calls(now - timedelta(hours=3), now + timedelta(hours=1), page_size=50)]
    assert len(ids) == len(set(ids))
    assert before <= set(ids)


def test_a_server_ignoring_page_fails_instead_of_looping(sim: Simulator, hook: DialNexaHook) -> None:
    sim.configure(list_ignores=["page"])
    seed(sim, 120)
    with pytest.raises(DialNexaMalformedResponseError, match="ignore 'page'"):
        list(hook.iter_calls(T0, T0 + timedelta(hours=1), page_size=50))
    assert list_requests(sim) == 2


# -- iter_calls: the half-open window -------------------------------------------------------------------


@pytest.mark.parametrize("ignores", [(), ("start_date", "end_date")])
def test_adjacent_windows_partition_the_calls(sim: Simulator, hook: DialNexaHook, ignores: tuple[str, ...]) -> None:
    edge = T0 + timedelta(hours=1)
    seed(sim, 1, start=edge, hours=1 / HOUR)  # created exactly on the edge (the simulator's filter is inclusive)
    seed(sim, 1, start=edge - timedelta(milliseconds=1), hours=0.0005 / HOUR)  # 1 ms before it
    seed(sim, 50, start=T0, hours=2)
    sim.configure(list_ignores=list(ignores))
    first = {r["id"]: created(r) for r in hook.iter_calls(T0, edge)}
    second = {r["id"]: created(r) for r in hook.iter_calls(edge, edge + timedelta(hours=1))}
    assert not set(first) & set(second)
    assert len(first) + len(second) == 52
    assert "2026-10-05T10:00:00.000Z" in second.values()
    assert "2026-10-05T09:59:59.999Z" in first.values()
    assert max(first.values()) < "2026-10-05T10:00:00.000Z" <= min(second.values())


def test_naive_datetimes_are_utc(sim: Simulator, hook: DialNexaHook) -> None:
    seed(sim, 20)
    naive = list(hook.iter_calls(T0.replace(tzinfo=None), (T0 + timedelta(hours=1)).replace(tzinfo=None)))
    ist = timezone_offset(5, 30)
    aware = list(hook.iter_calls(T0.astimezone(ist), (T0 + timedelta(hours=1)).astimezone(ist)))
    assert [r["id"] for r in naive] == [r["id"] for r in aware]
    assert len(naive) == 20


def timezone_offset(hours: int, minutes: int) -> Any:
    from datetime import timezone

    return timezone(timedelta(hours=hours, minutes=minutes))


# -- iter_calls: filters and bad input ------------------------------------------------------------------


def test_filters_reach_the_server_and_lists_become_comma_lists(sim: Simulator, hook: DialNexaHook) -> None:
    seed(sim, 200, batch_ids=4, inbound_share=0.3)
    window = (T0, T0 + timedelta(hours=1))
    everything = list(hook.iter_calls(*window))
    agents = sorted({r["agent_id"] for r in everything})[:2]
    cases: list[tuple[dict[str, Any], Any]] = [
        ({"agent_id": agents}, lambda r: r["agent_id"] in agents),
        ({"status": ["busy", "no-answer"]}, lambda r: r["status"] in ("busy", "no_answer")),
        ({"call_direction": "inbound"}, lambda r: r["call_direction"] == "inbound"),
        ({"batch_call_id": ("batch_sim0001",)}, lambda r: r.get("batch_id") == "batch_sim0001"),
    ]
    for filters, keep in cases:
        got = [r["id"] for r in hook.iter_calls(*window, **filters)]
        want = [r["id"] for r in everything if keep(r)]
        assert got == want, filters  # the client does not filter these: the server applied them
        assert 0 < len(got) < 200, filters


@pytest.mark.parametrize(
    ("args", "filters", "match"),
    [
        ((T0, T0), {}, "must be after its start"),
        ((T0 + timedelta(hours=1), T0), {}, "must be after its start"),
        (("yesterday", T0), {}, "ISO-8601"),
        ((T0, T0 + timedelta(hours=1)), {"agent": "a"}, "unknown List Calls filter 'agent'"),
        ((T0, T0 + timedelta(hours=1)), {"limit": 5}, "page_size"),
        ((T0, T0 + timedelta(hours=1)), {"status": []}, "empty list"),
        ((T0, T0 + timedelta(hours=1)), {"agent_id": "a,b"}, "comma-free"),
    ],
)
def test_bad_input_fails_before_any_request(
    sim: Simulator, hook: DialNexaHook, args: tuple[Any, Any], filters: dict[str, Any], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        next(hook.iter_calls(*args, **filters))
    assert sim.stats()["requests"] == 0


def test_the_status_counts_match_the_population(sim: Simulator, hook: DialNexaHook) -> None:
    seed(sim, 100, mix={"completed": 1, "busy": 1})
    counts = Counter(r["status"] for r in hook.iter_calls(T0, T0 + timedelta(hours=1)))
    assert set(counts) == {"completed", "busy"}
    assert sum(counts.values()) == 100
