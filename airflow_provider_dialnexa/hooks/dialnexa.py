"""DialNexaHook: read, list and place DialNexa calls through its REST API, from tasks (sync) and triggers (async)."""

from __future__ import annotations

import asyncio
import time
import uuid
import weakref
from collections.abc import AsyncGenerator, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime
from functools import cached_property
from typing import Any

import httpx
import requests
from airflow.providers.common.compat.connection import get_async_connection, get_async_extra_dejson
from airflow.providers.common.compat.sdk import AirflowNotFoundException, BaseHook
from tenacity import AsyncRetrying, Retrying

from airflow_provider_dialnexa import CONN_FIELDS, UI_FIELD_BEHAVIOUR
from airflow_provider_dialnexa._connection import (
    ConnectionSettings,
    missing_connection_message,
    settings_from_connection,
)
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
from airflow_provider_dialnexa._response import as_call_record, interpret
from airflow_provider_dialnexa._validation import validate_agent_id, validate_call_id, validate_phone_number
from airflow_provider_dialnexa.exceptions import (
    CREATE_CALL_HINTS,
    DialNexaAuthError,
    DialNexaConfigError,
    DialNexaConnectionNotFoundError,
    DialNexaRateLimitError,
    DialNexaUnreachableError,
    describe,
    scrub,
)
from airflow_provider_dialnexa.hooks._batch import BatchCallsMixin
from airflow_provider_dialnexa.hooks._webhooks import DEFAULT_WEBHOOK_EVENTS as DEFAULT_WEBHOOK_EVENTS
from airflow_provider_dialnexa.hooks._webhooks import WebhookMixin
from airflow_provider_dialnexa.policy import (
    CONNECT_TIMEOUT,
    RateBudget,
    RetryPolicy,
    budget_for,
    parse_rate_headers,
)
from airflow_provider_dialnexa.policy import CONNECTION_TTL as CONNECTION_TTL  # public here too
from airflow_provider_dialnexa.records import mask_phone_number

#: Moved to ``_placement``; still importable from here.
_hide_number = hide_number

#: Most ids one List Calls request may carry (DialNexa's documented page-size maximum).
MAX_LIST_LIMIT = 200
#: Concurrent requests (and keep-alive connections) per event loop and connection id.
MAX_CONNECTIONS = 100

_SYNC_TRANSPORT_ERRORS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
)


# ``CONNECTION_TTL`` (imported from ``policy``, still importable from here): seconds an event loop trusts a resolved
# connection before reading it again, so a fixed host, a rotated key or new extras reach a running triggerer
# within this time without a lookup per poll.


def _clock() -> float:
    """Monotonic seconds for the connection TTL (a seam, so tests move time instead of waiting for it)."""
    return time.monotonic()


@dataclass(eq=False)
class _LoopClient:
    """What every async request on one event loop through one connection id shares."""

    settings: ConnectionSettings
    client: httpx.AsyncClient
    budget: RateBudget | None
    #: Requests queue here, never inside httpx's pool: httpcore 1.0 rescans every queued request against
    #: every connection on each pool event, so thousands of queued polls would stall the loop (O(n*m)).
    slots: asyncio.Semaphore
    #: When the connection was last read (``_clock()``).
    resolved_at: float = 0.0
    #: Requests that hold this client (from taking it to their answer): it is closed only when none do.
    in_flight: int = 0
    #: Replaced (a 401, a changed connection, the loop ending): close once the last request lets go.
    retired: bool = False

    async def release(self) -> None:
        """One request is done with the client; the last one out closes a retired client."""
        self.in_flight -= 1
        if self.retired and self.in_flight == 0:
            await self.client.aclose()

    async def retire(self) -> None:
        """Stop handing the client out; close it now if no request holds it, else when the last one lets go."""
        if not self.retired:
            self.retired = True
            if self.in_flight == 0:
                await self.client.aclose()


@dataclass(eq=False)
class _LoopState:
    lock: asyncio.Lock
    clients: dict[str, _LoopClient]
    #: Suspended for the loop's life; ``loop.shutdown_asyncgens()`` (``asyncio.run`` ends with it) resumes it
    #: to close the clients, so nothing of a loop (client, socket, the loop itself) outlives it.
    closer: AsyncGenerator[None, None] | None = None


# One resolved connection and one keep-alive httpx client per (event loop, connection id): thousands of
# triggers in a triggerer share them instead of each resolving the connection and dialling DialNexa.
# The clients refer to their loop, so an entry leaves this map when its loop shuts down (see ``_LoopState``).
_loop_states: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState] = weakref.WeakKeyDictionary()


async def _close_at_loop_shutdown(state: _LoopState) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        loop = asyncio.get_running_loop()
        if _loop_states.get(loop) is state:
            del _loop_states[loop]
        clients, state.clients = list(state.clients.values()), {}
        for shared in clients:
            await shared.retire()


async def _loop_state() -> _LoopState:
    """This loop's state, created (with its shutdown hook registered) on first use."""
    loop = asyncio.get_running_loop()
    state = _loop_states.get(loop)
    if state is None:
        state = _loop_states[loop] = _LoopState(asyncio.Lock(), {})
        state.closer = _close_at_loop_shutdown(state)
        await state.closer.asend(None)  # first iteration: the loop now tracks it for shutdown_asyncgens()
    return state


async def close_async_clients() -> None:
    """Close this event loop's shared clients now (they also close by themselves when the loop shuts down)."""
    state = _loop_states.pop(asyncio.get_running_loop(), None)
    if state is not None and state.closer is not None:
        await state.closer.aclose()


class DialNexaHook(BatchCallsMixin, WebhookMixin, BaseHook):
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

    # -- connection ---------------------------------------------------------------------------------

    def _settings_from(self, conn: Any, extra: dict[str, Any]) -> ConnectionSettings:
        settings, warnings = settings_from_connection(
            self.dialnexa_conn_id,
            host=conn.host,
            password=conn.password,
            schema=conn.schema,
            port=conn.port,
            extra=extra,
        )
        for warning in warnings:
            self.log.warning(warning)
        return settings

    @cached_property
    def settings(self) -> ConnectionSettings:
        """The validated connection (sync lookup: never read this from a trigger's event loop)."""
        try:
            conn = self.get_connection(self.dialnexa_conn_id)
        except AirflowNotFoundException:
            raise self._not_found() from None
        return self._settings_from(conn, conn.extra_dejson)

    def _not_found(self) -> DialNexaConnectionNotFoundError:
        message = missing_connection_message(self.dialnexa_conn_id)
        return DialNexaConnectionNotFoundError(message, conn_id=self.dialnexa_conn_id)

    async def _resolve_async(self) -> ConnectionSettings:
        """Read and validate the connection without blocking the loop; a missing one is a config error."""
        try:
            conn = await get_async_connection(self.dialnexa_conn_id, hook=self)
        except AirflowNotFoundException:
            raise self._not_found() from None
        return self._settings_from(conn, await get_async_extra_dejson(conn))

    async def _loop_client(self) -> _LoopClient:
        """This loop's shared client for the connection, re-reading the connection once ``CONNECTION_TTL`` passed.

        A changed connection gets a new client; the old one closes once its in-flight requests are done.
        """
        state = await _loop_state()
        shared = state.clients.get(self.dialnexa_conn_id)
        if shared is not None and _clock() - shared.resolved_at < CONNECTION_TTL:
            return shared
        async with state.lock:
            shared = state.clients.get(self.dialnexa_conn_id)
            if shared is not None and _clock() - shared.resolved_at < CONNECTION_TTL:
                return shared
            try:
                settings = await self._resolve_async()
            except DialNexaConfigError:
                raise  # the connection is gone or unusable now: every wait on it should say so
            except Exception as exc:
                if shared is None:
                    raise
                # A lookup that failed for another reason (e.g. the API server hiccuped) must not end waits
                # that have a working client: keep it, and try again after another TTL.
                self.log.warning(
                    "Could not re-read DialNexa connection %r (%s); keeping its previous settings",
                    self.dialnexa_conn_id,
                    type(exc).__name__,
                )
                shared.resolved_at = _clock()
                return shared
            if shared is not None and shared.settings == settings:
                shared.resolved_at = _clock()
                return shared
            # Built in a thread: loading the CA bundle takes tens of ms, too long for a triggerer's loop.
            client = await asyncio.to_thread(
                httpx.AsyncClient,
                headers=settings.headers,
                follow_redirects=True,  # as requests does on the sync path (both drop auth across hosts)
                limits=httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_CONNECTIONS),
                timeout=httpx.Timeout(settings.timeout, connect=CONNECT_TIMEOUT, pool=None),
            )
            budget = budget_for(settings.api_key, settings.rate_limit_per_minute, conn_id=settings.conn_id)
            fresh = _LoopClient(settings, client, budget, asyncio.Semaphore(MAX_CONNECTIONS), resolved_at=_clock())
            state.clients[self.dialnexa_conn_id] = fresh
            if shared is not None:
                await shared.retire()
            return fresh

    async def _forget_loop_client(self, shared: _LoopClient) -> None:
        """Drop the shared client after a 401, so a fixed key is picked up by the next request.

        Only if it is still the current one (another hook may already have replaced it); it is closed once
        the other requests that hold it have their answers, never under them.
        """
        state = _loop_states.get(asyncio.get_running_loop())
        if state is not None and state.clients.get(self.dialnexa_conn_id) is shared:
            del state.clients[self.dialnexa_conn_id]
        await shared.retire()

    async def asettings(self) -> ConnectionSettings:
        """The validated connection, resolved without blocking the event loop."""
        return (await self._loop_client()).settings

    # -- shared request policy ----------------------------------------------------------------------

    def _policy(self, settings: ConnectionSettings) -> RetryPolicy:
        retries = settings.max_retries if self._max_retries is None else self._max_retries
        return replace(self._retry_policy, max_retries=retries)

    def _read_timeout(self, settings: ConnectionSettings) -> float:
        return settings.timeout if self._timeout is None else self._timeout

    @staticmethod
    def _unreachable(
        exc: Exception, subject: str, settings: ConnectionSettings, call_id: str | None
    ) -> DialNexaUnreachableError:
        detail = scrub(str(exc), (settings.api_key,))[:200]
        return DialNexaUnreachableError(
            f"{describe(subject, settings.conn_id)}: could not get an answer from {settings.base_url} "
            f"({type(exc).__name__}: {detail}). {DialNexaUnreachableError.hint}",
            call_id=call_id,
            conn_id=settings.conn_id,
        )

    def _answer(
        self,
        response: requests.Response | httpx.Response,
        *,
        subject: str,
        call_id: str | None,
        settings: ConnectionSettings,
        budget: RateBudget | None,
        hints: Mapping[int, str] | None = None,
    ) -> Any:
        """Parsed body of a response, or its typed error; a 429 first pauses the key's whole budget.

        Every other answer's ``X-RateLimit-*`` headers pace the key's budget (see ``RateBudget``).
        """
        if budget is not None and response.status_code != 429:
            budget.observe(response.headers)
        try:
            return interpret(
                response.status_code,
                response.headers,
                response.content,
                subject=subject,
                call_id=call_id,
                settings=settings,
                hints=hints,
            )
        except DialNexaRateLimitError as exc:
            if budget is not None:
                wait = exc.retry_after
                if wait is None:  # no Retry-After: the window's Reset, if it makes sense, else a second
                    wait = parse_rate_headers(response.headers).reset_in or 1.0
                budget.pause(min(wait, self._retry_policy.retry_after_max))  # a bogus Retry-After can't park the key
            raise

    # -- sync (tasks) -------------------------------------------------------------------------------

    @cached_property
    def session(self) -> requests.Session:
        """One keep-alive session per hook."""
        session = requests.Session()
        session.headers.update(self.settings.headers)
        return session

    def _send_once(
        self,
        method: str,
        url: str,
        *,
        subject: str,
        call_id: str | None,
        hints: Mapping[int, str] | None = None,
        wait_out_timeouts: bool = False,
        **request: Any,
    ) -> Any:
        """One sync request: wait for the key's budget, send, and turn the answer into data or a typed error.

        Retrying is the caller's decision (reads retry through tenacity; a billable POST never blindly).
        ``wait_out_timeouts``: a read timeout asks for as long again before anything else (``retry_after``),
        since DialNexa may still be working on the request.
        """
        settings = self.settings
        budget = budget_for(settings.api_key, settings.rate_limit_per_minute, conn_id=settings.conn_id)
        for delay in budget.delays() if budget is not None else ():
            time.sleep(delay)  # re-checked after each sleep: a pause meanwhile re-queues the request
        timeout = (CONNECT_TIMEOUT, self._read_timeout(settings))
        try:
            response = self.session.request(method, url, timeout=timeout, **request)
        except _SYNC_TRANSPORT_ERRORS as exc:
            error = self._unreachable(exc, subject, settings, call_id)
            if wait_out_timeouts and isinstance(exc, requests.Timeout):
                error.retry_after = timeout[1]
            raise error from None
        return self._answer(response, subject=subject, call_id=call_id, settings=settings, budget=budget, hints=hints)

    def _get(
        self,
        url: str,
        *,
        params: dict[str, str] | None,
        subject: str,
        call_id: str | None,
        hints: Mapping[int, str] | None = None,
    ) -> Any:
        policy = self._policy(self.settings)
        for attempt in Retrying(**policy.tenacity_kwargs(self.log, describe(subject, None))):
            with attempt:
                return self._send_once("GET", url, params=params, subject=subject, call_id=call_id, hints=hints)
        raise AssertionError("unreachable")  # pragma: no cover - tenacity either returns or raises

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

    def close(self) -> None:
        if "session" in self.__dict__:
            self.session.close()

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

    async def _aget(
        self,
        url: str,
        *,
        params: dict[str, str] | None,
        subject: str,
        call_id: str | None,
        hints: Mapping[int, str] | None = None,
    ) -> Any:
        settings = (await self._loop_client()).settings
        timeout = httpx.Timeout(self._read_timeout(settings), connect=CONNECT_TIMEOUT, pool=None)
        retrying = AsyncRetrying(**self._policy(settings).tenacity_kwargs(self.log, describe(subject, None)))
        async for attempt in retrying:
            with attempt:
                shared = await self._loop_client()  # per attempt: a client dropped after a 401 is not reused
                shared.in_flight += 1  # from here until the answer: the client stays open for this request
                try:
                    if shared.budget is not None:  # this connection still uses the key: its bound still counts
                        shared.budget.bound_by(shared.settings.conn_id, shared.settings.rate_limit_per_minute)
                    for delay in shared.budget.delays() if shared.budget is not None else ():
                        await asyncio.sleep(delay)  # re-checked after each sleep: a pause meanwhile re-queues
                    try:
                        async with shared.slots:
                            response = await shared.client.get(url, params=params, timeout=timeout)
                    except httpx.TransportError as exc:
                        raise self._unreachable(exc, subject, shared.settings, call_id) from None
                finally:
                    await shared.release()
                try:
                    return self._answer(
                        response,
                        subject=subject,
                        call_id=call_id,
                        settings=shared.settings,
                        budget=shared.budget,
                        hints=hints,
                    )
                except DialNexaAuthError:
                    await self._forget_loop_client(shared)
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

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
