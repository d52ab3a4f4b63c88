"""The async clients every request of one event loop shares, per connection id; closed with their loop.

One resolved connection and one keep-alive httpx client per (event loop, connection id): thousands of triggers
in a triggerer share them instead of each resolving the connection and dialling DialNexa. The clients refer to
their loop, so an entry leaves ``_loop_states`` when its loop shuts down (see ``_LoopState``). The hook's
transport (``hooks/_transport.py``) decides when to resolve the connection again; everything that is only about
clients and loops is here. The names are also importable from ``hooks.dialnexa``.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncGenerator
from dataclasses import dataclass

import httpx

from airflow_provider_dialnexa._connection import ConnectionSettings
from airflow_provider_dialnexa.policy import CONNECT_TIMEOUT, RateBudget, budget_for

#: Concurrent requests (and keep-alive connections) per event loop and connection id.
MAX_CONNECTIONS = 100


@dataclass(eq=False)
class _LoopClient:
    """What every async request on one event loop through one connection id shares."""

    settings: ConnectionSettings
    client: httpx.AsyncClient
    budget: RateBudget | None
    #: Requests queue here, never inside httpx's pool: httpcore 1.0 rescans every queued request against
    #: every connection on each pool event, so thousands of queued polls would stall the loop (O(n*m)).
    slots: asyncio.Semaphore
    #: When the connection was last read (the transport's ``_clock()``).
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


async def open_loop_client(settings: ConnectionSettings, resolved_at: float) -> _LoopClient:
    """A new shared client for ``settings`` on the running loop, with the key's rate budget."""
    # Built in a thread: loading the CA bundle takes tens of ms, too long for a triggerer's loop.
    client = await asyncio.to_thread(
        httpx.AsyncClient,
        headers=settings.headers,
        follow_redirects=True,  # as requests does on the sync path (both drop auth across hosts)
        limits=httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_CONNECTIONS),
        timeout=httpx.Timeout(settings.timeout, connect=CONNECT_TIMEOUT, pool=None),
    )
    budget = budget_for(settings.api_key, settings.rate_limit_per_minute, conn_id=settings.conn_id)
    return _LoopClient(settings, client, budget, asyncio.Semaphore(MAX_CONNECTIONS), resolved_at=resolved_at)


@dataclass(eq=False)
class _LoopState:
    lock: asyncio.Lock
    clients: dict[str, _LoopClient]
    #: Suspended for the loop's life; ``loop.shutdown_asyncgens()`` (``asyncio.run`` ends with it) resumes it
    #: to close the clients, so nothing of a loop (client, socket, the loop itself) outlives it.
    closer: AsyncGenerator[None, None] | None = None


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


async def forget_loop_client(conn_id: str, shared: _LoopClient) -> None:
    """Stop sharing ``shared`` for ``conn_id`` if it is still this loop's current one (another hook may already
    have replaced it); it is closed once the other requests that hold it have their answers, never under them."""
    state = _loop_states.get(asyncio.get_running_loop())
    if state is not None and state.clients.get(conn_id) is shared:
        del state.clients[conn_id]
    await shared.retire()


async def close_async_clients() -> None:
    """Close this event loop's shared clients now (they also close by themselves when the loop shuts down)."""
    state = _loop_states.pop(asyncio.get_running_loop(), None)
    if state is not None and state.closer is not None:
        await state.closer.aclose()
