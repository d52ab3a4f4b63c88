"""DialNexaGetCallOperator: fetch a DialNexa call record into XCom, optionally waiting for the call to end.

DialNexaCreateCallOperator: place a call at most once per task instance, optionally waiting for it to end.
DialNexaExportCallsOperator: write every call of a creation window (the run's data interval) to one file.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any, cast

from airflow.providers.common.compat.sdk import BaseOperator, ObjectStoragePath

from airflow_provider_dialnexa import status as call_status
from airflow_provider_dialnexa._export_assets import asset_for as _asset_for
from airflow_provider_dialnexa._export_assets import export_alias as export_alias  # public: schedule on it
from airflow_provider_dialnexa._export_assets import record_export_event
from airflow_provider_dialnexa._lineage import calls_lineage, export_lineage, resolved_base_url
from airflow_provider_dialnexa._mapping import CheckedPartial
from airflow_provider_dialnexa._paging import as_utc, check_literal_filters, filter_items, iso_utc
from airflow_provider_dialnexa._placement import CORRELATION_KEY
from airflow_provider_dialnexa._storage import missing_filesystem_hint
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
    DialNexaConfigError,
    DialNexaError,
    DialNexaWaitTimeoutError,
    error_from_event,
)
from airflow_provider_dialnexa.hooks.dialnexa import MAX_LIST_LIMIT, DialNexaHook
from airflow_provider_dialnexa.policy import DEFAULT_MAX_POLL_INTERVAL, DEFAULT_POLL_INTERVAL
from airflow_provider_dialnexa.records import field_options, mask_phone_number, shape_record
from airflow_provider_dialnexa.triggers.dialnexa import (
    DEFAULT_MAX_CONSECUTIVE_FAILURES,
    ERROR,
    SUCCESS,
    DialNexaWindowTrigger,
    validate_window_event,
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


ON_TIMEOUT_CHOICES = ("fail", "export", "export_ended")
#: One JSON line per record, compact and UTF-8 (one encoder for every record, not one per call).
_to_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


class DialNexaExportCallsOperator(BaseOperator):
    """Write every call created in a window (default: the run's data interval) to one JSON Lines file.

    Made for scheduled call-outcome ETL: ``schedule="@hourly"`` plus this operator exports exactly the calls
    created in ``[data_interval_start, data_interval_end)``; adjacent runs never share a call and never miss
    one. Records stream from List Calls (``DialNexaHook.iter_calls``, oldest first) to a temporary object
    next to ``destination`` that is moved into place only once complete, so readers never see a partial file
    and a re-run rewrites the same file. ``destination`` is anything Airflow's object storage can open
    (``file://``, ``s3://``, ``gs://``, a plain path, ...); a name ending ``.gz`` is gzip-compressed.

    Calls still running when the window is listed: with ``wait_for_running=True`` (default) the task
    defers to ``DialNexaWindowTrigger`` (no worker slot; one small List Calls request per poll) until they
    have ended, then lists again and writes. ``timeout`` bounds that wait; ``on_timeout`` says what then:
    ``fail`` (default, nothing written, the message says how many calls still run), ``export`` (write every
    call, running ones with their current status) or ``export_ended`` (leave the running ones out).

    Returns (XCom) ``{"path", "calls", "statuses", "window_start", "window_end"}``, never the records.
    Every run records an asset event (dataset event on Airflow 2) for the file written, with that summary as
    the event's ``extra``. With a fixed (untemplated) ``destination`` and no ``outlets`` given, the file is the
    task's outlet asset. With a templated one (and in mapped tasks) the task declares the asset alias
    ``export_alias(dag_id, task_id)`` (also its ``asset_alias`` attribute) and resolves it at run time to the
    file written: schedule downstream DAGs on the asset or on the alias. OpenLineage (if installed) gets
    DialNexa's calls as input and the file as output, with its row count.

    :param destination: Target file URL or path (templated).
    :param window_start: Window start, datetime or ISO-8601 (templated; default the data interval start).
    :param window_end: Window end, exclusive (templated; default the data interval end).
    :param filters: DialNexa List Calls filters (templated values), e.g. ``{"agent_id": [...]}``.
    :param include_fields: Keep only these top-level fields of each record.
    :param exclude_fields: Drop these top-level fields (e.g. ``["transcript"]``).
    :param mask_phone_numbers: Mask phone-number fields as ``+91******5678``.
    :param page_size: List Calls page size (1-200).
    """

    template_fields: Sequence[str] = ("destination", "window_start", "window_end", "filters", "dialnexa_conn_id")
    template_fields_renderers = {"filters": "json"}
    ui_color = "#e0f2fe"
    #: The summary of the last export this instance wrote (what lineage reports; set by ``execute``).
    _summary: dict[str, Any] | None = None

    def __init__(
        self,
        *,
        destination: str | XComArg,
        window_start: datetime | str | XComArg | None = None,
        window_end: datetime | str | XComArg | None = None,
        filters: dict[str, Any] | XComArg | None = None,
        dialnexa_conn_id: str = DialNexaHook.default_conn_name,
        wait_for_running: bool = True,
        timeout: timedelta | float = DEFAULT_CALL_TIMEOUT,
        on_timeout: str = "fail",
        poll_interval: float = 30.0,
        max_poll_interval: float = 300.0,
        max_consecutive_failures: int = DEFAULT_MAX_CONSECUTIVE_FAILURES,
        include_fields: str | Iterable[str] | None = None,
        exclude_fields: str | Iterable[str] | None = None,
        mask_phone_numbers: bool = False,
        page_size: int = MAX_LIST_LIMIT,
        **kwargs: Any,
    ) -> None:
        if isinstance(destination, str) and not arrives_at_run_time(destination) and not kwargs.get("outlets"):
            asset = _asset_for(destination)
            if asset is not None:
                kwargs["outlets"] = [asset]
        super().__init__(**kwargs)
        # Any: templates and task output are replaced by their rendered values before execute
        self.destination: Any = destination
        self.asset_alias = self._own_alias()
        self.window_start: Any = window_start
        self.window_end: Any = window_end
        self.filters: Any = dict(filters) if isinstance(filters, Mapping) else ({} if filters is None else filters)
        self.dialnexa_conn_id = dialnexa_conn_id
        self.wait_for_running = wait_for_running
        self.timeout = timeout.total_seconds() if isinstance(timeout, timedelta) else float(timeout)
        self.on_timeout = on_timeout
        self.poll_interval = float(poll_interval)
        self.max_poll_interval = max(float(max_poll_interval), self.poll_interval)
        self.max_consecutive_failures = max_consecutive_failures
        self.include_fields, self.exclude_fields = field_options(self.task_id, include_fields, exclude_fields)
        self.mask_phone_numbers = mask_phone_numbers
        self.page_size = page_size
        where = f"Task {self.task_id!r}"
        if on_timeout not in ON_TIMEOUT_CHOICES:
            raise ValueError(f"{where}: on_timeout must be one of {ON_TIMEOUT_CHOICES}, got {on_timeout!r}")
        if not 1 <= page_size <= MAX_LIST_LIMIT:
            raise ValueError(f"{where}: page_size must be between 1 and {MAX_LIST_LIMIT}, got {page_size}")
        if self.timeout <= 0:
            raise ValueError(f"{where}: timeout must be positive, got {self.timeout}")
        check_wait_options(self.poll_interval, self.max_poll_interval, None)
        # What is literal is checked now; templates and task output once rendered, before any request (_checked).
        try:
            if not arrives_at_run_time(destination):
                self._check_destination(destination)
            check_literal_filters(self.filters)
            if not arrives_at_run_time(window_start) and not arrives_at_run_time(window_end):
                DialNexaHook.check_list_arguments(cast("Any", window_start), cast("Any", window_end))
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None

    @cached_property
    def hook(self) -> DialNexaHook:
        return DialNexaHook(self.dialnexa_conn_id)

    # -- asset events and lineage -------------------------------------------------------------------

    @classmethod
    def partial(cls, **kwargs: Any) -> Any:  # type: ignore[override]
        """``BaseOperator.partial`` plus the export alias in ``outlets``: a mapped task's files are known only at
        run time, and Airflow reads a mapped task's outlets from these arguments when it parses the DAG."""
        partial = super().partial(**kwargs)
        dag = partial.kwargs.get("dag")
        if dag is not None:
            alias = export_alias(dag.dag_id, partial.kwargs["task_id"])
            outlets = list(partial.kwargs.get("outlets") or [])
            partial.kwargs["outlets"] = outlets if alias in outlets else [*outlets, alias]
        return partial

    def _own_alias(self) -> Any:
        """The task's export alias, in its outlets: added here for a templated destination, by ``partial`` for a
        mapped task; None for a fixed destination (its own outlet asset carries the event) or without a DAG."""
        if not self.has_dag():
            return None
        alias = export_alias(self.dag_id, self.task_id)
        if alias in self.outlets:
            return alias
        if not arrives_at_run_time(self.destination):
            return None
        self.outlets = [*self.outlets, alias]
        return alias

    def _published(self, context: Context, summary: dict[str, Any] | None) -> dict[str, Any] | None:
        """Keep the summary for lineage and put it on the asset event of the file written."""
        if summary is not None:
            self._summary = summary
            asset = record_export_event(context, self.outlets, self.asset_alias, summary)
            if asset is not None:
                self.log.info("Asset event for %s (alias %s)", asset.uri, getattr(self.asset_alias, "name", None))
        return summary

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> OperatorLineage:
        """OpenLineage: DialNexa's calls in, the written file out with its row count; from what ``execute`` kept."""
        return export_lineage(resolved_base_url(vars(self).get("hook")), self._summary)

    # -- window, destination ------------------------------------------------------------------------

    @staticmethod
    def _check_destination(destination: object) -> None:
        if not isinstance(destination, str) or not destination.strip():
            raise ValueError(f"destination must be a file URL or path, got {destination!r:.80}")

    def _checked(self, context: Context) -> tuple[str, str]:
        """The rendered fields checked as literals are at parse time (same messages); the window as ISO strings."""
        try:
            self._check_destination(self.destination)
            if not isinstance(self.filters, dict):
                raise ValueError(f"filters must be a dict of List Calls filters, got {type(self.filters).__name__}")
            return self._window(context)
        except ValueError as exc:
            raise ValueError(f"Task {self.task_id!r}: {exc}") from None

    def _window(self, context: Context) -> tuple[str, str]:
        """The window as ISO-8601 UTC strings, from the operator's (rendered) fields or the data interval."""
        bounds = []
        value: Any
        for name, value, default in (
            ("window_start", self.window_start, "data_interval_start"),
            ("window_end", self.window_end, "data_interval_end"),
        ):
            value = value if value not in (None, "") else context.get(default)
            if value in (None, "", "None"):
                raise ValueError(
                    f"no {name} (the run has no {default}); set {name} explicitly, "
                    "e.g. for manual runs of a DAG without a schedule"
                )
            bounds.append(iso_utc(as_utc(value, name)))
        if bounds[0] == bounds[1] and self.window_start in (None, "") and self.window_end in (None, ""):
            raise ValueError(
                f"the run's data interval is empty ({bounds[0]}), so there is no window to export. Airflow 3 "
                "gives zero-length intervals to manual runs of a DAG with schedule=None and to cron schedules "
                "(CronTriggerTimetable). Pass window_start/window_end (e.g. '2026-10-05T06:00:00Z' and "
                "'2026-10-05T07:00:00Z', or templates), or schedule the DAG with "
                "CronDataIntervalTimetable('@hourly', timezone='UTC') (or a timedelta), or set "
                "[scheduler] create_cron_data_intervals = True"
            )
        DialNexaHook.check_list_arguments(bounds[0], bounds[1], **self.filters)
        return bounds[0], bounds[1]

    def _path(self) -> ObjectStoragePath:
        return ObjectStoragePath(self.destination)

    def _running_statuses(self) -> list[str] | None:
        """Status values the trigger asks for: the running ones among the user's status filter (None: all)."""
        wanted = self.filters.get("status")
        if wanted is None:
            return None
        return [str(v) for v in filter_items(wanted) if not call_status.is_terminal(v)]

    # -- execution ----------------------------------------------------------------------------------

    def execute(self, context: Context) -> dict[str, Any]:
        start, end = self._checked(context)
        if self.wait_for_running and self._running_statuses() != []:
            result = self._export(start, end, stop_at_running=True)
            if result is None:
                self._defer(start, end, time.time() + self.timeout, "status")
            return self._published(context, result)  # type: ignore[return-value]
        return self._published(context, self._export(start, end))  # type: ignore[return-value]

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        """Resume after the window trigger: export, wait again, or handle the timeout."""
        checked = validate_window_event(event)
        start, end = self._checked(context)
        if (checked["window_start"], checked["window_end"]) != (start, end):
            raise DialNexaError(
                f"Task {self.task_id!r}: the trigger waited for [{checked['window_start']}, {checked['window_end']}) "
                f"but the task's window is [{start}, {end}); clear the task to export again"
            )
        if checked["event"] == ERROR:
            raise error_from_event(checked)
        end_time = float(checked.get("end_time") or 0) or time.time()
        if checked["event"] == SUCCESS and time.time() < end_time:
            result = self._export(start, end, stop_at_running=True)
            if result is not None:
                return self._published(context, result)  # type: ignore[return-value]
            # Still (or newly) running calls although the trigger saw none: poll them by id from now on.
            self._defer(start, end, end_time, "per_call")
        return self._published(context, self._export(start, end, timed_out=True))  # type: ignore[return-value]

    def _defer(self, start: str, end: str, end_time: float, mode: str) -> None:
        trigger = DialNexaWindowTrigger(
            window_start=start,
            window_end=end,
            dialnexa_conn_id=self.dialnexa_conn_id,
            filters={k: v for k, v in self.filters.items() if k != "status"},
            running_statuses=self._running_statuses(),
            poll_interval=self.poll_interval,
            end_time=end_time,
            max_poll_interval=self.max_poll_interval,
            max_consecutive_failures=self.max_consecutive_failures,
            mode=mode,
        )
        self.log.info("Calls of [%s, %s) are still running; waiting for them in the triggerer", start, end)
        self.defer(
            trigger=trigger,
            method_name="execute_complete",
            timeout=timedelta(seconds=max(1.0, end_time - time.time()) + 60),
        )

    def _export(
        self, start: str, end: str, *, stop_at_running: bool = False, timed_out: bool = False
    ) -> dict[str, Any] | None:
        """Stream the window to a temporary object and move it into place; None if a running call stopped it.

        With ``stop_at_running`` the first running call ends the listing (the task will wait). With
        ``timed_out`` running calls are handled per ``on_timeout``.
        """
        try:
            path = self._path()
            temp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
            if path.protocol in ("", "file", "local"):
                path.parent.mkdir(parents=True, exist_ok=True)
            raw = temp.open("wb")
        except Exception as exc:  # before any request: nothing listed yet
            fix = missing_filesystem_hint(str(self.destination), exc) or "check the path and the storage permissions"
            raise DialNexaConfigError(
                f"Task {self.task_id!r}: cannot write next to destination {str(self.destination)!r} "
                f"({type(exc).__name__}: {exc}); {fix}"
            ) from exc
        raw_counts: dict[Any, int] = {}  # by status as sent; normalised once per distinct value at the end
        ended: dict[Any, bool] = {}
        running: list[str] = []
        drop_running = timed_out and self.on_timeout == "export_ended"
        shape = self.include_fields is not None or self.exclude_fields is not None or self.mask_phone_numbers
        committed = False
        try:
            with (
                raw,
                (
                    gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) if path.name.endswith(".gz") else raw
                ) as out,
            ):
                lines: list[bytes] = []  # one write per page: each write through object storage has a cost
                for record in self.hook.iter_calls(start, end, page_size=self.page_size, **self.filters):
                    raw_status = record.get("status")
                    is_ended = ended.get(raw_status)
                    if is_ended is None:
                        is_ended = ended[raw_status] = call_status.is_terminal(raw_status)
                    if not is_ended:
                        running.append(str(record["id"]))
                        if stop_at_running:
                            return None
                        if drop_running:
                            continue
                    raw_counts[raw_status] = raw_counts.get(raw_status, 0) + 1
                    if shape:
                        record = shape_record(record, self.include_fields, self.exclude_fields, self.mask_phone_numbers)
                    lines.append(_to_json(record).encode())
                    if len(lines) == self.page_size:
                        out.write(b"\n".join(lines) + b"\n")
                        lines.clear()
                if lines:
                    out.write(b"\n".join(lines) + b"\n")
            if running and timed_out and self.on_timeout == "fail":
                raise DialNexaWaitTimeoutError(
                    f"Task {self.task_id!r}: {len(running)} call(s) created in [{start}, {end}) were still running "
                    f"when the {self.timeout:g} s wait ended (e.g. {', '.join(running[:5])}); nothing was written "
                    f"to {str(path)!r}. Clear the task once they have ended, raise timeout, or set "
                    "on_timeout='export' (write them with their current status) or 'export_ended' (leave them out).",
                    conn_id=self.dialnexa_conn_id,
                )
            temp.rename(path)
            committed = True
        finally:
            if not committed:
                with contextlib.suppress(Exception):
                    temp.unlink()
        statuses: Counter[str] = Counter()
        for raw_status, count in raw_counts.items():
            statuses[call_status.normalise(raw_status)] += count
        if running:
            self.log.warning(
                "%d call(s) of [%s, %s) were still running at the timeout and were %s",
                len(running),
                start,
                end,
                "left out" if drop_running else "exported with their current status",
            )
        result = {
            "path": str(path),
            "calls": sum(statuses.values()),
            "statuses": dict(sorted(statuses.items())),
            "window_start": start,
            "window_end": end,
        }
        if drop_running:
            result["running_left_out"] = len(running)
        self.log.info("Exported %d DialNexa calls of [%s, %s) to %s", result["calls"], start, end, path)
        return result


# Campaign operators live in their own module; importable from here like the others (imported last: that
# module reaches back into this one only inside functions).
from airflow_provider_dialnexa.operators.batch import (  # noqa: E402
    DialNexaCreateBatchCallOperator,
    DialNexaExportBatchCallsOperator,
)

__all__ = [
    "DialNexaCreateBatchCallOperator",
    "DialNexaCreateCallOperator",
    "DialNexaExportBatchCallsOperator",
    "DialNexaExportCallsOperator",
    "DialNexaGetCallOperator",
    "correlation_id_for",
]
