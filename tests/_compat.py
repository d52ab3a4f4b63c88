"""What the tests need from Airflow, on both supported lines (3.x with the Task SDK, and 2.11).

Production code imports through ``airflow.providers.common.compat``; the tests also reach for a few
things compat does not cover (serde, DagBag, the XCom table, log capture). Each is imported here once,
so a test file reads the same on both lines and says ``AIRFLOW_V_3`` only where behaviour differs.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any, TypeVar

from airflow import __version__ as AIRFLOW_VERSION
from airflow.providers.common.compat.sdk import DAG, Connection, TaskDeferred
from airflow.providers.common.compat.version_compat import AIRFLOW_V_3_0_PLUS

#: True on Airflow 3 (Task SDK), False on Airflow 2.11.
AIRFLOW_V_3: bool = AIRFLOW_V_3_0_PLUS

if AIRFLOW_V_3:
    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.xcom import XComModel
    from airflow.sdk.module_loading import import_string  # type: ignore[attr-defined]
    from airflow.sdk.serde import deserialize, serialize
else:  # pragma: no cover - Airflow 2.11 leg
    from airflow.models.dagbag import DagBag  # type: ignore[no-redef]
    from airflow.models.xcom import XCom as XComModel  # type: ignore[no-redef]
    from airflow.serialization.serde import deserialize, serialize  # type: ignore[no-redef]
    from airflow.utils.module_loading import import_string  # type: ignore[no-redef]

T = TypeVar("T")

#: ``next_method`` of a task the scheduler resumes only to fail it (a deferral timed out), on both lines.
TRIGGER_FAIL_REPR = "__fail__"


def dag_bag(folder: str) -> DagBag:
    """Parse ``folder`` only: Airflow 3.3's DagBag never adds example DAGs, 2.11's must be told not to."""
    if AIRFLOW_V_3:
        return DagBag(dag_folder=folder)
    return DagBag(dag_folder=folder, include_examples=False)  # type: ignore[call-arg]


def trigger_timeout_kwargs() -> dict[str, Any]:
    """``next_kwargs`` the scheduler stores when a deferred task's ``defer(timeout=...)`` passes."""
    if AIRFLOW_V_3:
        from airflow.sdk.bases.operator import TriggerFailureReason

        return {"error": TriggerFailureReason.TRIGGER_TIMEOUT}
    return {"error": "Trigger/execution timeout"}  # what 2.11's scheduler writes (check_trigger_timeouts)


def trigger_failure_kwargs() -> dict[str, Any]:
    """``next_kwargs`` Airflow's triggerer stores when a trigger fails (``Trigger.submit_failure``)."""
    traceback = ["Traceback (most recent call last):\n", "RuntimeError: the triggerer could not run the trigger\n"]
    if AIRFLOW_V_3:
        from airflow.sdk.bases.operator import TriggerFailureReason

        return {"error": TriggerFailureReason.TRIGGER_FAILURE, "traceback": traceback}
    return {"error": "Trigger failure", "traceback": traceback}


def task_deferral_error() -> type[Exception]:
    """What a task resumed after its trigger failed raises (``TaskDeferralError``, spelled per line)."""
    if AIRFLOW_V_3:
        from airflow.sdk.exceptions import TaskDeferralError
    else:  # pragma: no cover - Airflow 2.11 leg
        from airflow.exceptions import TaskDeferralError  # type: ignore[no-redef]
    return TaskDeferralError


def in_any_thread(func: Callable[..., T]) -> Callable[..., T]:
    """``func`` (e.g. ``operator.execute``) made callable from a thread other than the main one.

    Airflow 2.11's ``ExecutorSafeguard`` (which warns when ``execute`` runs outside a task instance) keeps
    thread-local state that only the importing thread has, so a direct call from ``asyncio.to_thread`` fails
    with an AttributeError that real tasks (main thread) never see.
    """
    if AIRFLOW_V_3:
        return func

    @functools.wraps(func)
    def call(*args: Any, **kwargs: Any) -> T:
        from airflow.models.baseoperator import ExecutorSafeguard

        if not hasattr(ExecutorSafeguard._sentinel, "callers"):
            ExecutorSafeguard._sentinel.callers = {}
        return func(*args, **kwargs)

    return call


class _ListHandler(logging.Handler):
    def __init__(self, events: list[MutableMapping[str, Any]]) -> None:
        super().__init__(logging.DEBUG)
        self.events = events
        self.last: logging.LogRecord | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if record is self.last:  # one record reaches both loggers the handler sits on, one after the other
            return
        self.last = record
        self.events.append({"event": record.getMessage(), "log_level": record.levelname.lower(), "logger": record.name})


@contextmanager
def capture_logs() -> Iterator[list[MutableMapping[str, Any]]]:
    """Log events (``{"event", "log_level", ...}``) emitted inside the block, from hooks, triggers and tasks.

    Airflow 3 logs through structlog; Airflow 2 through the standard library, where ``airflow.task`` may not
    propagate to the root logger (its logging config decides), so the handler sits on both, counting a record once.
    """
    if AIRFLOW_V_3:
        from structlog.testing import capture_logs as structlog_capture

        with structlog_capture() as structlog_events:
            yield structlog_events
        return
    events: list[MutableMapping[str, Any]] = []
    handler = _ListHandler(events)
    loggers = [logging.getLogger(), logging.getLogger("airflow.task")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield events
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


def return_values(run_id: str, dag_id: str) -> dict[str, dict[int, Any]]:
    """The ``return_value`` XComs of one DAG run, by task id and map index (-1 for unmapped tasks)."""
    from airflow.utils.session import create_session

    values: dict[str, dict[int, Any]] = {}
    with create_session() as session:
        if AIRFLOW_V_3:
            rows: list[Any] = list(
                session.scalars(XComModel.get_many(run_id=run_id, dag_ids=dag_id, key="return_value"))
            )
        else:  # Airflow 2.11: get_many returns a Query bound to the session it is given
            rows = list(XComModel.get_many(run_id=run_id, dag_ids=dag_id, key="return_value", session=session))  # type: ignore[call-arg,call-overload]
        for row in rows:
            # Airflow 2.11's model deserializes the value when it loads the row
            value = XComModel.deserialize_value(row) if AIRFLOW_V_3 else row.value
            values.setdefault(row.task_id, {})[row.map_index] = value
    return values


__all__ = [
    "AIRFLOW_VERSION",
    "AIRFLOW_V_3",
    "DAG",
    "TRIGGER_FAIL_REPR",
    "Connection",
    "DagBag",
    "TaskDeferred",
    "XComModel",
    "capture_logs",
    "dag_bag",
    "deserialize",
    "import_string",
    "in_any_thread",
    "return_values",
    "serialize",
    "task_deferral_error",
    "trigger_failure_kwargs",
    "trigger_timeout_kwargs",
]
