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
