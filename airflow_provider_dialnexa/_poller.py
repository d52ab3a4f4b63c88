"""Coalesced status polling: many waiting triggers, a handful of List Calls requests.

DialNexa rate-limits per API key (about 150 requests a minute was observed), so one Get Call per wait
per poll cannot scale to thousands of waits. Instead, the triggers of one event loop that share a
connection hand their call ids to one ``BatchPoller``; it collects the ids asked for within a short
window and fetches them with ``GET /v1/calls?call_id=a,b,...`` (up to 200 per request), then hands each
trigger its record. Triggers keep their own schedules, deadlines and events; the poller only changes
how their reads reach DialNexa.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from airflow_provider_dialnexa._validation import validate_call_id
from airflow_provider_dialnexa.exceptions import (
    DialNexaBadRequestError,
    DialNexaNotFoundError,
    DialNexaPermissionError,
)
from airflow_provider_dialnexa.hooks import dialnexa as hook_module
from airflow_provider_dialnexa.hooks.dialnexa import MAX_LIST_LIMIT, DialNexaHook

log = logging.getLogger(__name__)

#: How long the poller collects ids before sending a batch: adds at most this to detection delay.
BATCH_WINDOW = 1.0

# Errors of the List Calls route itself: the deployment does not offer it to this key.
_ROUTE_REFUSED = (DialNexaBadRequestError, DialNexaPermissionError, DialNexaNotFoundError)

_Waiters = dict[str, list[asyncio.Future[dict[str, Any]]]]


class BatchPoller:
    """Fetches call records for every trigger of one event loop and connection id."""

    def __init__(self, hook: DialNexaHook, window: float = BATCH_WINDOW) -> None:
        self.hook = hook
        self.window = window
        self.batch_size = MAX_LIST_LIMIT
        #: When (``hook_module._clock()``) the deployment refused List Calls; None while it is allowed.
        self.refused_at: float | None = None
        self.users = 0
        self._pending: _Waiters = {}
        self._flusher: asyncio.Task[None] | None = None
        #: Batches in flight and the waiters each answers (``stop`` settles them when it cancels the batch).
        self._batches: dict[asyncio.Task[None], _Waiters] = {}
        #: Tasks ``stop`` cancelled, until they have ended (``stopped`` waits for them).
        self._stopping: set[asyncio.Task[None]] = set()

    @property
    def list_refused(self) -> bool:
        """True while reads go straight to Get Call because List Calls was refused less than
        ``CONNECTION_TTL`` ago; after that the next read asks List Calls again (permissions can be fixed
        without restarting the triggerer, as connections can).
        """
        return self.refused_at is not None and hook_module._clock() - self.refused_at < hook_module.CONNECTION_TTL

    @property
    def pending(self) -> int:
        """Ids waiting for the next batch (0 once every trigger has its answer or was cancelled)."""
        return len(self._pending)

    def lead(self) -> float:
        """How much earlier a trigger should ask than its interval: the window a read waits in, or 0 once
        reads go straight to Get Call (else a 1 s interval would become a 0 s one).
        """
        return 0.0 if self.list_refused else self.window

    async def fetch(self, call_id: str) -> dict[str, Any]:
        """The call's current record, via the next batch (or Get Call when batching is unavailable)."""
        validate_call_id(call_id)  # an id that cannot be sent must fail its own wait, not the whole batch
        if self.list_refused:
            return await self.hook.aget_call(call_id)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending.setdefault(call_id, []).append(future)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_loop(), name="dialnexa-batch-poller")
        try:
            return await future
        finally:
            # A cancelled trigger (whose cancellation also cancels ``future``) must not stay registered, or
            # its id is still fetched on its behalf. A settled future was already taken out of ``_pending``.
            waiters = self._pending.get(call_id)
            if waiters is not None and future in waiters:
                waiters.remove(future)
                if not waiters:
                    del self._pending[call_id]

    async def _flush_loop(self) -> None:
        """Each tick: wait one window, then send every id asked for so far, ``batch_size`` per request.

        A tick starts its batches and moves on: a slow batch never holds back the next tick's ids.
        """
        while self._pending:
            await asyncio.sleep(self.window)
            due, self._pending = self._pending, {}
            ids = list(due)
            for i in range(0, len(ids), self.batch_size):
                waiters = {call_id: due[call_id] for call_id in ids[i : i + self.batch_size]}
                batch = asyncio.create_task(self._fetch_batch(waiters), name="dialnexa-batch")
                self._batches[batch] = waiters
                batch.add_done_callback(self._forget_batch)

    def _forget_batch(self, batch: asyncio.Task[None]) -> None:
        self._batches.pop(batch, None)

    async def _list(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        """Records of ``ids`` by List Calls; ids a capped page could not hold are listed again."""
        records, server_limit = await self.hook.alist_calls(ids, limit=max(self.batch_size, len(ids)))
        if server_limit and server_limit < len(ids):
            if server_limit < self.batch_size:
                log.info(
                    "DialNexa List Calls caps limit at %d; batching %d ids per request", server_limit, server_limit
                )
                self.batch_size = server_limit
            # The page was too small for every id: those it left out may exist, so list them, not Get Call.
            rest = [call_id for call_id in ids if call_id not in records]
            for i in range(0, len(rest), server_limit):
                records.update(await self._list(rest[i : i + server_limit]))
        return records

    async def _fetch_batch(self, waiters: _Waiters) -> None:
        """List the ids and answer each listed one at once; ids the list did not return get their own Get Call
        (which also yields the proper 404/403), each answered when its own call is done.
        """
        missing = list(waiters)
        if not self.list_refused:
            try:
                records = await self._list(missing)
            except _ROUTE_REFUSED as exc:
                if not self.list_refused:  # concurrent batches of one tick are refused together: log once
                    log.warning(
                        "DialNexa List Calls is not available (%s); polling each call with Get Call instead", exc
                    )
                self.refused_at = hook_module._clock()
                _refused.setdefault(asyncio.get_running_loop(), {})[self.hook.dialnexa_conn_id] = self.refused_at
            except Exception as exc:  # any failure must reach the waiters, or they would wait forever
                for futures in waiters.values():
                    self._settle(futures, error=exc)
                return
            else:
                for call_id, record in records.items():
                    if call_id in waiters:
                        self._settle(waiters[call_id], record=record)
                missing = [call_id for call_id in missing if call_id not in records]
        await asyncio.gather(*(self._get_one(call_id, waiters[call_id]) for call_id in missing))

    async def _get_one(self, call_id: str, futures: list[asyncio.Future[dict[str, Any]]]) -> None:
        try:
            record = await self.hook.aget_call(call_id)
        except Exception as exc:
            self._settle(futures, error=exc)
        else:
            self._settle(futures, record=record)

    def stop(self) -> None:
        """Cancel the flush loop and the batches in flight (its last user left), and settle their waiters.

        A waiter left behind (e.g. a read its trigger did not cancel) is cancelled rather than left pending
        forever; ``stopped()`` waits until the cancelled tasks have ended.
        """
        tasks = [task for task in (self._flusher, *self._batches) if task is not None and not task.done()]
        waiters = [self._pending, *self._batches.values()]
        self._pending, self._batches = {}, {}
        for task in tasks:
            task.cancel()
        for by_id in waiters:
            for futures in by_id.values():
                for future in futures:
                    future.cancel()
        self._stopping.update(tasks)

    async def stopped(self) -> None:
        """Return once every task ``stop`` cancelled has ended (nothing of the poller outlives its users)."""
        while self._stopping:
            tasks, self._stopping = self._stopping, set()
            await asyncio.wait(tasks)

    @staticmethod
    def _settle(
        futures: list[asyncio.Future[dict[str, Any]]],
        *,
        record: dict[str, Any] | None = None,
        error: BaseException | None = None,
    ) -> None:
        for future in futures:
            if future.done():
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(record or {})


# One poller per (event loop, connection id), alive while at least one trigger uses it.
_pollers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, BatchPoller]] = weakref.WeakKeyDictionary()
# When each connection's List Calls route was refused, per event loop (a triggerer runs one loop for its life):
# later pollers of that connection go straight to Get Call, until ``CONNECTION_TTL`` has passed.
_refused: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, float]] = weakref.WeakKeyDictionary()


def active_pollers() -> dict[str, BatchPoller]:
    """This event loop's live pollers by connection id (for tests and benchmarks)."""
    return dict(_pollers.get(asyncio.get_running_loop(), {}))


@asynccontextmanager
async def shared_poller(conn_id: str) -> AsyncIterator[BatchPoller]:
    """``batch_poller`` for a trigger: on leaving, the last user also waits until the poller's tasks have ended."""
    poller: BatchPoller | None = None
    try:
        with batch_poller(conn_id) as poller:
            yield poller
    finally:
        if poller is not None:
            await poller.stopped()


@contextmanager
def batch_poller(conn_id: str) -> Iterator[BatchPoller]:
    """Use this loop's shared poller for ``conn_id``; the last user to leave removes it."""
    loop = asyncio.get_running_loop()
    pollers = _pollers.setdefault(loop, {})
    poller = pollers.get(conn_id)
    if poller is None:
        poller = pollers[conn_id] = BatchPoller(DialNexaHook(conn_id))
        poller.refused_at = _refused.get(loop, {}).get(conn_id)
    poller.users += 1
    try:
        yield poller
    finally:
        poller.users -= 1
        if poller.users == 0 and pollers.get(conn_id) is poller:
            del pollers[conn_id]
            poller.stop()
            if not pollers:
                _pollers.pop(loop, None)
