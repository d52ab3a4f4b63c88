"""Placing a call at most once per correlation value: the request body, the POST loop and the List Calls search.

DialNexa has no idempotency header; its guidance for billable actions is a stable correlation value in the
call's ``metadata`` and a List Calls reconcile before any re-submit. ``place_call`` runs that loop over the
hook's requests (``CallsApi``); ``DialNexaHook.create_call`` is its public face.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from airflow_provider_dialnexa._connection import ConnectionSettings
from airflow_provider_dialnexa._paging import WindowPager, iso_utc
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
#: Page size asked by those searches (the smaller documented List Calls maximum; the pager follows whatever
#: size the server actually serves).
LOOKUP_PAGE_SIZE = 100
#: Where a call record holds the number called, in every documented spelling (never the caller's number).
_RECIPIENT_FIELDS = ("to_number", "to_phone_number", "phone_number")
#: Most pages one search reads before it gives up proving anything (100 pages of 100: 10,000 calls).
MAX_LOOKUP_PAGES = 100


@dataclass(frozen=True)
class Placement:
    """What identifies one call being placed, for the searches before and after a POST.

    ``since``: no call carrying the correlation value can have been created before this (epoch seconds,
    margin included); None for a value the caller chose with no bound given: the agent's whole history.
    """

    phone_number: str
    agent_id: str
    correlation_id: str
    since: float | None


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


class _Unproven(Exception):
    """A search that ran but cannot prove there is no call (its message says why)."""


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
    """POST ``body`` at most once per correlation value: search first if told, and after a POST that may have
    reached DialNexa search before sending it again."""
    settings, policy, phone = api.settings, api.policy, target.phone_number
    if search_first:
        started = time.time()
        found = reconcile(api, target, subject, cause=None)
        if found is not None:
            return found
        # Proven: no call carried the value when the search started. Later searches need not reach further
        # back than that (with the same margin): a call placed from now on is newer.
        target = replace(target, since=max(target.since or -math.inf, started - LOOKUP_MARGIN))
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
    """The call this placement already created, None if List Calls proves there is none; else raise
    ``DialNexaUnconfirmedCallError`` (the call may exist and nothing here could tell)."""
    settings = api.settings
    why = f"the request may have reached DialNexa ({cause})" if cause else "an earlier try may have placed it"
    try:
        found = find_placed_call(api, target)
    except _Unproven as exc:
        raise DialNexaUnconfirmedCallError(
            f"{describe(subject, settings.conn_id)}: {why}, and the search for it proves nothing: {exc} "
            f"{DialNexaUnconfirmedCallError.hint}",
            conn_id=settings.conn_id,
        ) from None
    except DialNexaError as exc:
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
    """Search List Calls for the placement's correlation value: the record, or None when the search read every
    call of the agent since ``target.since`` and each had a usable id. Anything less raises ``_Unproven``.

    The search reads the agent's calls newest first (the export's ``WindowPager``: the page as sent decides
    paging, at whatever page size the server serves) since ``start_date`` (all the agent's calls if a
    deployment refuses ``start_date``, or for a value with no bound) and matches records on the correlation
    value, wherever they were created. It does not filter on ``to``: the OpenAPI file reads it as the
    recipient, other docs as a ``created_at`` bound, and the number would sit in URLs and client debug logs.
    """
    agent = target.agent_id
    searches = [{"agent_id": agent}]
    if target.since is not None:
        searches.insert(0, {"agent_id": agent, "start_date": iso_utc(datetime.fromtimestamp(target.since, UTC))})
    for filters in searches:
        try:
            found, pager = _scan_calls(api, target, filters)
        except DialNexaBadRequestError:
            if "start_date" in filters:
                continue  # this deployment refuses start_date: search wider
            raise
        if found is not None:
            return found
        span = f"since {filters['start_date']}" if "start_date" in filters else "in its whole history"
        read = len(pager.seen) + pager.unreadable
        if pager.unreadable:
            raise _Unproven(
                f"{pager.unreadable} of the {read} calls of agent {agent!r} listed {span} had no usable id, so any "
                "of them could be the call."
            )
        if not pager.done:
            raise _Unproven(
                f"read {MAX_LOOKUP_PAGES} pages ({read} calls) of agent {agent!r}'s calls {span} without reaching "
                "the last. Bound the search with placed_after (DialNexaHook.create_call and "
                "DialNexaCreateCallOperator): no call carrying this correlation value can be older than it."
            )
        return None
    raise AssertionError("unreachable")  # pragma: no cover - the last search never continues


def _scan_calls(api: CallsApi, target: Placement, filters: dict[str, str]) -> tuple[dict[str, Any] | None, WindowPager]:
    """Page through one search: the matching record (or None) and the pager (``done``, ``unreadable``)."""
    pager = WindowPager(None, None, filters, LOOKUP_PAGE_SIZE, api.settings, newest_first=True, skip_unreadable=True)
    subject = f"List Calls for correlation {target.correlation_id!r}"
    while not pager.done and pager.page <= MAX_LOOKUP_PAGES:
        for record in pager.take(api.list_calls(pager.params(), subject)):
            found = _match(api, record, target)
            if found is not None:
                return found, pager
    return None, pager


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
