"""DialNexaCallTrigger: wait, in the triggerer, until a DialNexa call reaches a terminal status.

DialNexaWindowTrigger: wait until no call of a creation window is still running (the export's wait). Both run
the poll loop of ``triggers._loop`` (schedule, deadline, failures); they differ in what one read is.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, aclosing
from datetime import datetime
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_dialnexa import status as call_status
from airflow_provider_dialnexa._connection import polling_mode
from airflow_provider_dialnexa._paging import as_utc, epoch_seconds, iso_utc
from airflow_provider_dialnexa._poller import shared_poller
from airflow_provider_dialnexa.exceptions import (
    DialNexaBadRequestError,
    DialNexaError,
    DialNexaMalformedResponseError,
    DialNexaNotFoundError,
)
from airflow_provider_dialnexa.hooks.dialnexa import DialNexaHook
from airflow_provider_dialnexa.policy import DEFAULT_MAX_POLL_INTERVAL, DEFAULT_POLL_INTERVAL, PollPolicy
from airflow_provider_dialnexa.records import mask_numbers
from airflow_provider_dialnexa.triggers._loop import (
    DEFAULT_MAX_CONSECUTIVE_FAILURES,
    ERROR,
    EVENT_NAMES,
    SUCCESS,
    TIMEOUT,
    DeadlinePassed,
    PollLoop,
    before_deadline,
    gave_up,
    no_lead,
)

__all__ = [
    "DEFAULT_MAX_CONSECUTIVE_FAILURES",
    "ERROR",
    "EVENT_NAMES",
    "RUNNING_STATUS_FILTER",
    "SUCCESS",
    "TIMEOUT",
    "WINDOW_MODES",
    "WINDOW_PROBE_PAGE",
    "DeadlinePassed",
    "DialNexaCallTrigger",
    "DialNexaWindowTrigger",
    "before_deadline",
    "validate_event",
    "validate_window_event",
]

_Fetch = Callable[[str], Awaitable[dict[str, Any]]]


def _unexpected(exc: Exception) -> str:
    """The message of an error event for a bug (not a DialNexa error): type and text, numbers masked."""
    return mask_numbers(f"{type(exc).__name__}: {exc}")


class DialNexaCallTrigger(BaseTrigger):
    """Poll one call until it ends, then yield exactly one small event and return.

    Events (no transcript, no phone numbers - they are stored in the metadata DB):

    * ``{"event": "success", "call_id", "status", "raw_status"}`` - ``status`` normalised;
    * ``{"event": "error", "call_id", "kind", "message"}`` - ``kind`` is one of auth, permission,
      not_found, bad_request, server, rate_limited, malformed, config, error;
    * ``{"event": "timeout", "call_id", "message", "last_status"}`` - ``end_time`` passed.

    Every argument is a primitive, and ``serialize()`` returns exactly them, so the trigger survives
    serde, triggerer restarts and HA duplicates (it only reads). The API key never appears here: the
    trigger resolves ``dialnexa_conn_id`` itself, asynchronously.

    :param call_id: The DialNexa call id.
    :param dialnexa_conn_id: Airflow connection id.
    :param poll_interval: First interval between polls, seconds (>= 1; DialNexa suggests 5-10).
    :param end_time: Wall-clock deadline: epoch seconds (``time.time() + ...``: worker and triggerer are
        different processes, so never a monotonic reading), a datetime (naive = UTC) or an ISO-8601 string;
        stored and serialized as epoch seconds. None waits forever.
    :param max_poll_interval: Cap of the growing interval.
    :param poll_growth: Factor the interval grows by after each poll of a running call.
    :param poll_jitter: Fraction by which an interval may be shortened, so thousands of waits do not poll
        in lockstep.
    :param first_poll_delay: Seconds before the first poll (None: one ``poll_interval``; the sensor has
        just looked). 0 polls at once.
    :param max_consecutive_failures: Transient failures (5xx, 429, unreachable, malformed body) survived
        in a row, each after the hook's own retries, before giving up with an ``error`` event.
    :param polling: ``batched`` (share List Calls requests with other waits on this connection),
        ``per_call`` (Get Call each time), or None to use the connection's ``polling`` extra (default batched).
    """

    def __init__(
        self,
        call_id: str,
        dialnexa_conn_id: str = DialNexaHook.default_conn_name,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        end_time: float | datetime | str | None = None,
        max_poll_interval: float = DEFAULT_MAX_POLL_INTERVAL,
        poll_growth: float = 1.5,
        poll_jitter: float = 0.1,
        first_poll_delay: float | None = None,
        max_consecutive_failures: int = DEFAULT_MAX_CONSECUTIVE_FAILURES,
        polling: str | None = None,
    ) -> None:
        super().__init__()
        self.call_id = call_id
        self.dialnexa_conn_id = dialnexa_conn_id
        self.poll_interval = float(poll_interval)
        self.end_time = None if end_time is None else epoch_seconds(end_time, "end_time")
        self.max_poll_interval = float(max(max_poll_interval, poll_interval))
        self.poll_growth = float(poll_growth)
        self.poll_jitter = float(poll_jitter)
        self.first_poll_delay = None if first_poll_delay is None else float(first_poll_delay)
        self.max_consecutive_failures = int(max_consecutive_failures)
        self.polling = None if polling is None else polling_mode(polling, or_none=True)
        # Validate now, in the worker, so a bad policy fails the task instead of the trigger.
        self._policy = PollPolicy(self.poll_interval, self.max_poll_interval, self.poll_growth, self.poll_jitter)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "call_id": self.call_id,
                "dialnexa_conn_id": self.dialnexa_conn_id,
                "poll_interval": self.poll_interval,
                "end_time": self.end_time,
                "max_poll_interval": self.max_poll_interval,
                "poll_growth": self.poll_growth,
                "poll_jitter": self.poll_jitter,
                "first_poll_delay": self.first_poll_delay,
                "max_consecutive_failures": self.max_consecutive_failures,
                "polling": self.polling,
            },
        )

    def _event(self, name: str, **fields: Any) -> TriggerEvent:
        return TriggerEvent({"event": name, "call_id": self.call_id, **fields})

    def _first_delay(self) -> float:
        if self.first_poll_delay is not None:
            return max(0.0, self.first_poll_delay)
        return self._policy.interval(0)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        hook = DialNexaHook(self.dialnexa_conn_id)
        try:
            async with AsyncExitStack() as stack:
                fetch: _Fetch = hook.aget_call
                lead: Callable[[], float] = no_lead
                polling = self.polling or (await hook.asettings()).polling
                if polling == "batched":
                    poller = await stack.enter_async_context(shared_poller(self.dialnexa_conn_id))
                    fetch = poller.fetch
                    lead = poller.lead  # the poller holds each read up to one window: ask that much earlier
                event = await self._wait(fetch, lead)
        except DialNexaError as exc:  # e.g. an unusable connection, raised before the first poll
            event = self._event(ERROR, kind=exc.kind, message=str(exc))
        except Exception as exc:  # a bug must still end the wait with a readable event, not a crash
            self.log.exception("DialNexa trigger for call %r failed unexpectedly", self.call_id)
            event = self._event(ERROR, kind="error", message=_unexpected(exc))
        yield event

    async def _wait(self, fetch: _Fetch, lead: Callable[[], float]) -> TriggerEvent:
        last_status: str | None = None
        warned: set[str] = set()

        async def read() -> object:
            raw = (await fetch(self.call_id)).get("status")
            if raw is None or raw == "":
                raise DialNexaMalformedResponseError(
                    f"DialNexa call {self.call_id!r}: the record has no 'status'", call_id=self.call_id
                )
            return raw

        def done(raw: object, polls: int) -> TriggerEvent | None:
            nonlocal last_status
            status = last_status = call_status.normalise(raw)
            phase = call_status.phase(status)
            if phase is call_status.Phase.TERMINAL:
                return self._event(SUCCESS, status=status, raw_status=str(raw))
            if phase is call_status.Phase.UNKNOWN and status not in warned:
                warned.add(status)
                self.log.warning(
                    "DialNexa call %r has undocumented status %r; treating it as still running", self.call_id, raw
                )
            return None

        def on_timeout() -> TriggerEvent:
            return self._event(
                TIMEOUT,
                message=f"DialNexa call {self.call_id!r} had not ended by the deadline "
                f"(last status: {last_status or 'unknown'})",
                last_status=last_status,
            )

        def on_error(exc: DialNexaError, failures: int) -> TriggerEvent:
            message = str(exc)
            if repr(self.call_id) not in message:  # e.g. a failed List Calls shared by many waits
                message = f"DialNexa call {self.call_id!r}: {message}"
            return self._event(ERROR, kind=exc.kind, message=message + gave_up(exc, failures))

        loop: PollLoop[object] = PollLoop(
            self._policy,
            self.end_time,
            self.max_consecutive_failures,
            self._first_delay(),
            # The default first wait is already interval 0 of the schedule: the wait after poll n is then interval n.
            skip=1 if self.first_poll_delay is None else 0,
            subject=f"DialNexa call {self.call_id!r}",
            log=self.log,
            lead=lead,
        )
        return await loop.run(read, done, on_timeout, on_error)


def validate_event(event: Any, call_id: str | None = None) -> dict[str, Any]:
    """Check a resumed task's trigger event; fail loudly on anything this trigger never yields.

    The event crosses the triggerer/worker boundary through the metadata DB, so a task may resume with
    None (e.g. a trigger killed mid-way) or a payload from another version: both are errors, not successes.
    """
    if not isinstance(event, dict) or event.get("event") not in EVENT_NAMES:
        raise DialNexaError(
            f"DialNexa call {call_id!r}: the task resumed with an unexpected trigger event {event!r:.200}; "
            "clear the task to wait again",
            call_id=call_id,
        )
    if call_id is not None and event.get("call_id") not in (None, call_id):
        raise DialNexaError(
            f"DialNexa call {call_id!r}: the trigger event is about call {event.get('call_id')!r}; "
            "clear the task to wait again",
            call_id=call_id,
        )
    if event["event"] == SUCCESS and not event.get("status"):
        raise DialNexaError(f"DialNexa call {call_id!r}: success event without a status: {event!r:.200}")
    return event


#: Statuses a window trigger asks List Calls for by default: every running spelling the docs use.
RUNNING_STATUS_FILTER: tuple[str, ...] = (*sorted(call_status.RUNNING), "in-progress")
#: Records per running-status poll: one small page; the answer only has to say "some" or "none".
WINDOW_PROBE_PAGE = 20
WINDOW_MODES = ("status", "per_call")


class DialNexaWindowTrigger(BaseTrigger):
    """Wait, in the triggerer, until no call created in ``[window_start, window_end)`` is still running.

    Mode ``status`` (default) asks List Calls each poll for the window's calls in a running status: one
    small request per poll, however many calls are running. If DialNexa ignores or rejects the ``status``
    filter (a terminal call comes back, or a 400), the trigger switches to ``per_call``: it lists the window
    once for the ids still running and then polls just those through the shared ``BatchPoller`` (List Calls
    by id, up to 200 per request, coalesced with other waits).

    Events: ``{"event": "success", ...}`` once nothing runs; ``{"event": "timeout", "message", "running"}``
    when ``end_time`` passes (``running`` is a count when known, else None); ``{"event": "error", "kind",
    "message"}``. Each also carries ``window_start``, ``window_end``, ``end_time`` and ``mode``, so the task can
    resume or defer again under ``dag.test()`` too. Arguments are primitives; the trigger only reads.

    :param window_start: Start of the window (inclusive): ISO-8601 string, or a datetime (naive = UTC), which is
        stored as an ISO-8601 string.
    :param window_end: End of the window (exclusive), likewise.
    :param filters: List Calls filters of the export (primitives or lists of them), without ``status``.
    :param running_statuses: Status values to ask for (default ``RUNNING_STATUS_FILTER``).
    :param end_time: Wall-clock deadline: epoch seconds (``time.time() + ...``), a datetime (naive = UTC) or an
        ISO-8601 string; serialized as epoch seconds. None waits forever.
    """

    def __init__(
        self,
        window_start: str | datetime,
        window_end: str | datetime,
        dialnexa_conn_id: str = DialNexaHook.default_conn_name,
        filters: dict[str, Any] | None = None,
        running_statuses: list[str] | None = None,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        end_time: float | datetime | str | None = None,
        max_poll_interval: float = DEFAULT_MAX_POLL_INTERVAL,
        max_consecutive_failures: int = DEFAULT_MAX_CONSECUTIVE_FAILURES,
        mode: str = "status",
    ) -> None:
        super().__init__()
        # Primitives only (serialize()): a datetime becomes the ISO-8601 form the export operator sends too.
        self.window_start = (
            iso_utc(as_utc(window_start, "window_start")) if isinstance(window_start, datetime) else window_start
        )
        self.window_end = iso_utc(as_utc(window_end, "window_end")) if isinstance(window_end, datetime) else window_end
        self.dialnexa_conn_id = dialnexa_conn_id
        self.filters = dict(filters or {})
        self.running_statuses = list(running_statuses or RUNNING_STATUS_FILTER)
        self.poll_interval = float(poll_interval)
        self.end_time = None if end_time is None else epoch_seconds(end_time, "end_time")
        self.max_poll_interval = float(max(max_poll_interval, poll_interval))
        self.max_consecutive_failures = int(max_consecutive_failures)
        if mode not in WINDOW_MODES:
            raise ValueError(f"mode must be one of {WINDOW_MODES}, got {mode!r}")
        self.mode = mode
        self._policy = PollPolicy(self.poll_interval, self.max_poll_interval)
        DialNexaHook.check_list_arguments(window_start, window_end, **self.filters)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "window_start": self.window_start,
                "window_end": self.window_end,
                "dialnexa_conn_id": self.dialnexa_conn_id,
                "filters": self.filters,
                "running_statuses": self.running_statuses,
                "poll_interval": self.poll_interval,
                "end_time": self.end_time,
                "max_poll_interval": self.max_poll_interval,
                "max_consecutive_failures": self.max_consecutive_failures,
                "mode": self.mode,
            },
        )

    def _event(self, name: str, mode: str, **fields: Any) -> TriggerEvent:
        return TriggerEvent(
            {
                "event": name,
                "window_start": self.window_start,
                "window_end": self.window_end,
                "end_time": self.end_time,
                "mode": mode,
                **fields,
            }
        )

    @property
    def _subject(self) -> str:
        return f"DialNexa calls created in [{self.window_start}, {self.window_end})"

    async def run(self) -> AsyncIterator[TriggerEvent]:
        hook = DialNexaHook(self.dialnexa_conn_id)
        try:
            async with AsyncExitStack() as stack:
                event = await self._wait(hook, stack)
        except DialNexaError as exc:
            event = self._event(ERROR, self.mode, kind=exc.kind, message=str(exc))
        except Exception as exc:  # a bug must still end the wait with a readable event
            self.log.exception("DialNexa window trigger failed unexpectedly")
            event = self._event(ERROR, self.mode, kind="error", message=_unexpected(exc))
        yield event

    async def _probe(self, hook: DialNexaHook) -> str:
        """``running``, ``ended``, or ``ignored`` (the server answered a running-status query with an ended call)."""
        records = hook.aiter_calls(
            self.window_start,
            self.window_end,
            page_size=WINDOW_PROBE_PAGE,
            **{**self.filters, "status": self.running_statuses},
        )
        async with aclosing(records):
            async for record in records:
                return "ignored" if call_status.is_terminal(record.get("status")) else "running"
        return "ended"

    async def _running_ids(self, hook: DialNexaHook) -> set[str]:
        records = hook.aiter_calls(self.window_start, self.window_end, **self.filters)
        async with aclosing(records):
            return {str(r["id"]) async for r in records if not call_status.is_terminal(r.get("status"))}

    async def _still_running(self, fetch: _Fetch, ids: set[str]) -> set[str]:
        """Which of ``ids`` still run: one read each, side by side (the poller batches them).

        A call that no longer exists (404) has stopped running: the wait goes on for the others. Any other
        failed read cancels the reads still in flight and waits for them before it is raised, so no read
        outlives the poll (nor the trigger).
        """
        running: set[str] = set()

        async def read(call_id: str) -> None:
            try:
                record = await fetch(call_id)
            except DialNexaNotFoundError:
                self.log.warning("%s: call %r no longer exists (404); not waiting for it", self._subject, call_id)
                return
            if not call_status.is_terminal(record.get("status")):
                running.add(call_id)

        try:
            async with asyncio.TaskGroup() as group:
                for call_id in sorted(ids):
                    group.create_task(read(call_id), name="dialnexa-window-read")
        except BaseExceptionGroup as failed:
            raise _first_error(failed) from None
        return running

    async def _wait(self, hook: DialNexaHook, stack: AsyncExitStack) -> TriggerEvent:
        mode = self.mode
        pending: set[str] | None = None  # per_call: the ids still running, once listed
        fetch: _Fetch | None = None

        async def read() -> bool:
            """One poll: True once no call of the window runs."""
            nonlocal mode, pending, fetch
            if mode == "status":
                try:
                    state = await self._probe(hook)
                except DialNexaBadRequestError as exc:
                    state = "ignored"
                    self.log.warning("DialNexa refused the running-status query (%s)", exc)
                if state != "ignored":
                    return state == "ended"
                self.log.warning(
                    "%s: List Calls does not apply the status filter; polling the running calls by id", self._subject
                )
                mode = "per_call"
            if pending is None:
                pending = await self._running_ids(hook)
            if fetch is None:
                fetch = (await stack.enter_async_context(shared_poller(self.dialnexa_conn_id))).fetch
            pending = await self._still_running(fetch, pending)
            return not pending

        def done(ended: bool, polls: int) -> TriggerEvent | None:
            return self._event(SUCCESS, mode, polls=polls) if ended else None

        def on_timeout() -> TriggerEvent:
            running = None if pending is None else len(pending)
            return self._event(
                TIMEOUT,
                mode,
                message=f"{self._subject}: {'some' if running is None else running} still running at the deadline",
                running=running,
            )

        def on_error(exc: DialNexaError, failures: int) -> TriggerEvent:
            return self._event(ERROR, mode, kind=exc.kind, message=f"{self._subject}: {exc}{gave_up(exc, failures)}")

        loop: PollLoop[bool] = PollLoop(
            self._policy,
            self.end_time,
            self.max_consecutive_failures,
            first_delay=self._policy.interval(0),  # the task has just listed the window
            skip=1,
            subject=self._subject,
            log=self.log,
        )
        return await loop.run(read, done, on_timeout, on_error)


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error to raise for a failed group of reads: the first DialNexa error in it, else its first error."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        error = pending.pop(0)
        if isinstance(error, BaseExceptionGroup):
            pending[:0] = list(error.exceptions)
        else:
            leaves.append(error)
    return next((e for e in leaves if isinstance(e, DialNexaError)), leaves[0])


def _iso(value: str | datetime) -> str:
    return iso_utc(as_utc(value, "window bound")) if isinstance(value, datetime) else value


def validate_window_event(event: Any) -> dict[str, Any]:
    """Check a resumed export task's trigger event; fail loudly on anything the window trigger never yields."""
    if not isinstance(event, dict) or event.get("event") not in EVENT_NAMES or "window_start" not in event:
        raise DialNexaError(
            f"DialNexa export: the task resumed with an unexpected trigger event {event!r:.200}; "
            "clear the task to export again"
        )
    return event
