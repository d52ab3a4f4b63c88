"""Webhook bodies -> what happened: a verification ping, a call that ended, or something this provider ignores.

DialNexa's documentation generations disagree (API-FACTS §5.3-5.4), so every documented variant is read:

* event names ``call_ended`` (delivered payloads), ``call.completed`` / ``call.failed`` / ``call.no_answer``
  (OpenAPI and the Register Webhook page), ``call.ended`` (older page); any ``call.<status>`` or
  ``call_<status>`` whose status is terminal counts as "the call ended with that status";
* the envelope ``{"event_type": ..., "payload": {"call": {...}}}`` and the older flat shape
  ``{"event": ..., "session_id": ..., ...}`` (plus ``data``/``call`` wrappers);
* statuses in every spelling, normalised by ``status.normalise`` (``no-answer`` -> ``no_answer``).

The asset event keeps a *slim* record: a fixed list of small scalar fields, never phone numbers,
transcript, summary, analysis or recording URL, and at most ``MAX_SLIM_BYTES`` of JSON.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_dialnexa import status as call_status
from airflow_provider_dialnexa._placement import CORRELATION_KEY, record_metadata
from airflow_provider_dialnexa._validation import validate_call_id
from airflow_provider_dialnexa.exceptions import InvalidCallIdError

#: The status recorded when a call-ended event names no status (``call_ended``/``call.ended`` without one):
#: the call ended, how is unknown. ``calls_from_events(..., full_records=True)`` fetches the real one.
ENDED_UNKNOWN = "ended"
#: Marks an asset event as written by this receiver (``extra["source"]``).
EVENT_SOURCE = "dialnexa_webhook"
#: Upper bound of the slim record's JSON (it lives in the metadata DB and shows in the UI and API).
MAX_SLIM_BYTES = 2048
_MAX_TEXT = 200
_MAX_NAME = 100

#: Names of the verification ping (API-FACTS §5.3: ``verification``; the older page's "test ping").
_VERIFICATION = frozenset({"verification", "webhook.verification", "webhook_verification", "ping", "test"})
#: Call events that say "ended" without saying how.
_GENERIC_ENDED = frozenset({"ended", "end"})
#: Top-level fields of the slim record, most useful first (dropped from the end if over the size bound).
SLIM_FIELDS = (
    "end_reason",
    "hangup_reason",
    "disconnection_reason",
    "duration",
    "duration_seconds",
    "duration_sec",
    "ended_at",
    "started_at",
    "initiated_at",
    "created_at",
    "createdAt",
    "agent_id",
    "direction",
    "type",
    "category",
    "category_id",
    "batch_id",
    "campaign_id",
)


class Kind(enum.Enum):
    """What an authentic delivery asks of the receiver."""

    VERIFICATION = "verification"
    CALL_ENDED = "call_ended"
    OTHER = "other"


class MalformedEventError(ValueError):
    """An authentic body this receiver cannot read (not a JSON object, or a call-ended event without a usable id)."""


@dataclass(frozen=True)
class WebhookEvent:
    """One parsed delivery. ``call_id``/``status``/``call`` are set for ``Kind.CALL_ENDED`` only."""

    kind: Kind
    name: str
    call_id: str | None = None
    status: str | None = None
    call: dict[str, Any] = field(default_factory=dict)

    def asset_extra(self, conn_id: str) -> dict[str, Any]:
        """The asset event's ``extra``: who, which call, how it ended, and the slim record."""
        return {
            "source": EVENT_SOURCE,
            "conn_id": conn_id,
            "call_id": self.call_id,
            "status": self.status,
            "event": self.name,
            "call": self.call,
        }


def event_name(body: Mapping[str, Any]) -> str:
    """The delivery's event name, lower-cased and trimmed ('' when it has none)."""
    for key in ("event_type", "event", "event_name"):
        value = body.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip().lower()[:_MAX_NAME]
    return ""


def ended_status(name: str) -> str | None:
    """For a call-ended event name, the status it implies (``ENDED_UNKNOWN`` for generic ones); else None.

    ``call_ended``/``call.ended`` -> ``ENDED_UNKNOWN``; ``call.completed``, ``call.no-answer``,
    ``call_failed`` ... -> that status, when ``status.py`` knows it as terminal.
    """
    normalised = name.replace("-", "_")
    for prefix in ("call.", "call_"):
        if normalised.startswith(prefix):
            rest = normalised[len(prefix) :]
            if rest in _GENERIC_ENDED:
                return ENDED_UNKNOWN
            if call_status.is_terminal(rest):
                return call_status.normalise(rest)
    return None


def _call_object(body: Mapping[str, Any]) -> tuple[Mapping[str, Any], bool]:
    """The call object of a delivery and whether it is the body itself (flat shape)."""
    for outer in ("payload", "data"):
        inner = body.get(outer)
        if isinstance(inner, Mapping):
            call = inner.get("call")
            if isinstance(call, Mapping):
                return call, False
            if any(key in inner for key in ("id", "call_id", "session_id")):
                return inner, False
    call = body.get("call")
    if isinstance(call, Mapping):
        return call, False
    return body, True


def _call_id(call: Mapping[str, Any], flat: bool) -> object:
    keys = ("call_id", "session_id", "id") if flat else ("id", "call_id", "session_id")
    for key in keys:
        value = call.get(key)
        if value is not None and value != "":
            return value
    return None


def _scalar(value: Any) -> Any:
    if isinstance(value, str):
        return value[:_MAX_TEXT]
    if value is None or isinstance(value, bool | int | float):
        return value
    return None


def slim_record(call: Mapping[str, Any], call_id: str, status: str) -> dict[str, Any]:
    """The bounded record kept in the asset event: id, status and a few small scalar fields, no personal data."""
    slim: dict[str, Any] = {"id": call_id, "status": status}
    raw = call.get("status")
    if isinstance(raw, str) and raw and raw != status:
        slim["raw_status"] = raw[:_MAX_NAME]
    for key in SLIM_FIELDS:
        value = _scalar(call.get(key))
        if value is not None:
            slim[key] = value
    metadata = record_metadata(call)
    correlation = _scalar(metadata.get(CORRELATION_KEY)) if metadata else None
    if correlation is not None:
        slim["metadata"] = {CORRELATION_KEY: correlation}
    optional = [key for key in reversed(list(slim)) if key not in ("id", "status")]
    while len(json.dumps(slim, default=str)) > MAX_SLIM_BYTES and optional:
        slim.pop(optional.pop(0))
    return slim


def parse(body: bytes) -> WebhookEvent:
    """Read an authentic delivery; raise ``MalformedEventError`` when a retry could not make it readable."""
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise MalformedEventError("the body is not JSON") from None
    if not isinstance(data, dict):
        raise MalformedEventError("the body is not a JSON object")
    name = event_name(data)
    implied = ended_status(name)
    if implied is None:
        if name in _VERIFICATION or (not name and "message" in data and _call_object(data)[1]):
            return WebhookEvent(Kind.VERIFICATION, name or "verification")
        return WebhookEvent(Kind.OTHER, name)
    call, flat = _call_object(data)
    raw_id = _call_id(call, flat)
    try:
        call_id = validate_call_id(raw_id)
    except InvalidCallIdError:
        raise MalformedEventError(f"a {name!r} event without a usable call id") from None
    raw_status = call.get("status") if isinstance(call.get("status"), str) else call.get("call_status")
    given = call_status.normalise(raw_status) if isinstance(raw_status, str) and raw_status.strip() else None
    if given is not None and call_status.phase(given) is call_status.Phase.TERMINAL:
        final = given  # the payload is the most specific (call_ended + hangup, call.failed + busy)
    elif implied != ENDED_UNKNOWN:
        final = implied
    elif given is not None and call_status.phase(given) is call_status.Phase.UNKNOWN:
        final = given[:_MAX_NAME]  # a status DialNexa added since: kept, the event says the call ended
    else:
        final = ENDED_UNKNOWN
    return WebhookEvent(Kind.CALL_ENDED, name, call_id, final, slim_record(call, call_id, final))
