"""DialNexaCallSensor: wait for a DialNexa call to end, holding no worker slot while deferred."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import AirflowSensorTimeout, PokeReturnValue, conf

from airflow_provider_dialnexa import status as call_status
from airflow_provider_dialnexa._wait import (
    DEFAULT_CALL_TIMEOUT,
    OutcomeSensor,
    check_wait_options,
    deferral,
    ended_status,
    failure_status_set,
    outcome,
    polling_option,
)
from airflow_provider_dialnexa.hooks.dialnexa import DialNexaHook
from airflow_provider_dialnexa.policy import DEFAULT_MAX_POLL_INTERVAL, DEFAULT_POLL_INTERVAL
from airflow_provider_dialnexa.triggers.dialnexa import DEFAULT_MAX_CONSECUTIVE_FAILURES

__all__ = ["DEFAULT_CALL_TIMEOUT", "DialNexaCallSensor", "failure_status_set", "outcome"]

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context


class DialNexaCallSensor(OutcomeSensor):
    """Wait until a DialNexa call reaches a terminal status; push ``{"call_id", "status"}`` to XCom.

    Every terminal status counts as success unless listed in ``failure_statuses``: for call-outcome
    ETL, ``busy`` and ``no_answer`` are data, not failures.

    In deferrable mode (default: ``[operators] default_deferrable``) the sensor pokes once, and only if
    the call is still running hands the wait to ``DialNexaCallTrigger`` in the triggerer. Poke and
    reschedule modes work as for any sensor. ``soft_fail`` skips only a timeout or a ``failure_statuses``
    match, in every mode (``_wait.OutcomeSensor``).

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

    def _subject(self) -> str:
        return f"DialNexa call {self.call_id!r}"

    def _deferral(self) -> dict[str, Any]:
        return deferral(self, self.poke_interval)

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, str]:
        """Resume after the trigger: return the XCom, or raise the typed error the event stands for."""
        status = ended_status(event, self.call_id, AirflowSensorTimeout)
        return outcome(self.call_id, status, self.failure_statuses)
