"""What the batch sensor and the create-batch operator share about waiting: defaults, checks, deferral, outcome."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from datetime import timedelta
from typing import Any, Protocol

from airflow_provider_dialnexa import status as status_
from airflow_provider_dialnexa._batches import progress
from airflow_provider_dialnexa.exceptions import DialNexaBatchFailedError, error_from_event
from airflow_provider_dialnexa.triggers.batch import DialNexaBatchTrigger, validate_batch_event
from airflow_provider_dialnexa.triggers.dialnexa import ERROR, TIMEOUT

#: Default wait: a campaign dials for hours, retries unanswered leads later, and may first wait for others.
DEFAULT_BATCH_TIMEOUT = 24 * 60 * 60
#: Ended statuses that fail a task by default: nothing to export from a deleted or failed batch.
DEFAULT_BATCH_FAILURE_STATUSES = ("deleted", "failed")


def batch_failure_statuses(statuses: Iterable[str]) -> frozenset[str]:
    """Normalise ``failure_statuses`` of a batch wait (terminal statuses, or ``paused``), at DAG parse time."""
    if isinstance(statuses, str):
        statuses = [statuses]
    normalised = frozenset(status_.normalise(s) for s in statuses)
    allowed = status_.BATCH_TERMINAL | status_.BATCH_PAUSED
    wrong = sorted(normalised - allowed)
    if wrong:
        raise ValueError(f"failure_statuses {wrong} cannot end a DialNexa batch; choose from {sorted(allowed)}")
    return normalised


def batch_outcome(batch_id: str, record: Mapping[str, Any], failure_statuses: frozenset[str]) -> dict[str, Any]:
    """The XCom of a batch that has ended (or paused), or ``DialNexaBatchFailedError`` for a declared failure."""
    status = status_.normalise(record.get("status"))
    if status in failure_statuses:
        raise DialNexaBatchFailedError(
            f"DialNexa batch {batch_id!r} is {status!r}, which this task treats as a failure "
            f"(failure_statuses={sorted(failure_statuses)})"
        )
    carried = record.get("progress")
    numbers = carried if isinstance(carried, dict) else progress(record)
    return {"batch_id": batch_id, "status": status, "total": numbers.get("total"), "progress": numbers}


class BatchWaitingTask(Protocol):
    """What a task that waits for a batch carries."""

    @property
    def dialnexa_conn_id(self) -> str: ...
    @property
    def timeout(self) -> float: ...
    @property
    def max_poll_interval(self) -> float: ...
    @property
    def max_consecutive_failures(self) -> int: ...
    @property
    def failure_statuses(self) -> frozenset[str]: ...


def batch_deferral(
    task: BatchWaitingTask, batch_id: str, poll_interval: float, resume_with: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Keyword arguments of ``task.defer(...)``: the batch trigger with a wall-clock deadline, the same timeout."""
    trigger = DialNexaBatchTrigger(
        batch_id=batch_id,
        dialnexa_conn_id=task.dialnexa_conn_id,
        poll_interval=poll_interval,
        end_time=time.time() + task.timeout,
        max_poll_interval=task.max_poll_interval,
        max_consecutive_failures=task.max_consecutive_failures,
        stop_statuses=sorted(task.failure_statuses & status_.BATCH_PAUSED),
        resume_with=resume_with,
    )
    return {"trigger": trigger, "method_name": "execute_complete", "timeout": timedelta(seconds=task.timeout)}


def ended_batch(event: Any, batch_id: str | None, on_timeout: Callable[[str], Exception]) -> dict[str, Any]:
    """A resumed task's event of an ended batch; raise what a timeout or error event means."""
    checked = validate_batch_event(event, batch_id)
    if checked["event"] == TIMEOUT:
        raise on_timeout(checked.get("message") or f"DialNexa batch {batch_id!r} did not end in time")
    if checked["event"] == ERROR:
        raise error_from_event(checked)
    return checked
