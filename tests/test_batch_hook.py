"""Batch calls through DialNexaHook (issue #20): leads checks, exactly-once upload, reads, paging, state changes.

Everything runs against the embedded simulator over real sockets. "Nothing was uploaded" is checked in the
simulator's request log; "exactly once" by counting the batches the simulator holds per title.
"""

from __future__ import annotations

import builtins
import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_dialnexa import _batches
from airflow_provider_dialnexa._batches import MAX_USER_TITLE, batch_title, correlation_token
from airflow_provider_dialnexa._leads import MultipartBody, prepare_leads
from airflow_provider_dialnexa.exceptions import (
    DialNexaBadRequestError,
    DialNexaMalformedResponseError,
    DialNexaNotFoundError,
    DialNexaUnconfirmedBatchError,
    InvalidCallIdError,
    InvalidLeadsError,
)
from airflow_provider_dialnexa.hooks.dialnexa import DialNexaHook
from airflow_provider_dialnexa.policy import RetryPolicy
from airflow_provider_dialnexa.simulator import Fault, Simulator

FAST = RetryPolicy(backoff_base=0.01, backoff_max=0.05, min_wait=0)
AGENT = "agent_2g7Xy3tY53gRlp"
#: Faults after which the batch exists but the client never saw the answer (or saw a broken one).
LOST = ("reset", "lost_502", "lost_504", "html_200", "truncated_json", "not_object", "no_id")
#: Faults answered before the batch was created.
REFUSED = ("500", "502_html", "503", "504")


def leads(n: int = 5, start: int = 0) -> list[dict[str, str]]:
    return [{"phone_number": f"+1415555{i:04d}", "lead_id": f"L-{i}"} for i in range(start, start + n)]


def write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str] | None = None) -> Path:
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns or list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture
def sim(dialnexa_conn: Simulator, api_key: str, monkeypatch: pytest.MonkeyPatch) -> Simulator:
    conn = {
        "conn_type": "dialnexa",
        "host": dialnexa_conn.url,
        "password": api_key,
        "extra": {"timeout": 5, "max_retries": 3, "rate_limit_per_minute": 0},
    }
    monkeypatch.setenv("AIRFLOW_CONN_DIALNEXA_DEFAULT", json.dumps(conn))
    return dialnexa_conn


@pytest.fixture
def hook(sim: Simulator) -> Iterator[DialNexaHook]:
    result = DialNexaHook(retry_policy=FAST)
    yield result
    result.close()


def uploads(sim: Simulator) -> int:
    return len(sim.requests(route="batch_create"))


def titled(sim: Simulator, title: str) -> list[dict[str, Any]]:
    return [b for b in sim.batches() if b["title"] == title]


def create(hook: DialNexaHook, rows: Any = None, correlation: str = "corr-1", **kwargs: Any) -> dict[str, Any]:
    return hook.create_batch_call(
        leads() if rows is None else rows, "Renewals", AGENT, correlation_id=correlation, **kwargs
    )


# -- leads are checked before anything is uploaded --------------------------------------------------------


def test_rows_become_a_csv_upload_with_the_other_columns_as_variables(sim: Simulator, hook: DialNexaHook) -> None:
    created = create(hook)

    assert created["total_records"] == 5
    assert created["title"] == batch_title("Renewals", "corr-1")
    sim.advance_clock(3600)
    calls = list(hook.iter_batch_calls(created["id"]))
    assert {c["metadata"]["lead_id"] for c in calls} == {f"L-{i}" for i in range(5)}
    assert uploads(sim) == 1


def test_a_file_without_a_phone_number_column_is_refused_before_upload(
    sim: Simulator, hook: DialNexaHook, tmp_path: Path
) -> None:
    path = write_csv(tmp_path / "leads.csv", [{"Phone_Number": "+14155550101", "name": "A"}])
    with pytest.raises(InvalidLeadsError, match=r"no 'phone_number' column \(found 'Phone_Number'"):
        create(hook, path)
    assert sim.stats()["requests"] == 0


def test_bad_numbers_are_named_by_row_masked_and_nothing_is_uploaded(
    sim: Simulator, hook: DialNexaHook, tmp_path: Path
) -> None:
    rows = leads(3)
    rows += [{"phone_number": "4155550123", "lead_id": "x"}, {"phone_number": "", "lead_id": "y"}]
    rows += [{"phone_number": f"+1 415 555 {i:04d}", "lead_id": "z"} for i in range(6)]
    path = write_csv(tmp_path / "leads.csv", rows)

    with pytest.raises(InvalidLeadsError) as info:
        create(hook, path)

    message = str(info.value)
    assert "8 of 11 rows" in message
    assert "row 5 (41****0123)" in message  # header is row 1, as a spreadsheet shows it
    assert "row 6 (empty)" in message
    assert "and 3 more" in message
    assert "4155550123" not in message
    assert "555 0000" not in message
    assert sim.stats()["requests"] == 0


def test_rows_with_different_keys_and_an_empty_list_are_refused(sim: Simulator, hook: DialNexaHook) -> None:
    with pytest.raises(InvalidLeadsError, match="columns the first row lacks"):
        create(hook, [*leads(1), {"phone_number": "+14155550199", "extra": "x"}])
    with pytest.raises(InvalidLeadsError, match="empty list"):
        create(hook, [])
    with pytest.raises(InvalidLeadsError, match="no leads"):
        create(hook, _header_only(sim, hook))
    assert sim.stats()["requests"] == 0


def _header_only(sim: Simulator, hook: DialNexaHook) -> Path:
    import tempfile

    path = Path(tempfile.mkdtemp()) / "empty.csv"
    path.write_text("phone_number,lead_id\n")
    return path


def test_a_file_over_10_mb_is_refused_before_upload(sim: Simulator, hook: DialNexaHook, tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    with path.open("w") as file:
        file.write("phone_number,notes\n")
        line = "+14155550101," + "x" * 1000 + "\n"
        file.write(line * 10_400)  # 10.5 MB
    with pytest.raises(InvalidLeadsError, match="at most 10 MB"):
        create(hook, path)
    assert sim.stats()["requests"] == 0


def memory_path(url: str) -> Any:
    """An ``ObjectStoragePath`` on fsspec's in-memory file system (a remote store without a network)."""
    import fsspec
    from airflow.providers.common.compat.sdk import ObjectStoragePath

    try:
        from airflow.sdk.io import attach
    except ImportError:  # Airflow 2.11
        from airflow.io.store import attach  # type: ignore[no-redef,attr-defined]
    attach("memory", fs=fsspec.filesystem("memory"))
    return ObjectStoragePath(url)


def test_object_storage_leads_are_copied_in_chunks_then_uploaded(sim: Simulator, hook: DialNexaHook) -> None:
    remote = memory_path("memory://campaigns/leads.csv")
    remote.parent.mkdir(parents=True, exist_ok=True)
    with remote.open("w") as file:
        file.write("phone_number,lead_id\n+14155550101,L-1\n+14155550102,L-2\n")

    created = create(hook, remote)

    assert created["total_records"] == 2
    assert list(Path("/tmp").glob("dialnexa-leads-*")) == []  # the local copy was removed


def test_xlsx_leads_are_checked_and_uploaded(sim: Simulator, hook: DialNexaHook, tmp_path: Path) -> None:
    import openpyxl

    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.append(["phone_number", "lead_id"])
    sheet.append(["+14155550101", "L-1"])
    sheet.append([14155550102, "L-2"])  # stored as a number: Excel dropped the '+'
    path = tmp_path / "leads.xlsx"
    book.save(path)

    with pytest.raises(InvalidLeadsError, match=r"1 of 2 rows.*row 3 \(14\*\*\*\*\*0102\)"):
        create(hook, path)
    sheet["A3"] = "+14155550102"
    book.save(path)
    created = create(hook, path)
    assert created["total_records"] == 2


def test_excel_without_openpyxl_says_what_to_install(
    sim: Simulator, hook: DialNexaHook, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "leads.xlsx"
    path.write_bytes(b"PK not really")
    real_import = builtins.__import__

    def no_openpyxl(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "openpyxl":
            raise ImportError("No module named 'openpyxl'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_openpyxl)
    with pytest.raises(InvalidLeadsError, match=r"airflow-provider-dialnexa\[excel\]"):
        create(hook, path)
    assert sim.stats()["requests"] == 0


def test_xls_needs_validate_leads_false(sim: Simulator, hook: DialNexaHook, tmp_path: Path) -> None:
    path = tmp_path / "leads.xls"
    path.write_bytes(b"\xd0\xcf\x11\xe0 old excel")
    with pytest.raises(InvalidLeadsError, match="validate_leads=False"):
        create(hook, path)
    assert uploads(sim) == 0
    with pytest.raises(DialNexaBadRequestError, match="HTTP 400"):  # sent unchecked; this simulator cannot read it
        create(hook, path, validate_leads=False)
    assert uploads(sim) == 1


def test_the_upload_is_a_streamed_multipart_body_with_a_length(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "leads.csv", leads(2000))
    prepared = prepare_leads(path)
    body = MultipartBody([("title", "T"), ("agent_id", AGENT)], prepared)
    chunks = []
    while chunk := body.read(8192):
        chunks.append(chunk)
    body.close()
    assert len(body) == sum(map(len, chunks)) == len(b"".join(chunks))
    assert max(map(len, chunks)) == 8192  # read block by block, never the whole file at once
    assert not hasattr(body, "tell")  # requests would fall back to chunked transfer encoding
    assert prepared.leads == 2000
    assert not prepared.temporary


# -- titles carry the correlation token -----------------------------------------------------------------


def test_the_title_is_cut_to_make_room_for_the_token_and_refused_beyond_35() -> None:
    long = "Q4 renewals, second wave, EMEA"  # 30 characters
    sent = batch_title(long, "c")
    assert len(sent) == 35
    assert sent == f"{long[:MAX_USER_TITLE].rstrip()} #{correlation_token('c')}"
    assert batch_title("Renewals", "c") != batch_title("Renewals", "d")
    with pytest.raises(ValueError, match="at most 35"):
        batch_title("x" * 36, "c")


def test_schedule_fields_reach_dialnexa_and_bad_ones_fail_before_upload(sim: Simulator, hook: DialNexaHook) -> None:
    start = sim.set_clock(1_800_000_000.0) + 3600
    created = create(hook, starts_at="2027-01-15T09:00:00Z", calling_hours_start="09:00", calling_hours_end="18:00")
    [batch] = sim.batches()
    assert batch["id"] == created["id"]
    assert batch["status"] == "scheduled"
    del start
    for bad in ({"calling_hours_start": "9am"}, {"starts_at": "tomorrow"}, {"agent_version_number": 0}):
        with pytest.raises(DialNexaBadRequestError):
            create(hook, **bad)
    with pytest.raises(DialNexaBadRequestError, match="after starts_at"):
        create(hook, starts_at="2027-01-15T09:00:00Z", ends_at="2027-01-15T08:00:00Z")
    assert uploads(sim) == 1


@pytest.mark.parametrize(
    ("kwargs", "status", "says"),
    [
        ({"agent_version_number": 4}, 400, "is a draft"),
        ({"agent_version_number": 9}, 404, "has no version 9"),
    ],
)
def test_documented_refusals_are_final(
    sim: Simulator, hook: DialNexaHook, kwargs: dict[str, Any], status: int, says: str
) -> None:
    with pytest.raises(Exception, match=says) as info:
        create(hook, **kwargs)
    assert getattr(info.value, "http_status", None) == status
    assert uploads(sim) == 1
    assert sim.batches() == []


def test_the_simulator_refuses_a_long_title_and_a_missing_column_like_dialnexa(
    sim: Simulator, hook: DialNexaHook
) -> None:
    # What a client that skips the checks gets: DialNexa's own 400s.
    from airflow_provider_dialnexa._leads import LeadsFile

    bad = Path(_header_only(sim, hook)).with_name("bad.csv")
    bad.write_text("number\n+14155550101\n")
    unchecked = LeadsFile(bad, "bad.csv", "text/csv", bad.stat().st_size, None, temporary=False)
    for fields, says in (
        ([("title", "x" * 42), ("agent_id", AGENT)], "received 42"),
        ([("title", "ok"), ("agent_id", AGENT)], "must include a phone_number column"),
    ):
        body = MultipartBody(fields, unchecked)
        with pytest.raises(DialNexaBadRequestError, match=says):
            hook._send_once(
                "POST",
                _batches.batches_url(hook.settings),
                data=body,
                headers={"Content-Type": body.content_type},
                subject="raw upload",
                call_id=None,
            )


# -- exactly once ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", LOST)
def test_a_lost_answer_is_reconciled_through_the_title_not_resent(
    sim: Simulator, hook: DialNexaHook, kind: str
) -> None:
    sim.add_fault(Fault(kind=kind, route="batch_create", count=1))  # type: ignore[arg-type]

    created = create(hook)

    [only] = titled(sim, batch_title("Renewals", "corr-1"))
    assert created["id"] == only["id"]
    assert uploads(sim) == 1


@pytest.mark.parametrize("kind", REFUSED)
def test_a_refused_upload_is_sent_again_only_after_the_list_proves_no_batch(
    sim: Simulator, hook: DialNexaHook, kind: str
) -> None:
    sim.add_fault(Fault(kind=kind, route="batch_create", count=2))  # type: ignore[arg-type]

    created = create(hook)

    assert len(titled(sim, created["title"])) == 1
    log = [e.route for e in sim.requests() if e.route in ("batch_create", "batch_list")]
    assert log == ["batch_create", "batch_list", "batch_create", "batch_list", "batch_create"]


def test_a_429_is_sent_again_without_a_lookup(sim: Simulator, hook: DialNexaHook) -> None:
    sim.add_fault(Fault(kind="429", route="batch_create", count=1, retry_after="0"))
    create(hook)
    assert [e.route for e in sim.requests()] == ["batch_create", "batch_create"]


def test_a_timeout_after_the_batch_was_created_is_reconciled(
    sim: Simulator, api_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = {"conn_type": "dialnexa", "host": sim.url, "password": api_key, "extra": {"timeout": 1, "max_retries": 3}}
    monkeypatch.setenv("AIRFLOW_CONN_DIALNEXA_DEFAULT", json.dumps(conn))
    sim.add_fault(Fault(kind="lost_slow", route="batch_create", count=1, delay_s=3))
    hook = DialNexaHook(retry_policy=FAST)
    try:
        created = create(hook)
    finally:
        hook.close()
    assert [b["id"] for b in titled(sim, created["title"])] == [created["id"]]


def test_a_failing_lookup_never_leads_to_a_second_upload(sim: Simulator, hook: DialNexaHook) -> None:
    sim.add_fault(Fault(kind="lost_502", route="batch_create", count=1))
    sim.add_fault(Fault(kind="500", route="batch_list"))  # every lookup fails, after the read's own retries

    with pytest.raises(DialNexaUnconfirmedBatchError, match="looking for the batch failed"):
        create(hook)

    assert uploads(sim) == 1
    assert len(sim.batches()) == 1


def test_a_list_that_ignores_page_is_unconfirmed_not_a_proof_of_absence(
    sim: Simulator, hook: DialNexaHook, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_batches, "BATCH_PAGE_SIZE", 2)
    for i in range(3):
        create(hook, correlation=f"other-{i}")
    sim.add_fault(Fault(kind="503", route="batch_create", count=1))  # refused: only a full search may re-send
    sim.configure_batches(list_ignores=["page"])  # every page is page 1

    with pytest.raises(DialNexaUnconfirmedBatchError):
        create(hook)
    assert uploads(sim) == 4


def test_the_search_pages_the_other_envelope_and_matches_name(
    sim: Simulator, hook: DialNexaHook, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_batches, "BATCH_PAGE_SIZE", 2)
    ours = create(hook)
    for i in range(4):
        create(hook, correlation=f"newer-{i}")  # ours is now on page 3
    sim.configure_batches(list_style="data")
    sim.add_fault(Fault(kind="lost_504", route="batch_create", count=1))

    again = create(hook, adopt_existing=True)

    assert again["id"] == ours["id"]
    assert uploads(sim) == 5
    assert len(sim.requests(route="batch_list")) == 3


def test_adopt_existing_looks_first_and_uploads_when_there_is_none(sim: Simulator, hook: DialNexaHook) -> None:
    first = create(hook)
    assert create(hook, adopt_existing=True)["id"] == first["id"]
    assert uploads(sim) == 1
    other = create(hook, correlation="corr-2", adopt_existing=True)
    assert other["id"] != first["id"]
    assert uploads(sim) == 2


def test_a_batch_older_than_the_run_is_not_adopted(sim: Simulator, hook: DialNexaHook) -> None:
    from datetime import UTC, datetime, timedelta

    create(hook)
    later = datetime.now(UTC) + timedelta(days=3)
    again = create(hook, adopt_existing=True, placed_after=later)
    assert uploads(sim) == 2
    assert again["title"] == batch_title("Renewals", "corr-1")


# -- reading ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["calllogs", "record", "both"])
def test_get_batch_call_reads_status_and_counters_with_one_request(
    sim: Simulator, hook: DialNexaHook, style: str
) -> None:
    sim.configure_batches(
        detail_style=style, mix={"completed": 1}, outcomes={"+14155550000": ["no_answer", "completed"]}
    )
    created = create(hook)
    sim.advance_clock(3600)

    before = sim.stats()["requests"]
    record = hook.get_batch_call(created["id"])

    assert sim.stats()["requests"] - before == 1
    assert record["status"] == "completed"
    assert record["total_lead_count"] == 5
    assert record["first_retry_count"] == 1
    assert _batches.progress(record) == {
        "total": 5,
        "sent": 5,
        "picked_up": record["picked_up_calls"],
        "retries": [1, 0, 0, 0],
    }


@pytest.mark.parametrize("style", ["record", "both"])
def test_a_batch_beyond_the_first_page_is_found_through_get_batch_call(
    sim: Simulator, hook: DialNexaHook, monkeypatch: pytest.MonkeyPatch, style: str
) -> None:
    monkeypatch.setattr(_batches, "BATCH_PAGE_SIZE", 2)
    sim.configure_batches(detail_style=style)
    ours = create(hook)
    for i in range(3):
        create(hook, correlation=f"newer-{i}")
    hint = _batches.LocateHint()

    import asyncio

    first = asyncio.run(hook.aget_batch_call(ours["id"], hint))
    routes = [e.route for e in sim.requests() if e.route in ("batch_list", "batch_get")]
    assert routes == ["batch_list", "batch_get"]
    assert first["id"] == ours["id"]
    assert first["status"]
    assert hint.detail is True
    asyncio.run(hook.aget_batch_call(ours["id"], hint))
    routes = [e.route for e in sim.requests() if e.route in ("batch_list", "batch_get")]
    assert routes == ["batch_list", "batch_get", "batch_get"]  # later polls: one request


def test_a_batch_only_deeper_in_the_list_is_found_by_paging(
    sim: Simulator, hook: DialNexaHook, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_batches, "BATCH_PAGE_SIZE", 2)
    ours = create(hook)
    for i in range(4):
        create(hook, correlation=f"newer-{i}")
    assert hook.get_batch_call(ours["id"])["id"] == ours["id"]
    routes = [e.route for e in sim.requests() if e.route in ("batch_list", "batch_get")]
    assert routes == ["batch_list", "batch_get", "batch_list", "batch_list"]


def test_unknown_and_malformed_batch_ids(sim: Simulator, hook: DialNexaHook) -> None:
    with pytest.raises(DialNexaNotFoundError, match="Check the batch id"):
        hook.get_batch_call("batch_doesnotexist")
    before = sim.stats()["requests"]
    for bad in ("", "batch/../x", "None", "a b"):
        with pytest.raises(InvalidCallIdError, match="batch id"):
            hook.get_batch_call(bad)
    assert sim.stats()["requests"] == before


def test_list_batch_calls_yields_each_batch_once_and_filters_by_status(
    sim: Simulator, hook: DialNexaHook, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_batches, "BATCH_PAGE_SIZE", 2)
    ids = [create(hook, correlation=f"c{i}")["id"] for i in range(5)]
    assert sorted(b["id"] for b in hook.list_batch_calls()) == sorted(ids)
    running = [b["id"] for b in hook.list_batch_calls(status="running")]
    waiting = [b["id"] for b in hook.list_batch_calls(status=["waiting", "scheduled"])]
    assert running == [ids[0]]  # one batch at a time per organization
    assert sorted(waiting) == sorted(ids[1:])


# -- call logs ------------------------------------------------------------------------------------------


def test_iter_batch_calls_yields_every_attempt_once_retry_children_included(sim: Simulator, hook: DialNexaHook) -> None:
    sim.configure_batches(outcomes={"+14155550001": ["busy", "no_answer", "completed"], "+14155550002": ["failed"]})
    created = create(hook, leads(30))
    sim.advance_clock(3600)

    calls = list(hook.iter_batch_calls(created["id"], page_size=7))

    [batch] = sim.batches()
    assert len(calls) == len({c["id"] for c in calls}) == batch["attempts"]
    tries = [c for c in calls if c["to_number"] == "+14155550001"]
    assert [c["status"] for c in tries] == ["busy", "no_answer", "completed"]
    assert all(c["batch_id"] == created["id"] for c in calls)
    assert [c["createdAt"] for c in calls] == sorted(c["createdAt"] for c in calls)


def test_a_detail_that_ignores_page_fails_loudly(sim: Simulator, hook: DialNexaHook) -> None:
    created = create(hook, leads(10))
    sim.advance_clock(3600)
    sim.configure_batches(detail_ignores=["page"])
    with pytest.raises(DialNexaMalformedResponseError, match="ignore 'page'"):
        list(hook.iter_batch_calls(created["id"], page_size=4))


def test_call_logs_that_come_back_short_of_the_total_fail_loudly(sim: Simulator, hook: DialNexaHook) -> None:
    created = create(hook, leads(10))
    sim.advance_clock(3600)
    sim.configure_batches(detail_cap=4)  # says limit 200, silently sends 4: the page looks like the last
    with pytest.raises(DialNexaMalformedResponseError, match="partial"):
        list(hook.iter_batch_calls(created["id"], page_size=200))


async def test_aiter_batch_calls_matches_the_sync_pager(sim: Simulator, hook: DialNexaHook) -> None:
    created = create(hook, leads(12))
    sim.advance_clock(3600)
    sync_ids = [c["id"] for c in hook.iter_batch_calls(created["id"], page_size=5)]
    async_ids = [c["id"] async for c in hook.aiter_batch_calls(created["id"], page_size=5)]
    assert async_ids == sync_ids
    from airflow_provider_dialnexa.hooks.dialnexa import close_async_clients

    await close_async_clients()


# -- pause, resume, cancel ------------------------------------------------------------------------------


def test_pause_resume_cancel(sim: Simulator, hook: DialNexaHook) -> None:
    created = create(hook, leads(20))
    batch_id = created["id"]

    paused = hook.pause_batch_call(batch_id)
    assert paused["campaign"]["status"] == "paused"
    sent = sim.batches()[0]["sent_lead_count"]
    sim.advance_clock(3600)
    assert sim.batches()[0]["sent_lead_count"] == sent  # a paused batch dials nobody
    assert hook.pause_batch_call(batch_id)["message"] == "Batch already paused"  # no error the second time

    assert hook.resume_batch_call(batch_id)["campaign"]["status"] in ("waiting", "running")
    assert hook.cancel_batch_call(batch_id)["campaign"]["status"] == "cancelled"
    with pytest.raises(DialNexaBadRequestError, match="HTTP 409"):
        hook.resume_batch_call(batch_id)


def test_an_ambiguous_pause_is_checked_before_it_is_sent_again(sim: Simulator, hook: DialNexaHook) -> None:
    created = create(hook, leads(20))
    sim.add_fault(Fault(kind="lost_502", route="batch_status", count=1))

    answer = hook.pause_batch_call(created["id"])

    assert answer["campaign"]["status"] == "paused"
    assert len(sim.requests(route="batch_status")) == 1


def test_an_invalid_action_on_an_ended_batch_is_final(sim: Simulator, hook: DialNexaHook) -> None:
    created = create(hook, leads(2))
    sim.advance_clock(3600)
    with pytest.raises(DialNexaBadRequestError, match="Cannot pause a completed batch call"):
        hook.pause_batch_call(created["id"])
    assert len(sim.requests(route="batch_status")) == 1


def test_numbers_dialnexa_echoes_in_a_refusal_are_masked_dates_are_not() -> None:
    from airflow_provider_dialnexa.exceptions import error_for_status
    from airflow_provider_dialnexa.hooks._batch import _mask_numbers

    message = "Row 3: +1 415 555 0101 and 919876543210 are not reachable; starts_at 2026-10-05T09:00:00Z"
    body = json.dumps({"statusCode": 400, "message": message, "error": "Bad Request"}).encode()
    error = _mask_numbers(error_for_status(400, body, subject="Create Batch Call", call_id=None, conn_id="c"))
    assert "415 555 0101" not in str(error)
    assert "919876543210" not in str(error)
    assert "+14*****0101" in str(error)
    assert error.api_message is not None
    assert "2026-10-05T09:00:00Z" in error.api_message
