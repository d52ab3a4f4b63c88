"""Create Call pieces: the correlation value, the request body, and reading a created call back."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from airflow_provider_dialnexa._connection import ConnectionSettings
from airflow_provider_dialnexa.exceptions import DialNexaBadRequestError, DialNexaMalformedResponseError, describe

#: The ``metadata`` key that carries a call's correlation value (DialNexa has no idempotency header; its
#: guidance is a stable correlation value in ``metadata``, reconciled through List Calls after a failure).
CORRELATION_KEY = "airflow_correlation_id"


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
