"""DialNexaCallSensor: wait for a DialNexa call to end, holding no worker slot while deferred."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import (
    AirflowSensorTimeout,
    AirflowSkipException,
    BaseSensorOperator,
    PokeReturnValue,
    conf,
)

from airflow_provider_dialnexa import status as call_status
from airflow_provider_dialnexa._wait import (
    DEFAULT_CALL_TIMEOUT,
    check_wait_options,
    deferral,
    ended_status,
    failure_status_set,
    outcome,
    polling_option,
)
from airflow_provider_dialnexa.exceptions import DialNexaCallFailedError, DialNexaWaitTimeoutError
from airflow_provider_dialnexa.hooks.dialnexa import DialNexaHook
from airflow_provider_dialnexa.policy import DEFAULT_MAX_POLL_INTERVAL, DEFAULT_POLL_INTERVAL
from airflow_provider_dialnexa.triggers.dialnexa import DEFAULT_MAX_CONSECUTIVE_FAILURES

__all__ = ["DEFAULT_CALL_TIMEOUT", "DialNexaCallSensor", "failure_status_set", "outcome"]

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context

#: ``next_method`` and ``next_kwargs["error"]`` of a task Airflow 2.11's scheduler resumes because its deferral
#: timed out (``SchedulerJobRunner.check_trigger_timeouts``). Airflow 3 says ``TriggerFailureReason``.
_TRIGGER_FAIL = "__fail__"
_AIRFLOW2_DEFERRAL_TIMEOUT = "Trigger/execution timeout"


def _skips(error: BaseException) -> bool:
    """Whether ``soft_fail`` may turn ``error`` (what a skip on resume chains) into a skip."""
    return isinstance(
        error, AirflowSensorTimeout | DialNexaWaitTimeoutError | DialNexaCallFailedError | AirflowSkipException
    )


class DialNexaCallSensor(BaseSensorOperator):
    """Wait until a DialNexa call reaches a terminal status; push ``{"call_id", "status"}`` to XCom.

    Every terminal status counts as success unless listed in ``failure_statuses``: for call-outcome
    ETL, ``busy`` and ``no_answer`` are data, not failures.

    In deferrable mode (default: ``[operators] default_deferrable``) the sensor pokes once, and only if
    the call is still running hands the wait to ``DialNexaCallTrigger`` in the triggerer. Poke and
    reschedule modes work as for any sensor.

    :param call_id: DialNexa call id (templated: params, XCom, or ``.expand(call_id=[...])``).
    :param dialnexa_conn_id: Airflow connection id (templated).
    :param failure_statuses: Terminal statuses that fail the task (e.g. ``{"failed"}``); ``soft_fail``
        turns that failure into a skip.
    :param deferrable: Wait in the triggerer instead of a worker slot.
    :param poke_interval: Seconds between polls (the first trigger interval; >= 1 s in deferrable mode).
    :param timeout: Seconds to wait for the call to end (default 2 h: 90 min of call plus queueing).
    :param max_poll_interval: Cap of the trigger's growing poll interval.
    :param max_consecutive_failures: Transient poll failures the trigger survives in a row.
    :param polling: Trigger polling mode (``batched``/``per_call``; None = connection extra).
    """

    template_fields: Sequence[str] = ("call_id", "dialnexa_conn_id")
    ui_color = "#dbeafe"

    def __init__(
        self,
        *,
        call_id: str,
        dialnexa_conn_id: str = DialNexaHook.default_conn_name,
        failure_statuses: Iterable[str] = (),
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        poke_interval: timedelta | float = DEFAULT_POLL_INTERVAL,
        timeout: timedelta | float = DEFAULT_CALL_TIMEOUT,
        max_poll_interval: float = DEFAULT_MAX_POLL_INTERVAL,
        max_consecutive_failures: int = DEFAULT_MAX_CONSECUTIVE_FAILURES,
        polling: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(poke_interval=poke_interval, timeout=timeout, **kwargs)
        self.call_id = call_id
        self.dialnexa_conn_id = dialnexa_conn_id
        self.failure_statuses = failure_status_set(failure_statuses)
        self.deferrable = deferrable
        self.max_poll_interval = max(max_poll_interval, self.poke_interval)
        self.max_consecutive_failures = max_consecutive_failures
        self.polling = polling_option(polling, self.task_id)  # a typo fails at parse time in every mode
        if deferrable:  # fail at parse time, not in the triggerer
            check_wait_options(self.poke_interval, self.max_poll_interval, polling)

    @cached_property
    def hook(self) -> DialNexaHook:
        return DialNexaHook(self.dialnexa_conn_id)

    def poke(self, context: Context) -> PokeReturnValue:
        record = self.hook.get_call(self.call_id)
        raw = record.get("status")
        phase = call_status.phase(raw)
        self.log.info("DialNexa call %r status: %r", self.call_id, raw)
        if phase is call_status.Phase.TERMINAL:
            return PokeReturnValue(True, outcome(self.call_id, raw, self.failure_statuses))
        if phase is call_status.Phase.UNKNOWN:
            self.log.warning("DialNexa call %r has undocumented status %r; still waiting", self.call_id, raw)
        return PokeReturnValue(False)

    def execute(self, context: Context) -> Any:
        if not self.deferrable:
            return super().execute(context)
        try:
            first = self.poke(context)
        except DialNexaCallFailedError as exc:  # as in poke mode: soft_fail/never_fail skip a declared failure
            if self.soft_fail or getattr(self, "never_fail", False):
                raise AirflowSkipException(f"Skipping due to soft_fail: {exc}") from exc
            raise
        if first.is_done:
            return first.xcom_value
        self.defer(**deferral(self, self.poke_interval))

    def resume_execution(self, next_method: str, next_kwargs: dict[str, Any] | None, context: Context) -> Any:
        """Resume after the trigger, where ``soft_fail`` skips only a timeout or a ``failure_statuses`` match.

        Airflow's sensor (2.x and 3.x alike) turns *any* ``AirflowException`` or ``TaskDeferralError`` raised on
        resume into a skip under ``soft_fail``: a trigger that failed (the triggerer could not run it; Airflow
        resumes the task with ``__fail__``), an auth, not-found or server error would all skip in deferrable
        mode where poke mode fails. The skip it raises chains the original error; unless that error is a
        timeout (``AirflowSensorTimeout``, ``DialNexaWaitTimeoutError``) or a declared failure
        (``DialNexaCallFailedError``), it is raised again instead, failing the task in every mode.
        ``never_fail`` keeps Airflow's meaning (skip on any error).

        Airflow 2.11 fails a deferral that outlived ``timeout`` with a generic, retried ``TaskDeferralError``;
        that becomes ``AirflowSensorTimeout`` (final, or a skip with ``soft_fail``) as on Airflow 3.
        """
        if next_method == _TRIGGER_FAIL and (next_kwargs or {}).get("error") == _AIRFLOW2_DEFERRAL_TIMEOUT:
            timeout = AirflowSensorTimeout(f"DialNexa call {self.call_id!r} did not end within the sensor's timeout")
            if self.soft_fail:
                raise AirflowSkipException(f"Skipping due to soft_fail: {timeout}") from timeout
            raise timeout
        try:
            return super().resume_execution(next_method, next_kwargs, context)
        except AirflowSkipException as skip:
            error = skip.__cause__
            if self.soft_fail and not getattr(self, "never_fail", False) and error is not None and not _skips(error):
                raise error from None
            raise

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, str]:
        """Resume after the trigger: return the XCom, or raise the typed error the event stands for."""
        status = ended_status(event, self.call_id, AirflowSensorTimeout)
        return outcome(self.call_id, status, self.failure_statuses)
