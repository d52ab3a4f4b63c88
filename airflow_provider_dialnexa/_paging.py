"""List Calls paging: list bodies in every documented envelope, filters, creation windows (``WindowPager``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow_provider_dialnexa import status as call_status
from airflow_provider_dialnexa._connection import ConnectionSettings, did_you_mean
from airflow_provider_dialnexa._validation import arrives_at_run_time
from airflow_provider_dialnexa.exceptions import DialNexaMalformedResponseError, describe


def list_body(data: Any, *, settings: ConnectionSettings) -> tuple[list[Any], int | None]:
    """The items of a List Calls body exactly as sent: a bare array (OpenAPI) or ``{data, meta}`` (other docs).

    Returns the items and the page limit the server says it applied (None if it did not say).
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
    return data, limit


def usable_id(item: Any) -> str | None:
    """An item's call id if it is a non-empty string (None: missing, empty, an object, or not a record)."""
    call_id = item.get("id") if isinstance(item, dict) else None
    return call_id if isinstance(call_id, str) and call_id else None


def as_call_list(data: Any, *, settings: ConnectionSettings) -> tuple[list[dict[str, Any]], int | None]:
    """Records of a List Calls body that carry a usable id, and the page limit the server reported.

    For the batched poller: an item without a usable id cannot be matched to a wait, so it is dropped (that
    wait falls back to Get Call) instead of failing the whole batch. Paging never uses this count: see
    ``WindowPager``, which goes by the page as sent.
    """
    items, limit = list_body(data, settings=settings)
    return [item for item in items if usable_id(item) is not None], limit


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


def to_millisecond(value: datetime) -> datetime:
    """``value`` without its sub-millisecond digits: DialNexa writes times to the millisecond, so window
    bounds are taken at that precision (truncated, as ``iso_utc`` writes them) on every comparison path."""
    return value.replace(microsecond=value.microsecond - value.microsecond % 1000)


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
    """The paging state of one List Calls iteration, shared by ``iter_calls``/``aiter_calls`` and the search for a
    placed call (``_placement``).

    ``params()`` is the next request's query; ``take(body)`` returns that page's new in-window records.

    * Order: oldest first (``created_at=asc``), so calls created meanwhile land on later pages; the search
      for a placed call asks newest first (``newest_first``), where a new call pushes rows to later pages
      (seen again, never skipped). Ids already taken are dropped as each item is taken, so an id twice on
      one page is yielded once.
    * The end: the page as the server sent it decides, never the records kept from it. The page size the
      server serves is the ``limit`` it reports (``meta.limit``) or, if it says nothing, the length of its
      first non-empty page (a server that ignores ``limit`` or caps it anywhere); later pages are asked at
      that size. An empty page, or one shorter than that size, is the last. A first short page therefore
      costs one more request (an empty page) to prove it was the last. A page longer than that size, or a
      page of only ids already taken, means the server's paging cannot be trusted: it raises.
    * An item without a usable id raises (nothing is yielded past a call that cannot be identified); with
      ``skip_unreadable`` it is counted in ``unreadable`` instead, and the search treats any as "proves nothing".
    * The window: records outside ``[start, end)`` are dropped (the server was asked a slightly wider
      window, see ``SERVER_WINDOW_MARGIN``); bounds are truncated to milliseconds (``to_millisecond``).
    """

    def __init__(
        self,
        start: datetime | None,
        end: datetime | None,
        filters: Mapping[str, str],
        page_size: int,
        settings: ConnectionSettings,
        *,
        newest_first: bool = False,
        skip_unreadable: bool = False,
    ) -> None:
        self.start = None if start is None else to_millisecond(start)
        self.end = None if end is None else to_millisecond(end)
        self.filters, self.size, self.settings = dict(filters), page_size, settings
        self.newest_first, self.skip_unreadable = newest_first, skip_unreadable
        self.page = 1
        self.done = False
        #: The page size the server has shown (``meta.limit``, or its first non-empty page); None until then.
        self.served: int | None = None
        self.seen: set[str] = set()
        #: Items without a usable id (counted only with ``skip_unreadable``; otherwise the first one raises).
        self.unreadable = 0

    def params(self) -> dict[str, str]:
        order = "desc" if self.newest_first else "asc"
        query = {**self.filters, "created_at": order, "limit": str(self.size), "page": str(self.page)}
        if self.start is not None:
            query["start_date"] = iso_utc(self.start - SERVER_WINDOW_MARGIN)
        if self.end is not None:
            query["end_date"] = iso_utc(self.end + SERVER_WINDOW_MARGIN)
        return query

    def _malformed(self, message: str, call_id: str | None = None) -> DialNexaMalformedResponseError:
        return DialNexaMalformedResponseError(
            f"{describe('List Calls', self.settings.conn_id)}: page {self.page} {message} "
            f"{DialNexaMalformedResponseError.hint}",
            call_id=call_id,
            conn_id=self.settings.conn_id,
            http_status=200,
        )

    def _page_ends(self, count: int, server_limit: int | None) -> bool:
        """Learn the page size served from this page; whether it is the last page."""
        if server_limit is not None and server_limit > 0:
            self.served = server_limit
        elif self.served is None and count:
            self.served = count  # the server's page size, unless this was the last page (the next one is empty)
        if self.served is None:
            return True  # an empty first page
        if count > self.served:
            raise self._malformed(
                f"holds {count} calls, more than the {self.served} a page the server served before: its page size "
                "changed while paging, so calls between pages may have been skipped. Stopping instead."
            )
        self.size = min(self.size, self.served)  # ask what is served, so page offsets stay aligned
        return count < self.served

    def take(self, data: Any) -> list[dict[str, Any]]:
        items, server_limit = list_body(data, settings=self.settings)
        count = len(items)
        self.done = self._page_ends(count, server_limit)
        fresh: list[dict[str, Any]] = []
        unreadable = 0
        for index, item in enumerate(items, 1):
            call_id = usable_id(item)
            if call_id is None:
                if not self.skip_unreadable:
                    raise self._malformed(
                        f"item {index} of {count} has no usable id ({_why_unusable(item)}): a call that cannot be "
                        "identified cannot be listed exactly once, so the listing stops instead of skipping it."
                    )
                unreadable += 1
            elif call_id not in self.seen:
                self.seen.add(call_id)  # as it is taken: the same id later on this page is a repeat
                fresh.append(item)
        self.unreadable += unreadable
        if count > unreadable and not fresh and not self.done:
            raise self._malformed(
                "holds only calls already listed; the server seems to ignore 'page'. Stopping instead of looping."
            )
        self.page += 1
        return self._in_window(fresh)

    def _in_window(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if self.start is None and self.end is None:
            return records
        kept = []
        # Fast path: DialNexa's own format (``2026-10-05T09:15:02.118Z``) sorts as text, so bounds in that
        # format compare without parsing; anything else is parsed. Both compare with the same millisecond
        # bounds, and for a bound on a whole millisecond ``t < bound`` equals ``truncated(t) < bound``.
        low = iso_utc(self.start) if self.start is not None else ""
        high = iso_utc(self.end) if self.end is not None else "~"
        for rec in records:
            raw = rec.get("createdAt") or rec.get("created_at")
            if isinstance(raw, str) and len(raw) == 24 and raw[-1] == "Z" and raw[10] == "T" and raw[19] == ".":
                if low <= raw < high:
                    kept.append(rec)
                continue
            created = created_time(rec)
            if created is None:
                call_id = str(rec["id"])
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


def _why_unusable(item: Any) -> str:
    """Why an item has no usable id, without showing the item (it is personal data)."""
    if not isinstance(item, dict):
        return f"the item is a {type(item).__name__}, not an object"
    if "id" not in item:
        return "no 'id' field"
    return "an empty 'id'" if item["id"] in ("", None) else f"'id' is a {type(item['id']).__name__}, not a string"
