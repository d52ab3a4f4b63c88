"""What the simulated DialNexa sends to webhooks: signatures and bodies (API-FACTS §5.4, §5.5).

``call_initiated`` / ``call_ended`` envelopes ``{event_type, payload: {call}}`` as the webhook reference
shows them (numbers without ``+``; ``completed`` with the talk's fields or ``hangup`` with its reason), the
dotted names of the OpenAPI file, and the older flat shape. Pure functions of a ``CallView``.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple

from airflow_provider_dialnexa.status import normalise

EventStyle = Literal["underscore", "dotted", "flat", "both"]
Kind = Literal["initiated", "ended"]

#: Outcome -> the dotted event name of the OpenAPI / Register Webhook pages (``call.completed`` ...).
_DOTTED: dict[str, str] = {
    "completed": "call.completed",
    "voicemail": "call.completed",
    "no_answer": "call.no_answer",
    "did_not_pick": "call.no_answer",
    "retry_expired": "call.no_answer",
}
#: Outcomes where someone (or a voicemail box) answered: ``call_ended`` says ``completed``, else ``hangup``.
_CONNECTED = frozenset({"completed", "voicemail"})
_STARTED_NAMES = frozenset({"call_initiated", "call.started"})
_ENDED_NAMES = frozenset({"call_ended", "call.ended"})


def sign(secret: str, body: bytes) -> str:
    """DialNexa's signature header value: ``sha256=`` + hex HMAC-SHA256 of the raw body, keyed by the secret."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def iso8601(t: float) -> str:
    dt = datetime.fromtimestamp(t, UTC)
    return f"{dt:%Y-%m-%dT%H:%M:%S}.{dt.microsecond // 1000:03d}Z"


class CallView(NamedTuple):
    """What the state shows of a call when one of its events is sent."""

    record: dict[str, Any]
    initiated_at: float
    scripted: bool


def _digits(number: Any) -> Any:
    """Numbers as the webhook examples write them: without ``+`` (``12137771234``)."""
    return "".join(ch for ch in number if ch.isdigit()) if isinstance(number, str) else number


def _first(record: Mapping[str, Any], *keys: str) -> Any:
    return next((record[key] for key in keys if record.get(key) is not None), None)


def call_object(view: CallView, kind: Kind, *, dotted: bool = False) -> dict[str, Any]:
    """The ``payload.call`` object of a ``call_initiated``/``call_ended`` delivery (webhook reference, S16/S35)."""
    rec = view.record
    batch = rec.get("batch_id")
    call: dict[str, Any] = {
        "id": rec["id"],
        "direction": rec.get("call_direction", "outbound"),
        "type": "phone_call",
        "category": "batch" if batch else "api",
        "category_id": batch,
        "from_number": _digits(_first(rec, "from_number", "from_phone_number")),
        "to_number": _digits(_first(rec, "to_number", "to_phone_number")),
        "status": "initiated",
        "agent_id": rec.get("agent_id"),
        "initiated_at": iso8601(view.initiated_at),
    }
    if kind == "initiated":
        return call
    outcome = normalise(rec.get("status"))
    reason = rec.get("end_reason")
    if outcome in _CONNECTED:
        call.update(
            status="completed",
            duration=_first(rec, "duration", "duration_seconds"),
            transcript=rec.get("transcript"),
            summary=rec.get("summary"),
            recording_url=rec.get("recording_url"),
            post_call_analysis=_first(rec, "post_call_analysis", "analysis"),
            hangup_reason=reason,
        )
    else:
        call.update(status="hangup", hangup_reason=reason, disconnection_reason=reason)
    if dotted:  # the dotted names come from the generation whose records use the status enum
        call["status"] = rec.get("status")
    return call


def event_bodies(view: CallView, kind: Kind, style: EventStyle) -> list[tuple[str, frozenset[str], dict[str, Any]]]:
    """``(event name, subscription names that select it, body)`` of every delivery one call event makes."""
    if kind == "initiated":
        names = _STARTED_NAMES
        if style == "flat":
            return [("call.started", names, _flat("call.started", view))]
        name = "call.started" if style == "dotted" else "call_initiated"
        return [(name, names, {"event_type": name, "payload": {"call": call_object(view, kind)}})]
    dotted = _DOTTED.get(normalise(view.record.get("status")), "call.failed")
    names = _ENDED_NAMES | {dotted}
    if style == "flat":
        return [("call.ended", names, _flat("call.ended", view))]
    out = []
    if style in ("underscore", "both"):
        out.append(("call_ended", names, {"event_type": "call_ended", "payload": {"call": call_object(view, kind)}}))
    if style in ("dotted", "both"):
        body = {"event_type": dotted, "payload": {"call": call_object(view, kind, dotted=True)}}
        out.append((dotted, names, body))
    return out


def _flat(event: str, view: CallView) -> dict[str, Any]:
    """The older flat shape (S27): no call object, no status."""
    rec = view.record
    return {
        "event": event,
        "workspace_id": "ws_simulator",
        "session_id": rec["id"],
        "agent_id": rec.get("agent_id"),
        "phone_number": _digits(_first(rec, "to_number", "to_phone_number")),
        "timestamp": iso8601(time.time()),
    }
