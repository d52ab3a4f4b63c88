"""The poll loop both DialNexa triggers share: wait, read once, decide; deadline, failures and backoff in one place.

``DialNexaCallTrigger`` (one call) and ``DialNexaWindowTrigger`` (a creation window) differ only in what one
read is and when it means "done"; how long to wait between reads, what a deadline passing mid-read means and
how many transient failures a wait survives are the same, so they live here once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from airflow.triggers.base import TriggerEvent

from airflow_provider_dialnexa.exceptions import TRANSIENT_KINDS, DialNexaError
from airflow_provider_dialnexa.policy import PollPolicy

#: Event names a trigger yields (exactly one per run).
SUCCESS, ERROR, TIMEOUT = "success", "error", "timeout"
EVENT_NAMES = frozenset({SUCCESS, ERROR, TIMEOUT})
DEFAULT_MAX_CONSECUTIVE_FAILURES = 10
_T = TypeVar("_T")


class DeadlinePassed(Exception):
    """A wait's wall-clock ``end_time`` passed while one of its reads was still in flight."""


async def before_deadline(end_time: float | None, work: Awaitable[_T]) -> _T:
    """Await ``work``, or raise ``DeadlinePassed`` once the wall-clock ``end_time`` passes (None: no bound).

    A wait's deadline must hold even when DialNexa is slow to answer (or the hook is retrying): the read is
    cancelled and the caller reports the timeout, instead of learning of it only after the read returns.
    """
    if end_time is None:
        return await work
    deadline = asyncio.timeout(max(0.0, end_time - time.time()))
    try:
        async with deadline:
            return await work
    except TimeoutError:
        if deadline.expired():
            raise DeadlinePassed from None
        raise


def no_lead() -> float:
    """Ask exactly on schedule (reads that are not held in a batch window)."""
    return 0.0


def gave_up(exc: DialNexaError, failures: int) -> str:
    """What an error event adds after a transient failure that ended the wait (nothing for a final one)."""
    return f" (gave up after {failures} consecutive failed polls)" if exc.kind in TRANSIENT_KINDS else ""


@dataclass(frozen=True)
class PollLoop(Generic[_T]):
    """One wait's schedule: sleep, ``read`` once, let ``done`` decide; until an event, the deadline or an error.

    * ``read()`` returns what one poll saw (a record, a count, ...) or raises a ``DialNexaError``; it runs
      under the deadline, so a read still in flight when ``end_time`` passes ends the wait with ``on_timeout``.
    * ``done(seen, polls)`` returns the event that ends the wait, or None to poll again (``polls`` counts the
      successful polls so far, this one included).
    * Transient failures (``TRANSIENT_KINDS``) are survived up to ``max_consecutive_failures`` in a row, each
      followed by the next interval; any other failure, or one too many, ends the wait with ``on_error``.

    The first wait is ``first_delay``; after poll ``n`` comes interval ``n - 1 + skip`` of ``policy`` (``skip``
    is 1 when the first wait already was interval 0), after a failed poll interval ``n``. ``lead()`` seconds
    are taken off each wait (a batch poller holds a read up to its window: asking that much earlier keeps
    the read on schedule).
    """

    policy: PollPolicy
    end_time: float | None
    max_consecutive_failures: int
    first_delay: float
    skip: int
    #: What is polled, for log lines (``DialNexa call 'call_x'``).
    subject: str
    log: Any
    lead: Callable[[], float] = no_lead

    async def run(
        self,
        read: Callable[[], Awaitable[_T]],
        done: Callable[[_T, int], TriggerEvent | None],
        on_timeout: Callable[[], TriggerEvent],
        on_error: Callable[[DialNexaError, int], TriggerEvent],
    ) -> TriggerEvent:
        """Poll until ``done`` gives an event (or ``on_timeout``/``on_error`` does); return that event."""
        polls = failures = 0
        delay = self.first_delay
        while True:
            if self.end_time is not None:
                remaining = self.end_time - time.time()
                if remaining <= 0:
                    return on_timeout()
                delay = min(delay, remaining)
            await asyncio.sleep(max(0.0, delay - self.lead()))
            if self.end_time is not None and time.time() >= self.end_time:
                continue  # report the timeout without a poll the deadline did not leave room for
            try:
                seen = await before_deadline(self.end_time, read())
            except DeadlinePassed:
                continue  # the deadline passed during the read: report the timeout
            except DialNexaError as exc:
                failures += 1
                if exc.kind not in TRANSIENT_KINDS or failures > self.max_consecutive_failures:
                    return on_error(exc, failures)
                self.log.warning("Poll %d of %s failed (%s); polling again", polls + 1, self.subject, exc)
                delay = self.policy.interval(polls)
                continue
            failures = 0
            polls += 1
            event = done(seen, polls)
            if event is not None:
                return event
            delay = self.policy.interval(polls - 1 + self.skip)
