"""DialNexaBatchTrigger: wait, in the triggerer, until a DialNexa batch call (campaign) has ended."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_dialnexa import status as status_
from airflow_provider_dialnexa._batches import LocateHint, progress, progress_line
from airflow_provider_dialnexa.exceptions import TRANSIENT_KINDS, DialNexaError, DialNexaMalformedResponseError
from airflow_provider_dialnexa.hooks.dialnexa import DialNexaHook
from airflow_provider_dialnexa.policy import PollPolicy
from airflow_provider_dialnexa.triggers.dialnexa import (
    DEFAULT_MAX_CONSECUTIVE_FAILURES,
    ERROR,
    EVENT_NAMES,
    SUCCESS,
    TIMEOUT,
    DeadlinePassed,
    before_deadline,
)

#: A batch runs for minutes to hours and may wait hours behind another batch: poll every 30 s at first,
#: growing to every 10 minutes.
DEFAULT_BATCH_POLL_INTERVAL = 30.0
DEFAULT_BATCH_MAX_POLL_INTERVAL = 600.0


class DialNexaBatchTrigger(BaseTrigger):
    """Poll one batch until it has ended (completed, cancelled, deleted, failed), then yield one event.

    Each poll is one request once the trigger knows where DialNexa keeps the batch's status (List Batch Calls
    page 1, or Get Batch Call when it carries the status; see ``_batches.locate_batch``) and logs the batch's
    progress (``running: 240/250 sent, 116 picked up, retries 80/25/0/0``), so the task log reads like a
    progress bar. The interval grows from ``poll_interval`` to ``max_poll_interval`` (x``poll_growth`` per
    poll): a batch that waits hours behind another costs a few requests an hour. A paused batch is reported
    at each poll and waited for (someone may resume it) unless ``paused`` is in ``stop_statuses``.

    Events (small, no phone numbers), each also carrying ``resume_with`` as given:

    * ``{"event": "success", "batch_id", "status", "raw_status", "progress"}``: ended (or a stop status);
    * ``{"event": "error", "batch_id", "kind", "message"}``;
    * ``{"event": "timeout", "batch_id", "message", "last_status", "progress"}``: ``end_time`` passed.

    :param batch_id: The DialNexa batch id.
    :param end_time: Wall-clock deadline, epoch seconds (``time.time()``); None waits forever.
    :param stop_statuses: Statuses besides the terminal ones that end the wait (only ``paused`` makes sense).
    :param resume_with: Primitives returned unchanged in every event, so the task resumes from the event
        alone (``dag.test()`` drops a deferral's ``kwargs``).
    """

    def __init__(
        self,
        batch_id: str,
        dialnexa_conn_id: str = DialNexaHook.default_conn_name,
        poll_interval: float = DEFAULT_BATCH_POLL_INTERVAL,
        end_time: float | None = None,
        max_poll_interval: float = DEFAULT_BATCH_MAX_POLL_INTERVAL,
        poll_growth: float = 1.5,
        poll_jitter: float = 0.1,
        max_consecutive_failures: int = DEFAULT_MAX_CONSECUTIVE_FAILURES,
        stop_statuses: list[str] | None = None,
        resume_with: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.batch_id = batch_id
        self.dialnexa_conn_id = dialnexa_conn_id
        self.poll_interval = float(poll_interval)
        self.end_time = None if end_time is None else float(end_time)
        self.max_poll_interval = float(max(max_poll_interval, poll_interval))
        self.poll_growth = float(poll_growth)
        self.poll_jitter = float(poll_jitter)
        self.max_consecutive_failures = int(max_consecutive_failures)
        self.stop_statuses = sorted({status_.normalise(s) for s in stop_statuses or ()})
        self.resume_with = dict(resume_with or {})
        self._policy = PollPolicy(self.poll_interval, self.max_poll_interval, self.poll_growth, self.poll_jitter)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "batch_id": self.batch_id,
                "dialnexa_conn_id": self.dialnexa_conn_id,
                "poll_interval": self.poll_interval,
                "end_time": self.end_time,
                "max_poll_interval": self.max_poll_interval,
                "poll_growth": self.poll_growth,
                "poll_jitter": self.poll_jitter,
                "max_consecutive_failures": self.max_consecutive_failures,
                "stop_statuses": self.stop_statuses,
                "resume_with": self.resume_with,
            },
        )

    def _event(self, name: str, **fields: Any) -> TriggerEvent:
        return TriggerEvent({"event": name, "batch_id": self.batch_id, **fields, "resume_with": self.resume_with})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        hook = DialNexaHook(self.dialnexa_conn_id)
        hint = LocateHint()  # learned once, then each poll asks the one source that has the status
        try:
            event = await self._wait(lambda: hook.aget_batch_call(self.batch_id, hint))
        except DialNexaError as exc:
            event = self._event(ERROR, kind=exc.kind, message=str(exc))
        except Exception as exc:  # a bug must still end the wait with a readable event
            self.log.exception("DialNexa batch trigger for %r failed unexpectedly", self.batch_id)
            event = self._event(ERROR, kind="error", message=f"{type(exc).__name__}: {exc}")
        yield event

    async def _wait(self, fetch: Callable[[], Awaitable[dict[str, Any]]]) -> TriggerEvent:
        """The call trigger's loop, with a batch's statuses: deadline, sleep, read, classify, grow the interval."""
        polls = failures = 0
        delay = self._policy.interval(0)  # the task has just looked
        last: dict[str, Any] | None = None
        warned: set[str] = set()
        while True:
            if self.end_time is not None:
                remaining = self.end_time - time.time()
                if remaining <= 0:
                    shown = progress_line(last) if last is not None else "status unknown"
                    return self._event(
                        TIMEOUT,
                        message=f"DialNexa batch {self.batch_id!r} had not ended by the deadline ({shown})",
                        last_status=None if last is None else status_.normalise(last.get("status")),
                        progress=None if last is None else progress(last),
                    )
                delay = min(delay, remaining)
            await asyncio.sleep(max(0.0, delay))
            if self.end_time is not None and time.time() >= self.end_time:
                continue
            try:
                record = await before_deadline(self.end_time, fetch())
                raw = record.get("status")
                if not isinstance(raw, str) or not raw:
                    raise DialNexaMalformedResponseError(
                        f"DialNexa batch {self.batch_id!r}: the record has no 'status'"
                    )
            except DeadlinePassed:
                continue
            except DialNexaError as exc:
                failures += 1
                if exc.kind not in TRANSIENT_KINDS or failures > self.max_consecutive_failures:
                    message = (
                        str(exc) if repr(self.batch_id) in str(exc) else f"DialNexa batch {self.batch_id!r}: {exc}"
                    )
                    if exc.kind in TRANSIENT_KINDS:
                        message += f" (gave up after {failures} consecutive failed polls)"
                    return self._event(ERROR, kind=exc.kind, message=message)
                self.log.warning(
                    "Poll %d of DialNexa batch %r failed (%s); polling again", polls + 1, self.batch_id, exc
                )
                delay = self._policy.interval(polls)
                continue
            failures, polls, last = 0, polls + 1, record
            status = status_.normalise(raw)
            phase = status_.batch_phase(status)
            delay = self._policy.interval(polls)
            self.log.info(
                "DialNexa batch %r %s (poll %d, next in %.0f s)", self.batch_id, progress_line(record), polls, delay
            )
            if phase is status_.BatchPhase.TERMINAL or status in self.stop_statuses:
                return self._event(SUCCESS, status=status, raw_status=raw, progress=progress(record))
            if phase is status_.BatchPhase.PAUSED:
                self.log.warning(
                    "DialNexa batch %r is paused: it dials nobody until resumed; still waiting (until the deadline)",
                    self.batch_id,
                )
            elif phase is status_.BatchPhase.UNKNOWN and status not in warned:
                warned.add(status)
                self.log.warning(
                    "DialNexa batch %r has undocumented status %r; treating it as not ended", self.batch_id, raw
                )


def validate_batch_event(event: Any, batch_id: str | None = None) -> dict[str, Any]:
    """Check a resumed task's batch trigger event; fail loudly on anything this trigger never yields."""
    if not isinstance(event, dict) or event.get("event") not in EVENT_NAMES or "batch_id" not in event:
        raise DialNexaError(
            f"DialNexa batch {batch_id!r}: the task resumed with an unexpected trigger event {event!r:.200}; "
            "clear the task to wait again"
        )
    if batch_id is not None and event["batch_id"] != batch_id:
        raise DialNexaError(
            f"DialNexa batch {batch_id!r}: the trigger event is about batch {event['batch_id']!r}; "
            "clear the task to wait again"
        )
    if event["event"] == SUCCESS and not event.get("status"):
        raise DialNexaError(f"DialNexa batch {batch_id!r}: success event without a status: {event!r:.200}")
    return event
