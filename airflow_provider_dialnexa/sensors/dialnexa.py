"""DialNexaCallSensor: wait for a DialNexa call to end, holding no worker slot while deferred."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import AirflowSensorTimeout, BaseSensorOperator, PokeReturnValue, conf

from airflow_provider_dialnexa import status as call_status
from airflow_provider_dialnexa.exceptions import DialNexaCallFailedError, error_from_event
from airflow_provider_dialnexa.hooks.dialnexa import DialNexaHook
from airflow_provider_dialnexa.policy import DEFAULT_MAX_POLL_INTERVAL, DEFAULT_POLL_INTERVAL, PollPolicy
from airflow_provider_dialnexa.triggers.dialnexa import (
    DEFAULT_MAX_CONSECUTIVE_FAILURES,
    ERROR,
    TIMEOUT,
    DialNexaCallTrigger,
    validate_event,
)

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context

#: Default sensor timeout: a DialNexa call lasts at most 90 minutes (agent ``max_call_duration_sec``
#: tops out at 5,400 s), plus up to 30 minutes of queueing and ringing.
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
        self.polling = polling
        if deferrable:  # fail at parse time, not in the triggerer
            PollPolicy(self.poke_interval, self.max_poll_interval)

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
        first = self.poke(context)
        if first.is_done:
            return first.xcom_value
        self.defer(
            trigger=DialNexaCallTrigger(
                call_id=self.call_id,
                dialnexa_conn_id=self.dialnexa_conn_id,
                poll_interval=self.poke_interval,
                end_time=time.time() + self.timeout,
                max_poll_interval=self.max_poll_interval,
                max_consecutive_failures=self.max_consecutive_failures,
                polling=self.polling,
            ),
            method_name="execute_complete",
            timeout=timedelta(seconds=self.timeout),
        )

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, str]:
        """Resume after the trigger: return the XCom, or raise the typed error the event stands for."""
        checked = validate_event(event, self.call_id)
        if checked["event"] == TIMEOUT:
            raise AirflowSensorTimeout(checked.get("message") or f"DialNexa call {self.call_id!r} did not end in time")
        if checked["event"] == ERROR:
            raise error_from_event(checked)
        return outcome(self.call_id, checked["status"], self.failure_statuses)
