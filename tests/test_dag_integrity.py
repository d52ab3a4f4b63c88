"""Every DAG in ``dags/`` parses cleanly, without reading a connection or opening a socket."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from _compat import AIRFLOW_V_3, DagBag, dag_bag
from airflow.providers.common.compat.sdk import BaseHook

from airflow_provider_dialnexa.hooks.dialnexa import DialNexaHook

DAGS_FOLDER = Path(__file__).resolve().parents[1] / "dags"
EXAMPLE_DAG_ID = "dialnexa_call_outcomes"


def _forbidden(what: str) -> Any:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"{what} while parsing DAGs (args={args!r:.100})")

    return refuse


def parse(folder: Path) -> DagBag:
    """Parse ``folder`` with connection lookups and network connects turned into import errors."""
    with (
        mock.patch.object(BaseHook, "get_connection", _forbidden("connection lookup")),
        mock.patch.object(DialNexaHook, "get_connection", _forbidden("connection lookup")),
        mock.patch.object(socket.socket, "connect", _forbidden("network connect")),
        mock.patch.object(socket, "create_connection", _forbidden("network connect")),
    ):
        return dag_bag(str(folder))


@pytest.fixture(scope="module")
def dagbag(request: pytest.FixtureRequest) -> DagBag:
    if not AIRFLOW_V_3:  # 2.11 reads a DAG's dataset aliases from the metadata DB while parsing it
        request.getfixturevalue("airflow_db")
    return parse(DAGS_FOLDER)


def test_every_dag_file_imports_without_errors(dagbag: DagBag) -> None:
    assert dagbag.import_errors == {}
    files = sorted(p.name for p in DAGS_FOLDER.glob("*.py"))
    assert files, "dags/ holds no DAG files"
    loaded = {Path(dag.fileloc).name for dag in dagbag.dags.values()}
    assert loaded == set(files), "every file in dags/ defines at least one DAG"


def test_parsing_raises_no_warnings(dagbag: DagBag) -> None:
    assert dagbag.captured_warnings == {}


def test_example_dag_shape(dagbag: DagBag) -> None:
    dag = dagbag.dags[EXAMPLE_DAG_ID]
    assert dag.catchup is False
    assert set(dag.params) == {"call_ids", "sqlite_path"}
    assert set(dag.task_dict) == {"call_ids", "wait_for_call", "fetch_call", "to_row", "load"}
    assert dag.task_dict["wait_for_call"].downstream_task_ids == {"fetch_call"}
    assert dag.task_dict["load"].upstream_task_ids == {"to_row"}
    assert "call_ids" in (dag.doc_md or "")


BAD_DAG = """
from datetime import datetime
from airflow.providers.common.compat.sdk import DAG
from airflow_provider_dialnexa.hooks.dialnexa import DialNexaHook

with DAG("reads_a_connection_at_parse_time", schedule=None, start_date=datetime(2026, 1, 1)):
    DialNexaHook().get_call("call_abc123")
"""


def test_the_guard_catches_a_connection_read_at_parse_time(tmp_path: Path) -> None:
    (tmp_path / "bad_dag.py").write_text(BAD_DAG)
    bag = parse(tmp_path)
    errors = list(bag.import_errors.values())
    assert len(errors) == 1
    assert "connection lookup while parsing DAGs" in errors[0]
