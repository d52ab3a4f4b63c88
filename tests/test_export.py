"""Scheduled call-outcome export (issue #10): ``DialNexaHook.iter_calls``, the export operator and its window
trigger, against the embedded simulator over real sockets; the deferral runs through a real ``dag.test()``.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from _compat import AIRFLOW_V_3, capture_logs, dag_bag, return_values
from airflow.providers.common.compat.sdk import TaskDeferred

from airflow_provider_dialnexa import status as call_status
from airflow_provider_dialnexa._paging import as_utc, iso_utc
from airflow_provider_dialnexa.exceptions import (
    DialNexaAuthError,
    DialNexaConfigError,
    DialNexaError,
    DialNexaMalformedResponseError,
    DialNexaWaitTimeoutError,
)
from airflow_provider_dialnexa.hooks.dialnexa import DialNexaHook, close_async_clients
from airflow_provider_dialnexa.operators.dialnexa import DialNexaExportCallsOperator
from airflow_provider_dialnexa.simulator import Fault, Simulator
from airflow_provider_dialnexa.simulator.app import HUNG_UP
from airflow_provider_dialnexa.triggers.dialnexa import DialNexaWindowTrigger

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


# 99: a short first page the server said nothing about; only the next (empty) page proves it was the last.
@pytest.mark.parametrize(("n", "requests"), [(250, 3), (100, 2), (99, 2), (0, 1)])
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
        ({"status": "busy, no_answer"}, lambda r: r["status"] in ("busy", "no_answer")),
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
        ((T0, T0 + timedelta(hours=1)), {"agent_id": "a,,b"}, "comma-free"),
        ((T0, T0 + timedelta(hours=1)), {"status": None, "sentiment": {"x": 1}}, "unusable value"),
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


# -- the operator ---------------------------------------------------------------------------------------

WINDOW = {"window_start": T0.isoformat(), "window_end": (T0 + timedelta(hours=1)).isoformat()}


def export_op(destination: Any, **kwargs: Any) -> DialNexaExportCallsOperator:
    kwargs.setdefault("task_id", "export")
    for name, value in WINDOW.items():
        kwargs.setdefault(name, value)
    return DialNexaExportCallsOperator(destination=str(destination), dialnexa_conn_id=CONN_ID, **kwargs)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        data = gzip.decompress(data)
    return [json.loads(line) for line in data.decode().splitlines()]


def test_exports_the_window_to_jsonl_and_returns_a_small_summary(sim: Simulator, tmp_path: Path) -> None:
    seed(sim, 250, mix={"completed": 3, "busy": 1})
    seed(sim, 20, start=T0 + timedelta(hours=1))
    target = tmp_path / "out" / "calls.jsonl"  # the folder does not exist yet
    result = export_op(target).execute({})
    records = read_jsonl(target)
    assert len(records) == 250
    assert [created(r) for r in records] == sorted(created(r) for r in records)
    assert result == {
        "path": str(target),
        "calls": 250,
        "statuses": dict(Counter(r["status"] for r in records)),
        "window_start": "2026-10-05T09:00:00.000Z",
        "window_end": "2026-10-05T10:00:00.000Z",
    }
    assert any(r.get("transcript") for r in records)
    assert os.listdir(target.parent) == ["calls.jsonl"]  # no temporary object left behind


def test_window_defaults_to_the_data_interval(sim: Simulator, tmp_path: Path) -> None:
    seed(sim, 10)
    seed(sim, 10, start=T0 + timedelta(hours=1))
    target = tmp_path / "calls.jsonl"
    context: Any = {"data_interval_start": T0, "data_interval_end": T0 + timedelta(hours=1)}
    op = DialNexaExportCallsOperator(task_id="export", destination=str(target), dialnexa_conn_id=CONN_ID)
    assert op.execute(context)["calls"] == 10
    with pytest.raises(ValueError, match="no window_start"):
        op.execute({"data_interval_start": None, "data_interval_end": None})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="CronDataIntervalTimetable"):  # Airflow 3's default for cron strings
        op.execute({"data_interval_start": T0, "data_interval_end": T0})  # type: ignore[typeddict-item]
    assert sim.stats()["by_route"] == {"list": 2}  # 10 calls, then the empty page that proves it was all


def test_gzip_shaping_and_an_identical_rerun(sim: Simulator, tmp_path: Path) -> None:
    seed(sim, 120)
    target = tmp_path / "calls.jsonl.gz"
    op = export_op(target, exclude_fields=["transcript", "summary"], mask_phone_numbers=True)
    first = op.execute({})
    content = target.read_bytes()
    records = read_jsonl(target)
    assert len(records) == first["calls"] == 120
    assert not any("transcript" in r or "summary" in r for r in records)
    assert all(r["to_number"].count("*") >= 3 for r in records)
    assert op.execute({}) == first
    assert target.read_bytes() == content  # same calls, same bytes (gzip header has no timestamp)
    assert sorted(os.listdir(tmp_path)) == ["calls.jsonl.gz"]
    only = read_jsonl(_export_to(tmp_path / "ids.jsonl", include_fields=["id", "status"]))
    assert {tuple(sorted(r)) for r in only} == {("id", "status")}


def _export_to(target: Path, **kwargs: Any) -> Path:
    export_op(target, **kwargs).execute({})
    return target


def test_a_run_failing_mid_way_leaves_the_previous_file_untouched(sim: Simulator, tmp_path: Path) -> None:
    seed(sim, 450)
    target = tmp_path / "calls.jsonl"
    target.write_text('{"id": "call_previous_run"}\n')
    sim.configure(list_ignores=["page"])  # page 2 repeats page 1: the hook stops with an error mid-way
    with pytest.raises(DialNexaMalformedResponseError):
        export_op(target).execute({})
    assert list_requests(sim) == 2  # it did write the first page before failing
    assert target.read_text() == '{"id": "call_previous_run"}\n'
    assert os.listdir(tmp_path) == ["calls.jsonl"]


def test_an_unwritable_destination_fails_before_any_request(sim: Simulator, tmp_path: Path) -> None:
    seed(sim, 5)
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    with pytest.raises(DialNexaConfigError, match="cannot write next to destination"):
        export_op(blocker / "calls.jsonl").execute({})
    assert sim.stats()["requests"] == 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"window_start": "2026-10-05T10:00:00Z", "window_end": "2026-10-05T09:00:00Z"}, "must be after its start"),
        ({"filters": {"agentid": "a"}}, "unknown List Calls filter 'agentid'"),
        ({"filters": {"start_date": "2026-10-05"}}, "window_start/window_end"),
        ({"on_timeout": "skip"}, "on_timeout must be one of"),
        ({"include_fields": ["id"], "exclude_fields": ["transcript"]}, "not both"),
        ({"page_size": 500}, "page_size"),
    ],
)
def test_bad_arguments_fail_at_parse_time(tmp_path: Path, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        export_op(tmp_path / "calls.jsonl", **kwargs)


def test_a_templated_window_is_checked_before_any_request(sim: Simulator, tmp_path: Path) -> None:
    op = export_op(tmp_path / "c.jsonl", window_start="{{ params.a }}", window_end="{{ params.b }}")
    op.window_start, op.window_end = "2026-10-05T10:00:00Z", "2026-10-05T10:00:00Z"  # as rendered
    with pytest.raises(ValueError, match="must be after its start"):
        op.execute({})
    assert sim.stats()["requests"] == 0


def test_a_fixed_destination_is_the_tasks_outlet_asset(tmp_path: Path) -> None:
    op = export_op(tmp_path / "calls.jsonl")
    assert [getattr(a, "uri", None) for a in op.outlets] == [f"file://{tmp_path / 'calls.jsonl'}"]
    assert export_op("s3://bucket/calls/{{ ds }}.jsonl").outlets == []


# -- waiting for running calls: the window trigger ------------------------------------------------------


def running_call(sim: Simulator) -> str:
    """A call that rings for an hour (``initiated``) until a test ends it with ``set_status``."""
    return sim.create_call(outcome="completed", queued_s=0, ring_s=3600, talk_s=0)


def live_window() -> dict[str, str]:
    now = datetime.now(UTC)
    return {
        "window_start": (now - timedelta(hours=1)).isoformat(),
        "window_end": (now + timedelta(hours=1)).isoformat(),
    }


def deferred_trigger(op: DialNexaExportCallsOperator) -> DialNexaWindowTrigger:
    with pytest.raises(TaskDeferred) as deferred:
        op.execute({})
    trigger = deferred.value.trigger
    assert isinstance(trigger, DialNexaWindowTrigger)
    assert deferred.value.method_name == "execute_complete"
    return trigger


async def _first_event(
    trigger: DialNexaWindowTrigger, sim: Simulator, then: Callable[[], None] | None, when: Callable[[], bool] | None
) -> Any:
    """Run the trigger to its event; ``then`` runs once ``when`` holds (default: the first List Calls request)."""
    before = list_requests(sim)
    ready = when or (lambda: list_requests(sim) > before)
    pending = asyncio.ensure_future(anext(trigger.run()))
    try:
        if then is not None:
            while not ready() and not pending.done():
                await asyncio.sleep(0.02)  # waits on an observable event (a request), not on a time margin
            then()
        return (await pending).payload
    finally:
        await close_async_clients()


def run_trigger(
    trigger: DialNexaWindowTrigger,
    sim: Simulator,
    then: Callable[[], None] | None = None,
    when: Callable[[], bool] | None = None,
) -> Any:
    _, kwargs = trigger.serialize()
    assert json.loads(json.dumps(kwargs)) == kwargs  # primitives only: survives serde
    rebuilt = DialNexaWindowTrigger(**kwargs)
    return asyncio.run(_first_event(rebuilt, sim, then, when))


def test_running_calls_defer_with_nothing_written(sim: Simulator, tmp_path: Path) -> None:
    seed(sim, 30, start=datetime.now(UTC) - timedelta(minutes=50), hours=0.5)
    running_call(sim)
    target = tmp_path / "calls.jsonl"
    trigger = deferred_trigger(export_op(target, **live_window(), filters={"call_direction": ["outbound", "inbound"]}))
    _, kwargs = trigger.serialize()
    assert kwargs["filters"] == {"call_direction": ["outbound", "inbound"]}
    assert kwargs["mode"] == "status"
    assert kwargs["end_time"] > time.time()
    assert os.listdir(tmp_path) == []


def test_the_trigger_polls_the_running_status_and_the_task_then_exports(sim: Simulator, tmp_path: Path) -> None:
    seed(sim, 30, start=datetime.now(UTC) - timedelta(minutes=50), hours=0.5)
    call_id = running_call(sim)
    target = tmp_path / "calls.jsonl"
    op = export_op(target, **live_window(), poll_interval=1, max_poll_interval=1)
    trigger = deferred_trigger(op)
    first_list = list_requests(sim)

    event = run_trigger(trigger, sim, then=lambda: sim.set_status(call_id, "completed"))

    assert event["event"] == "success"
    assert event["mode"] == "status"
    polls = list_requests(sim) - first_list
    assert polls == event["polls"]  # one small request per poll, however many calls the window holds
    result = op.execute_complete({}, event)
    assert result["calls"] == 31
    assert set(result["statuses"]) <= {
        "completed",
        "busy",
        "no_answer",
        "failed",
        "did_not_pick",
        "voicemail",
        "cancelled",
    }
    assert call_id in {r["id"] for r in read_jsonl(target)}


def test_a_server_ignoring_the_status_filter_falls_back_to_polling_by_id(sim: Simulator, tmp_path: Path) -> None:
    sim.configure(list_ignores=["status"])
    seed(sim, 30, start=datetime.now(UTC) - timedelta(minutes=50), hours=0.5)  # ended calls come first
    call_id = running_call(sim)
    trigger = deferred_trigger(export_op(tmp_path / "c.jsonl", **live_window(), poll_interval=1, max_poll_interval=1))
    with capture_logs() as logs:
        # End the call only once it has been polled by id (batched List Calls naming just that id).
        polled_by_id = lambda: any(e.call_ids == (call_id,) for e in sim.requests(route="list"))  # noqa: E731
        event = run_trigger(trigger, sim, then=lambda: sim.set_status(call_id, "busy"), when=polled_by_id)
    assert event["event"] == "success"
    assert event["mode"] == "per_call"
    assert any("does not apply the status filter" in str(e.get("event")) for e in logs)
    by_id = [e for e in sim.requests(route="list") if e.call_ids == (call_id,)]
    assert len(by_id) >= 2  # polled by id (batched List Calls) until it ended, not by re-listing the window


def test_success_while_a_call_still_runs_waits_again_by_id(sim: Simulator, tmp_path: Path) -> None:
    running_call(sim)
    window = live_window()
    op = export_op(tmp_path / "c.jsonl", **window)
    event = {"event": "success", **_iso(window), "end_time": time.time() + 600, "mode": "status"}
    with pytest.raises(TaskDeferred) as deferred:
        op.execute_complete({}, event)
    assert deferred.value.trigger.serialize()[1]["mode"] == "per_call"
    assert deferred.value.trigger.serialize()[1]["end_time"] == event["end_time"]  # the same deadline


def _iso(window: dict[str, str]) -> dict[str, str]:
    return {k: iso_utc(as_utc(v, k)) for k, v in window.items()}


def test_timeout_says_how_many_calls_still_run_and_what_to_do(sim: Simulator, tmp_path: Path) -> None:
    seed(sim, 5, start=datetime.now(UTC) - timedelta(minutes=50), hours=0.5)
    running = [running_call(sim), running_call(sim)]
    window = live_window()
    target = tmp_path / "calls.jsonl"
    trigger = deferred_trigger(export_op(target, **window))
    trigger.end_time = time.time() - 1  # the deadline has passed
    event = run_trigger(trigger, sim)
    assert event["event"] == "timeout"

    with pytest.raises(DialNexaWaitTimeoutError) as failed:
        export_op(target, **window).execute_complete({}, event)
    message = str(failed.value)
    assert "2 call(s)" in message
    assert running[0] in message
    assert "on_timeout='export'" in message
    assert os.listdir(tmp_path) == []

    everything = export_op(target, **window, on_timeout="export").execute_complete({}, event)
    assert everything["calls"] == 7
    assert everything["statuses"]["initiated"] == 2
    ended = export_op(target, **window, on_timeout="export_ended").execute_complete({}, event)
    assert ended["calls"] == 5
    assert ended["running_left_out"] == 2
    assert not set(running) & {r["id"] for r in read_jsonl(target)}


def test_the_deadline_ends_the_wait_while_a_window_read_is_in_flight(sim: Simulator, tmp_path: Path) -> None:
    """The window's List Calls never answers in time; the wait's deadline (2 s away) ends it, not an answer."""
    running_call(sim)
    trigger = deferred_trigger(export_op(tmp_path / "calls.jsonl", **live_window(), poll_interval=1))
    listed = list_requests(sim)  # the task's own listing, before it deferred
    sim.add_fault(Fault("slow", route="list", delay_s=3600))  # held until the client hangs up
    trigger.end_time = time.time() + 2
    event = asyncio.run(asyncio.wait_for(_first_event(trigger, sim, None, None), timeout=20))
    assert event["event"] == "timeout"
    # No answer came back: the held read is logged only once the trigger's client hung up, as such.
    assert [r.status_code for r in sim.requests(route="list")][listed:] in ([], [HUNG_UP])


def test_error_and_foreign_events_fail_loudly(sim: Simulator, tmp_path: Path) -> None:
    window = live_window()
    op = export_op(tmp_path / "c.jsonl", **window)
    with pytest.raises(DialNexaAuthError, match="bad key"):
        op.execute_complete({}, {"event": "error", **_iso(window), "kind": "auth", "message": "bad key"})
    with pytest.raises(DialNexaError, match="unexpected trigger event"):
        op.execute_complete({}, None)
    other = {"event": "success", "window_start": "2020-01-01T00:00:00.000Z", "window_end": "2020-01-01T01:00:00.000Z"}
    with pytest.raises(DialNexaError, match="clear the task"):
        op.execute_complete({}, other)
    assert sim.stats()["requests"] == 0


# -- dag.test(): the deferral inside a real DAG run -----------------------------------------------------


def run_dag(dags: Path, dag_id: str, **test_kwargs: Any) -> tuple[Any, dict[str, Any]]:
    """``dag.test()`` the DAG; return the run and its ``return_value`` XComs by task id (unmapped tasks)."""
    bag = dag_bag(str(dags))
    assert bag.import_errors == {}
    run = bag.dags[dag_id].test(**test_kwargs)
    return run, {task_id: by_index[-1] for task_id, by_index in return_values(run.run_id, dag_id).items()}


def test_a_real_dag_run_defers_until_the_calls_end_then_exports(
    sim: Simulator, airflow_db: Path, tmp_path: Path
) -> None:
    seed(sim, 40, start=datetime.now(UTC) - timedelta(minutes=50), hours=0.5)
    ringing = running_call(sim)

    def end_after_the_first_status_poll() -> None:  # the task listed once, then the trigger polled once
        deadline = time.monotonic() + 120
        while list_requests(sim) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        sim.set_status(ringing, "no_answer")

    ender = threading.Thread(target=end_after_the_first_status_poll, daemon=True)
    ender.start()
    target = tmp_path / "calls.jsonl.gz"
    run, xcoms = run_dag(airflow_db, "dialnexa_export_window", run_conf={**live_window(), "destination": str(target)})
    assert str(run.state) == "success"
    result = xcoms["export"]
    assert result["calls"] == 41
    assert all(call_status.is_terminal(status) for status in result["statuses"])
    assert {r["id"]: r["status"] for r in read_jsonl(target)}[ringing] == "no_answer"
    status_polls = [e for e in sim.requests(route="list") if not e.call_ids]
    assert len(status_polls) >= 3  # the first listing, at least one running-status poll, the export
    ender.join(5)


def test_the_example_dag_exports_and_loads_adjacent_hours_exactly_once(
    sim: Simulator, airflow_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, api_key: str
) -> None:
    import sqlite3

    monkeypatch.setenv(
        "AIRFLOW_CONN_DIALNEXA_DEFAULT",
        json.dumps({"conn_type": "dialnexa", "host": sim.url, "password": api_key, "extra": {"timeout": 5}}),
    )
    seed(sim, 90, start=T0, hours=2)  # 45 an hour, one of them exactly at 10:00:00.000
    table = tmp_path / "outcomes.db"
    conf = {"export_dir": str(tmp_path / "exports"), "sqlite_path": str(table)}
    loads = []
    for hour in (T0, T0 + timedelta(hours=1), T0):  # the last run repeats the first hour
        # A manual run at a boundary covers the hour before it.
        when = {"logical_date" if AIRFLOW_V_3 else "execution_date": hour + timedelta(hours=1)}
        run, xcoms = run_dag(airflow_db, "dialnexa_call_export", run_conf=conf, **when)
        assert str(run.state) == "success"
        loads.append(xcoms["load"])
    assert [(x["window_start"], x["calls"], x["rows"]) for x in loads] == [
        ("2026-10-05T09:00:00.000Z", 45, 45),
        ("2026-10-05T10:00:00.000Z", 45, 45),
        ("2026-10-05T09:00:00.000Z", 45, 45),
    ]
    assert sorted(os.listdir(tmp_path / "exports")) == ["calls_20261005T0900.jsonl.gz", "calls_20261005T1000.jsonl.gz"]
    with sqlite3.connect(table) as db:
        assert db.execute("SELECT COUNT(*), COUNT(DISTINCT call_id) FROM call_outcomes").fetchone() == (90, 90)


def test_a_status_filter_of_ended_statuses_never_waits(sim: Simulator, tmp_path: Path) -> None:
    seed(sim, 20, start=datetime.now(UTC) - timedelta(minutes=50), hours=0.5, mix={"completed": 1, "busy": 1})
    running_call(sim)
    op = export_op(tmp_path / "c.jsonl", **live_window(), filters={"status": "completed,busy"})
    result = op.execute({})  # no TaskDeferred: no call the filter lets through can still be running
    assert result["calls"] == 20
    assert set(result["statuses"]) == {"completed", "busy"}
    mixed = export_op(tmp_path / "d.jsonl", **live_window(), filters={"status": ["completed", "initiated"]})
    assert deferred_trigger(mixed).serialize()[1]["running_statuses"] == ["initiated"]


# -- WindowPager on bodies no simulator quirk produces --------------------------------------------------


def _pager(size: int = 3) -> Any:
    from airflow_provider_dialnexa._connection import ConnectionSettings
    from airflow_provider_dialnexa._paging import WindowPager

    settings = ConnectionSettings(conn_id="c", base_url="http://x", api_key="k:s")
    return WindowPager(T0, T0 + timedelta(hours=1), {}, size, settings)


def test_creation_times_in_other_iso_forms_and_epochs_are_placed_exactly() -> None:
    pager = _pager(size=10)
    body = [
        {"id": "call_offset", "createdAt": "2026-10-05T10:30:00+01:00"},  # 09:30 UTC: inside
        {"id": "call_naive", "created_at": "2026-10-05T09:59:59.999999"},  # naive = UTC: inside
        {"id": "call_epoch_ms", "createdAt": int((T0 + timedelta(minutes=5)).timestamp() * 1000)},  # inside
        {"id": "call_epoch_s", "created_at": (T0 - timedelta(seconds=1)).timestamp()},  # before
        {"id": "call_edge", "createdAt": "2026-10-05T10:00:00Z"},  # the end: the next window's
    ]
    assert [r["id"] for r in pager.take(body)] == ["call_offset", "call_naive", "call_epoch_ms"]
    assert not pager.done  # 5 of 10 asked: maybe the server's own page size; the next page tells
    assert pager.take([]) == []
    assert pager.done


def test_a_record_without_a_creation_time_fails_with_its_id() -> None:
    with pytest.raises(DialNexaMalformedResponseError, match=r"call_nodate.*createdAt/created_at"):
        _pager().take([{"id": "call_nodate", "status": "completed"}])


def test_the_envelope_limit_and_total_shape_the_paging() -> None:
    pager = _pager(size=200)
    page = [{"id": f"call_{i}", "createdAt": "2026-10-05T09:00:00.000Z"} for i in range(100)]
    pager.take({"data": page, "meta": {"page": 1, "limit": "100", "total": 150}})
    assert (pager.size, pager.page, pager.done) == (100, 2, False)  # continue at the server's 100
    assert pager.params()["limit"] == "100"
    assert pager.params()["start_date"] == "2026-10-05T08:59:59.000Z"  # one second wider than asked
    assert pager.params()["end_date"] == "2026-10-05T10:00:01.000Z"
    rest = [{**r, "id": f"call_next_{i}"} for i, r in enumerate(page[:50])]
    assert len(pager.take({"items": rest, "total": 150, "limit": 100, "page": 2})) == 50  # another envelope
    assert pager.done
