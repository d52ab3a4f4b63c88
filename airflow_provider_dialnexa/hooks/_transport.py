"""The one send path of ``DialNexaHook``: connection, rate budget, retries, timeouts and typed errors, sync and async.

``DialNexaTransport`` is the base class of the hook: every request of every capability (calls, batch calls, ...)
goes through ``_send_once`` (sync, one request), ``_get`` (sync read, retried) or ``_aget`` (async read, retried,
on the loop's shared client from ``hooks/_clients.py``), so they all share the connection's rules, the key's
rate budget (``policy``) and the error mapping (``_response.interpret`` -> ``exceptions``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import replace
from functools import cached_property
from typing import Any

import httpx
import requests
from airflow.providers.common.compat.connection import get_async_connection, get_async_extra_dejson
from airflow.providers.common.compat.sdk import AirflowNotFoundException, BaseHook
from tenacity import AsyncRetrying, Retrying

from airflow_provider_dialnexa._connection import (
    ConnectionSettings,
    missing_connection_message,
    settings_from_connection,
)
from airflow_provider_dialnexa._response import interpret
from airflow_provider_dialnexa.exceptions import (
    DialNexaAuthError,
    DialNexaConfigError,
    DialNexaConnectionNotFoundError,
    DialNexaRateLimitError,
    DialNexaUnreachableError,
    describe,
    scrub,
)
from airflow_provider_dialnexa.hooks._clients import _loop_state, _LoopClient, forget_loop_client, open_loop_client
from airflow_provider_dialnexa.policy import (
    CONNECT_TIMEOUT,
    CONNECTION_TTL,
    RateBudget,
    RetryPolicy,
    budget_for,
    parse_rate_headers,
)

_SYNC_TRANSPORT_ERRORS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
)


def _clock() -> float:
    """Monotonic seconds for the connection TTL (a seam, so tests move time instead of waiting for it)."""
    return time.monotonic()


class DialNexaTransport(BaseHook):
    """Base of ``DialNexaHook``: reads the connection and sends requests; knows nothing of calls or batches.

    ``CONNECTION_TTL`` (``policy``): seconds an event loop trusts a resolved connection before reading it again, so
    a fixed host, a rotated key or new extras reach a running triggerer within this time without a lookup per poll.
    """

    dialnexa_conn_id: str
    _timeout: float | None
    _max_retries: int | None
    _retry_policy: RetryPolicy

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
            fresh = await open_loop_client(settings, resolved_at=_clock())
            state.clients[self.dialnexa_conn_id] = fresh
            if shared is not None:
                await shared.retire()
            return fresh

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

    def close(self) -> None:
        if "session" in self.__dict__:
            self.session.close()

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
        """A sync read (``GET``), retried by the connection's policy."""
        policy = self._policy(self.settings)
        for attempt in Retrying(**policy.tenacity_kwargs(self.log, describe(subject, None))):
            with attempt:
                return self._send_once("GET", url, params=params, subject=subject, call_id=call_id, hints=hints)
        raise AssertionError("unreachable")  # pragma: no cover - tenacity either returns or raises

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
        """An async read (``GET``) on the loop's shared client, retried by the connection's policy; never blocks."""
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
                    # Drop the shared client after a 401, so a fixed key is picked up by the next request.
                    await forget_loop_client(self.dialnexa_conn_id, shared)
                    raise
        raise AssertionError("unreachable")  # pragma: no cover
