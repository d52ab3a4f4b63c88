"""DialNexaExportBatchCallsOperator (issue #20): a batch's call logs to one file, each once, streamed, all or none;
like the call export (#21), an asset event for every file written and OpenLineage for the run."""

from __future__ import annotations

import gzip
import json
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import pytest
from _assets import alias_events_of, facets, names, outlet_events, recorded_events
from _compat import dag_bag, return_values
from airflow.providers.common.compat.sdk import DAG, AssetAlias

from airflow_provider_dialnexa.exceptions import DialNexaAuthError, DialNexaError, DialNexaServerError
from airflow_provider_dialnexa.hooks.dialnexa import DialNexaHook
from airflow_provider_dialnexa.operators.dialnexa import DialNexaExportBatchCallsOperator, export_alias
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


# -- asset events and lineage, as for the call export (tests/test_lineage.py) --------------------------------


def test_templated_and_mapped_batch_exports_declare_their_alias_and_fixed_ones_their_file(tmp_path: Path) -> None:
    with DAG("campaigns", schedule=None, start_date=datetime(2026, 1, 1)):
        fixed = DialNexaExportBatchCallsOperator(task_id="fixed", batch_id="b_1", destination=str(tmp_path / "a.jsonl"))
        templated = DialNexaExportBatchCallsOperator(
            task_id="templated", batch_id="b_1", destination="s3://b/{{ ds }}.jsonl"
        )
        mapped = DialNexaExportBatchCallsOperator.partial(
            task_id="mapped", destination="s3://b/{{ ti.map_index }}.jsonl"
        ).expand(batch_id=["b_1", "b_2"])
    assert fixed.asset_alias is None
    assert [o.uri for o in fixed.outlets] == [f"file://{tmp_path / 'a.jsonl'}"]
    assert templated.outlets == [export_alias("campaigns", "templated")] == [templated.asset_alias]
    assert mapped.outlets == [AssetAlias("dialnexa-export/campaigns/mapped")]


def test_a_dag_run_resolves_the_batch_exports_alias_to_the_file_with_the_summary_as_extra(
    sim: Simulator, airflow_db: Path, tmp_path: Path
) -> None:
    batch_id = ended_batch(sim)
    target = tmp_path / "outcomes.jsonl"
    bag = dag_bag(str(airflow_db))
    assert bag.import_errors == {}

    run = bag.dags["dialnexa_batch_export"].test(run_conf={"batch_id": batch_id, "destination": str(target)})

    assert str(run.state) == "success"
    summary = return_values(run.run_id, "dialnexa_batch_export")["export"][-1]
    assert (summary["records"], summary["calls"]) == (12, 16)
    (event,) = [e for e in recorded_events() if e.run_id == run.run_id]  # one event for one file written
    assert event.uri == f"file://{target}"
    assert event.extra == summary  # the XCom's facts, nothing else
    assert "+" not in json.dumps(event.extra)
    assert event.aliases == ("dialnexa-export/dialnexa_batch_export/export",)


def test_a_fixed_destination_is_the_batch_exports_outlet_and_its_event_carries_the_summary(
    sim: Simulator, tmp_path: Path
) -> None:
    batch_id = ended_batch(sim)
    target = tmp_path / "latest.jsonl"
    with DAG("fixed_batch_export", schedule=None, start_date=datetime(2026, 1, 1)):
        op = DialNexaExportBatchCallsOperator(task_id="export", batch_id=batch_id, destination=str(target))
    events = outlet_events()

    summary = op.execute({"outlet_events": events})  # type: ignore[typeddict-unknown-key]

    (asset,) = op.outlets
    assert events[asset].extra == summary
    assert [e for accessor in events._dict.values() for e in alias_events_of(accessor)] == []  # no second event


def test_batch_export_lineage_reads_dialnexa_calls_and_writes_the_file_with_its_line_count(
    sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch_id = ended_batch(sim)
    target = tmp_path / "out" / "leads.jsonl.gz"
    op = DialNexaExportBatchCallsOperator(task_id="export", batch_id=batch_id, destination=str(target), records="leads")
    assert names(facets(op).inputs) == []  # before the run: nothing resolved, nothing read to find out
    result = op.execute(CONTEXT)
    monkeypatch.delenv("AIRFLOW_CONN_DIALNEXA_DEFAULT")  # lineage must not read the connection...
    before = sim.stats()["requests"]
    lineage = facets(op)
    assert sim.stats()["requests"] == before  # ...nor call DialNexa
    assert names(lineage.inputs) == [(sim.url, "calls")]
    assert names(lineage.outputs) == [("file", str(target))]
    assert lineage.outputs[0].outputFacets["outputStatistics"].rowCount == result["records"] == len(lines(target)) == 12


def test_a_failed_batch_export_reports_its_input_and_no_output(
    simulator: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = {"conn_type": "dialnexa", "host": simulator.url, "password": "wrong:key"}
    monkeypatch.setenv("AIRFLOW_CONN_DIALNEXA_DEFAULT", json.dumps(conn))
    op = DialNexaExportBatchCallsOperator(task_id="export", batch_id="batch_x1", destination=str(tmp_path / "x.jsonl"))
    with pytest.raises(DialNexaAuthError):
        op.execute(CONTEXT)
    lineage = facets(op)
    assert names(lineage.inputs) == [(simulator.url, "calls")]
    assert lineage.outputs == []
