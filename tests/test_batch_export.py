"""DialNexaExportBatchCallsOperator (issue #20): a batch's call logs to one file, each once, streamed, all or none."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any, cast

import pytest

from airflow_provider_dialnexa.exceptions import DialNexaError, DialNexaServerError
from airflow_provider_dialnexa.hooks.dialnexa import DialNexaHook
from airflow_provider_dialnexa.operators.dialnexa import DialNexaExportBatchCallsOperator
from airflow_provider_dialnexa.simulator import Fault, Simulator

AGENT = "agent_2g7Xy3tY53gRlp"
CONTEXT = cast("Any", {})
#: Lead 0 answers on its third try, lead 1 never (two retries), lead 2 fails (never redialled); the rest answer.
OUTCOMES = {
    "+14155550000": ["no_answer", "busy", "completed"],
    "+14155550001": ["no_answer"],
    "+14155550002": ["failed"],
}


@pytest.fixture
def sim(simulator: Simulator, api_key: str, monkeypatch: pytest.MonkeyPatch) -> Simulator:
    extra = {"timeout": 5, "max_retries": 0, "rate_limit_per_minute": 0}
    conn = {"conn_type": "dialnexa", "host": simulator.url, "password": api_key, "extra": extra}
    monkeypatch.setenv("AIRFLOW_CONN_DIALNEXA_DEFAULT", json.dumps(conn))
    simulator.configure_batches(mix={"completed": 1}, outcomes=OUTCOMES)
    return simulator


def ended_batch(sim: Simulator, n: int = 12) -> str:
    hook = DialNexaHook()
    try:
        rows = [{"phone_number": f"+1415555{i:04d}", "lead_id": f"L-{i}"} for i in range(n)]
        batch_id = str(hook.create_batch_call(rows, "Export", AGENT, correlation_id="x")["id"])
    finally:
        hook.close()
    sim.advance_clock(24 * 3600)
    return batch_id


def export(batch_id: str, destination: Path, **kwargs: Any) -> dict[str, Any]:
    op = DialNexaExportBatchCallsOperator(
        task_id="export", batch_id=batch_id, destination=str(destination), page_size=5, **kwargs
    )
    return op.execute(CONTEXT)


def lines(path: Path) -> list[dict[str, Any]]:
    opener: Any = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as file:
        return [json.loads(line) for line in file]


def test_every_attempt_once_retry_children_included(sim: Simulator, tmp_path: Path) -> None:
    batch_id = ended_batch(sim)
    target = tmp_path / "out" / "calls.jsonl"

    result = export(batch_id, target)

    rows = lines(target)
    [batch] = sim.batches()
    assert len(rows) == len({r["id"] for r in rows}) == batch["attempts"] == 12 + 2 + 2
    assert result == {
        "path": str(target),
        "batch_id": batch_id,
        "batch_status": "completed",
        "records": 16,
        "calls": 16,
        "leads": 12,
        "statuses": {"completed": 10, "failed": 1, "no_answer": 1},  # each lead by its last attempt
        "running": 0,
    }
    assert [p.name for p in target.parent.iterdir()] == ["calls.jsonl"]


def test_one_line_per_lead_is_its_last_attempt(sim: Simulator, tmp_path: Path) -> None:
    batch_id = ended_batch(sim)
    target = tmp_path / "leads.jsonl.gz"

    result = export(batch_id, target, records="leads", mask_phone_numbers=True, exclude_fields=["transcript"])

    rows = lines(target)
    assert result["records"] == result["leads"] == len(rows) == 12
    by_lead = {r["metadata"]["lead_id"]: r for r in rows}
    assert (by_lead["L-0"]["status"], by_lead["L-0"]["lead_attempts"]) == ("completed", 3)
    assert (by_lead["L-1"]["status"], by_lead["L-1"]["lead_attempts"]) == ("no_answer", 3)
    assert (by_lead["L-2"]["status"], by_lead["L-2"]["lead_attempts"]) == ("failed", 1)
    assert all("transcript" not in r and "*" in r["to_number"] for r in rows)


def test_a_running_batch_is_refused_unless_asked(sim: Simulator, tmp_path: Path) -> None:
    sim.configure_batches(dial_interval_s=60, call_s=120)
    hook = DialNexaHook()
    batch_id = str(hook.create_batch_call([{"phone_number": "+14155550100"}] * 2, "Live", AGENT)["id"])
    target = tmp_path / "live.jsonl"
    with pytest.raises(DialNexaError, match="not ended; nothing was written"):
        export(batch_id, target)
    assert not target.exists()
    result = export(batch_id, target, require_ended=False)
    assert (result["batch_status"], result["running"], result["leads"]) == ("running", 1, 1)


def test_a_failure_mid_way_leaves_the_previous_file_untouched(sim: Simulator, tmp_path: Path) -> None:
    batch_id = ended_batch(sim)
    target = tmp_path / "calls.jsonl"
    target.write_text("previous\n")
    sim.add_fault(Fault(kind="500", route="batch_get", count=1))  # page 1 of the call logs

    with pytest.raises(DialNexaServerError):
        export(batch_id, target)

    assert target.read_text() == "previous\n"
    assert [p.name for p in tmp_path.iterdir()] == ["calls.jsonl"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"records": "rows"}, "records must be"),
        ({"page_size": 500}, "page_size"),
        ({"destination": " "}, "destination"),
    ],
)
def test_bad_arguments_fail_at_parse_time(kwargs: dict[str, Any], match: str) -> None:
    kwargs = {"batch_id": "batch_x1", "destination": "/tmp/x.jsonl", **kwargs}
    with pytest.raises(ValueError, match=match):
        DialNexaExportBatchCallsOperator(task_id="export", **kwargs)
