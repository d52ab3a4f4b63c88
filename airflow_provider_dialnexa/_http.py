"""Transport-independent pieces of a DialNexa request, shared by the sync and async hook paths.

Parsing and validating the Airflow connection, validating call ids, building URLs, and turning a
response (status, headers, body bytes) into a record or a typed error all live here, so ``requests``
and ``httpx`` differ only in how bytes cross the network.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlsplit

from airflow_provider_dialnexa import __version__
from airflow_provider_dialnexa.exceptions import (
    DialNexaBadRequestError,
    DialNexaConfigError,
    DialNexaMalformedResponseError,
    InvalidCallIdError,
    InvalidPhoneNumberError,
    describe,
    error_for_status,
)
from airflow_provider_dialnexa.policy import (
    DEFAULT_MAX_RETRIES,
    DEFAULT_RATE_PER_MINUTE,
    DEFAULT_TIMEOUT,
    parse_retry_after,
)
from airflow_provider_dialnexa.records import mask_phone_number

DEFAULT_BASE_URL = "https://api.dialnexa.com"
USER_AGENT = f"airflow-provider-dialnexa/{__version__}"
MAX_CALL_ID_LENGTH = 128
POLLING_MODES = ("batched", "per_call")

#: What templates render for a missing value (``{{ params.x }}`` of None): never a DialNexa id.
_MISSING_VALUES = frozenset({"none", "null", "undefined", "nan"})
_EXTRA_PREFIX = "extra__dialnexa__"
_KNOWN_EXTRAS = ("timeout", "max_retries", "rate_limit_per_minute", "polling")


@dataclass(frozen=True)
class ConnectionSettings:
    """A validated ``dialnexa`` connection. ``repr`` hides the key."""

    conn_id: str
    base_url: str
    api_key: str
    timeout: float = DEFAULT_TIMEOUT
    max_retries: int = DEFAULT_MAX_RETRIES
    rate_limit_per_minute: float = DEFAULT_RATE_PER_MINUTE
    polling: str = "batched"

    def __repr__(self) -> str:
        return (
            f"ConnectionSettings(conn_id={self.conn_id!r}, base_url={self.base_url!r}, api_key='***', "
            f"timeout={self.timeout}, max_retries={self.max_retries}, "
            f"rate_limit_per_minute={self.rate_limit_per_minute}, polling={self.polling!r})"
        )

    @property
    def headers(self) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self.api_key}",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }

    def call_url(self, call_id: str) -> str:
        return f"{self.base_url}/v1/calls/{quote(call_id, safe='')}"

    @property
    def calls_url(self) -> str:
        return f"{self.base_url}/v1/calls"


def _config_error(conn_id: str, problem: str) -> DialNexaConfigError:
    return DialNexaConfigError(f"DialNexa connection {conn_id!r}: {problem}", conn_id=conn_id)


def normalise_base_url(conn_id: str, host: str | None, schema: str | None, port: int | None) -> str:
    """Base URL without a trailing ``/`` or ``/v1``; empty host means DialNexa's production URL."""
    host = (host or "").strip()
    if not host:
        return DEFAULT_BASE_URL
    if "://" not in host:
        if (schema or "").lower() in ("http", "https"):
            host = f"{schema.lower()}://{host}"  # type: ignore[union-attr]
        else:
            raise _config_error(
                conn_id,
                f"host {host!r} has no scheme; set it to 'https://{host}' (or leave it empty for {DEFAULT_BASE_URL})",
            )
    parts = urlsplit(host)
    if parts.scheme.lower() not in ("http", "https"):
        raise _config_error(conn_id, f"host scheme {parts.scheme!r} is not supported; use https://")
    if not parts.hostname:
        raise _config_error(conn_id, f"host {host!r} names no server")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise _config_error(conn_id, "host must be a plain base URL (no credentials, query or fragment)")
    try:
        netloc_port = parts.port
    except ValueError as exc:
        raise _config_error(conn_id, f"host {host!r} has an invalid port") from exc
    netloc = parts.netloc
    if port and netloc_port is None:
        netloc = f"{netloc}:{port}"
    path = parts.path.rstrip("/")
    if path.endswith("/v1"):
        path = path[: -len("/v1")]
    return f"{parts.scheme.lower()}://{netloc}{path}"


def _number(conn_id: str, name: str, value: Any, low: float, high: float, integer: bool) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise _config_error(conn_id, f"extra {name!r} must be a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _config_error(conn_id, f"extra {name!r} must be a number, got {type(value).__name__}")
    if integer and value != int(value):
        raise _config_error(conn_id, f"extra {name!r} must be a whole number, got {value}")
    if not low <= value <= high:
        raise _config_error(conn_id, f"extra {name!r} must be between {low:g} and {high:g}, got {value}")
    return float(value)


def settings_from_connection(
    conn_id: str,
    *,
    host: str | None,
    password: str | None,
    schema: str | None = None,
    port: int | None = None,
    extra: Mapping[str, Any] | None = None,
) -> tuple[ConnectionSettings, list[str]]:
    """Validate a connection's fields; return the settings and warnings (unknown extras)."""
    api_key = (password or "").strip()
    if not api_key:
        raise _config_error(conn_id, "no API key; put the DialNexa API key (<key_id>:<secret>) in the password field")
    if any(ch.isspace() or unicodedata.category(ch).startswith("C") for ch in api_key):
        raise _config_error(conn_id, "the API key contains whitespace or control characters")
    values: dict[str, Any] = {}
    warnings: list[str] = []
    for raw_name, value in (extra or {}).items():
        name = raw_name.removeprefix(_EXTRA_PREFIX)
        if name not in _KNOWN_EXTRAS:
            warnings.append(f"DialNexa connection {conn_id!r}: ignoring unknown extra {raw_name!r}")
        elif value is not None and value != "":
            values[name] = value
    settings = ConnectionSettings(
        conn_id=conn_id,
        base_url=normalise_base_url(conn_id, host, schema, port),
        api_key=api_key,
    )
    changes: dict[str, Any] = {}
    if "timeout" in values:
        changes["timeout"] = _number(conn_id, "timeout", values["timeout"], 1, 300, integer=False)
    if "max_retries" in values:
        changes["max_retries"] = int(_number(conn_id, "max_retries", values["max_retries"], 0, 20, True))
    if "rate_limit_per_minute" in values:
        changes["rate_limit_per_minute"] = _number(
            conn_id, "rate_limit_per_minute", values["rate_limit_per_minute"], 0, 100_000, integer=False
        )
    if "polling" in values:
        polling = str(values["polling"]).strip().lower().replace("-", "_")
        if polling not in POLLING_MODES:
            raise _config_error(conn_id, f"extra 'polling' must be one of {POLLING_MODES}, got {polling!r}")
        changes["polling"] = polling
    if changes:
        settings = ConnectionSettings(**{**settings.__dict__, **changes})
    return settings, warnings


def validate_call_id(call_id: object) -> str:
    """Return ``call_id`` if it is safe to put in a URL path, else raise ``InvalidCallIdError``.

    DialNexa ids are opaque (``call_x9y3zp4mq7r1``), so the rule is what could never be an id or could
    change the request's meaning: path/query/fragment/escape characters, ``..``, whitespace, controls.
    """
    if not isinstance(call_id, str):
        raise InvalidCallIdError(
            f"DialNexa call id must be a string, got {type(call_id).__name__} ({call_id!r:.60}); "
            "check the task's call_id argument or the template/XCom that fills it"
        )
    problem = None
    if not call_id:
        problem = "is empty"
    elif call_id.strip() != call_id or any(ch.isspace() for ch in call_id):
        problem = "contains whitespace"
    elif len(call_id) > MAX_CALL_ID_LENGTH:
        problem = f"is {len(call_id)} characters long (at most {MAX_CALL_ID_LENGTH})"
    elif any(unicodedata.category(ch).startswith("C") for ch in call_id):
        problem = "contains control characters"
    elif any(ch in call_id for ch in "/?#%\\"):
        problem = "contains a URL delimiter (one of / ? # % \\)"
    elif ".." in call_id:
        problem = "contains '..'"
    elif call_id.lower() in _MISSING_VALUES:
        problem = "is how a template renders a missing value (None/null/undefined), not an id"
    if problem:
        raise InvalidCallIdError(
            f"DialNexa call id {call_id[:40]!r}{'...' if len(call_id) > 40 else ''} {problem}; "
            "pass the id exactly as DialNexa returned it (e.g. 'call_x9y3zp4mq7r1')",
            call_id=call_id[:40],
        )
    return call_id


def interpret(
    status_code: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    subject: str,
    call_id: str | None,
    settings: ConnectionSettings,
    hints: Mapping[int, str] | None = None,
) -> Any:
    """Parsed JSON of a 2xx response, or raise the typed error for this response (``hints`` by status)."""
    if status_code >= 300:
        raise error_for_status(
            status_code,
            body,
            subject=subject,
            call_id=call_id,
            conn_id=settings.conn_id,
            secrets=(settings.api_key,),
            retry_after=parse_retry_after(headers.get("retry-after")),
            hint=(hints or {}).get(status_code),
        )
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise DialNexaMalformedResponseError(
            f"{describe(subject, settings.conn_id)}: HTTP {status_code} with a body that is not JSON "
            f"({len(body)} bytes). {DialNexaMalformedResponseError.hint}",
            call_id=call_id,
            conn_id=settings.conn_id,
            http_status=status_code,
        ) from None


def as_call_record(data: Any, *, call_id: str, settings: ConnectionSettings) -> dict[str, Any]:
    """Check that a Get Call body is a call record (a JSON object with an ``id``) and return it as sent."""
    problem = None
    if not isinstance(data, dict):
        problem = f"a JSON {type(data).__name__} instead of an object"
    elif not data.get("id"):
        problem = "an object without 'id'"
    if problem:
        raise DialNexaMalformedResponseError(
            f"{describe(f'call {call_id!r}', settings.conn_id)}: HTTP 200 with {problem}. "
            f"{DialNexaMalformedResponseError.hint}",
            call_id=call_id,
            conn_id=settings.conn_id,
            http_status=200,
        )
    return data  # type: ignore[no-any-return]


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


# -- Create Call ----------------------------------------------------------------------------------------

#: The ``metadata`` key that carries a call's correlation value (DialNexa has no idempotency header; its
#: guidance is a stable correlation value in ``metadata``, reconciled through List Calls after a failure).
CORRELATION_KEY = "airflow_correlation_id"
_E164 = re.compile(r"\+[1-9][0-9]{7,14}")


def validate_phone_number(phone_number: object) -> str:
    """Return ``phone_number`` if it is E.164 (``+``, 8 to 15 digits, the first not 0), else raise.

    The one check for every phone number this provider sends; the error shows the number masked.
    """
    if not isinstance(phone_number, str):
        raise InvalidPhoneNumberError(
            f"DialNexa phone_number must be a string in E.164 form (e.g. '+919876543210'), "
            f"got {type(phone_number).__name__}; check the task's phone_number argument or the template that fills it"
        )
    number = phone_number.strip()
    if not _E164.fullmatch(number):
        shown = mask_phone_number(number) if number else "''"
        raise InvalidPhoneNumberError(
            f"DialNexa phone_number {shown} is not E.164: write it as '+', the country code and the number, "
            "8 to 15 digits with no spaces or punctuation (e.g. '+919876543210')"
        )
    return number


def validate_agent_id(agent_id: object) -> str:
    """Return ``agent_id`` if it can be a DialNexa agent id (a non-empty string without spaces or controls)."""
    if (
        not isinstance(agent_id, str)
        or not agent_id
        or len(agent_id) > MAX_CALL_ID_LENGTH
        or any(ch.isspace() or unicodedata.category(ch).startswith("C") for ch in agent_id)
        or agent_id.lower() in _MISSING_VALUES
    ):
        raise DialNexaBadRequestError(
            f"DialNexa agent_id {agent_id!r:.60} is not an agent id; pass it exactly as DialNexa shows it "
            "(e.g. 'agent_2g7Xy3tY53gRlp')"
        )
    return agent_id


def create_call_body(
    phone_number: str,
    agent_id: str,
    metadata: Mapping[str, Any] | None,
    correlation_id: str,
    agent_version_number: int | None = None,
    notes: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON body of ``POST /v1/calls``, with the correlation value added to (a copy of) ``metadata``."""
    if metadata is not None and not isinstance(metadata, Mapping):
        raise DialNexaBadRequestError(f"DialNexa metadata must be a JSON object (dict), got {type(metadata).__name__}")
    if notes is not None and not isinstance(notes, Mapping):
        raise DialNexaBadRequestError(f"DialNexa notes must be a JSON object (dict), got {type(notes).__name__}")
    if agent_version_number is not None and (
        isinstance(agent_version_number, bool) or not isinstance(agent_version_number, int) or agent_version_number < 1
    ):
        raise DialNexaBadRequestError(
            f"DialNexa agent_version_number must be a positive whole number, got {agent_version_number!r:.40}"
        )
    body: dict[str, Any] = {
        "phone_number": phone_number,
        "agent_id": agent_id,
        "metadata": {**(metadata or {}), CORRELATION_KEY: correlation_id},
    }
    if agent_version_number is not None:
        body["agent_version_number"] = agent_version_number
    if notes is not None:
        body["notes"] = dict(notes)
    try:
        json.dumps(body)
    except (TypeError, ValueError) as exc:
        raise DialNexaBadRequestError(f"DialNexa metadata/notes must be JSON-serialisable: {exc}") from None
    return body


def as_created_call(data: Any, *, settings: ConnectionSettings) -> dict[str, Any]:
    """A Create Call 201 body (an object with an ``id``), else ``DialNexaMalformedResponseError``."""
    if not isinstance(data, dict) or not data.get("id") or not isinstance(data["id"], str):
        raise DialNexaMalformedResponseError(
            f"{describe('Create Call', settings.conn_id)}: HTTP 2xx without a call id. "
            f"{DialNexaMalformedResponseError.hint}",
            conn_id=settings.conn_id,
        )
    return data


def phone_digits(value: object) -> str:
    """The digits of a phone number (DialNexa writes some with ``+``, webhooks without)."""
    return "".join(ch for ch in str(value or "") if ch.isdigit())


def record_metadata(record: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """A record's ``metadata`` object (also when sent as a JSON string); None when the record has none."""
    value = record.get("metadata")
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    return value if isinstance(value, Mapping) else None


# -- List Calls by creation window (scheduled export) -----------------------------------------------

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
            raise ValueError(f"unknown List Calls filter {name!r}; DialNexa documents {sorted(LIST_FILTERS)}")
        if value is None:
            continue
        parts = [_filter_value(name, item) for item in filter_items(value)]
        if not parts:
            raise ValueError(f"List Calls filter {name!r} is an empty list; leave it out to match everything")
        query[name] = ",".join(parts)
    return query


def _filter_value(name: str, value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return iso_utc(as_utc(value, name))
    if isinstance(value, str | int | float):
        text = str(value).strip()
        if text and "," not in text:
            return text
    raise ValueError(
        f"List Calls filter {name!r} has an unusable value {value!r:.60} (need a non-empty, comma-free value)"
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
