"""What is particular to waiting for a batch (sensor and create-batch operator): defaults, statuses, trigger, outcome.

Everything else about waiting (the deferral, reading the resumed event, ``soft_fail``) is ``_wait``'s.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from airflow_provider_dialnexa import status as status_
from airflow_provider_dialnexa._batches import progress
from airflow_provider_dialnexa._wait import WaitingTask, deadline, defer_to, raise_for_event, status_set
from airflow_provider_dialnexa.exceptions import DialNexaBatchFailedError
from airflow_provider_dialnexa.triggers.batch import DialNexaBatchTrigger, validate_batch_event

#: Default wait: a campaign dials for hours, retries unanswered leads later, and may first wait for others.
DEFAULT_BATCH_TIMEOUT = 24 * 60 * 60
#: Ended statuses that fail a task by default: nothing to export from a deleted or failed batch.
DEFAULT_BATCH_FAILURE_STATUSES = ("deleted", "failed")


def batch_failure_statuses(statuses: Iterable[str]) -> frozenset[str]:
    """Normalise ``failure_statuses`` of a batch wait (terminal statuses, or ``paused``), at DAG parse time."""
    return status_set(statuses, status_.BATCH_TERMINAL | status_.BATCH_PAUSED, "cannot end a DialNexa batch")


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


class BatchWaitingTask(WaitingTask, Protocol):
    """What a task that waits for a batch carries besides."""

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
        end_time=deadline(task),
        max_poll_interval=task.max_poll_interval,
        max_consecutive_failures=task.max_consecutive_failures,
        stop_statuses=sorted(task.failure_statuses & status_.BATCH_PAUSED),
        resume_with=resume_with,
    )
    return defer_to(trigger, task.timeout)


def ended_batch(event: Any, batch_id: str | None, on_timeout: Callable[[str], Exception]) -> dict[str, Any]:
    """A resumed task's event of an ended batch; raise what a timeout or error event means."""
    late = f"DialNexa batch {batch_id!r} did not end in time"
    return raise_for_event(validate_batch_event(event, batch_id), on_timeout, late)
