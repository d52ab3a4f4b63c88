"""Campaign operators: upload leads as one DialNexa batch call (exactly once), and export a batch's calls.

``DialNexaCreateBatchCallOperator`` and ``DialNexaExportBatchCallsOperator`` are also importable from
``airflow_provider_dialnexa.operators.dialnexa``. This module imports that one only inside functions, so either
can be imported first.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import BaseOperator, ObjectStoragePath

from airflow_provider_dialnexa import status as status_
from airflow_provider_dialnexa._batch_wait import (
    DEFAULT_BATCH_FAILURE_STATUSES,
    DEFAULT_BATCH_TIMEOUT,
    batch_deferral,
    batch_failure_statuses,
    batch_outcome,
    ended_batch,
)
from airflow_provider_dialnexa._batches import (
    attempt_order,
    check_title,
    create_fields,
    lead_key,
    progress_line,
    total_of,
    validate_batch_id,
    warning_of,
)
from airflow_provider_dialnexa._export_assets import asset_for
from airflow_provider_dialnexa._wait import check_wait_options
from airflow_provider_dialnexa.exceptions import DialNexaConfigError, DialNexaError, DialNexaWaitTimeoutError
from airflow_provider_dialnexa.hooks._batch import CALL_LOG_PAGE
from airflow_provider_dialnexa.hooks.dialnexa import DialNexaHook
from airflow_provider_dialnexa.records import field_options, shape_record
from airflow_provider_dialnexa.triggers.dialnexa import DEFAULT_MAX_CONSECUTIVE_FAILURES

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context

#: One JSON line per record, compact and UTF-8.
_to_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
RECORDS_CHOICES = ("attempts", "leads")


def _is_template(value: object) -> bool:
    return isinstance(value, str) and ("{{" in value or "{%" in value)


class DialNexaCreateBatchCallOperator(BaseOperator):
    """Upload leads as one DialNexa batch call (``POST /v1/batch-calls``), at most once per task instance.

    ``leads`` is a local path, an object-storage URL or ``ObjectStoragePath`` (``s3://bucket/leads.csv``), or
    rows (a list of dicts, e.g. an upstream task's output); CSV, or ``.xlsx`` with the ``excel`` extra. The
    file is checked (a ``phone_number`` column, E.164 numbers; bad rows are named, masked) and streamed.

    The title DialNexa shows is ``"<first 25 characters of title> #<token>"``: the token (8 characters) comes
    from a hash of DAG id, run id, task id and map index (or ``correlation_id``), the same for every try. An
    upload that may have reached DialNexa is never sent again before List Batch Calls has proven that no batch
    has that title; a retried task (try 2 and later) first looks for the batch an earlier try created and
    adopts it. Returns (XCom) ``{"batch_id", "total", "status", "warning"}``: ``warning`` is DialNexa's note
    about batches ahead of this one (batches run one at a time per organization), or None. Each key is also
    its own XCom (``multiple_outputs``), so ``create.output["batch_id"]`` feeds a sensor or an export.

    With ``wait_for_completion=True`` the task defers to ``DialNexaBatchTrigger`` until the batch has ended,
    then returns the same keys with the final status (failing on ``failure_statuses``).

    :param leads: Path, URL, ``ObjectStoragePath`` or rows (templated; an ``XComArg`` works).
    :param title: Batch title, at most 35 characters (templated); see above for what DialNexa shows.
    :param agent_id: DialNexa agent id (templated).
    :param agent_version_number: Published agent version (templated; default: the latest published).
    :param starts_at: When to start, datetime or ISO-8601 (templated; default: now).
    :param ends_at: When to stop dialling (templated).
    :param calling_hours_start: Daily window start, ``"HH:MM"`` (templated).
    :param calling_hours_end: Daily window end, ``"HH:MM"`` (templated).
    :param correlation_id: What the batch is unique for (templated; default: the task instance).
    :param validate_leads: Check the file before upload (``False`` for ``.xls``, which cannot be read here).
    :param wait_for_completion: Defer until the batch has ended.
    :param timeout: Seconds (or timedelta) to wait for the end (default 24 h).
    :param poll_interval: First poll interval, seconds (grows to ``max_poll_interval``).
    :param failure_statuses: Statuses that fail the task when waiting (default ``deleted``, ``failed``; add
        ``paused`` to stop waiting when the batch is paused).
    """

    template_fields: Sequence[str] = (
        "leads",
        "title",
        "agent_id",
        "agent_version_number",
        "starts_at",
        "ends_at",
        "calling_hours_start",
        "calling_hours_end",
        "correlation_id",
        "dialnexa_conn_id",
    )
    ui_color = "#fde68a"

    def __init__(
        self,
        *,
        leads: Any,
        title: str,
        agent_id: str,
        agent_version_number: int | str | None = None,
        starts_at: datetime | str | None = None,
        ends_at: datetime | str | None = None,
        calling_hours_start: str | None = None,
        calling_hours_end: str | None = None,
        correlation_id: str | None = None,
        validate_leads: bool = True,
        dialnexa_conn_id: str = DialNexaHook.default_conn_name,
        wait_for_completion: bool = False,
        timeout: timedelta | float = DEFAULT_BATCH_TIMEOUT,
        poll_interval: float = 60.0,
        max_poll_interval: float = 900.0,
        max_consecutive_failures: int = DEFAULT_MAX_CONSECUTIVE_FAILURES,
        failure_statuses: Iterable[str] = DEFAULT_BATCH_FAILURE_STATUSES,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("multiple_outputs", True)  # create.output["batch_id"] works downstream
        super().__init__(**kwargs)
        self.leads = leads
        self.title = title
        self.agent_id = agent_id
        self.agent_version_number = agent_version_number
        self.starts_at = starts_at
        self.ends_at = ends_at
        self.calling_hours_start = calling_hours_start
        self.calling_hours_end = calling_hours_end
        self.correlation_id = correlation_id
        self.validate_leads = validate_leads
        self.dialnexa_conn_id = dialnexa_conn_id
        self.wait_for_completion = wait_for_completion
        self.timeout = timeout.total_seconds() if isinstance(timeout, timedelta) else float(timeout)
        self.poll_interval = float(poll_interval)
        self.max_poll_interval = max(float(max_poll_interval), self.poll_interval)
        self.max_consecutive_failures = max_consecutive_failures
        self.failure_statuses = batch_failure_statuses(failure_statuses)
        where = f"Task {self.task_id!r}"
        try:  # what is literal fails the DAG at parse time
            if not _is_template(title):
                check_title(title)
            schedule = (starts_at, ends_at, calling_hours_start, calling_hours_end)
            if not any(_is_template(v) for v in schedule):
                create_fields("t", "a", starts_at=starts_at, ends_at=ends_at, calling_hours_start=calling_hours_start)
                create_fields("t", "a", calling_hours_end=calling_hours_end)
            if wait_for_completion:
                if self.timeout <= 0:
                    raise ValueError(f"timeout must be positive, got {self.timeout}")
                check_wait_options(self.poll_interval, self.max_poll_interval, None)
        except (ValueError, DialNexaError) as exc:
            raise ValueError(f"{where}: {exc}") from None

    @cached_property
    def hook(self) -> DialNexaHook:
        return DialNexaHook(self.dialnexa_conn_id)

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_provider_dialnexa.operators.dialnexa import _run_start, _whole_number, correlation_id_for

        ti = context["ti"]
        map_index = ti.map_index if ti.map_index is not None else -1
        correlation = self.correlation_id or correlation_id_for(ti.dag_id, ti.run_id, ti.task_id, map_index)
        created = self.hook.create_batch_call(
            self.leads,
            self.title,
            self.agent_id,
            agent_version_number=_whole_number(self.agent_version_number),
            starts_at=self.starts_at or None,
            ends_at=self.ends_at or None,
            calling_hours_start=self.calling_hours_start or None,
            calling_hours_end=self.calling_hours_end or None,
            correlation_id=correlation,
            adopt_existing=(ti.try_number or 1) > 1,
            placed_after=_run_start(context),
            validate_leads=self.validate_leads,
        )
        batch_id = str(created["id"])
        warning = warning_of(created)
        result: dict[str, Any] = {
            "batch_id": batch_id,
            "total": total_of(created),
            "status": status_.normalise(created.get("status")),
            "warning": warning,
        }
        if warning:
            self.log.warning("DialNexa batch %r: %s", batch_id, warning["message"])
        self.log.info(
            "DialNexa batch %r (%r): %s leads, status %r",
            batch_id,
            created.get("title"),
            result["total"],
            result["status"],
        )
        if not self.wait_for_completion:
            return result
        phase = status_.batch_phase(result["status"])
        if phase is status_.BatchPhase.TERMINAL:  # adopted a batch that has already ended
            batch_outcome(batch_id, created, self.failure_statuses)
            return result
        resume_with = {"total": result["total"], "warning": result["warning"]}
        self.defer(**batch_deferral(self, batch_id, self.poll_interval, resume_with))

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        """Resume after the trigger: ``{"batch_id", "total", "status", "warning"}`` of the ended batch."""
        checked = ended_batch(event, None, self._timeout_error)
        batch_id = str(checked["batch_id"])
        ended = batch_outcome(batch_id, checked, self.failure_statuses)
        carried = checked.get("resume_with") or {}
        return {
            "batch_id": batch_id,
            "total": carried.get("total") if carried.get("total") is not None else ended["total"],
            "status": ended["status"],
            "warning": carried.get("warning"),
        }

    def _timeout_error(self, message: str) -> DialNexaWaitTimeoutError:
        return DialNexaWaitTimeoutError(message, conn_id=self.dialnexa_conn_id)


class DialNexaExportBatchCallsOperator(BaseOperator):
    """Write every call log of one batch (retry children included) to one JSON Lines file, exactly once.

    Records stream from ``GET /v1/batch-calls/{id}`` (``DialNexaHook.iter_batch_calls``: ``callLogs`` paged
    oldest first, each call once) to a temporary object next to ``destination``, moved into place only when
    complete: readers never see a partial file, and a re-run rewrites the same file. ``destination`` is
    anything Airflow's object storage opens; a name ending ``.gz`` is gzip-compressed.

    A lead dialled several times (DialNexa redials unanswered leads as retry children) is one lead: its call
    logs share the number dialled. ``records="attempts"`` (default) writes every call log; ``"leads"`` writes
    one line per lead, its representative attempt (an ended attempt before a running one, then the newest),
    with ``lead_attempts`` (how many call logs the lead has) added. XCom ``statuses`` counts leads by that
    representative attempt's status either way.

    Returns (XCom) ``{"path", "batch_id", "batch_status", "records", "calls", "leads", "statuses", "running"}``.

    :param batch_id: DialNexa batch id (templated; e.g. ``create.output["batch_id"]``).
    :param destination: Target file URL or path (templated).
    :param require_ended: Refuse (before writing) while the batch has not ended (default True).
    :param include_fields: Keep only these top-level fields of each record.
    :param exclude_fields: Drop these top-level fields (e.g. ``["transcript"]``).
    :param mask_phone_numbers: Mask phone-number fields as ``+91******5678``.
    """

    template_fields: Sequence[str] = ("batch_id", "destination", "dialnexa_conn_id")
    ui_color = "#e0f2fe"

    def __init__(
        self,
        *,
        batch_id: str,
        destination: str,
        records: str = "attempts",
        require_ended: bool = True,
        include_fields: str | Iterable[str] | None = None,
        exclude_fields: str | Iterable[str] | None = None,
        mask_phone_numbers: bool = False,
        page_size: int = CALL_LOG_PAGE,
        dialnexa_conn_id: str = DialNexaHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        if isinstance(destination, str) and not _is_template(destination) and not kwargs.get("outlets"):
            asset = asset_for(destination)
            if asset is not None:
                kwargs["outlets"] = [asset]
        super().__init__(**kwargs)
        self.batch_id = batch_id
        self.destination = destination
        self.records = records
        self.require_ended = require_ended
        self.include_fields, self.exclude_fields = field_options(self.task_id, include_fields, exclude_fields)
        self.mask_phone_numbers = mask_phone_numbers
        self.page_size = page_size
        self.dialnexa_conn_id = dialnexa_conn_id
        where = f"Task {self.task_id!r}"
        if records not in RECORDS_CHOICES:
            raise ValueError(f"{where}: records must be one of {RECORDS_CHOICES}, got {records!r}")
        if not isinstance(destination, str) or not destination.strip():
            raise ValueError(f"{where}: destination must be a file URL or path, got {destination!r}")
        if not 1 <= page_size <= CALL_LOG_PAGE:
            raise ValueError(f"{where}: page_size must be between 1 and {CALL_LOG_PAGE}, got {page_size}")

    @cached_property
    def hook(self) -> DialNexaHook:
        return DialNexaHook(self.dialnexa_conn_id)

    def execute(self, context: Context) -> dict[str, Any]:
        batch_id = validate_batch_id(self.batch_id)
        batch = self.hook.get_batch_call(batch_id)
        batch_status = status_.normalise(batch.get("status"))
        self.log.info("DialNexa batch %r %s", batch_id, progress_line(batch))
        if self.require_ended and status_.batch_phase(batch_status) is not status_.BatchPhase.TERMINAL:
            raise DialNexaError(
                f"Task {self.task_id!r}: DialNexa batch {batch_id!r} is {batch_status!r}, not ended; nothing was "
                "written. Wait for it first (DialNexaBatchSensor, or wait_for_completion=True on the create task), "
                "or set require_ended=False to export the calls made so far"
            )
        path = ObjectStoragePath(self.destination)
        temp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
        try:
            if path.protocol in ("", "file", "local"):
                path.parent.mkdir(parents=True, exist_ok=True)
            raw = temp.open("wb")
        except Exception as exc:
            raise DialNexaConfigError(
                f"Task {self.task_id!r}: cannot write next to destination {str(path)!r} "
                f"({type(exc).__name__}: {exc}); check the path and the storage permissions"
            ) from exc
        committed = False
        try:
            with (
                raw,
                (
                    gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) if path.name.endswith(".gz") else raw
                ) as out,
            ):
                counts = self._write(batch_id, out)
            temp.rename(path)
            committed = True
        finally:
            if not committed:
                with contextlib.suppress(Exception):
                    temp.unlink()
        result = {"path": str(path), "batch_id": batch_id, "batch_status": batch_status, **counts}
        self.log.info(
            "Exported %d call logs (%d leads) of DialNexa batch %r to %s",
            counts["calls"],
            counts["leads"],
            batch_id,
            path,
        )
        return result

    def _write(self, batch_id: str, out: Any) -> dict[str, Any]:
        """Stream the batch's call logs to ``out``; returns the counts for XCom."""
        best: dict[str, tuple[tuple[bool, str, str], Any]] = {}  # lead -> (order, record if leads mode else status)
        attempts: Counter[str] = Counter()
        calls = running = 0
        keep = self.records == "leads"
        shape = self.include_fields is not None or self.exclude_fields is not None or self.mask_phone_numbers
        lines: list[bytes] = []
        ended: dict[Any, tuple[bool, str]] = {}  # raw status -> (ended?, normalised): once per distinct value
        for record in self.hook.iter_batch_calls(batch_id, page_size=self.page_size):
            calls += 1
            raw = record.get("status")
            known = ended.get(raw)
            if known is None:
                known = ended[raw] = (status_.is_terminal(raw), status_.normalise(raw))
            if not known[0]:
                running += 1
            lead = lead_key(record)
            attempts[lead] += 1
            order = attempt_order(record, known[0])
            if lead not in best or order > best[lead][0]:
                best[lead] = (order, record if keep else known[1])
            if keep:
                continue
            lines.append(_to_json(self._shaped(record) if shape else record).encode())
            if len(lines) >= self.page_size:
                out.write(b"\n".join(lines) + b"\n")
                lines.clear()
        if keep:
            for lead, (_, record) in best.items():
                lines.append(
                    _to_json({**(self._shaped(record) if shape else record), "lead_attempts": attempts[lead]}).encode()
                )
        if lines:
            out.write(b"\n".join(lines) + b"\n")
        statuses: Counter[str] = Counter(
            status_.normalise(value.get("status")) if keep else value for _, value in best.values()
        )
        return {
            "records": len(best) if keep else calls,
            "calls": calls,
            "leads": len(best),
            "statuses": dict(sorted(statuses.items())),
            "running": running,
        }

    def _shaped(self, record: dict[str, Any]) -> dict[str, Any]:
        return shape_record(record, self.include_fields, self.exclude_fields, self.mask_phone_numbers)


__all__ = ["DialNexaCreateBatchCallOperator", "DialNexaExportBatchCallsOperator"]
