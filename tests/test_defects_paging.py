"""Issue #17, paging and call placement: defects 1-4 and 10, each against the simulator over real sockets.

1. A correlation value the caller chose is looked up before the first POST: one call per value, across
   hook calls and DAG runs. 2. A List Calls item without a usable id never ends paging nor "proves" that no
   call exists. 3. A server that ignores ``limit`` or caps it anywhere loses nothing. 4. The same id twice on
   one page is yielded once. 10. Sub-millisecond window bounds follow one rule on both comparison paths.
The simulator plays each anomaly (``list_missing_id_every``, ``list_repeat_every``, ``list_ignores`` with
``list_default_limit``, ``list_cap``, ``created_style``), so the counts below are what a client really saw.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from _compat import AIRFLOW_V_3, dag_bag, return_values

from airflow_provider_dialnexa._placement import CORRELATION_KEY
from airflow_provider_dialnexa.exceptions import DialNexaMalformedResponseError, DialNexaUnconfirmedCallError
from airflow_provider_dialnexa.hooks.dialnexa import DialNexaHook, close_async_clients
from airflow_provider_dialnexa.operators.dialnexa import DialNexaCreateCallOperator, DialNexaExportCallsOperator
from airflow_provider_dialnexa.policy import RetryPolicy
from airflow_provider_dialnexa.simulator import Fault, Simulator

EXPORT_CONN = "dialnexa_export"
FAST = RetryPolicy(backoff_base=0.01, backoff_max=0.05, min_wait=0)
PHONE = "+14155550123"
AGENT = "agent_2g7Xy3tY53gRlp"
HOUR = 3600.0
#: A past hour the seeded calls live in (so every seeded call has ended).
T0 = datetime(2026, 10, 5, 9, 0, tzinfo=UTC)
WINDOW = (T0, T0 + timedelta(hours=1))


def _conn(url: str, api_key: str) -> str:
    extra = {"timeout": 5, "max_retries": 2, "rate_limit_per_minute": 0}
    return json.dumps({"conn_type": "dialnexa", "host": url, "password": api_key, "extra": extra})


@pytest.fixture
def sim(simulator: Simulator, api_key: str, monkeypatch: pytest.MonkeyPatch) -> Simulator:
    """The simulator behind ``dialnexa_default`` and ``dialnexa_export`` (no rate budget: quick paging)."""
    monkeypatch.setenv("AIRFLOW_CONN_DIALNEXA_DEFAULT", _conn(simulator.url, api_key))
    monkeypatch.setenv(f"AIRFLOW_CONN_{EXPORT_CONN.upper()}", _conn(simulator.url, api_key))
    return simulator


@pytest.fixture
def hook(sim: Simulator) -> Iterator[DialNexaHook]:
    result = DialNexaHook(retry_policy=FAST)
    yield result
    result.close()


def seed(sim: Simulator, n: int, start: datetime = T0, hours: float = 1.0) -> None:
    sim.seed_calls(n, start.timestamp(), start.timestamp() + hours * HOUR)


def lists(sim: Simulator) -> int:
    return len(sim.requests(route="list"))


def posts(sim: Simulator) -> int:
    return len(sim.requests(route="create"))


async def _alist(start: datetime, end: datetime) -> list[dict[str, Any]]:
    try:
        return [record async for record in DialNexaHook(EXPORT_CONN).aiter_calls(start, end)]
    finally:
        await close_async_clients()


def listed(sim: Simulator, how: str, start: datetime = WINDOW[0], end: datetime = WINDOW[1]) -> list[str]:
    """Ids ``iter_calls`` (sync) or ``aiter_calls`` (async) yields for the window."""
    if how == "async":
        return [r["id"] for r in asyncio.run(_alist(start, end))]
    hook = DialNexaHook(EXPORT_CONN)
    try:
        return [r["id"] for r in hook.iter_calls(start, end)]
    finally:
        hook.close()


def export(tmp_path: Path, name: str = "calls.jsonl") -> tuple[dict[str, Any], Path]:
    target = tmp_path / name
    op = DialNexaExportCallsOperator(
        task_id="export",
        destination=str(target),
        window_start=WINDOW[0].isoformat(),
        window_end=WINDOW[1].isoformat(),
        dialnexa_conn_id=EXPORT_CONN,
    )
    return op.execute({}), target


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- the simulator plays each anomaly -------------------------------------------------------------------


def test_the_simulator_plays_each_list_anomaly(sim: Simulator, hook: DialNexaHook) -> None:
    seed(sim, 45)

    def page(number: int, **query: str) -> list[dict[str, Any]]:
        params = {"created_at": "asc", "page": str(number), **query}
        return list(hook._get(hook.settings.calls_url, params=params, subject="t", call_id=None))

    sim.configure(list_ignores=["limit"], list_default_limit=20)
    assert [len(page(n, limit="200")) for n in (1, 2, 3, 4)] == [20, 20, 5, 0]
    sim.configure(list_ignores=[], list_cap=15)
    assert [len(page(n, limit="200")) for n in (1, 2, 3, 4)] == [15, 15, 15, 0]
    sim.configure(list_cap=0, list_repeat_every=10)
    first = [r["id"] for r in page(1, limit="20")]
    assert (len(first), len(set(first))) == (20, 19)
    assert first[9] == first[10]  # the same id twice on a page
    assert sum(len(page(n, limit="20")) for n in (1, 2, 3)) == 49  # 45 calls, 4 listed twice
    sim.configure(list_repeat_every=0, list_missing_id_every=7)
    assert ["id" in r for r in page(1, limit="10")] == [True] * 6 + [False] + [True] * 3
    assert ["id" in r for r in page(2, limit="10")][3] is False  # counted across pages: row 14
    sim.configure(list_missing_id_every=0, created_style="offset")
    assert page(1, limit="1")[0]["createdAt"] == "2026-10-05T09:00:00.000+00:00"


# -- 2. an item without a usable id ----------------------------------------------------------------------


@pytest.mark.parametrize("how", ["sync", "async"])
def test_an_item_without_an_id_fails_the_listing_instead_of_ending_it(sim: Simulator, how: str) -> None:
    # Row 150 has no id. Before: page 1 counted 199 usable records < 200, "the last page": 199 of 450, no error.
    seed(sim, 450)
    sim.configure(list_missing_id_every=150)
    with pytest.raises(DialNexaMalformedResponseError, match=r"page 1.*item 150 of 200.*no usable id"):
        listed(sim, how)


def test_the_export_fails_on_an_item_without_an_id_and_writes_nothing(sim: Simulator, tmp_path: Path) -> None:
    seed(sim, 450)
    sim.configure(list_missing_id_every=150)
    with pytest.raises(DialNexaMalformedResponseError, match="no usable id"):
        export(tmp_path)
    assert os.listdir(tmp_path) == []  # no partial file, no temporary left behind


# -- 3. a server that ignores `limit` or caps it -----------------------------------------------------------


@pytest.mark.parametrize(
    ("quirk", "requests"),
    [
        ({"list_ignores": ["limit"]}, 23),  # DialNexa's default page of 20: 22 full pages, 10, (no empty page)
        ({"list_ignores": ["limit"], "list_default_limit": 50}, 10),  # 9 full pages of 50, then an empty one
        ({"list_cap": 20}, 23),
        ({"list_cap": 150}, 4),  # 150, 150, 150, then an empty page
        ({"list_style": "envelope"}, 5),  # capped at 100 and said so in meta.limit: 100 x 4 + 50
    ],
)
def test_every_call_of_a_server_serving_smaller_pages(sim: Simulator, quirk: dict[str, Any], requests: int) -> None:
    seed(sim, 450)
    sim.configure(**quirk)
    ids = listed(sim, "sync")
    assert len(ids) == len(set(ids)) == 450  # before: 20 of 450 with pages of 20 (one short page "ended" it)
    assert lists(sim) == requests


def test_async_listing_and_the_export_keep_paging_through_pages_of_20(sim: Simulator, tmp_path: Path) -> None:
    seed(sim, 450)
    sim.configure(list_ignores=["limit"])
    assert len(set(listed(sim, "async"))) == 450
    result, target = export(tmp_path)
    assert result["calls"] == 450
    assert len({r["id"] for r in lines(target)}) == 450


def test_a_short_first_page_costs_one_request_to_prove_it_was_the_last(sim: Simulator) -> None:
    seed(sim, 99)  # the server honours limit=200: 99 is the whole window, but only the next page can prove it
    assert len(listed(sim, "sync")) == 99
    assert lists(sim) == 2


def test_a_page_longer_than_the_size_the_server_showed_fails_loudly(sim: Simulator) -> None:
    # Page 1 had 15 calls (of a 20-call page the server never announced); 30 more calls arrived before
    # page 2, which the server cut at its own 20: rows 16-20 were never served. Say so, never skip them.
    # aiter_calls asks for page 2 only when the 16th call is wanted (iter_calls would already read ahead).
    seed(sim, 15)
    sim.configure(list_ignores=["limit"])

    async def scenario() -> None:
        calls = DialNexaHook(EXPORT_CONN).aiter_calls(WINDOW[0], WINDOW[1])
        try:
            assert len([await anext(calls) for _ in range(15)]) == 15
            seed(sim, 30, start=T0 + timedelta(minutes=30), hours=0.4)
            with pytest.raises(DialNexaMalformedResponseError, match=r"page 2 holds 20 calls.*15"):
                await anext(calls)
        finally:
            await calls.aclose()
            await close_async_clients()

    asyncio.run(scenario())


# -- 4. the same id twice on one page ---------------------------------------------------------------------


@pytest.mark.parametrize("how", ["sync", "async"])
def test_an_id_listed_twice_on_one_page_is_yielded_once(sim: Simulator, how: str) -> None:
    seed(sim, 450)
    sim.configure(list_repeat_every=50)  # 9 calls listed twice (pages of 200 rows: 200, 200, 59)
    ids = listed(sim, how)
    assert len(ids) == len(set(ids)) == 450  # before: 459, the repeats yielded again


def test_the_export_writes_a_repeated_call_once(sim: Simulator, tmp_path: Path) -> None:
    seed(sim, 450)
    sim.configure(list_repeat_every=50)
    result, target = export(tmp_path)
    written = [r["id"] for r in lines(target)]
    assert result["calls"] == len(written) == len(set(written)) == 450


# -- 10. sub-millisecond window bounds ---------------------------------------------------------------------


@pytest.mark.parametrize("style", ["z", "offset"])  # "z" takes the text fast path, "offset" is parsed
def test_sub_millisecond_bounds_are_truncated_to_milliseconds_on_both_paths(sim: Simulator, style: str) -> None:
    edge = T0 + timedelta(minutes=10)
    seed(sim, 1, start=edge, hours=0.1)  # one call created at exactly 09:10:00.000
    sim.configure(created_style=style)
    half_ms = timedelta(microseconds=500)
    # Bounds are taken at DialNexa's precision (milliseconds, sub-ms digits dropped): the window
    # [09:10:00.0005, ...) starts at 09:10:00.000 and holds the call; [..., 09:10:00.0005) ends before it.
    assert len(listed(sim, "sync", edge + half_ms, WINDOW[1])) == 1
    assert listed(sim, "sync", WINDOW[0], edge + half_ms) == []
    assert len(listed(sim, "async", edge + half_ms, WINDOW[1])) == 1


# -- 1. a correlation value the caller chose -----------------------------------------------------------------


def test_the_hook_places_one_call_per_chosen_correlation_value(sim: Simulator, hook: DialNexaHook) -> None:
    first = hook.create_call(PHONE, AGENT, {"lead_id": "L-1"}, correlation_id="lead-L-1")
    sim.create_calls(30, agent_id=AGENT)  # the agent's other calls since
    second = DialNexaHook(retry_policy=FAST).create_call(PHONE, AGENT, {"lead_id": "L-1"}, correlation_id="lead-L-1")
    third = hook.create_call(PHONE, AGENT, {CORRELATION_KEY: "lead-L-1"})
    assert first["id"] == second["id"] == third["id"]
    assert sim.calls_by_metadata() == {"lead-L-1": 1}  # before: 3 calls
    assert posts(sim) == 1


def test_a_random_value_needs_no_search(sim: Simulator, hook: DialNexaHook) -> None:
    hook.create_call(PHONE, AGENT)
    hook.create_call(PHONE, AGENT)
    assert (posts(sim), lists(sim)) == (2, 0)


def test_a_chosen_value_is_searched_in_the_agents_whole_history(sim: Simulator, hook: DialNexaHook) -> None:
    # Placed three days ago by another run; without placed_after nothing bounds where it can be.
    old = sim.create_call(agent_id=AGENT, to_number=PHONE, metadata={CORRELATION_KEY: "lead-L-2"}, age_s=3 * 86400)
    sim.create_calls(250, agent_id=AGENT)
    sim.configure(list_ignores=["limit"])  # pages of 20: the old call is on page 13
    assert hook.create_call(PHONE, AGENT, correlation_id="lead-L-2")["id"] == old
    assert posts(sim) == 0
    assert lists(sim) == 13


def test_placed_after_bounds_the_search_for_a_chosen_value(sim: Simulator, hook: DialNexaHook) -> None:
    # The caller states that no call with this value is older than an hour ago; the search reaches back
    # to that minus a day (LOOKUP_MARGIN), so a three-day-old call is not seen, and a new call is placed.
    sim.create_call(agent_id=AGENT, to_number=PHONE, metadata={CORRELATION_KEY: "lead-L-3"}, age_s=3 * 86400)
    hook.create_call(PHONE, AGENT, correlation_id="lead-L-3", placed_after=datetime.now(UTC) - timedelta(hours=1))
    assert sim.calls_by_metadata() == {"lead-L-3": 2}


def test_a_search_too_long_to_finish_fails_loudly_and_names_the_way_out(
    sim: Simulator, hook: DialNexaHook, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow_provider_dialnexa import _placement

    monkeypatch.setattr(_placement, "MAX_LOOKUP_PAGES", 2)
    sim.create_calls(250, agent_id=AGENT)
    with pytest.raises(DialNexaUnconfirmedCallError, match=r"placed_after") as info:
        hook.create_call(PHONE, AGENT, correlation_id="lead-L-4")
    assert "lead-L-4" in str(info.value)
    assert PHONE not in str(info.value)
    assert (posts(sim), lists(sim)) == (0, 2)


def test_the_lookup_keeps_paging_through_pages_of_20(sim: Simulator, hook: DialNexaHook) -> None:
    # Before: the lookup read one page of 20, took it for the last (20 < 100) and placed a second call.
    earlier = hook.create_call(PHONE, AGENT, correlation_id="lead-L-5")
    sim.create_calls(70, agent_id=AGENT)
    sim.configure(list_ignores=["limit"])
    again = hook.create_call(PHONE, AGENT, correlation_id="lead-L-5", adopt_existing=True)
    assert again["id"] == earlier["id"]
    assert sim.calls_by_metadata() == {"lead-L-5": 1}


def test_the_lookup_reads_past_an_item_without_an_id(sim: Simulator, hook: DialNexaHook) -> None:
    # Before: page 1 held 98 usable records (< 100, "the last page") and a second call was placed.
    earlier = hook.create_call(PHONE, AGENT, correlation_id="lead-L-6")
    sim.create_calls(150, agent_id=AGENT)
    sim.configure(list_missing_id_every=50)
    again = hook.create_call(PHONE, AGENT, correlation_id="lead-L-6", adopt_existing=True)
    assert again["id"] == earlier["id"]  # found on page 2: a found call needs no proof
    assert sim.calls_by_metadata() == {"lead-L-6": 1}


def test_an_item_without_an_id_proves_nothing_so_nothing_is_placed(sim: Simulator, hook: DialNexaHook) -> None:
    sim.create_calls(150, agent_id=AGENT)
    sim.configure(list_missing_id_every=50)
    with pytest.raises(DialNexaUnconfirmedCallError, match=r"no usable id") as info:
        hook.create_call(PHONE, AGENT, correlation_id="lead-L-7", adopt_existing=True)
    assert "lead-L-7" in str(info.value)
    assert posts(sim) == 0  # before: the search "proved" no call and the POST went out


def test_after_an_ambiguous_post_an_unreadable_search_never_re_posts(sim: Simulator, hook: DialNexaHook) -> None:
    sim.create_calls(150, agent_id=AGENT)
    sim.add_fault(Fault(kind="503", route="create", count=1))  # refused: nothing placed, but who knows
    sim.configure(list_missing_id_every=50)
    with pytest.raises(DialNexaUnconfirmedCallError, match="no usable id"):
        hook.create_call(PHONE, AGENT, adopt_existing=False)
    assert posts(sim) == 1


def _context(run_id: str, try_number: int = 1) -> Any:
    ti = SimpleNamespace(dag_id="leads", run_id=run_id, task_id="place_call", map_index=-1, try_number=try_number)
    return {"ti": ti, "dag_run": SimpleNamespace(run_after=datetime.now(UTC))}


def test_the_operator_places_one_call_per_chosen_value_across_runs(sim: Simulator) -> None:
    def place(run_id: str) -> dict[str, Any]:
        metadata = {"lead_id": "L-8", CORRELATION_KEY: "lead-L-8-2026-10-05"}
        op = DialNexaCreateCallOperator(task_id="place_call", phone_number=PHONE, agent_id=AGENT, metadata=metadata)
        return op.execute(_context(run_id))

    first = place("scheduled__2026-10-05T09:00:00+00:00")
    sim.create_calls(40, agent_id=AGENT)
    second = place("manual__2026-10-05T17:30:00+00:00")  # a second run, its first try
    assert first["call_id"] == second["call_id"]
    assert sim.calls_by_metadata() == {"lead-L-8-2026-10-05": 1}  # before: 2 calls


def test_the_operators_placed_after_bounds_the_search_and_is_checked_at_parse_time(sim: Simulator) -> None:
    sim.create_call(agent_id=AGENT, to_number=PHONE, metadata={CORRELATION_KEY: "lead-L-10"}, age_s=3 * 86400)
    op = DialNexaCreateCallOperator(
        task_id="place_call",
        phone_number=PHONE,
        agent_id=AGENT,
        metadata={CORRELATION_KEY: "lead-L-10"},
        placed_after="{{ data_interval_start }}",
    )
    op.placed_after = (datetime.now(UTC) - timedelta(hours=1)).isoformat()  # what the template renders to
    op.execute(_context("manual__1"))
    assert sim.calls_by_metadata() == {"lead-L-10": 2}  # the bound the DAG gave: the old call is not looked at
    with pytest.raises(ValueError, match=r"'place_call'.*placed_after must be a datetime"):
        DialNexaCreateCallOperator(task_id="place_call", phone_number=PHONE, agent_id=AGENT, placed_after="today")


def test_a_generated_value_is_not_searched_on_the_first_try(sim: Simulator) -> None:
    op = DialNexaCreateCallOperator(task_id="place_call", phone_number=PHONE, agent_id=AGENT)
    op.execute(_context("manual__1"))
    assert (posts(sim), lists(sim)) == (1, 0)


def test_two_dag_runs_with_the_same_chosen_value_place_one_call(sim: Simulator, airflow_db: Path) -> None:
    bag = dag_bag(str(airflow_db))
    assert bag.import_errors == {}
    placed = []
    for day in (1, 2):  # two runs (different logical dates), the same lead and day in their conf
        when = datetime(2026, 10, day, 9, 0, tzinfo=UTC)
        when_kwargs: dict[str, Any] = {"logical_date" if AIRFLOW_V_3 else "execution_date": when}
        run = bag.dags["dialnexa_create_per_lead"].test(run_conf={"lead_id": "L-9", "day": "2026-10-05"}, **when_kwargs)
        assert str(run.state) == "success"
        placed.append(return_values(run.run_id, "dialnexa_create_per_lead")["place_call"][-1]["call_id"])
    assert placed[0] == placed[1]
    assert sim.calls_by_metadata() == {"lead-L-9-2026-10-05": 1}  # before: 2 calls
    assert posts(sim) == 1
