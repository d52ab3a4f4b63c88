"""DialNexaHook: read call records from DialNexa's REST API, from tasks (sync) and triggers (async)."""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

import httpx
import requests
from airflow.providers.common.compat.connection import get_async_connection, get_async_extra_dejson
from airflow.providers.common.compat.sdk import BaseHook
from tenacity import AsyncRetrying, Retrying

from airflow_provider_dialnexa import UI_FIELD_BEHAVIOUR
from airflow_provider_dialnexa._http import (
    ConnectionSettings,
    as_call_list,
    as_call_record,
    call_id_query,
    interpret,
    settings_from_connection,
    validate_call_id,
)
from airflow_provider_dialnexa.exceptions import (
    DialNexaAuthError,
    DialNexaRateLimitError,
    DialNexaUnreachableError,
    describe,
    scrub,
)
from airflow_provider_dialnexa.policy import (
    CONNECT_TIMEOUT,
    RateBudget,
    RetryPolicy,
    budget_for,
    parse_rate_headers,
)

#: Most ids one List Calls request may carry (DialNexa's documented page-size maximum).
MAX_LIST_LIMIT = 200
#: Concurrent requests (and keep-alive connections) per event loop and connection id.
MAX_CONNECTIONS = 100

_SYNC_TRANSPORT_ERRORS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
)


@dataclass
class _LoopClient:
    """What every async request on one event loop through one connection id shares."""

    settings: ConnectionSettings
    client: httpx.AsyncClient
    budget: RateBudget | None
    #: Requests queue here, never inside httpx's pool: httpcore 1.0 rescans every queued request against
    #: every connection on each pool event, so thousands of queued polls would stall the loop (O(n*m)).
    slots: asyncio.Semaphore


@dataclass
class _LoopState:
    lock: asyncio.Lock
    clients: dict[str, _LoopClient]


# One resolved connection and one keep-alive httpx client per (event loop, connection id): thousands of
# triggers in a triggerer share them instead of each resolving the connection and dialling DialNexa.
_loop_states: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState] = weakref.WeakKeyDictionary()


async def close_async_clients() -> None:
    """Close this event loop's shared clients (tests and benchmarks call it before the loop ends)."""
    state = _loop_states.pop(asyncio.get_running_loop(), None)
    for shared in state.clients.values() if state else ():
        await shared.client.aclose()


class DialNexaHook(BaseHook):
    """Talk to DialNexa through an Airflow connection of type ``dialnexa``.

    The connection's password is the API key (``<key_id>:<secret>``, sent as ``Bearer``), its host the
    base URL (empty = ``https://api.dialnexa.com``). Extras: ``timeout`` (read timeout, s),
    ``max_retries``, ``rate_limit_per_minute`` (0 = no budget) and ``polling`` (``batched``/``per_call``).

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
        conn = self.get_connection(self.dialnexa_conn_id)
        return self._settings_from(conn, conn.extra_dejson)

    async def _loop_client(self) -> _LoopClient:
        loop = asyncio.get_running_loop()
        state = _loop_states.get(loop)
        if state is None:
            state = _loop_states[loop] = _LoopState(asyncio.Lock(), {})
        shared = state.clients.get(self.dialnexa_conn_id)
        if shared is not None:
            return shared
        async with state.lock:
            shared = state.clients.get(self.dialnexa_conn_id)
            if shared is None:
                conn = await get_async_connection(self.dialnexa_conn_id, hook=self)
                settings = self._settings_from(conn, await get_async_extra_dejson(conn))
                # Built in a thread: loading the CA bundle takes tens of ms, too long for a triggerer's loop.
                client = await asyncio.to_thread(
                    httpx.AsyncClient,
                    headers=settings.headers,
                    follow_redirects=True,  # as requests does on the sync path (both drop auth across hosts)
                    limits=httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_CONNECTIONS),
                    timeout=httpx.Timeout(settings.timeout, connect=CONNECT_TIMEOUT, pool=None),
                )
                budget = budget_for(settings.api_key, settings.rate_limit_per_minute)
                shared = _LoopClient(settings, client, budget, asyncio.Semaphore(MAX_CONNECTIONS))
                state.clients[self.dialnexa_conn_id] = shared
        return shared

    async def _forget_loop_client(self, shared: _LoopClient) -> None:
        """Drop and close the shared client after a 401, so a fixed key is picked up by the next request.

        Only if it is still the current one: another hook may already have replaced it.
        """
        state = _loop_states.get(asyncio.get_running_loop())
        if state is not None and state.clients.get(self.dialnexa_conn_id) is shared:
            del state.clients[self.dialnexa_conn_id]
            await shared.client.aclose()

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

    def _get(self, url: str, *, params: dict[str, str] | None, subject: str, call_id: str | None) -> Any:
        settings = self.settings
        budget = budget_for(settings.api_key, settings.rate_limit_per_minute)
        timeout = (CONNECT_TIMEOUT, self._read_timeout(settings))
        for attempt in Retrying(**self._policy(settings).tenacity_kwargs(self.log, describe(subject, None))):
            with attempt:
                for delay in budget.delays() if budget is not None else ():
                    time.sleep(delay)  # re-checked after each sleep: a pause meanwhile re-queues the request
                try:
                    response = self.session.get(url, params=params, timeout=timeout)
                except _SYNC_TRANSPORT_ERRORS as exc:
                    raise self._unreachable(exc, subject, settings, call_id) from None
                return self._answer(response, subject=subject, call_id=call_id, settings=settings, budget=budget)
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

    # -- async (triggers) ---------------------------------------------------------------------------

    async def _aget(self, url: str, *, params: dict[str, str] | None, subject: str, call_id: str | None) -> Any:
        settings = (await self._loop_client()).settings
        timeout = httpx.Timeout(self._read_timeout(settings), connect=CONNECT_TIMEOUT, pool=None)
        retrying = AsyncRetrying(**self._policy(settings).tenacity_kwargs(self.log, describe(subject, None)))
        async for attempt in retrying:
            with attempt:
                shared = await self._loop_client()  # per attempt: a client dropped after a 401 is not reused
                for delay in shared.budget.delays() if shared.budget is not None else ():
                    await asyncio.sleep(delay)  # re-checked after each sleep: a pause meanwhile re-queues
                try:
                    async with shared.slots:
                        response = await shared.client.get(url, params=params, timeout=timeout)
                except httpx.TransportError as exc:
                    raise self._unreachable(exc, subject, settings, call_id) from None
                try:
                    return self._answer(
                        response, subject=subject, call_id=call_id, settings=settings, budget=shared.budget
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
