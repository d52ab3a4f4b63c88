"""Batch calls without transport: request fields, the correlation token in the title, reading batch records.

The sync hook (tasks) and the async hook (triggers) share everything here. Reads that may take several
requests (finding a batch's status, see ``locate_batch``) are written once as generators that yield the
request to make and receive its parsed body, so both hooks drive the same logic.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Generator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple
from urllib.parse import quote

from airflow_provider_dialnexa import status as status_
from airflow_provider_dialnexa._connection import ConnectionSettings
from airflow_provider_dialnexa._paging import as_utc, created_time, iso_utc
from airflow_provider_dialnexa._validation import validate_call_id
from airflow_provider_dialnexa.exceptions import (
    DialNexaBadRequestError,
    DialNexaMalformedResponseError,
    DialNexaNotFoundError,
    InvalidCallIdError,
    describe,
)

#: DialNexa refuses longer batch titles (400 "title must be 35 characters or fewer").
MAX_TITLE_LENGTH = 35
#: Characters of the correlation token (base32: 40 bits).
TOKEN_LENGTH = 8
#: What goes between the user's title and the token: ``"Renewals #k3v8q2m7"``.
TITLE_MARK = " #"
#: Most of the user's title that fits beside the token.
MAX_USER_TITLE = MAX_TITLE_LENGTH - len(TITLE_MARK) - TOKEN_LENGTH
#: List Batch Calls page size (the smaller documented maximum, so a short page means the end).
BATCH_PAGE_SIZE = 100
#: Most List Batch Calls pages one search reads before it gives up proving anything.
MAX_BATCH_PAGES = 100
#: The status transitions ``PATCH /v1/batch-calls/{id}/status`` takes, and the statuses each one leads to.
ACTIONS: dict[str, frozenset[str]] = {
    "pause": status_.BATCH_PAUSED,
    "resume": status_.BATCH_RUNNING | status_.BATCH_PENDING - {"draft"},
    "cancel": frozenset({"cancelled"}),
}
_HOURS = re.compile(r"([01][0-9]|2[0-3]):[0-5][0-9]")
#: Where a list body keeps its batches, in the spellings DialNexa's pages use.
_LIST_KEYS = ("items", "data", "batches", "batchCalls", "batch_calls", "campaigns")
#: Where a Get Batch Call body may nest the batch itself (besides the top level).
_RECORD_KEYS = ("batch", "batchCall", "batch_call", "campaign", "data")
_RECIPIENT_FIELDS = ("to_number", "to_phone_number", "phone_number")


def batches_url(settings: ConnectionSettings) -> str:
    return f"{settings.base_url}/v1/batch-calls"


def batch_url(settings: ConnectionSettings, batch_id: str) -> str:
    return f"{batches_url(settings)}/{quote(batch_id, safe='')}"


def validate_batch_id(batch_id: object) -> str:
    """``batch_id`` if it can go into a URL path (the call-id rule), else ``InvalidCallIdError`` about a batch."""
    try:
        return validate_call_id(batch_id)
    except InvalidCallIdError:
        raise InvalidCallIdError(
            f"DialNexa batch id {batch_id!r:.60} cannot be a batch id (empty, whitespace, URL delimiters, control "
            "characters, or a template's rendering of a missing value); pass it exactly as DialNexa returned it "
            "(e.g. 'batch_abc123'), e.g. from the create task's XCom"
        ) from None


# -- Create Batch Call ----------------------------------------------------------------------------------


def correlation_token(correlation_id: str) -> str:
    """The short token a correlation value puts into a batch title (lower-case base32 of its SHA-256)."""
    digest = hashlib.sha256(correlation_id.encode()).digest()
    return base64.b32encode(digest).decode().lower()[:TOKEN_LENGTH]


def check_title(title: object) -> str:
    """The user's title stripped; ``ValueError`` for one DialNexa would refuse anyway (empty, > 35 characters)."""
    if not isinstance(title, str) or not title.strip():
        raise ValueError(f"the batch title must be a non-empty string, got {title!r:.60}")
    text = " ".join(title.split())
    if len(text) > MAX_TITLE_LENGTH:
        raise ValueError(
            f"the batch title {text[:40]!r} is {len(text)} characters; DialNexa allows at most {MAX_TITLE_LENGTH}"
        )
    return text


def batch_title(title: str, correlation_id: str) -> str:
    """The title sent to DialNexa: the first ``MAX_USER_TITLE`` characters of ``title``, `` #`` and the token.

    The token makes the title unique per correlation value, so List Batch Calls can tell whether an upload
    whose answer was lost created the batch (the title is the only field a batch keeps that the caller
    chooses and List Batch Calls returns).
    """
    user = check_title(title)[:MAX_USER_TITLE].rstrip()
    return f"{user}{TITLE_MARK}{correlation_token(correlation_id)}"


def _schedule_time(name: str, value: datetime | str) -> str:
    try:
        return iso_utc(as_utc(value, name))
    except ValueError as exc:
        raise DialNexaBadRequestError(f"DialNexa batch {exc}") from None


def create_fields(
    title: str,
    agent_id: str,
    *,
    agent_version_number: int | None = None,
    starts_at: datetime | str | None = None,
    ends_at: datetime | str | None = None,
    calling_hours_start: str | None = None,
    calling_hours_end: str | None = None,
) -> list[tuple[str, str]]:
    """The text fields of ``POST /v1/batch-calls`` (the file is the last part), checked before any upload."""
    fields = [("title", title), ("agent_id", agent_id)]
    if agent_version_number is not None:
        if isinstance(agent_version_number, bool) or not isinstance(agent_version_number, int):
            raise DialNexaBadRequestError(
                f"DialNexa agent_version_number must be a positive whole number, got {agent_version_number!r:.40}"
            )
        if agent_version_number < 1:
            raise DialNexaBadRequestError(f"DialNexa agent_version_number must be >= 1, got {agent_version_number}")
        fields.append(("agent_version_number", str(agent_version_number)))
    start = None if starts_at in (None, "") else _schedule_time("starts_at", starts_at)  # type: ignore[arg-type]
    end = None if ends_at in (None, "") else _schedule_time("ends_at", ends_at)  # type: ignore[arg-type]
    if start is not None and end is not None and end <= start:
        raise DialNexaBadRequestError(f"DialNexa batch ends_at ({end}) must be after starts_at ({start})")
    fields += [(name, value) for name, value in (("starts_at", start), ("ends_at", end)) if value is not None]
    for name, hours in (("calling_hours_start", calling_hours_start), ("calling_hours_end", calling_hours_end)):
        if hours in (None, ""):
            continue
        if not isinstance(hours, str) or not _HOURS.fullmatch(hours.strip()):
            raise DialNexaBadRequestError(f"DialNexa batch {name} must be a time of day as HH:MM (24 h), got {hours!r}")
        fields.append((name, hours.strip()))
    return fields


def as_created_batch(data: Any, *, settings: ConnectionSettings) -> dict[str, Any]:
    """A Create Batch Call 201 body (an object with an ``id``), else ``DialNexaMalformedResponseError``."""
    if not isinstance(data, dict) or not isinstance(data.get("id"), str) or not data["id"]:
        raise DialNexaMalformedResponseError(
            f"{describe('Create Batch Call', settings.conn_id)}: HTTP 2xx without a batch id. "
            f"{DialNexaMalformedResponseError.hint}",
            conn_id=settings.conn_id,
        )
    return data


def title_of(record: Mapping[str, Any]) -> str | None:
    """A batch's title (``title`` in the OpenAPI file, ``name`` on other pages)."""
    value = record.get("title", record.get("name"))
    return " ".join(value.split()) if isinstance(value, str) else None


def total_of(record: Mapping[str, Any]) -> int | None:
    """How many leads a batch holds, in any documented spelling."""
    for name in ("total_records", "total_lead_count", "total_leads", "total_calls", "totalRecords"):
        value = record.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return int(value)
    return None


def warning_of(record: Mapping[str, Any]) -> dict[str, Any] | None:
    """The create answer's ``warning`` (batches ahead of this one) as a small dict, or None."""
    warning = record.get("warning")
    if isinstance(warning, str) and warning:
        return {"message": warning, "conflicts": []}
    if not isinstance(warning, Mapping) or not warning:
        return None
    conflicts = [
        {key: item.get(key) for key in ("kind", "batch_name", "processed_leads", "total_leads", "starts_at")}
        for item in warning.get("conflicts") or ()
        if isinstance(item, Mapping)
    ]
    return {"message": str(warning.get("message") or ""), "conflicts": conflicts}


# -- reading batches ---------------------------------------------------------------------------------------


class Read(NamedTuple):
    """One GET a batch read needs: its URL, query and the subject its errors name."""

    url: str
    params: dict[str, str]
    subject: str


def batch_items(data: Any, *, settings: ConnectionSettings) -> tuple[list[dict[str, Any]], int | None, int | None]:
    """The batches of a List Batch Calls body (``{items, total, page, limit}``, ``{data, meta}`` or an array).

    Returns them, the page limit the server says it applied and its total (None where it did not say).
    """
    limit = total = None
    if isinstance(data, dict):
        meta = data["meta"] if isinstance(data.get("meta"), dict) else data
        limit, total = _number(meta.get("limit")), _number(meta.get("total"))
        data = next((data[key] for key in _LIST_KEYS if isinstance(data.get(key), list)), None)
    if not isinstance(data, list):
        raise DialNexaMalformedResponseError(
            f"{describe('List Batch Calls', settings.conn_id)}: HTTP 200 without a list of batches. "
            f"{DialNexaMalformedResponseError.hint}",
            conn_id=settings.conn_id,
            http_status=200,
        )
    items = [item for item in data if isinstance(item, dict) and isinstance(item.get("id"), str) and item["id"]]
    return items, limit, total


def _number(raw: object) -> int | None:
    if isinstance(raw, int | str) and not isinstance(raw, bool) and str(raw).isdigit():
        return int(raw)
    return None


class BatchPager:
    """Paging through List Batch Calls, shared by the sync and async hook: ``params()``, then ``take(body)``.

    The end is proven, never guessed: an empty page, a page shorter than the limit the server says it
    applied, or as many batches as its ``total``. A short page from a server that states no limit may be a
    silent cap, so the next page is read too (one request more). A page of only batches already seen means
    the server ignores ``page``: that fails loudly instead of looping or ending early.
    """

    def __init__(self, settings: ConnectionSettings, status: str | None = None, page_size: int | None = None):
        self.settings, self.status, self.size = settings, status, page_size or BATCH_PAGE_SIZE
        self.page = 1
        self.done = False
        self.seen: set[str] = set()

    def read(self) -> Read:
        params = {"page": str(self.page), "limit": str(self.size)}
        if self.status:
            params["status"] = self.status
        return Read(batches_url(self.settings), params, f"List Batch Calls page {self.page}")

    def take(self, data: Any) -> list[dict[str, Any]]:
        items, limit, total = batch_items(data, settings=self.settings)
        fresh = [item for item in items if item["id"] not in self.seen]
        if items and not fresh:
            raise DialNexaMalformedResponseError(
                f"{describe('List Batch Calls', self.settings.conn_id)}: page {self.page} holds only batches "
                "already listed; the server seems to ignore 'page'. Stopping instead of looping. "
                f"{DialNexaMalformedResponseError.hint}",
                conn_id=self.settings.conn_id,
                http_status=200,
            )
        self.seen.update(item["id"] for item in fresh)
        self.done = (
            not items
            or (limit is not None and len(items) < min(limit, self.size))
            or (total is not None and len(self.seen) >= total)
        )
        self.page += 1
        return fresh


def record_in_detail(data: Any, batch_id: str) -> dict[str, Any] | None:
    """The batch itself, if a Get Batch Call body carries it (with a status); None for a bare call-log page.

    The OpenAPI file's example of ``GET /v1/batch-calls/{id}`` is a page of ``callLogs`` only; other pages show
    the batch record (``id``, ``status``, counters). Either may nest the other.
    """
    if not isinstance(data, dict):
        return None
    for candidate in (data, *(data.get(key) for key in _RECORD_KEYS)):
        if (
            isinstance(candidate, dict)
            and isinstance(candidate.get("status"), str)
            and candidate["status"]
            and str(candidate.get("id", batch_id)) == batch_id
        ):
            return {key: value for key, value in candidate.items() if key != "callLogs"}
    return None


@dataclass
class LocateHint:
    """What one waiter learned: whether Get Batch Call carries the status (None: not asked yet). Kept across a
    waiter's polls, so each poll costs one request once the source is known."""

    detail: bool | None = None


def locate_batch(
    batch_id: str, settings: ConnectionSettings, hint: LocateHint | None = None
) -> Generator[Read, Any, dict[str, Any]]:
    """Find a batch's record (status, counters): yields the reads to make, receives their bodies, returns it.

    Order: List Batch Calls page 1 (newest first on the pages that say so; the OpenAPI file documents status
    and counters there), then Get Batch Call once (if its body carries the status, later polls ask it first),
    then the further List Batch Calls pages. A batch on no page raises ``DialNexaNotFoundError``.
    """
    hint = hint or LocateHint()
    detail_read = Read(batch_url(settings, batch_id), {"page": "1", "limit": "1"}, f"batch {batch_id!r}")
    if hint.detail:
        record = record_in_detail((yield detail_read), batch_id)
        if record is not None:
            return record
        hint.detail = False  # the server stopped sending it: the list again
    pager = BatchPager(settings)
    while not pager.done and pager.page <= MAX_BATCH_PAGES:
        for item in pager.take((yield pager.read())):
            if item["id"] == batch_id:
                return item
        if hint.detail is None:
            record = record_in_detail((yield detail_read), batch_id)
            hint.detail = record is not None
            if record is not None:
                return record
    if not pager.done:
        raise DialNexaMalformedResponseError(
            f"{describe(f'batch {batch_id!r}', settings.conn_id)}: not on the first {MAX_BATCH_PAGES} pages of "
            "List Batch Calls, and Get Batch Call does not say its status",
            conn_id=settings.conn_id,
        )
    raise DialNexaNotFoundError(
        f"{describe(f'batch {batch_id!r}', settings.conn_id)}: List Batch Calls does not list it (every page read) "
        "and Get Batch Call does not say its status. Check the batch id and the connection's organization",
        conn_id=settings.conn_id,
        http_status=404,
    )


def is_match(record: Mapping[str, Any], title: str, since: float, agent_id: str) -> bool:
    """Whether a listed batch is the one a lost upload created: the same full title (token included),
    created at or after ``since`` when the record says when, and the same agent when it says which."""
    if title_of(record) != title:
        return False
    created = created_time(record)
    if created is not None and created.timestamp() < since:
        return False
    agent = record.get("agent_id")
    return not (isinstance(agent, str) and agent and agent != agent_id)


# -- progress and outcomes ---------------------------------------------------------------------------------

_RETRY_FIELDS = ("first_retry_count", "second_retry_count", "third_retry_count", "fourth_retry_count")


def _count(record: Mapping[str, Any], *names: str) -> int | None:
    for name in names:
        value = record.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return int(value)
    return None


def progress(record: Mapping[str, Any]) -> dict[str, Any]:
    """A batch's counters in one shape (None = DialNexa did not say): total, sent, picked_up, retries by depth."""
    retries = [_count(record, name) for name in _RETRY_FIELDS]
    return {
        "total": total_of(record),
        "sent": _count(record, "sent_lead_count", "sent_calls", "completed_calls", "completed"),
        "picked_up": _count(record, "picked_up_calls", "picked_up_lead_count"),
        "retries": [r for r in retries if r is not None] if any(r is not None for r in retries) else None,
    }


def progress_line(record: Mapping[str, Any]) -> str:
    """One log line of a batch's progress: ``running: 240/250 sent, 116 picked up, retries 80/25/0/0``."""
    numbers = progress(record)
    total = "?" if numbers["total"] is None else numbers["total"]
    parts = [f"{'?' if numbers['sent'] is None else numbers['sent']}/{total} sent"]
    if numbers["picked_up"] is not None:
        parts.append(f"{numbers['picked_up']} picked up")
    if numbers["retries"]:
        parts.append("retries " + "/".join(str(r) for r in numbers["retries"]))
    return f"{status_.normalise(record.get('status'))}: {', '.join(parts)}"


def lead_key(record: Mapping[str, Any]) -> str:
    """Which lead a call log belongs to: the digits of the number dialled (every retry child redials it).

    DialNexa documents no parent-call field on call logs, and the leads file's one required column is
    ``phone_number``; so two rows with the same number are one lead here. Without a number, the call is its own.
    """
    number = next((record[key] for key in _RECIPIENT_FIELDS if record.get(key)), None)
    digits = "".join(ch for ch in str(number or "") if ch.isdigit())
    return digits or f"call:{record.get('id')}"


def attempt_order(record: Mapping[str, Any], ended: bool | None = None) -> tuple[bool, str, str]:
    """Sort key of a lead's attempts: the representative attempt sorts last (an ended one, then the newest).

    ``ended`` may be given when the caller already knows it. DialNexa's own timestamp format
    (``2026-10-05T09:15:02.118Z``) sorts as text and is used as is; anything else is parsed.
    """
    raw = record.get("createdAt") or record.get("created_at")
    if not (isinstance(raw, str) and len(raw) == 24 and raw[-1] == "Z" and raw[10] == "T" and raw[19] == "."):
        created = created_time(record)
        raw = iso_utc(created) if created is not None else ""
    if ended is None:
        ended = status_.is_terminal(record.get("status"))
    return ended, raw, str(record.get("id"))
