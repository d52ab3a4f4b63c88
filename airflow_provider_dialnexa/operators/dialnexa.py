"""DialNexaGetCallOperator: fetch a DialNexa call record into XCom, optionally waiting for the call to end.

DialNexaCreateCallOperator: place a call at most once per task instance, optionally waiting for it to end.
Every other operator lives in its own module and is importable from here too: ``DialNexaExportCallsOperator``
(``operators.export``), ``DialNexaCreateBatchCallOperator`` and ``DialNexaExportBatchCallsOperator``
(``operators.batch``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import BaseOperator

from airflow_provider_dialnexa import status as call_status
from airflow_provider_dialnexa._export_assets import export_alias as export_alias  # public: schedule on it
from airflow_provider_dialnexa._lineage import calls_lineage, resolved_base_url
from airflow_provider_dialnexa._mapping import CheckedPartial
from airflow_provider_dialnexa._paging import as_utc
from airflow_provider_dialnexa._placement import CORRELATION_KEY
from airflow_provider_dialnexa._validation import arrives_at_run_time, validate_phone_number
from airflow_provider_dialnexa._wait import (
    DEFAULT_CALL_TIMEOUT,
    check_wait_options,
    deferral,
    ended_status,
    failure_status_set,
    outcome,
    polling_option,
)
from airflow_provider_dialnexa.exceptions import (
    DialNexaWaitTimeoutError,
)
from airflow_provider_dialnexa.hooks.dialnexa import DialNexaHook
from airflow_provider_dialnexa.policy import DEFAULT_MAX_POLL_INTERVAL, DEFAULT_POLL_INTERVAL
from airflow_provider_dialnexa.records import field_options, mask_phone_number, shape_record
from airflow_provider_dialnexa.triggers.dialnexa import (
    DEFAULT_MAX_CONSECUTIVE_FAILURES,
)

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context, XComArg
    from airflow.providers.openlineage.extractors import OperatorLineage


class DialNexaGetCallOperator(BaseOperator):
    """Read one call record (``GET /v1/calls/{id}``) and return it, so it lands in XCom ``return_value``.

    With ``wait_for_completion=True`` the operator looks once and, if the call is still running, defers
    to ``DialNexaCallTrigger`` (no worker slot is held while waiting; there is no separate
    ``deferrable`` flag, waiting is always deferred). When the trigger reports the end, the full record
    is fetched again in ``execute_complete``: trigger events stay small and free of personal data.

    XCom is stored in the metadata database and call records carry transcripts, summaries and phone
    numbers. Use ``include_fields`` or ``exclude_fields`` (top-level keys) and ``mask_phone_numbers`` to
    store only what downstream tasks need.

    :param call_id: DialNexa call id (templated; works with ``.expand(call_id=[...])``).
    :param dialnexa_conn_id: Airflow connection id (templated).
    :param wait_for_completion: Wait (deferred) until the call reaches a terminal status.
    :param timeout: Seconds (or timedelta) to wait for the end; default 2 h. Only with ``wait_for_completion``.
    :param poll_interval: First interval between the trigger's polls, seconds (>= 1).
    :param max_poll_interval: Cap of the trigger's growing poll interval.
    :param max_consecutive_failures: Transient poll failures the trigger survives in a row.
    :param polling: Trigger polling mode (``batched``/``per_call``; None = the connection's extra).
    :param failure_statuses: Terminal statuses that fail the task (``DialNexaCallFailedError``, no retry),
        checked whenever the fetched call has ended, waiting or not.
    :param include_fields: Keep only these top-level fields. Names that match no field are logged as a
        warning (DialNexa spells some fields several ways), not rejected.
    :param exclude_fields: Drop these top-level fields (e.g. ``["transcript", "recording_url"]``).
        Mutually exclusive with ``include_fields``.
    :param mask_phone_numbers: Mask ``to_number``/``from_number``/``to_phone_number``/``from_phone_number``/
        ``phone_number`` as ``+91******5678``.
    """

    template_fields: Sequence[str] = ("call_id", "dialnexa_conn_id")
    ui_color = "#e0f2fe"

    def __init__(
        self,
        *,
        call_id: str,
        dialnexa_conn_id: str = DialNexaHook.default_conn_name,
        wait_for_completion: bool = False,
        timeout: timedelta | float = DEFAULT_CALL_TIMEOUT,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        max_poll_interval: float = DEFAULT_MAX_POLL_INTERVAL,
        max_consecutive_failures: int = DEFAULT_MAX_CONSECUTIVE_FAILURES,
        polling: str | None = None,
        failure_statuses: Iterable[str] = (),
        include_fields: str | Iterable[str] | None = None,
        exclude_fields: str | Iterable[str] | None = None,
        mask_phone_numbers: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.call_id = call_id
        self.dialnexa_conn_id = dialnexa_conn_id
        self.wait_for_completion = wait_for_completion
        self.timeout = timeout.total_seconds() if isinstance(timeout, timedelta) else float(timeout)
        self.poll_interval = float(poll_interval)
        self.max_poll_interval = max(float(max_poll_interval), self.poll_interval)
        self.max_consecutive_failures = max_consecutive_failures
        self.polling = polling_option(polling, self.task_id)  # a typo fails at parse time, waiting or not
        self.failure_statuses = failure_status_set(failure_statuses)
        self.include_fields, self.exclude_fields = field_options(self.task_id, include_fields, exclude_fields)
        self.mask_phone_numbers = mask_phone_numbers
        if wait_for_completion:  # fail at parse time, not in the triggerer
            if self.timeout <= 0:
                raise ValueError(f"Task {self.task_id!r}: timeout must be positive, got {self.timeout}")
            check_wait_options(self.poll_interval, self.max_poll_interval, polling)

    @cached_property
    def hook(self) -> DialNexaHook:
        return DialNexaHook(self.dialnexa_conn_id)

    def execute(self, context: Context) -> dict[str, Any]:
        record = self.hook.get_call(self.call_id)
        raw = record.get("status")
        self.log.info("DialNexa call %r status: %r", self.call_id, raw)
        if not self.wait_for_completion or call_status.is_terminal(raw):
            return self._result(record)
        self.defer(**deferral(self, self.poll_interval))

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        """Resume after the trigger: raise the typed error the event stands for, or fetch the full record."""
        status = ended_status(event, self.call_id, self._timeout_error)
        outcome(self.call_id, status, self.failure_statuses)  # fail before fetching, if told to
        return self._result(self.hook.get_call(self.call_id))

    def _timeout_error(self, message: str) -> DialNexaWaitTimeoutError:
        return DialNexaWaitTimeoutError(message, call_id=self.call_id, conn_id=self.dialnexa_conn_id)

    def _result(self, record: dict[str, Any]) -> dict[str, Any]:
        """Apply ``failure_statuses`` to an ended call, then shape the record for XCom."""
        if call_status.is_terminal(record.get("status")):
            outcome(self.call_id, record.get("status"), self.failure_statuses)
        if self.include_fields:
            missing = sorted(self.include_fields.difference(record))
            if missing:
                self.log.warning(
                    "DialNexa call %r: include_fields %s matched no field of the record (fields: %s)",
                    self.call_id,
                    missing,
                    sorted(record),
                )
        return shape_record(record, self.include_fields, self.exclude_fields, self.mask_phone_numbers)

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> OperatorLineage:
        """OpenLineage: DialNexa's calls (namespace: the base URL the hook used) as input; no I/O."""
        return calls_lineage(resolved_base_url(vars(self).get("hook")), created=False)


def correlation_id_for(dag_id: str, run_id: str, task_id: str, map_index: int) -> str:
    """The correlation value of one task instance: the same for every try and re-run of it, unique otherwise."""
    key = "\x1f".join((dag_id, run_id, task_id, str(map_index)))
    return "airflow-" + hashlib.sha256(key.encode()).hexdigest()[:32]


def _run_start(context: Context) -> datetime | None:
    """When the DAG run could start at the earliest: no try of its tasks placed a call before that."""
    dag_run = context.get("dag_run")
    candidates = (getattr(dag_run, "run_after", None), context.get("data_interval_end"), context.get("logical_date"))
    return next((value for value in candidates if isinstance(value, datetime)), None)


def _whole_number(value: Any) -> Any:
    """A rendered template is a string: ``"2"`` means version 2 (anything else is checked by the hook)."""
    return int(value) if isinstance(value, str) and value.strip().isdigit() else value


class DialNexaCreateCallOperator(DialNexaGetCallOperator):
    """Place one outbound call (``POST /v1/calls``) at most once per task instance; return its id and status.

    The call's ``metadata`` carries the task instance's correlation value under
    ``airflow_correlation_id`` (a hash of DAG id, run id, task id and map index, so it is the same for
    every try of the task; set the key in ``metadata`` yourself to choose another scope, e.g. one call per
    lead per day across runs). The hook never re-sends a POST that may have reached DialNexa without first
    finding out, through List Calls, that no call carries the value. A retried task (try 2 and later) first
    looks for the call an earlier try placed and adopts it; a value you chose is looked up before every
    first POST (any run, any try), so one call carries it. Returns ``{"call_id": ..., "status": ...}``
    (status as DialNexa answered, if it did), or with ``wait_for_completion=True`` defers like
    ``DialNexaGetCallOperator`` and returns the finished record shaped by
    ``include_fields``/``exclude_fields``/``mask_phone_numbers``.

    :param phone_number: Number to call, E.164 (``+919876543210``; templated). Checked at parse time when
        literal, else before any request.
    :param agent_id: DialNexa agent id (templated).
    :param metadata: JSON object stored on the call and available to the agent (templated).
    :param agent_version_number: Published agent version (templated; default: the latest published).
    :param notes: JSON object stored on the call log, at most 15 top-level keys (templated).
    :param placed_after: No call carrying the correlation value can have been placed before this (datetime
        or ISO-8601, templated, e.g. ``"{{ data_interval_start }}"``); the search before placing reaches
        back to it minus a day. Default: the DAG run's start for the generated value; the agent's whole
        history for a value you set (at most 100 List Calls pages, else ``DialNexaUnconfirmedCallError``).
    :param mask_phone_numbers: Mask phone numbers of the returned record (default True here).

    Every other argument is ``DialNexaGetCallOperator``'s (waiting, field shaping, ``failure_statuses``).
    Works with ``.partial(...).expand_kwargs([...])`` to place one call per lead.
    """

    template_fields: Sequence[str] = (
        "phone_number",
        "agent_id",
        "metadata",
        "agent_version_number",
        "notes",
        "dialnexa_conn_id",
        "placed_after",
    )
    template_fields_renderers = {"metadata": "json", "notes": "json"}
    ui_color = "#dcfce7"

    def __init__(
        self,
        *,
        phone_number: str | XComArg,
        agent_id: str | XComArg,
        metadata: dict[str, Any] | None = None,
        agent_version_number: int | str | None = None,
        notes: dict[str, Any] | None = None,
        mask_phone_numbers: bool = True,
        placed_after: datetime | str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(call_id="", mask_phone_numbers=mask_phone_numbers, **kwargs)
        if not arrives_at_run_time(phone_number):
            validate_phone_number(phone_number)  # a literal typo fails the DAG at parse time
        if isinstance(placed_after, datetime | str) and not arrives_at_run_time(placed_after):
            try:
                as_utc(placed_after, "placed_after")
            except ValueError as exc:
                raise ValueError(f"Task {self.task_id!r}: {exc}") from None
        self.placed_after: Any = placed_after  # a datetime, or rendered (a str) / task output before execute
        self.phone_number: Any = phone_number  # rendered (a str) before execute
        self.agent_id: Any = agent_id
        self.metadata = metadata
        self.agent_version_number = agent_version_number
        self.notes = notes

    @classmethod
    def partial(cls, **kwargs: Any) -> Any:  # type: ignore[override]
        """Airflow's ``partial``, whose ``expand``/``expand_kwargs`` check literal phone numbers at parse time."""
        if "phone_number" in kwargs and not arrives_at_run_time(kwargs["phone_number"]):
            validate_phone_number(kwargs["phone_number"])
        return CheckedPartial(super().partial(**kwargs), {"phone_number": validate_phone_number})

    def execute(self, context: Context) -> dict[str, Any]:
        validate_phone_number(self.phone_number)  # rendered from a template or task output: checked like a literal
        ti = context["ti"]
        map_index = ti.map_index if ti.map_index is not None else -1
        mine = self.metadata.get(CORRELATION_KEY) if isinstance(self.metadata, dict) else None
        correlation = mine or correlation_id_for(ti.dag_id, ti.run_id, ti.task_id, map_index)
        retried = (ti.try_number or 1) > 1
        bound = self.placed_after  # "" or "None": a template whose value was missing
        placed_after = as_utc(bound, "placed_after") if bound is not None and bound not in ("", "None") else None
        if placed_after is None and not mine:  # the generated value exists since this DAG run, not before
            placed_after = _run_start(context) or datetime.now(UTC)
        created = self.hook.create_call(
            self.phone_number,
            self.agent_id,
            self.metadata,
            agent_version_number=_whole_number(self.agent_version_number),
            notes=self.notes,
            correlation_id=correlation,
            adopt_existing=bool(mine) or retried,  # a value you chose may be on a call of another run
            placed_after=placed_after,
        )
        self.call_id = str(created["id"])
        raw = created.get("status")
        self.log.info(
            "DialNexa call %r to %s (correlation %r): status %r",
            self.call_id,
            mask_phone_number(self.phone_number),
            correlation,
            raw,
        )
        if not self.wait_for_completion:
            return {"call_id": self.call_id, "status": None if raw is None else call_status.normalise(raw)}
        if call_status.is_terminal(raw):  # adopted a call that has already ended
            return self._result(self.hook.get_call(self.call_id))
        self.defer(**deferral(self, self.poll_interval), kwargs={"call_id": self.call_id})

    def execute_complete(
        self, context: Context, event: dict[str, Any] | None = None, call_id: str = ""
    ) -> dict[str, Any]:
        """Resume after the trigger with the placed call's id.

        The id travels in the deferral's kwargs; ``dag.test()`` (Airflow 3.3) hands back only the event, so
        then it is read from the event, which always names its call.
        """
        if not call_id and isinstance(event, dict) and isinstance(event.get("call_id"), str):
            call_id = event["call_id"]
        self.call_id = call_id
        return super().execute_complete(context, event)

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> OperatorLineage:
        """OpenLineage: DialNexa's calls as output (the task placed one); no I/O."""
        return calls_lineage(resolved_base_url(vars(self).get("hook")), created=True)


# The other operators live in their own modules; importable from here like these (imported last: the batch
# module reaches back into this one only inside functions).
from airflow_provider_dialnexa.operators.batch import (  # noqa: E402
    DialNexaCreateBatchCallOperator,
    DialNexaExportBatchCallsOperator,
)
from airflow_provider_dialnexa.operators.export import DialNexaExportCallsOperator  # noqa: E402

__all__ = [
    "DialNexaCreateBatchCallOperator",
    "DialNexaCreateCallOperator",
    "DialNexaExportBatchCallsOperator",
    "DialNexaExportCallsOperator",
    "DialNexaGetCallOperator",
    "correlation_id_for",
    "export_alias",
]
