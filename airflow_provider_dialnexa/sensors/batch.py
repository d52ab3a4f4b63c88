"""DialNexaBatchSensor: wait for a DialNexa batch call (campaign) to end, holding no worker slot while deferred."""

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
)

from airflow_provider_dialnexa import status as status_
from airflow_provider_dialnexa._batch_wait import (
    DEFAULT_BATCH_FAILURE_STATUSES,
    DEFAULT_BATCH_TIMEOUT,
    batch_deferral,
    batch_failure_statuses,
    batch_outcome,
    ended_batch,
)
from airflow_provider_dialnexa._batches import progress_line, validate_batch_id
from airflow_provider_dialnexa._wait import check_wait_options
from airflow_provider_dialnexa.exceptions import DialNexaBatchFailedError, DialNexaError, DialNexaWaitTimeoutError
from airflow_provider_dialnexa.hooks.dialnexa import DialNexaHook
from airflow_provider_dialnexa.sensors.dialnexa import _AIRFLOW2_DEFERRAL_TIMEOUT, _TRIGGER_FAIL
from airflow_provider_dialnexa.triggers.batch import DEFAULT_BATCH_MAX_POLL_INTERVAL
from airflow_provider_dialnexa.triggers.dialnexa import DEFAULT_MAX_CONSECUTIVE_FAILURES

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context

#: First poll interval of a batch wait, seconds (it grows to ``max_poll_interval``).
DEFAULT_BATCH_POKE_INTERVAL = 60.0


class DialNexaBatchSensor(BaseSensorOperator):
    """Wait until a DialNexa batch has ended; push ``{"batch_id", "status", "total", "progress"}`` to XCom.

    ``completed`` and ``cancelled`` count as success (the calls made are data to load); ``deleted`` and
    ``failed`` fail the task by default (``failure_statuses``). A paused batch is reported at each poll and
    waited for, since someone may resume it; put ``"paused"`` in ``failure_statuses`` to fail (or, with
    ``soft_fail``, skip) as soon as the batch is seen paused instead. As for the call sensor, ``soft_fail``
    skips only a timeout or a declared failure status; every other error fails the task, in every mode.

    Deferrable by default (unlike the call sensor, whatever ``[operators] default_deferrable`` says): a batch
    may run for hours, and a poking sensor would hold a worker slot all that time.

    :param batch_id: DialNexa batch id (templated; e.g. ``"{{ ti.xcom_pull('create_batch')['batch_id'] }}"``).
    :param failure_statuses: Statuses that fail the task (terminal ones, or ``paused``).
    :param poke_interval: First poll interval, seconds (the trigger's grows to ``max_poll_interval``).
    :param timeout: Seconds to wait for the end (default 24 h).
    """

    template_fields: Sequence[str] = ("batch_id", "dialnexa_conn_id")
    ui_color = "#fef3c7"

    def __init__(
        self,
        *,
        batch_id: str,
        dialnexa_conn_id: str = DialNexaHook.default_conn_name,
        failure_statuses: Iterable[str] = DEFAULT_BATCH_FAILURE_STATUSES,
        deferrable: bool = True,
        poke_interval: timedelta | float = DEFAULT_BATCH_POKE_INTERVAL,
        timeout: timedelta | float = DEFAULT_BATCH_TIMEOUT,
        max_poll_interval: float = DEFAULT_BATCH_MAX_POLL_INTERVAL,
        max_consecutive_failures: int = DEFAULT_MAX_CONSECUTIVE_FAILURES,
        **kwargs: Any,
    ) -> None:
        super().__init__(poke_interval=poke_interval, timeout=timeout, **kwargs)
        self.batch_id = batch_id
        self.dialnexa_conn_id = dialnexa_conn_id
        self.failure_statuses = batch_failure_statuses(failure_statuses)
        self.deferrable = deferrable
        self.max_poll_interval = max(max_poll_interval, self.poke_interval)
        self.max_consecutive_failures = max_consecutive_failures
        if deferrable:
            check_wait_options(self.poke_interval, self.max_poll_interval, None)

    @cached_property
    def hook(self) -> DialNexaHook:
        return DialNexaHook(self.dialnexa_conn_id)

    def poke(self, context: Context) -> PokeReturnValue:
        self.batch_id = validate_batch_id(self.batch_id)
        record = self.hook.get_batch_call(self.batch_id)
        status = status_.normalise(record.get("status"))
        phase = status_.batch_phase(status)
        self.log.info("DialNexa batch %r %s", self.batch_id, progress_line(record))
        if phase is status_.BatchPhase.TERMINAL or status in self.failure_statuses:
            return PokeReturnValue(True, batch_outcome(self.batch_id, record, self.failure_statuses))
        if phase is status_.BatchPhase.PAUSED:
            self.log.warning("DialNexa batch %r is paused: it dials nobody until resumed; still waiting", self.batch_id)
        elif phase is status_.BatchPhase.UNKNOWN:
            self.log.warning("DialNexa batch %r has undocumented status %r; still waiting", self.batch_id, status)
        return PokeReturnValue(False)

    def execute(self, context: Context) -> Any:
        if not self.deferrable:
            return super().execute(context)
        try:
            first = self.poke(context)
        except DialNexaBatchFailedError as exc:  # as in poke mode: soft_fail/never_fail skip a declared failure
            if self.soft_fail or getattr(self, "never_fail", False):
                raise AirflowSkipException(f"Skipping due to soft_fail: {exc}") from exc
            raise
        if first.is_done:
            return first.xcom_value
        self.defer(**batch_deferral(self, self.batch_id, self.poke_interval))

    def resume_execution(self, next_method: str, next_kwargs: dict[str, Any] | None, context: Context) -> Any:
        """Resume after the trigger, where ``soft_fail`` skips only a timeout or a ``failure_statuses`` match
        (see ``DialNexaCallSensor.resume_execution``: Airflow would skip on any error)."""
        if next_method == _TRIGGER_FAIL and (next_kwargs or {}).get("error") == _AIRFLOW2_DEFERRAL_TIMEOUT:
            timeout = AirflowSensorTimeout(f"DialNexa batch {self.batch_id!r} did not end within the sensor's timeout")
            if self.soft_fail:
                raise AirflowSkipException(f"Skipping due to soft_fail: {timeout}") from timeout
            raise timeout
        try:
            return super().resume_execution(next_method, next_kwargs, context)
        except AirflowSkipException as skip:
            error = skip.__cause__
            skippable = (DialNexaBatchFailedError, DialNexaWaitTimeoutError)
            if self.soft_fail and isinstance(error, DialNexaError) and not isinstance(error, skippable):
                raise error from None
            raise

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        """Resume after the trigger: return the XCom, or raise the typed error the event stands for."""
        checked = ended_batch(event, self.batch_id, AirflowSensorTimeout)
        return batch_outcome(self.batch_id, checked, self.failure_statuses)
