"""DialNexaExportCallsOperator: write every call of a creation window (the run's data interval) to one file.

Also importable from ``airflow_provider_dialnexa.operators.dialnexa``, where it was first defined.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any, cast

from airflow_provider_dialnexa import status as call_status
from airflow_provider_dialnexa._export_assets import export_alias as export_alias  # public: schedule on it
from airflow_provider_dialnexa._export_file import ExportOperator, JsonLinesFile
from airflow_provider_dialnexa._paging import as_utc, check_literal_filters, filter_items, iso_utc
from airflow_provider_dialnexa._validation import arrives_at_run_time
from airflow_provider_dialnexa._wait import DEFAULT_CALL_TIMEOUT, check_wait_options
from airflow_provider_dialnexa.exceptions import (
    DialNexaError,
    DialNexaWaitTimeoutError,
    error_from_event,
)
from airflow_provider_dialnexa.hooks.dialnexa import MAX_LIST_LIMIT, DialNexaHook
from airflow_provider_dialnexa.records import field_options, shape_record
from airflow_provider_dialnexa.triggers.dialnexa import (
    DEFAULT_MAX_CONSECUTIVE_FAILURES,
    ERROR,
    SUCCESS,
    DialNexaWindowTrigger,
    validate_window_event,
)

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context, XComArg

ON_TIMEOUT_CHOICES = ("fail", "export", "export_ended")


class DialNexaExportCallsOperator(ExportOperator):
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
        self.export_outlets(destination, kwargs)
        super().__init__(**kwargs)
        # Any: templates and task output are replaced by their rendered values before execute
        self.destination = destination
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

    # -- window, destination ------------------------------------------------------------------------

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
        """Stream the window to a temporary object moved into place once complete; None if a running call stopped it.

        With ``stop_at_running`` the first running call ends the listing (the task will wait). With
        ``timed_out`` running calls are handled per ``on_timeout``.
        """
        raw_counts: dict[Any, int] = {}  # by status as sent; normalised once per distinct value at the end
        ended: dict[Any, bool] = {}
        running: list[str] = []
        drop_running = timed_out and self.on_timeout == "export_ended"
        shape = self.include_fields is not None or self.exclude_fields is not None or self.mask_phone_numbers
        with JsonLinesFile(self.destination, task_id=self.task_id, chunk=self.page_size) as out:
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
                out.write(record)
            if running and timed_out and self.on_timeout == "fail":
                raise DialNexaWaitTimeoutError(
                    f"Task {self.task_id!r}: {len(running)} call(s) created in [{start}, {end}) were still running "
                    f"when the {self.timeout:g} s wait ended (e.g. {', '.join(running[:5])}); nothing was written "
                    f"to {str(out.path)!r}. Clear the task once they have ended, raise timeout, or set "
                    "on_timeout='export' (write them with their current status) or 'export_ended' (leave them out).",
                    conn_id=self.dialnexa_conn_id,
                )
            out.commit()
        path = out.path
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


__all__ = ["ON_TIMEOUT_CHOICES", "DialNexaExportCallsOperator", "export_alias"]
