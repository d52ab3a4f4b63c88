"""What the sensors and the operators share about waiting: defaults, validation, deferral, outcome, soft_fail.

Waiting for a call and waiting for a batch differ in their trigger and their statuses; the deferral (a trigger with
a wall-clock deadline and the same timeout), reading the event a task resumes with, the failure-status check and
when ``soft_fail`` may skip are the same, so they live here once. The batch's own parts are in ``_batch_wait``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol

from airflow.providers.common.compat.sdk import (
    AirflowSensorTimeout,
    AirflowSkipException,
    BaseSensorOperator,
    PokeReturnValue,
)

from airflow_provider_dialnexa import status as call_status
from airflow_provider_dialnexa._connection import polling_mode
from airflow_provider_dialnexa.exceptions import (
    DialNexaBatchFailedError,
    DialNexaCallFailedError,
    DialNexaWaitTimeoutError,
    error_from_event,
)
from airflow_provider_dialnexa.policy import PollPolicy
from airflow_provider_dialnexa.triggers.dialnexa import ERROR, TIMEOUT, DialNexaCallTrigger, validate_event

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context
    from airflow.triggers.base import BaseTrigger

#: Default wait: a DialNexa call lasts at most 90 minutes (agent ``max_call_duration_sec`` tops out at
#: 5,400 s), plus up to 30 minutes of queueing and ringing.
DEFAULT_CALL_TIMEOUT = 2 * 60 * 60
#: ``next_method`` and ``next_kwargs["error"]`` of a task Airflow 2.11's scheduler resumes because its deferral
#: timed out (``SchedulerJobRunner.check_trigger_timeouts``). Airflow 3 says ``TriggerFailureReason``.
TRIGGER_FAIL = "__fail__"
AIRFLOW2_DEFERRAL_TIMEOUT = "Trigger/execution timeout"
#: Errors that mean "the wait ended in a status the task declared a failure" (``failure_statuses``).
DECLARED_FAILURES = (DialNexaCallFailedError, DialNexaBatchFailedError)
#: What ``soft_fail`` may turn into a skip (what a skip on resume chains): a timeout, or a declared failure.
SKIPPABLE = (AirflowSensorTimeout, DialNexaWaitTimeoutError, AirflowSkipException, *DECLARED_FAILURES)


def status_set(statuses: Iterable[str], allowed: frozenset[str], problem: str) -> frozenset[str]:
    """Normalise ``failure_statuses``; reject any not in ``allowed`` (at DAG parse time), saying ``problem``."""
    if isinstance(statuses, str):
        statuses = [statuses]
    normalised = frozenset(call_status.normalise(s) for s in statuses)
    wrong = sorted(normalised - allowed)
    if wrong:
        raise ValueError(f"failure_statuses {wrong} {problem}; choose from {sorted(allowed)}")
    return normalised


def failure_status_set(statuses: Iterable[str]) -> frozenset[str]:
    """Normalise ``failure_statuses``; reject statuses that can never end a call (at DAG parse time)."""
    return status_set(statuses, call_status.TERMINAL, "are not terminal DialNexa statuses")


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
    """What a task that waits (for a call or a batch) carries."""

    @property
    def dialnexa_conn_id(self) -> str: ...
    @property
    def timeout(self) -> float: ...
    @property
    def max_poll_interval(self) -> float: ...
    @property
    def max_consecutive_failures(self) -> int: ...


class WaitingForCall(WaitingTask, Protocol):
    """What a task that waits for a call (sensor, operator) carries besides."""

    @property
    def call_id(self) -> str: ...
    @property
    def polling(self) -> str | None: ...


def defer_to(trigger: BaseTrigger, timeout: float) -> dict[str, Any]:
    """Keyword arguments of ``task.defer(...)``: the trigger, resuming in ``execute_complete``, and the timeout."""
    return {"trigger": trigger, "method_name": "execute_complete", "timeout": timedelta(seconds=timeout)}


def deadline(task: WaitingTask) -> float:
    """The wall-clock end of a wait that starts now (epoch seconds: worker and triggerer are other processes)."""
    return time.time() + task.timeout


def deferral(task: WaitingForCall, poll_interval: float) -> dict[str, Any]:
    """Keyword arguments of ``task.defer(...)``: the call trigger with a wall-clock deadline, and the same timeout."""
    trigger = DialNexaCallTrigger(
        call_id=task.call_id,
        dialnexa_conn_id=task.dialnexa_conn_id,
        poll_interval=poll_interval,
        end_time=deadline(task),
        max_poll_interval=task.max_poll_interval,
        max_consecutive_failures=task.max_consecutive_failures,
        polling=task.polling,
    )
    return defer_to(trigger, task.timeout)


def raise_for_event(checked: dict[str, Any], on_timeout: Callable[[str], Exception], late: str) -> dict[str, Any]:
    """A checked event that ended the wait; raise what a timeout (``late``: its default message) or error means."""
    if checked["event"] == TIMEOUT:
        raise on_timeout(checked.get("message") or late)
    if checked["event"] == ERROR:
        raise error_from_event(checked)
    return checked


def ended_status(event: Any, call_id: str, on_timeout: Callable[[str], Exception]) -> object:
    """The raw terminal status a resumed task's event reports; raise what a timeout or error event means."""
    checked = raise_for_event(
        validate_event(event, call_id), on_timeout, f"DialNexa call {call_id!r} did not end in time"
    )
    return checked["status"]


class OutcomeSensor(BaseSensorOperator):
    """Base of the DialNexa sensors: deferrable after one poke, and ``soft_fail`` skips only a timeout or a
    ``failure_statuses`` match, in every mode (every other error fails the task).

    A subclass gives ``poke``, ``execute_complete``, ``_deferral`` (its ``defer`` keyword arguments) and
    ``_subject`` (``DialNexa call 'call_x'``) and sets ``deferrable``.
    """

    deferrable: bool

    def poke(self, context: Context) -> PokeReturnValue:
        raise NotImplementedError

    def _subject(self) -> str:
        raise NotImplementedError

    def _deferral(self) -> dict[str, Any]:
        raise NotImplementedError

    def execute(self, context: Context) -> Any:
        if not self.deferrable:
            return super().execute(context)
        try:
            first = self.poke(context)
        except DECLARED_FAILURES as exc:  # as in poke mode: soft_fail/never_fail skip a declared failure
            if self.soft_fail or getattr(self, "never_fail", False):
                raise AirflowSkipException(f"Skipping due to soft_fail: {exc}") from exc
            raise
        if first.is_done:
            return first.xcom_value
        self.defer(**self._deferral())

    def resume_execution(self, next_method: str, next_kwargs: dict[str, Any] | None, context: Context) -> Any:
        """Resume after the trigger, where ``soft_fail`` skips only a timeout or a ``failure_statuses`` match.

        Airflow's sensor (2.x and 3.x alike) turns *any* ``AirflowException`` or ``TaskDeferralError`` raised on
        resume into a skip under ``soft_fail``: a trigger that failed (the triggerer could not run it; Airflow
        resumes the task with ``__fail__``), an auth, not-found or server error would all skip in deferrable
        mode where poke mode fails. The skip it raises chains the original error; unless that error is a
        timeout (``AirflowSensorTimeout``, ``DialNexaWaitTimeoutError``) or a declared failure
        (``DialNexaCallFailedError``, ``DialNexaBatchFailedError``), it is raised again instead, failing the task
        in every mode. ``never_fail`` keeps Airflow's meaning (skip on any error).

        Airflow 2.11 fails a deferral that outlived ``timeout`` with a generic, retried ``TaskDeferralError``;
        that becomes ``AirflowSensorTimeout`` (final, or a skip with ``soft_fail``) as on Airflow 3.
        """
        if next_method == TRIGGER_FAIL and (next_kwargs or {}).get("error") == AIRFLOW2_DEFERRAL_TIMEOUT:
            timeout = AirflowSensorTimeout(f"{self._subject()} did not end within the sensor's timeout")
            if self.soft_fail:
                raise AirflowSkipException(f"Skipping due to soft_fail: {timeout}") from timeout
            raise timeout
        try:
            return super().resume_execution(next_method, next_kwargs, context)
        except AirflowSkipException as skip:
            error = skip.__cause__
            if (
                self.soft_fail
                and not getattr(self, "never_fail", False)
                and error is not None
                and not isinstance(error, SKIPPABLE)
            ):
                raise error from None
            raise
