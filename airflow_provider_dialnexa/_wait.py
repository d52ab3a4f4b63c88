"""What the sensor and the operator share about waiting for a call: defaults, validation, deferral, outcome."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any, Protocol

from airflow_provider_dialnexa import status as call_status
from airflow_provider_dialnexa._connection import polling_mode
from airflow_provider_dialnexa.exceptions import DialNexaCallFailedError, error_from_event
from airflow_provider_dialnexa.policy import PollPolicy
from airflow_provider_dialnexa.triggers.dialnexa import ERROR, TIMEOUT, DialNexaCallTrigger, validate_event

#: Default wait: a DialNexa call lasts at most 90 minutes (agent ``max_call_duration_sec`` tops out at
#: 5,400 s), plus up to 30 minutes of queueing and ringing.
DEFAULT_CALL_TIMEOUT = 2 * 60 * 60


def failure_status_set(statuses: Iterable[str]) -> frozenset[str]:
    """Normalise ``failure_statuses``; reject statuses that can never end a call (at DAG parse time)."""
    if isinstance(statuses, str):
        statuses = [statuses]
    normalised = frozenset(call_status.normalise(s) for s in statuses)
    wrong = sorted(normalised - call_status.TERMINAL)
    if wrong:
        raise ValueError(
            f"failure_statuses {wrong} are not terminal DialNexa statuses; choose from {sorted(call_status.TERMINAL)}"
        )
    return normalised


def check_wait_options(poll_interval: float, max_poll_interval: float, polling: str | None) -> None:
    """Reject a poll policy or polling mode the trigger would refuse, at DAG parse time, not in the triggerer."""
    PollPolicy(poll_interval, max_poll_interval)
    polling_option(polling)


def polling_option(polling: object, task_id: str | None = None) -> str | None:
    """A task's ``polling`` argument, checked when the DAG is parsed: None (the connection's extra) or a mode."""
    where = f"Task {task_id!r}: polling" if task_id else "polling"
    return None if polling is None else polling_mode(polling, where, or_none=True)


def outcome(call_id: str, raw_status: object, failure_statuses: frozenset[str]) -> dict[str, str]:
    """The small XCom of a finished wait, or ``DialNexaCallFailedError`` for a status declared a failure."""
    status = call_status.normalise(raw_status)
    if status in failure_statuses:
        raise DialNexaCallFailedError(
            f"DialNexa call {call_id!r} ended with status {status!r}, which this task treats as a failure "
            f"(failure_statuses={sorted(failure_statuses)})",
            call_id=call_id,
        )
    return {"call_id": call_id, "status": status}


class WaitingTask(Protocol):
    """What a task that waits for a call (sensor, operator) carries."""

    @property
    def call_id(self) -> str: ...
    @property
    def dialnexa_conn_id(self) -> str: ...
    @property
    def timeout(self) -> float: ...
    @property
    def max_poll_interval(self) -> float: ...
    @property
    def max_consecutive_failures(self) -> int: ...
    @property
    def polling(self) -> str | None: ...


def deferral(task: WaitingTask, poll_interval: float) -> dict[str, Any]:
    """Keyword arguments of ``task.defer(...)``: the trigger with a wall-clock deadline, and the same timeout."""
    trigger = DialNexaCallTrigger(
        call_id=task.call_id,
        dialnexa_conn_id=task.dialnexa_conn_id,
        poll_interval=poll_interval,
        end_time=time.time() + task.timeout,
        max_poll_interval=task.max_poll_interval,
        max_consecutive_failures=task.max_consecutive_failures,
        polling=task.polling,
    )
    return {"trigger": trigger, "method_name": "execute_complete", "timeout": timedelta(seconds=task.timeout)}


def ended_status(event: Any, call_id: str, on_timeout: Callable[[str], Exception]) -> object:
    """The raw terminal status a resumed task's event reports; raise what a timeout or error event means."""
    checked = validate_event(event, call_id)
    if checked["event"] == TIMEOUT:
        raise on_timeout(checked.get("message") or f"DialNexa call {call_id!r} did not end in time")
    if checked["event"] == ERROR:
        raise error_from_event(checked)
    return checked["status"]
