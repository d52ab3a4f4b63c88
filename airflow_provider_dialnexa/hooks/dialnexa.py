"""DialNexaHook: read, list and place DialNexa calls through its REST API, from tasks (sync) and triggers (async).

Every request goes through the one send path of its base class (``hooks/_transport.py``: connection, rate budget,
retries, typed errors; the loops' shared clients in ``hooks/_clients.py``); batch calls are ``hooks/_batch.py``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncGenerator, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from airflow_provider_dialnexa import CONN_FIELDS, UI_FIELD_BEHAVIOUR
from airflow_provider_dialnexa._connection import ConnectionSettings
from airflow_provider_dialnexa._paging import (
    WindowPager,
    as_call_list,
    as_utc,
    call_id_query,
    check_window,
    filter_query,
)
from airflow_provider_dialnexa._placement import (
    CORRELATION_KEY,
    LOOKUP_MARGIN,
    MAX_CORRELATION_LENGTH,
    CallsApi,
    Placement,
    create_call_body,
    hide_number,
    place_call,
)
from airflow_provider_dialnexa._placement import LOOKUP_PAGE_SIZE as LOOKUP_PAGE_SIZE  # moved; still importable here
from airflow_provider_dialnexa._placement import MAX_LOOKUP_PAGES as MAX_LOOKUP_PAGES
from airflow_provider_dialnexa._response import as_call_record
from airflow_provider_dialnexa._validation import validate_agent_id, validate_call_id, validate_phone_number
from airflow_provider_dialnexa.exceptions import CREATE_CALL_HINTS
from airflow_provider_dialnexa.hooks._batch import BatchCallsMixin

# Moved to hooks/_clients.py (the loops' shared clients); still importable from here.
from airflow_provider_dialnexa.hooks._clients import MAX_CONNECTIONS as MAX_CONNECTIONS
from airflow_provider_dialnexa.hooks._clients import _close_at_loop_shutdown as _close_at_loop_shutdown
from airflow_provider_dialnexa.hooks._clients import _loop_state as _loop_state
from airflow_provider_dialnexa.hooks._clients import _loop_states as _loop_states
from airflow_provider_dialnexa.hooks._clients import _LoopClient as _LoopClient
from airflow_provider_dialnexa.hooks._clients import _LoopState as _LoopState
from airflow_provider_dialnexa.hooks._clients import close_async_clients as close_async_clients
from airflow_provider_dialnexa.hooks._transport import DialNexaTransport
from airflow_provider_dialnexa.hooks._webhooks import DEFAULT_WEBHOOK_EVENTS as DEFAULT_WEBHOOK_EVENTS
from airflow_provider_dialnexa.hooks._webhooks import WebhookMixin
from airflow_provider_dialnexa.policy import CONNECTION_TTL as CONNECTION_TTL  # public here too
from airflow_provider_dialnexa.policy import RetryPolicy
from airflow_provider_dialnexa.records import mask_phone_number

#: Moved to ``_placement``; still importable from here.
_hide_number = hide_number

#: Most ids one List Calls request may carry (DialNexa's documented page-size maximum).
MAX_LIST_LIMIT = 200


class DialNexaHook(BatchCallsMixin, WebhookMixin, DialNexaTransport):
    """Talk to DialNexa through an Airflow connection of type ``dialnexa``.

    The connection's password is the API key (``<key_id>:<secret>``, sent as ``Bearer``), its host the
    base URL (empty = ``https://api.dialnexa.com``). Extras: ``timeout`` (read timeout, s),
    ``max_retries``, ``rate_limit_per_minute`` (0 = no budget), ``polling`` (``batched``/``per_call``) and
    ``webhook_secret``/``webhook_secret_previous`` (the webhook receiver's signing secrets, docs/webhooks.md;
    ``ensure_webhook`` registers the receiver with DialNexa, see ``_webhooks.py``).

    Creating the hook does no I/O: the connection is read on first use, synchronously in ``get_call``
    and without blocking the event loop in ``aget_call``.

    :param dialnexa_conn_id: The Airflow connection id.
    :param timeout: Read timeout in seconds; overrides the connection's ``timeout`` extra.
    :param max_retries: Retries per request; overrides the connection's ``max_retries`` extra.
    :param retry_policy: Full retry policy (backoff base/cap); ``max_retries`` still applies on top.
    """

    conn_name_attr = "dialnexa_conn_id"
    default_conn_name = "dialnexa_default"
    conn_type = "dialnexa"
    hook_name = "DialNexa"

    def __init__(
        self,
        dialnexa_conn_id: str = default_conn_name,
        *,
        timeout: float | None = None,
        max_retries: int | None = None,
        retry_policy: RetryPolicy | None = None,
    ) -> None:
        super().__init__()
        self.dialnexa_conn_id = dialnexa_conn_id
        self._timeout = timeout
        self._max_retries = max_retries
        self._retry_policy = retry_policy or RetryPolicy()

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """The connection form for Airflow < 3.2 (3.2+ reads the same dict from provider info)."""
        return UI_FIELD_BEHAVIOUR

    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        """The connection form's extra fields for Airflow < 3.2 (3.2+ reads ``conn-fields`` from provider info
        and never calls this). Built from the same ``CONN_FIELDS``; the web server's form libraries are imported
        only here."""
        from flask_appbuilder.fieldwidgets import BS3PasswordFieldWidget, BS3TextFieldWidget
        from flask_babel import lazy_gettext
        from wtforms import IntegerField, PasswordField, StringField
        from wtforms.validators import NumberRange, Optional

        widgets: dict[str, Any] = {}
        for name, field in CONN_FIELDS.items():
            schema = field["schema"]
            kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
            validators: list[Any] = [Optional()]
            widget: Any = BS3TextFieldWidget()
            if schema.get("format") == "password":  # the webhook secrets: masked in the form
                field_class: Any = PasswordField
                widget = BS3PasswordFieldWidget()
            elif "integer" in kinds:
                validators.append(NumberRange(min=schema.get("minimum"), max=schema.get("maximum")))
                field_class = IntegerField
            else:  # numbers may be fractional, and `polling` is a string: the hook validates both
                field_class = StringField
            widgets[name] = field_class(
                lazy_gettext(field["label"]),
                description=field["description"],
                validators=validators,
                widget=widget,
            )
        return widgets

    # -- reading calls (sync, tasks) ------------------------------------------------------------------

    def get_call(self, call_id: str) -> dict[str, Any]:
        """``GET /v1/calls/{call_id}``: the call record exactly as DialNexa sent it.

        :raises InvalidCallIdError: before any request, for an id that cannot be a DialNexa id.
        :raises DialNexaError: a typed subclass per failure (auth, permission, not found, ...).
        """
        call_id = validate_call_id(call_id)
        subject = f"call {call_id!r}"
        data = self._get(self.settings.call_url(call_id), params=None, subject=subject, call_id=call_id)
        return as_call_record(data, call_id=call_id, settings=self.settings)

    def test_connection(self) -> tuple[bool, str]:
        """One cheap authenticated request (List Calls, limit 1); never raises."""
        try:
            self._get(self.settings.calls_url, params={"limit": "1"}, subject="connection test", call_id=None)
        except Exception as exc:  # e.g. AirflowNotFoundException for a missing connection: report, not raise
            return False, str(exc)
        return True, f"Connected to DialNexa at {self.settings.base_url}"

    # -- placing calls (sync, tasks) ----------------------------------------------------------------

    def _post(self, url: str, *, body: dict[str, Any], subject: str) -> Any:
        """One POST through the rate budget, never retried here: placing a call is billable, so whether to
        send it again is the caller's decision. Transport failures raise ``DialNexaUnreachableError``.
        """
        return self._send_once(
            "POST", url, json=body, subject=subject, call_id=None, hints=CREATE_CALL_HINTS, wait_out_timeouts=True
        )

    def create_call(
        self,
        phone_number: str,
        agent_id: str,
        metadata: Mapping[str, Any] | None = None,
        *,
        agent_version_number: int | None = None,
        notes: Mapping[str, Any] | None = None,
        correlation_id: str | None = None,
        adopt_existing: bool | None = None,
        placed_after: datetime | None = None,
    ) -> dict[str, Any]:
        """``POST /v1/calls``: place one outbound call, at most once per correlation value.

        DialNexa has no idempotency header. The correlation value (``metadata[CORRELATION_KEY]`` if given,
        else ``correlation_id``, else a random one) goes into the call's ``metadata``. A value the caller
        chose is looked up in List Calls before the first POST, and a call carrying it is returned instead
        of placing another: one call per value, across hook calls and DAG runs. A POST that may have
        reached DialNexa (timeout, dropped connection, 5xx, a 2xx without an id) is never sent again
        blindly: List Calls is searched for the value first, and the call found there is returned; only a
        search that proves there is none lets the POST go again. A search that cannot prove it (List Calls
        failing, an item without an id, more than ``MAX_LOOKUP_PAGES`` pages) raises
        ``DialNexaUnconfirmedCallError`` and places nothing. A 429 placed nothing and is retried after
        ``Retry-After``. 400/401/402/403/404/409/422 raise at once with DialNexa's message.

        :param adopt_existing: Search before the first POST. None (default): when the caller chose the
            correlation value (``metadata`` key or ``correlation_id``), not for a random one. False: the
            caller knows no call can carry the value yet (the operator's first try of its per-task-instance
            value). True: always (a retried task that may have placed the call).
        :param placed_after: No call carrying the value can have been placed before this (naive = UTC; e.g.
            the DAG run's start, or the start of the day for one call per lead per day); searches reach back
            to it minus a day (``LOOKUP_MARGIN``). Default: for a value the caller chose, the agent's whole
            history; for a random value, now minus a day.
        :returns: The created call as DialNexa answered (``id``, ``to_phone_number``, ...), or the record of
            the call found by the search.
        :raises InvalidPhoneNumberError: before any request, for a number that is not E.164.
        :raises DialNexaUnconfirmedCallError: the call may have been placed and no search could tell.
        """
        phone = validate_phone_number(phone_number)
        agent = validate_agent_id(agent_id)
        chosen = (metadata or {}).get(CORRELATION_KEY) if isinstance(metadata, Mapping) else None
        chosen = chosen or correlation_id
        correlation = chosen or f"hook-{uuid.uuid4().hex}"
        if not isinstance(correlation, str) or not 0 < len(correlation) <= MAX_CORRELATION_LENGTH:
            raise ValueError(f"the correlation value must be a string of 1 to {MAX_CORRELATION_LENGTH} characters")
        body = create_call_body(phone, agent, metadata, correlation, agent_version_number, notes)
        since: float | None
        if placed_after is not None:
            since = as_utc(placed_after, "placed_after").timestamp() - LOOKUP_MARGIN
        else:  # a chosen value may have been used at any time before: nothing bounds the search but its start
            since = None if chosen else time.time() - LOOKUP_MARGIN
        search_first = bool(chosen) if adopt_existing is None else adopt_existing
        target = Placement(phone, agent, correlation, since=since)
        subject = f"Create Call to {mask_phone_number(phone)} (correlation {correlation!r})"
        return place_call(self._calls_api(), body, target, subject, search_first=search_first)

    def _calls_api(self) -> CallsApi:
        """This hook's requests, as placing a call uses them."""
        settings = self.settings
        url = settings.calls_url
        return CallsApi(
            settings=settings,
            policy=self._policy(settings),
            log=self.log,
            post=lambda body, subject: self._post(url, body=body, subject=subject),
            list_calls=lambda params, subject: self._get(url, params=params, subject=subject, call_id=None),
            get_call=self.get_call,
        )

    # -- async (triggers) ---------------------------------------------------------------------------

    async def aget_call(self, call_id: str) -> dict[str, Any]:
        """Async ``get_call`` for triggers: same contract, shared client, no blocking I/O."""
        call_id = validate_call_id(call_id)
        settings = await self.asettings()
        data = await self._aget(settings.call_url(call_id), params=None, subject=f"call {call_id!r}", call_id=call_id)
        return as_call_record(data, call_id=call_id, settings=settings)

    async def alist_calls(
        self, call_ids: Sequence[str], *, limit: int = MAX_LIST_LIMIT
    ) -> tuple[dict[str, dict[str, Any]], int | None]:
        """List Calls filtered to ``call_ids`` (at most ``limit`` of them, one page).

        Returns records by id (ids DialNexa did not return are absent) and the page limit the server
        reported applying, if it said (some docs cap ``limit`` at 100).
        """
        ids = [validate_call_id(call_id) for call_id in call_ids]
        if not 0 < len(ids) <= limit <= MAX_LIST_LIMIT:
            raise ValueError(f"alist_calls takes 1 to {limit} ids per request, got {len(ids)}")
        settings = await self.asettings()
        data = await self._aget(
            settings.calls_url,
            params=call_id_query(ids, limit),
            subject=f"List Calls for {len(ids)} calls",
            call_id=None,
        )
        records, server_limit = as_call_list(data, settings=settings)
        wanted = set(ids)
        return {str(rec["id"]): rec for rec in records if rec["id"] in wanted}, server_limit

    # -- List Calls by creation window (scheduled export) ---------------------------------------------

    def _window_pager(
        self,
        start_date: datetime | str | None,
        end_date: datetime | str | None,
        page_size: int,
        filters: dict[str, Any],
        settings: ConnectionSettings,
    ) -> WindowPager:
        start = None if start_date is None else as_utc(start_date, "start_date")
        end = None if end_date is None else as_utc(end_date, "end_date")
        check_window(start, end)
        if not 1 <= page_size <= MAX_LIST_LIMIT:
            raise ValueError(f"page_size must be between 1 and {MAX_LIST_LIMIT}, got {page_size}")
        return WindowPager(start, end, filter_query(filters), page_size, settings)

    @staticmethod
    def check_list_arguments(
        start_date: datetime | str | None = None, end_date: datetime | str | None = None, **filters: Any
    ) -> None:
        """Raise ``ValueError`` for a window or filters ``iter_calls`` would refuse (no I/O)."""
        start = None if start_date is None else as_utc(start_date, "start_date")
        end = None if end_date is None else as_utc(end_date, "end_date")
        check_window(start, end)
        filter_query(filters)

    def iter_calls(
        self,
        start_date: datetime | str | None = None,
        end_date: datetime | str | None = None,
        *,
        page_size: int = MAX_LIST_LIMIT,
        **filters: Any,
    ) -> Iterator[dict[str, Any]]:
        """Every call created in ``[start_date, end_date)``, one record at a time, oldest first (List Calls).

        Pages through ``GET /v1/calls`` with ``created_at=asc``, so calls created while it pages land on
        later pages instead of shifting earlier ones; an id is never yielded twice. The half-open window is
        applied to each record's ``createdAt``/``created_at`` here too (DialNexa's boundary semantics are
        not documented), so adjacent windows partition the calls. Naive datetimes are taken as UTC.
        ``filters`` are DialNexa's documented List Calls filters (``agent_id``, ``batch_call_id``,
        ``status``, ``call_direction``, ...); lists become comma lists. Requests share ``get_call``'s
        retries, rate budget and errors. The next page is requested (in one helper thread) while the caller
        handles the current one, so memory holds two pages plus the ids seen so far.

        :raises ValueError: before any request, for an inverted window or an unknown filter.
        """
        pager = self._window_pager(start_date, end_date, page_size, filters, self.settings)
        url = self.settings.calls_url

        def fetch(params: dict[str, str], page: int) -> Any:
            return self._get(url, params=params, subject=f"List Calls page {page}", call_id=None)

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="dialnexa-list-calls") as pool:
            pending = pool.submit(fetch, pager.params(), pager.page)
            try:
                while True:
                    records = pager.take(pending.result())
                    if pager.done:
                        yield from records
                        return
                    pending = pool.submit(fetch, pager.params(), pager.page)  # read ahead one page
                    yield from records
            finally:
                pending.cancel()  # a caller that stops early does not wait for a page not yet started

    async def aiter_calls(
        self,
        start_date: datetime | str | None = None,
        end_date: datetime | str | None = None,
        *,
        page_size: int = MAX_LIST_LIMIT,
        **filters: Any,
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Async ``iter_calls`` for triggers: same paging, window and errors, shared client, no blocking I/O."""
        settings = await self.asettings()
        pager = self._window_pager(start_date, end_date, page_size, filters, settings)
        while not pager.done:
            data = await self._aget(
                settings.calls_url, params=pager.params(), subject=f"List Calls page {pager.page}", call_id=None
            )
            for record in pager.take(data):
                yield record
