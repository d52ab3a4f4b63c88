"""List Calls paging: list bodies in every documented envelope, filters, creation windows (``WindowPager``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow_provider_dialnexa import status as call_status
from airflow_provider_dialnexa._connection import ConnectionSettings, did_you_mean
from airflow_provider_dialnexa._validation import arrives_at_run_time
from airflow_provider_dialnexa.exceptions import DialNexaMalformedResponseError, describe


def as_call_list(data: Any, *, settings: ConnectionSettings) -> tuple[list[dict[str, Any]], int | None]:
    """Records of a List Calls body: a bare array (OpenAPI) or ``{data, meta}`` (other docs).

    Returns the records and the page limit the server says it applied (None if it did not say).
    """
    limit: int | None = None
    if isinstance(data, dict):
        meta = data["meta"] if isinstance(data.get("meta"), dict) else data
        raw_limit = meta.get("limit")
        if isinstance(raw_limit, int | str) and str(raw_limit).isdigit():
            limit = int(raw_limit)
        data = next((data[k] for k in ("data", "items", "calls", "callLogs") if isinstance(data.get(k), list)), None)
    if not isinstance(data, list):
        raise DialNexaMalformedResponseError(
            f"{describe('List Calls', settings.conn_id)}: HTTP 200 without a list of calls. "
            f"{DialNexaMalformedResponseError.hint}",
            conn_id=settings.conn_id,
            http_status=200,
        )
    # An item without a usable id (missing, empty, or not a string, e.g. an object) cannot be matched to a
    # wait: drop it (that wait falls back to Get Call) instead of letting one item fail the whole batch.
    return [item for item in data if isinstance(item, dict) and isinstance(item.get("id"), str) and item["id"]], limit


def call_id_query(call_ids: Iterable[str], limit: int) -> dict[str, str]:
    """Query parameters of one List Calls request for these ids."""
    return {"call_id": ",".join(call_ids), "limit": str(limit), "page": "1"}


#: List Calls filters DialNexa documents (besides the window, paging and sorting the client sets itself).
LIST_FILTERS: frozenset[str] = frozenset(
    {
        "agent_id",
        "call_id",
        "batch_call_id",
        "agent_version_id",
        "agent_version_name",
        "from",
        "to",
        "type",
        "call_direction",
        "latency_min",
        "latency_max",
        "sentiment",
        "duration_greater_than",
        "duration_less_than",
        "duration_min",
        "duration_max",
        "status",
        "end_reason",
    }
)
#: Documented values of the enumerated List Calls filters, compared lower-cased. ``status`` takes every spelling
#: ``status.py`` knows (hyphenated too). A typo would silently match no call, so it fails before any request.
FILTER_VALUES: dict[str, frozenset[str]] = {
    "status": call_status.RUNNING | call_status.TERMINAL,
    "call_direction": frozenset({"inbound", "outbound"}),
    "type": frozenset({"phone", "web"}),
    "sentiment": frozenset({"positive", "neutral", "negative", "unknown"}),
}
#: Query parameters the window iteration owns; a filter of that name would change what it means.
_OWNED_PARAMS = {
    "start_date": "give the window as start_date/end_date (window_start/window_end on the operator)",
    "end_date": "give the window as start_date/end_date (window_start/window_end on the operator)",
    "page": "pages are requested by the iteration itself",
    "limit": "use page_size",
    "created_at": "the iteration always sorts by created_at=asc, so paging is stable while calls are created",
    "duration": "the iteration always sorts by created_at=asc",
    "export": "the iteration pages; export=true caps at 5,000 rows",
    "columns": "columns only applies to export=true",
}
#: The documented cap of ``limit`` on some DialNexa pages: a bare-array page of exactly this many records,
#: when more were asked for, may be a capped page rather than the last one.
DOCUMENTED_LIMIT_CAP = 100
#: The window sent to DialNexa is this much wider than asked, on both sides: its boundary semantics
#: (inclusive? exclusive? second precision?) are undocumented. The exact half-open window is applied here.
SERVER_WINDOW_MARGIN = timedelta(seconds=1)
CREATED_FIELDS = ("createdAt", "created_at")


def as_utc(value: datetime | str, name: str) -> datetime:
    """An aware UTC datetime from a datetime or ISO-8601 string; naive values are taken as UTC."""
    if isinstance(value, str):
        text = value.strip()
        try:
            parsed = datetime.fromisoformat(text[:-1] + "+00:00" if text[-1:] in "zZ" and text else text)
        except ValueError:
            raise ValueError(
                f"{name} must be a datetime or an ISO-8601 timestamp (e.g. '2026-10-05T09:00:00Z'), got {value!r:.60}"
            ) from None
    elif isinstance(value, datetime):
        parsed = value
    else:
        raise ValueError(f"{name} must be a datetime or an ISO-8601 timestamp, got {type(value).__name__}")
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def epoch_seconds(value: object, name: str) -> float:
    """A wall-clock point in time as epoch seconds: a number (``time.time() + 3600``), a datetime (naive = UTC)
    or an ISO-8601 string. Anything else (a timedelta, a bool, ...) raises ``ValueError`` saying what to pass.
    """
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    if isinstance(value, datetime | str):
        try:
            return as_utc(value, name).timestamp()
        except ValueError:
            pass
    raise ValueError(
        f"{name} must be a point in time: epoch seconds (e.g. time.time() + 3600), a datetime "
        f"(e.g. datetime.now(UTC) + timedelta(hours=1)) or an ISO-8601 string; got {type(value).__name__} "
        f"{value!r:.60}"
    )


def iso_utc(value: datetime) -> str:
    """ISO-8601 UTC with milliseconds and ``Z``, as DialNexa writes timestamps (sub-ms truncated)."""
    value = value.astimezone(UTC)
    return f"{value:%Y-%m-%dT%H:%M:%S}.{value.microsecond // 1000:03d}Z"


def check_window(start: datetime | None, end: datetime | None) -> None:
    """Reject an empty or inverted window before any request."""
    if start is not None and end is not None and end <= start:
        raise ValueError(
            f"the window end ({iso_utc(end)}) must be after its start ({iso_utc(start)}); "
            "the window is half-open, [start, end)"
        )


def filter_items(value: Any) -> list[Any]:
    """One filter's values: a list/tuple/set as given, a comma string split (``"busy,failed"``), else one value."""
    if isinstance(value, set | frozenset):
        return sorted(value)
    if isinstance(value, list | tuple):
        return list(value)
    if isinstance(value, str) and "," in value:
        return [part.strip() for part in value.split(",")]
    return [value]


def filter_query(filters: Mapping[str, Any]) -> dict[str, str]:
    """List Calls filters as query parameters: lists/tuples/sets become comma lists, None is dropped.

    An unknown or reserved name raises ``ValueError`` naming the documented ones, before any request.
    """
    query: dict[str, str] = {}
    for name, value in filters.items():
        if name in _OWNED_PARAMS:
            raise ValueError(f"List Calls filter {name!r} cannot be set here: {_OWNED_PARAMS[name]}")
        if name not in LIST_FILTERS:
            raise ValueError(
                f"unknown List Calls filter {name!r}{did_you_mean(str(name), LIST_FILTERS) or ';'} "
                f"DialNexa documents {sorted(LIST_FILTERS)}"
            )
        if value is None:
            continue
        parts = [_filter_value(name, item) for item in filter_items(value)]
        if not parts:
            raise ValueError(f"List Calls filter {name!r} is an empty list; leave it out to match everything")
        query[name] = ",".join(parts)
    return query


def check_literal_filters(filters: Any) -> None:
    """Check, when the DAG is parsed, what can be checked of an operator's ``filters``: every name, and every
    value that is not a template or task output (those are checked by ``filter_query`` once rendered).
    """
    if arrives_at_run_time(filters):
        return
    if not isinstance(filters, Mapping):
        raise ValueError(f"filters must be a dict of List Calls filters, got {type(filters).__name__}")
    literal: dict[str, Any] = {}
    for name, value in filters.items():
        if arrives_at_run_time(value):
            literal[name] = None  # the name is checked now, the value once rendered
        elif isinstance(value, list | tuple | set | frozenset):
            kept = [item for item in value if not arrives_at_run_time(item)]
            literal[name] = kept if kept or not value else None
        else:
            literal[name] = value
    filter_query(literal)


def _filter_value(name: str, value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return iso_utc(as_utc(value, name))
    if isinstance(value, str | int | float):
        text = str(value).strip()
        if text and "," not in text:
            _check_documented(name, text)
            return text
    raise ValueError(
        f"List Calls filter {name!r} has an unusable value {value!r:.60} (need a non-empty, comma-free value)"
    )


def _check_documented(name: str, text: str) -> None:
    """Reject a value an enumerated filter does not document (``status``: any known spelling)."""
    allowed = FILTER_VALUES.get(name)
    if allowed is None:
        return
    value = call_status.normalise(text) if name == "status" else text.lower()
    if value not in allowed:
        spellings = " (hyphenated spellings such as 'no-answer' and 'in-progress' work too)" if name == "status" else ""
        raise ValueError(
            f"List Calls filter {name!r} has an unknown value {text!r:.60}{did_you_mean(value, allowed) or ';'} "
            f"DialNexa documents {sorted(allowed)}{spellings}"
        )


def created_time(record: Mapping[str, Any]) -> datetime | None:
    """A call's creation time (``createdAt`` or ``created_at``; ISO-8601 or epoch s/ms), UTC; None if absent."""
    for name in CREATED_FIELDS:
        raw = record.get(name)
        if raw is None or raw == "":
            continue
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            return datetime.fromtimestamp(raw / 1000 if raw > 1e11 else raw, UTC)
        try:
            return as_utc(str(raw), name)
        except ValueError:
            return None
    return None


class WindowPager:
    """The paging state of one List Calls iteration over a creation window, shared by the sync and async hook.

    ``params()`` is the next request's query; ``take(body)`` returns that page's new in-window records.
    Pages are asked in ascending creation order, so calls created meanwhile land on later pages; ids already
    yielded are dropped; records outside ``[start, end)`` are dropped (the server was asked a slightly wider
    window, see ``SERVER_WINDOW_MARGIN``). A page shorter than the limit the server applied ends the iteration.
    """

    def __init__(
        self,
        start: datetime | None,
        end: datetime | None,
        filters: Mapping[str, str],
        page_size: int,
        settings: ConnectionSettings,
    ) -> None:
        self.start, self.end, self.filters, self.size, self.settings = start, end, dict(filters), page_size, settings
        self.page = 1
        self.done = False
        self.seen: set[str] = set()

    def params(self) -> dict[str, str]:
        query = {**self.filters, "created_at": "asc", "limit": str(self.size), "page": str(self.page)}
        if self.start is not None:
            query["start_date"] = iso_utc(self.start - SERVER_WINDOW_MARGIN)
        if self.end is not None:
            query["end_date"] = iso_utc(self.end + SERVER_WINDOW_MARGIN)
        return query

    def take(self, data: Any) -> list[dict[str, Any]]:
        records, server_limit = as_call_list(data, settings=self.settings)
        count = len(records)
        if server_limit is not None and 0 < server_limit < self.size:
            self.size = server_limit  # the server applied a smaller page: continue with it, offsets stay aligned
        elif server_limit is None and self.page == 1 and count == DOCUMENTED_LIMIT_CAP < self.size:
            # A bare page of exactly the documented cap: maybe capped. Go on with that size; if nothing was
            # capped, the next page is simply empty (one extra request).
            self.size = DOCUMENTED_LIMIT_CAP
        self.done = count < self.size
        fresh = [rec for rec in records if rec["id"] not in self.seen]
        if records and not fresh and not self.done:
            raise DialNexaMalformedResponseError(
                f"{describe('List Calls', self.settings.conn_id)}: page {self.page} holds only calls already "
                "listed; the server seems to ignore 'page'. Stopping instead of looping. "
                f"{DialNexaMalformedResponseError.hint}",
                conn_id=self.settings.conn_id,
                http_status=200,
            )
        self.page += 1
        kept = []
        # Fast path: DialNexa's own format (``2026-10-05T09:15:02.118Z``) sorts as text, so bounds in that
        # format compare without parsing; anything else is parsed.
        low = iso_utc(self.start) if self.start is not None else ""
        high = iso_utc(self.end) if self.end is not None else "~"
        windowed = self.start is not None or self.end is not None
        for rec in fresh:
            call_id = str(rec["id"])
            self.seen.add(call_id)
            if not windowed:
                kept.append(rec)
                continue
            raw = rec.get("createdAt") or rec.get("created_at")
            if isinstance(raw, str) and len(raw) == 24 and raw[-1] == "Z" and raw[10] == "T" and raw[19] == ".":
                if low <= raw < high:
                    kept.append(rec)
                continue
            created = created_time(rec)
            if created is None:
                raise DialNexaMalformedResponseError(
                    f"{describe(f'call {call_id!r}', self.settings.conn_id)}: the List Calls record has no "
                    "readable createdAt/created_at, so it cannot be placed in a window. "
                    f"{DialNexaMalformedResponseError.hint}",
                    call_id=call_id,
                    conn_id=self.settings.conn_id,
                    http_status=200,
                )
            if (self.start is None or created >= self.start) and (self.end is None or created < self.end):
                kept.append(rec)
        return kept
