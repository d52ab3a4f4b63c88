"""Placing a call at most once per correlation value: the request body, the POST loop and the List Calls search.

DialNexa has no idempotency header; its guidance for billable actions is a stable correlation value in the
call's ``metadata`` and a List Calls reconcile before any re-submit. ``place_call`` runs that loop over the
hook's requests (``CallsApi``); ``DialNexaHook.create_call`` is its public face.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from airflow_provider_dialnexa._connection import ConnectionSettings
from airflow_provider_dialnexa._paging import as_call_list
from airflow_provider_dialnexa.exceptions import (
    DialNexaBadRequestError,
    DialNexaError,
    DialNexaMalformedResponseError,
    DialNexaRateLimitError,
    DialNexaServerError,
    DialNexaUnconfirmedCallError,
    describe,
)
from airflow_provider_dialnexa.policy import RetryPolicy
from airflow_provider_dialnexa.records import mask_phone_number

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


#: Most characters of a correlation value (it lives in the call's ``metadata``).
MAX_CORRELATION_LENGTH = 200
#: How much further back than necessary a search for a placed call reaches: a day, so it still covers the
#: call if DialNexa reads ``start_date`` in another time zone (undocumented) or the clocks disagree.
LOOKUP_MARGIN = 24 * 60 * 60
#: Page size of those searches: the smaller documented List Calls maximum, so a short page means the end.
LOOKUP_PAGE_SIZE = 100
#: Where a call record holds the number called, in every documented spelling (never the caller's number).
_RECIPIENT_FIELDS = ("to_number", "to_phone_number", "phone_number")
#: Most pages one search reads before it gives up proving anything.
MAX_LOOKUP_PAGES = 100


@dataclass(frozen=True)
class Placement:
    """What identifies one call being placed, for the search after an ambiguous failure."""

    phone_number: str
    agent_id: str
    correlation_id: str
    since: float


@dataclass(frozen=True)
class CallsApi:
    """What placing a call needs from the (sync) hook: its connection, retry policy, logger and requests."""

    settings: ConnectionSettings
    policy: RetryPolicy
    log: Any
    #: ``POST /v1/calls`` once, never retried: ``(body, subject) -> data``.
    post: Callable[[dict[str, Any], str], Any]
    #: ``GET /v1/calls`` (retried as a read): ``(query, subject) -> data``.
    list_calls: Callable[[dict[str, str], str], Any]
    get_call: Callable[[str], dict[str, Any]]


def hide_number(exc: DialNexaError, phone_number: str) -> DialNexaError:
    """Mask the phone number wherever DialNexa's message echoed it (in place; returns ``exc``)."""
    masked = str(mask_phone_number(phone_number))
    exc.args = tuple(arg.replace(phone_number, masked) if isinstance(arg, str) else arg for arg in exc.args)
    if exc.api_message:
        exc.api_message = exc.api_message.replace(phone_number, masked)
    return exc


def place_call(
    api: CallsApi, body: dict[str, Any], target: Placement, subject: str, *, search_first: bool
) -> dict[str, Any]:
    """POST ``body``; after a POST that may have reached DialNexa, search before sending it again."""
    settings, policy, phone = api.settings, api.policy, target.phone_number
    if search_first:
        found = reconcile(api, target, subject, cause=None)
        if found is not None:
            return found
    failure: DialNexaError | None = None
    uncertain = False
    for attempt in range(1, policy.attempts + 1):
        try:
            created = as_created_call(api.post(body, subject), settings=settings)
        except DialNexaRateLimitError as exc:  # refused before anything was accepted: safe to send again
            failure = exc
        except (DialNexaServerError, DialNexaMalformedResponseError) as exc:  # DialNexa may have placed it
            failure, uncertain = exc, True
        except DialNexaError as exc:  # 4xx: final, nothing was placed
            raise hide_number(exc, phone) from None
        else:
            api.log.info("%s: placed call %r", describe(subject, settings.conn_id), created["id"])
            return created
        last = attempt == policy.attempts
        if last and not uncertain:
            break
        wait = policy.wait(attempt, failure.retry_after)
        next_step = "looking for the call" if uncertain else "sending again"
        api.log.warning("%s (attempt %d of %d; %s in %.2f s)", failure, attempt, policy.attempts, next_step, wait)
        time.sleep(wait)
        if uncertain:
            found = reconcile(api, target, subject, cause=failure)
            if found is not None:
                return found
            uncertain = False  # proven: nothing was placed
            if not last:
                api.log.warning("%s: DialNexa has no such call; placing it again", describe(subject, None))
    assert failure is not None
    raise failure


def reconcile(api: CallsApi, target: Placement, subject: str, cause: DialNexaError | None) -> dict[str, Any] | None:
    """The call this placement already created, None if List Calls proves there is none; else raise."""
    settings = api.settings
    try:
        found = find_placed_call(api, target)
    except DialNexaUnconfirmedCallError:
        raise
    except DialNexaError as exc:
        why = f"the request may have reached DialNexa ({cause})" if cause else "an earlier try may have placed it"
        raise DialNexaUnconfirmedCallError(
            f"{describe(subject, settings.conn_id)}: {why}, and looking for the call failed: {exc}. "
            f"{DialNexaUnconfirmedCallError.hint}",
            conn_id=settings.conn_id,
            http_status=exc.http_status,
        ) from exc
    if found is not None:
        api.log.warning(
            "%s: found call %r placed by an earlier attempt; using it instead of placing another",
            describe(subject, settings.conn_id),
            found.get("id"),
        )
    return found


def find_placed_call(api: CallsApi, target: Placement) -> dict[str, Any] | None:
    """Search List Calls for the placement's correlation value; None only when the search saw every call.

    The search reads the agent's calls since ``start_date`` (or all the agent's calls if a deployment
    refuses ``start_date``) and matches records on the correlation value, never on the filters. It
    does not filter on ``to``: the OpenAPI file reads it as the recipient, other docs as a
    ``created_at`` bound, and the number would sit in URLs and client debug logs.
    """
    start = datetime.fromtimestamp(target.since, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    for filters in ({"agent_id": target.agent_id, "start_date": start}, {"agent_id": target.agent_id}):
        try:
            found, complete = _scan_calls(api, target, filters)
        except DialNexaBadRequestError:  # this deployment refuses start_date: search wider
            continue
        if found is not None or complete:
            return found
    settings = api.settings
    raise DialNexaUnconfirmedCallError(
        f"{describe(f'List Calls for correlation {target.correlation_id!r}', settings.conn_id)}: could not "
        f"read every call of agent {target.agent_id!r} since {start} (more than {MAX_LOOKUP_PAGES} pages, "
        f"or every search refused). {DialNexaUnconfirmedCallError.hint}",
        conn_id=settings.conn_id,
    )


def _scan_calls(api: CallsApi, target: Placement, filters: dict[str, str]) -> tuple[dict[str, Any] | None, bool]:
    """Page through one search: ``(the matching record or None, whether the last page was reached)``."""
    settings = api.settings
    subject = f"List Calls for correlation {target.correlation_id!r}"
    for page in range(1, MAX_LOOKUP_PAGES + 1):
        params = {**filters, "limit": str(LOOKUP_PAGE_SIZE), "page": str(page)}
        data = api.list_calls(params, subject)
        records, server_limit = as_call_list(data, settings=settings)
        for record in records:
            found = _match(api, record, target)
            if found is not None:
                return found, True
        if len(records) < min(LOOKUP_PAGE_SIZE, server_limit or LOOKUP_PAGE_SIZE):
            return None, True
    return None, False


def _match(api: CallsApi, record: dict[str, Any], target: Placement) -> dict[str, Any] | None:
    """The record if it carries the correlation value; a list view without ``metadata`` is read in full."""
    metadata = record_metadata(record)
    if metadata is None:
        number = next((record[key] for key in _RECIPIENT_FIELDS if record.get(key)), None)
        if number is not None and phone_digits(number) != phone_digits(target.phone_number):
            return None
        record = api.get_call(str(record["id"]))
        metadata = record_metadata(record)
    if metadata is not None and metadata.get(CORRELATION_KEY) == target.correlation_id:
        return record
    return None
