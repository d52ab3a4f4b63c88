"""Turning a DialNexa response (status, headers, body bytes) into data or a typed error; shared by both hooks."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from airflow_provider_dialnexa._connection import ConnectionSettings
from airflow_provider_dialnexa.exceptions import DialNexaMalformedResponseError, describe, error_for_status
from airflow_provider_dialnexa.policy import parse_retry_after


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
