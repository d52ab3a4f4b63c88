"""Exports feed the platform (issue #21): asset events for every file written, and OpenLineage for every operator.

Asset events: the alias a templated (or mapped) export declares, resolved at run time to the file written with
the run's summary as the event's extra, recorded by a real ``dag.test()``; the fixed destination's own outlet
carries the same extra. Lineage: each operator's ``get_openlineage_facets_on_complete`` after a real run
against the simulator, through the OpenLineage provider's own extractor, with no request and no connection
read. The scheduler triggering a DAG scheduled on the alias is ``test_fullstack_assets.py``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from _assets import recorded_events
from _compat import AIRFLOW_V_3, dag_bag, return_values
from airflow.providers.common.compat.sdk import DAG, Asset, AssetAlias, TaskGroup
from airflow.providers.openlineage.extractors.base import DefaultExtractor
from airflow.providers.openlineage.extractors.manager import ExtractorManager

from airflow_provider_dialnexa._lineage import storage_location
from airflow_provider_dialnexa.exceptions import DialNexaAuthError
from airflow_provider_dialnexa.operators.dialnexa import (
    DialNexaCreateCallOperator,
    DialNexaExportCallsOperator,
    DialNexaGetCallOperator,
    export_alias,
)
from airflow_provider_dialnexa.simulator import Simulator

CONN_ID = "dialnexa_export"  # the connection tests/dags/dialnexa_export_window.py uses
T0 = datetime(2026, 10, 5, 9, 0, tzinfo=UTC)
WINDOW: dict[str, Any] = {"window_start": T0.isoformat(), "window_end": (T0 + timedelta(hours=1)).isoformat()}
START = datetime(2026, 1, 1)


@pytest.fixture
def sim(simulator: Simulator, api_key: str, monkeypatch: pytest.MonkeyPatch) -> Simulator:
    conn = {"conn_type": "dialnexa", "host": simulator.url, "password": api_key, "extra": {"rate_limit_per_minute": 0}}
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(conn))
    return simulator


def seed(sim: Simulator, n: int, **options: Any) -> None:
    sim.seed_calls(n, T0.timestamp(), (T0 + timedelta(hours=1)).timestamp(), **options)


def requests(sim: Simulator) -> int:
    return int(sim.stats()["requests"])


def facets(operator: Any) -> Any:
    """The operator's lineage as the OpenLineage provider's listener gets it (its extractor, its checks)."""
    assert ExtractorManager().get_extractor_class(operator) is DefaultExtractor
    lineage = DefaultExtractor(operator).extract_on_complete(task_instance=None)
    assert lineage is not None, "the extractor swallowed an exception from get_openlineage_facets_on_complete"
    return lineage


def names(datasets: list[Any]) -> list[tuple[str, str]]:
    return [(d.namespace, d.name) for d in datasets]


# -- the alias: declared when the DAG is parsed ----------------------------------------------------------


def test_templated_and_mapped_exports_declare_their_alias_and_fixed_ones_their_file(tmp_path: Path) -> None:
    mine = Asset("s3://bucket/exports/")
    with DAG("shop", schedule=None, start_date=START) as dag:
        fixed = DialNexaExportCallsOperator(task_id="fixed", destination=str(tmp_path / "calls.jsonl"))
        hourly = DialNexaExportCallsOperator(task_id="hourly", destination="s3://b/calls_{{ ds }}.jsonl")
        with TaskGroup("eu"):
            grouped = DialNexaExportCallsOperator(task_id="hourly", destination="s3://b/eu/{{ ds }}.jsonl")
        given = DialNexaExportCallsOperator(task_id="given", destination="s3://b/{{ ds }}.jsonl", outlets=[mine])
        mapped = DialNexaExportCallsOperator.partial(
            task_id="per_agent", destination="s3://b/{{ ds }}_{{ ti.map_index }}.jsonl"
        ).expand(filters=[{"agent_id": "agent_a"}, {"agent_id": "agent_b"}])
    assert export_alias("shop", "hourly") == AssetAlias("dialnexa-export/shop/hourly")
    assert hourly.outlets == [export_alias("shop", "hourly")]
    assert hourly.asset_alias == export_alias("shop", "hourly")
    assert grouped.outlets == [export_alias("shop", "eu.hourly")]  # the full task id: aliases never collide
    assert given.outlets == [mine, export_alias("shop", "given")]  # the user's outlets are kept
    assert mapped.outlets == [export_alias("shop", "per_agent")]  # what the scheduler sees at parse time
    assert fixed.asset_alias is None
    assert [o.uri for o in fixed.outlets] == [f"file://{tmp_path / 'calls.jsonl'}"]  # as before: no alias
    assert len({alias.name for task in dag.tasks for alias in task.outlets if isinstance(alias, AssetAlias)}) == 4


# -- the alias: resolved to the file written ------------------------------------------------------------


def test_a_dag_run_resolves_the_alias_to_the_file_with_the_summary_as_extra(
    sim: Simulator, airflow_db: Path, tmp_path: Path
) -> None:
    seed(sim, 30, mix={"completed": 2, "busy": 1})
    target = tmp_path / "calls_0900.jsonl"
    bag = dag_bag(str(airflow_db))
    assert bag.import_errors == {}
    conf = {**WINDOW, "destination": str(target)}
    run = bag.dags["dialnexa_export_window"].test(run_conf=conf)
    assert str(run.state) == "success"
    summary = return_values(run.run_id, "dialnexa_export_window")["export"][-1]
    assert summary["calls"] == 30
    events = [e for e in recorded_events() if e.run_id == run.run_id]
    assert len(events) == 1  # one event for one file written
    (event,) = events
    assert event.uri == f"file://{target}"
    assert event.extra == summary  # window, count, statuses, path: the XCom's facts, nothing else
    assert set(event.extra) == {"path", "calls", "statuses", "window_start", "window_end"}
    assert "+" not in json.dumps(event.extra)  # no phone number can hide in it
    assert event.aliases == ("dialnexa-export/dialnexa_export_window/export",)
    assert (event.dag_id, event.task_id) == ("dialnexa_export_window", "export")


def test_each_map_index_resolves_the_one_alias_to_its_own_file(
    sim: Simulator, airflow_db: Path, tmp_path: Path
) -> None:
    seed(sim, 40, inbound_share=0.25)
    bag = dag_bag(str(airflow_db))
    run = bag.dags["dialnexa_export_mapped"].test(run_conf={**WINDOW, "folder": str(tmp_path)})
    assert str(run.state) == "success"
    summaries = return_values(run.run_id, "dialnexa_export_mapped")["export"]
    counts = [summaries[i]["calls"] for i in (0, 1)]  # inbound, outbound
    assert sum(counts) == 40
    assert min(counts) > 0
    events = sorted((e for e in recorded_events() if e.run_id == run.run_id), key=lambda e: e.map_index or 0)
    assert [(e.map_index, e.uri, e.aliases) for e in events] == [
        (i, f"file://{tmp_path}/calls_{i}.jsonl", ("dialnexa-export/dialnexa_export_mapped/export",)) for i in (0, 1)
    ]
    assert [e.extra for e in events] == [summaries[0], summaries[1]]


def test_the_fixed_destinations_own_event_carries_the_summary(sim: Simulator, tmp_path: Path) -> None:
    seed(sim, 12)
    target = tmp_path / "latest.jsonl"
    with DAG("fixed_export", schedule=None, start_date=START):
        op = DialNexaExportCallsOperator(task_id="export", destination=str(target), dialnexa_conn_id=CONN_ID, **WINDOW)
    events = outlet_events()
    summary = op.execute({"outlet_events": events})  # type: ignore[typeddict-unknown-key]
    (asset,) = op.outlets
    assert events[asset].extra == summary
    assert summary["calls"] == 12
    alias_events = [e for accessor in events._dict.values() for e in alias_events_of(accessor)]
    assert alias_events == []  # no second event for the same write


def test_a_templated_destination_adds_one_alias_event_for_the_rendered_file(sim: Simulator, tmp_path: Path) -> None:
    seed(sim, 7)
    target = tmp_path / "calls_rendered.jsonl.gz"
    with DAG("templated_export", schedule=None, start_date=START):
        op = DialNexaExportCallsOperator(
            task_id="export", destination="{{ params.path }}", dialnexa_conn_id=CONN_ID, **WINDOW
        )
    op.destination = str(target)  # as rendered
    events = outlet_events()
    summary = op.execute({"outlet_events": events})  # type: ignore[typeddict-unknown-key]
    (event,) = alias_events_of(events[op.asset_alias])
    uri = event["dest_asset_key"]["uri"] if AIRFLOW_V_3 else event["dest_dataset_uri"]
    assert uri == f"file://{target}"
    assert event["source_alias_name"] == "dialnexa-export/templated_export/export"
    assert json.loads(json.dumps(event["extra"])) == summary


def outlet_events() -> Any:
    """The ``outlet_events`` accessor a real task gets (Airflow 3: Task SDK; 2.11: airflow.utils.context)."""
    if AIRFLOW_V_3:
        from airflow.sdk.execution_time.context import OutletEventAccessors

        return OutletEventAccessors()
    from airflow.utils.context import OutletEventAccessors as Accessors2  # type: ignore[attr-defined]

    return Accessors2()


def alias_events_of(accessor: Any) -> list[dict[str, Any]]:
    import attrs

    raw = accessor.asset_alias_events if AIRFLOW_V_3 else accessor.dataset_alias_events
    return [attrs.asdict(e) if attrs.has(type(e)) else dict(e) for e in raw]


# -- OpenLineage ----------------------------------------------------------------------------------------


def test_export_lineage_reads_dialnexa_calls_and_writes_the_file_without_io(
    sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed(sim, 25)
    target = tmp_path / "out" / "calls.jsonl.gz"
    op = DialNexaExportCallsOperator(
        task_id="export", destination=str(target), dialnexa_conn_id=CONN_ID, mask_phone_numbers=True, **WINDOW
    )
    assert names(facets(op).inputs) == []  # before the run: nothing resolved, nothing read to find out
    op.execute({})
    monkeypatch.delenv(f"AIRFLOW_CONN_{CONN_ID.upper()}")  # lineage must not read the connection...
    before = requests(sim)
    lineage = facets(op)
    assert requests(sim) == before  # ...nor call DialNexa
    assert names(lineage.inputs) == [(sim.url, "calls")]
    assert names(lineage.outputs) == [("file", str(target))]
    assert lineage.outputs[0].outputFacets["outputStatistics"].rowCount == 25


def test_export_lineage_names_object_storage_by_bucket_and_key(sim: Simulator) -> None:
    import fsspec

    if AIRFLOW_V_3:
        from airflow.sdk.io.store import attach
    else:  # pragma: no cover - Airflow 2.11 leg
        from airflow.io.store import attach  # type: ignore[no-redef]
    attach("memory", fs=fsspec.filesystem("memory"))  # fsspec's in-memory file system: an object store, no server
    seed(sim, 3)
    op = DialNexaExportCallsOperator(
        task_id="export", destination="memory://lake/dialnexa/calls.jsonl", dialnexa_conn_id=CONN_ID, **WINDOW
    )
    op.execute({})
    lineage = facets(op)
    # Airflow 2.11's fsspec/UPath pair has no buckets in the memory file system: a plain path there.
    bucket_and_key = (
        ("memory://lake", "dialnexa/calls.jsonl") if AIRFLOW_V_3 else ("memory", "/lake/dialnexa/calls.jsonl")
    )
    assert names(lineage.outputs) == [bucket_and_key]
    assert lineage.outputs[0].outputFacets["outputStatistics"].rowCount == 3


@pytest.mark.parametrize(
    ("destination", "location"),
    [
        ("s3://bucket/dialnexa/calls_0900.jsonl.gz", ("s3://bucket", "dialnexa/calls_0900.jsonl.gz")),
        ("gs://bucket/calls.jsonl", ("gs://bucket", "calls.jsonl")),
        (
            "abfss://container@account.dfs.core.windows.net/x/calls.jsonl",
            ("abfss://container@account.dfs.core.windows.net", "x/calls.jsonl"),
        ),
        ("file:///data/calls.jsonl", ("file", "/data/calls.jsonl")),
        ("/data/calls.jsonl", ("file", "/data/calls.jsonl")),
        ("local:///data/calls.jsonl", ("file", "/data/calls.jsonl")),
        ("memory:///lake/calls.jsonl", ("memory", "/lake/calls.jsonl")),
    ],
)
def test_storage_locations_follow_the_openlineage_naming_spec(destination: str, location: tuple[str, str]) -> None:
    assert storage_location(destination) == location


def test_a_failed_export_reports_its_input_and_no_output(
    simulator: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = {"conn_type": "dialnexa", "host": simulator.url, "password": "wrong:key"}
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(conn))
    op = DialNexaExportCallsOperator(
        task_id="export", destination=str(tmp_path / "calls.jsonl"), dialnexa_conn_id=CONN_ID, **WINDOW
    )
    with pytest.raises(DialNexaAuthError):
        op.execute({})
    lineage = facets(op)  # what the listener reports on failure (no get_openlineage_facets_on_failure)
    assert names(lineage.inputs) == [(simulator.url, "calls")]
    assert lineage.outputs == []


def test_get_and_create_call_report_dialnexa_calls(dialnexa_conn: Simulator, monkeypatch: pytest.MonkeyPatch) -> None:
    sim = dialnexa_conn
    call_id = sim.create_call(outcome="completed", queued_s=0, ring_s=0, talk_s=0, age_s=60)
    get = DialNexaGetCallOperator(task_id="get", call_id=call_id)
    create = DialNexaCreateCallOperator(task_id="create", phone_number="+14155550101", agent_id="agent_2g7Xy3tY53gRlp")
    assert names(facets(get).inputs) == names(facets(create).outputs) == []  # nothing resolved yet
    get.execute({})
    ti = SimpleNamespace(dag_id="d", run_id="r", task_id="create", map_index=-1, try_number=1)
    create.execute({"ti": ti})  # type: ignore[typeddict-item]
    monkeypatch.delenv("AIRFLOW_CONN_DIALNEXA_DEFAULT")
    before = requests(sim)
    assert (names(facets(get).inputs), names(facets(get).outputs)) == ([(sim.url, "calls")], [])
    assert (names(facets(create).inputs), names(facets(create).outputs)) == ([], [(sim.url, "calls")])
    assert requests(sim) == before
