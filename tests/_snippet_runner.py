"""Run the docs' code blocks in this (child) process, as ``tests/test_docs_snippets.py`` planned them.

``python tests/_snippet_runner.py plan.json``: the plan lists block files in order, each ``{"id", "path",
"kind", "runs"}``. ``kind`` "script" runs the file as ``__snippet__`` in a fresh namespace; "dag" parses it
into a ``DagBag`` (no import errors allowed) and runs each of its DAGs with ``dag.test()`` once per entry of
``runs`` (``{"logical_date", "conf"}``; an empty list only parses). The environment (``AIRFLOW_HOME``, the
DAGs folder, ``AIRFLOW_CONN_DIALNEXA_DEFAULT``) comes from the parent. The last stdout line is
``SNIPPET_RESULTS <json>``: ``{block id: null | "what failed"}``.
"""

from __future__ import annotations

import json
import runpy
import sys
import traceback
from datetime import datetime
from typing import Any

RESULT_PREFIX = "SNIPPET_RESULTS "


def _dag_bag(path: str) -> Any:
    from airflow.providers.common.compat.version_compat import AIRFLOW_V_3_0_PLUS

    if AIRFLOW_V_3_0_PLUS:
        from airflow.dag_processing.dagbag import DagBag

        return DagBag(dag_folder=path)
    from airflow.models.dagbag import DagBag  # type: ignore[no-redef]

    return DagBag(dag_folder=path, include_examples=False)  # type: ignore[call-arg]


def _test(dag: Any, run: dict[str, Any]) -> str | None:
    """``dag.test()`` with the run's logical date and conf; None when the run succeeded, else what failed."""
    from airflow.providers.common.compat.version_compat import AIRFLOW_V_3_0_PLUS

    kwargs: dict[str, Any] = {}
    if run.get("conf"):
        kwargs["run_conf"] = run["conf"]
    if run.get("logical_date"):
        date = datetime.fromisoformat(run["logical_date"])
        kwargs["logical_date" if AIRFLOW_V_3_0_PLUS else "execution_date"] = date
    dag_run = dag.test(**kwargs)
    if str(dag_run.state) == "success":
        return None
    failed = sorted(
        f"{ti.task_id}[{ti.map_index}]={ti.state}" for ti in dag_run.get_task_instances() if str(ti.state) != "success"
    )
    return f"dag.test() of {dag.dag_id!r} {kwargs} ended {dag_run.state}: {', '.join(failed)}"


def run_block(block: dict[str, Any]) -> str | None:
    """Run one block; None on success, else a short report (the traceback is printed above it)."""
    try:
        if block["kind"] == "script":
            runpy.run_path(block["path"], run_name="__snippet__")
            return None
        bag = _dag_bag(block["path"])
        if bag.import_errors:
            return "DagBag import errors: " + "; ".join(str(e) for e in bag.import_errors.values())
        if not bag.dags:
            return "the block looks like a DAG but defines none"
        problems = [problem for dag in bag.dags.values() for run in block["runs"] if (problem := _test(dag, run))]
        return "; ".join(problems) or None
    except BaseException as exc:  # report every failure of a block, whatever it is
        traceback.print_exc()
        return f"{type(exc).__name__}: {exc}"


def main(plan_path: str) -> int:
    from airflow.utils import db

    db.initdb()
    with open(plan_path) as file:
        plan = json.load(file)
    results: dict[str, str | None] = {}
    for block in plan:
        print(f"==> block {block['id']}", flush=True)
        results[block["id"]] = run_block(block)
        print(f"<== block {block['id']}: {results[block['id']] or 'ok'}", flush=True)
    print(RESULT_PREFIX + json.dumps(results), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
