"""The simulator's webhook sender: one daemon thread with its own event loop, off the API's request path.

It wakes when a call event is due (``WebhookHub.take_due``), turns it into deliveries (``WebhookHub.fire``)
and sends each as its own task: signed, with DialNexa's User-Agent, the configured timeout, and retries with
backoff on a non-2xx answer, a timeout or a connection error. Every attempt goes to the hub's delivery log.
The verification ping of a registration is sent from here too; the API's handler awaits it without blocking
its own loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from typing import TYPE_CHECKING

import httpx

from airflow_provider_dialnexa.simulator.webhook_payloads import iso8601, sign
from airflow_provider_dialnexa.simulator.webhooks import USER_AGENT, VERIFICATION_USER_AGENT, Outgoing, WebhookConfig

if TYPE_CHECKING:
    from airflow_provider_dialnexa.simulator.webhooks import WebhookHub

#: Concurrent connections to receivers (DialNexa's own concurrency is not documented).
MAX_CONNECTIONS = 64


class Sender:
    """Sends the hub's deliveries from a background thread, started on first use."""

    def __init__(self, hub: WebhookHub) -> None:
        self.hub = hub
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._client: httpx.AsyncClient | None = None
        #: Deliveries queue here, never in httpx's pool: httpcore rescans every queued request on each pool event,
        #: so thousands of queued deliveries would spin this thread and starve the API's thread of the GIL.
        self._slots: asyncio.Semaphore | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        #: The last delivery sequence per (webhook, call): the next one for the same pair waits for it, so a
        #: call's events arrive in order (unless the ``reorder`` fault says otherwise) while calls run in parallel.
        self._lanes: dict[tuple[str, str | None], asyncio.Task[None]] = {}
        self._stopping = False

    # ------------------------------------------------------------ lifecycle

    def ensure(self) -> asyncio.AbstractEventLoop:
        """The sender's loop, starting its thread if needed (blocks until the thread is ready)."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive() or self._loop is None:
                ready = threading.Event()
                self._stopping = False
                self._loop = asyncio.new_event_loop()
                self._thread = threading.Thread(
                    target=self._run, args=(self._loop, ready), name="dialnexa-webhook-sender", daemon=True
                )
                self._thread.start()
                if not ready.wait(30):  # pragma: no cover - only on a machine that cannot start a thread
                    raise RuntimeError("the simulator's webhook sender did not start")
            return self._loop

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread; deliveries in flight are cancelled."""
        with self._lock:
            thread, loop = self._thread, self._loop
            self._thread = self._loop = None
            self._stopping = True
        if thread is None or loop is None:
            return
        self._call(loop, self._set_wake)
        thread.join(timeout)

    def wake(self) -> None:
        """Tell the thread a new event was scheduled (it may be due before the one it sleeps for)."""
        self._call(self.ensure(), self._set_wake)

    def cancel_all(self) -> None:
        """Cancel every delivery in flight (a reset); the thread keeps running."""
        loop = self._loop
        if loop is not None:
            self._call(loop, lambda: [task.cancel() for task in list(self._tasks)])

    @staticmethod
    def _call(loop: asyncio.AbstractEventLoop, callback: object) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(callback)  # type: ignore[arg-type]

    def _set_wake(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _run(self, loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._main(ready))
        finally:
            loop.close()

    async def _main(self, ready: threading.Event) -> None:
        self._wake = asyncio.Event()
        limits = httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_CONNECTIONS)
        self._client = httpx.AsyncClient(follow_redirects=False, limits=limits)
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)
        ready.set()
        try:
            while not self._stopping:
                self._wake.clear()
                generation, due, next_due = self.hub.take_due(time.time())
                for when, call_id, kind in due:
                    try:
                        for chain in self.hub.fire(when, call_id, kind):
                            self._spawn(chain)
                    finally:
                        self.hub.fired(generation)
                wait = None if next_due is None else max(0.0, next_due - time.time())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)
        finally:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._client.aclose()

    # ------------------------------------------------------------ deliveries

    def _spawn(self, chain: list[Outgoing]) -> None:
        generation = self.hub.begin()
        lane = (chain[0].webhook_id, chain[0].call_id)
        before = self._lanes.get(lane)
        task = asyncio.get_running_loop().create_task(self._chain(chain, generation, before))
        self._tasks.add(task)
        self._lanes[lane] = task

        def done(finished: asyncio.Task[None]) -> None:
            self._tasks.discard(finished)
            if self._lanes.get(lane) is finished:
                del self._lanes[lane]

        task.add_done_callback(done)

    async def _chain(self, chain: list[Outgoing], generation: int, before: asyncio.Task[None] | None) -> None:
        """Send the deliveries one after another (each with its retries; a ``twice`` one again after itself),
        once the sequence ``before`` (the same webhook and call) is over."""
        try:
            if before is not None:
                await asyncio.wait([before])
            for out in chain:
                await self._deliver(out, generation, duplicate=False)
                if out.twice:
                    await self._deliver(out, generation, duplicate=True)
        finally:
            self.hub.end(generation)

    async def _deliver(self, out: Outgoing, generation: int, *, duplicate: bool) -> None:
        delay = self.hub.config.delay_s
        if delay:
            await asyncio.sleep(delay)
        parent: str | None = None
        attempt = 1
        while True:
            target = self.hub.target(out.webhook_id, generation)
            if target is None:  # deleted, or the simulator was reset: DialNexa stops too
                return
            url, secret, cfg = target
            status, error = await self._post(url, out.body, secret, cfg, USER_AGENT, cfg.timeout_ms / 1000)
            ok = status is not None and 200 <= status < 300
            delivery_id = self.hub.record(
                generation,
                parent_delivery_id=parent,
                webhook_id=out.webhook_id,
                call_id=out.call_id,
                event=out.event,
                attempt=attempt,
                response_status=status,
                is_success=ok,
                error_message=error,
                duplicate=duplicate,
            )
            parent = parent or delivery_id
            if ok or attempt > cfg.retry_count:
                return
            await asyncio.sleep(cfg.retry_backoff_s * 2 ** (attempt - 1))
            attempt += 1

    async def _post(
        self, url: str, body: bytes, secret: str, cfg: WebhookConfig, agent: str, limit_s: float
    ) -> tuple[int | None, str | None]:
        """One signed POST: ``(status, None)`` on an answer, ``(None, reason)`` on a timeout or transport error."""
        assert self._client is not None
        assert self._slots is not None
        headers = {"content-type": "application/json", "user-agent": agent, cfg.signature_header: sign(secret, body)}
        try:
            async with self._slots:
                response = await self._client.post(url, content=body, headers=headers, timeout=limit_s)
        except httpx.TimeoutException:
            return None, f"timed out after {limit_s * 1000:.0f} ms"
        except httpx.HTTPError as exc:
            return None, f"{type(exc).__name__}: {exc}"[:200]
        ok = 200 <= response.status_code < 300
        return response.status_code, None if ok else f"HTTP {response.status_code}"

    # ---------------------------------------------------------- verification

    async def verify(self, url: str, secret: str) -> tuple[int | None, str | None]:
        """Send the registration's ``verification`` ping from the sender's loop; awaitable from any loop."""
        loop = await asyncio.to_thread(self.ensure)  # starting the thread must not stall the caller's loop
        future = asyncio.run_coroutine_threadsafe(self._verify(url, secret), loop)
        return await asyncio.wrap_future(future)

    async def _verify(self, url: str, secret: str) -> tuple[int | None, str | None]:
        cfg, generation = self.hub.config, self.hub.generation
        body = json.dumps({"message": "DialNexa webhook verification", "timestamp": iso8601(time.time())}).encode()
        status, error = await self._post(url, body, secret, cfg, VERIFICATION_USER_AGENT, cfg.verify_timeout_s)
        ok = status is not None and 200 <= status < 300
        self.hub.record(
            generation,
            parent_delivery_id=None,
            webhook_id=None,
            call_id=None,
            event="verification",
            attempt=1,
            response_status=status,
            is_success=ok,
            error_message=error,
            duplicate=False,
        )
        return status, error
