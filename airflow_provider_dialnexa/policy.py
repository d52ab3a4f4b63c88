"""The one place for timing policy: request retries, trigger polling, and the per-key rate budget.

The sync hook (``requests``) and the async hook (``httpx``) build their tenacity loops from the same
``RetryPolicy``; triggers space their polls with ``PollPolicy``; every request a process sends with an
API key first takes a token from that key's ``RateBudget``.
"""

from __future__ import annotations

import hashlib
import math
import random
import threading
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

from tenacity import RetryCallState, retry_if_exception, stop_after_attempt

from airflow_provider_dialnexa.exceptions import DialNexaError

#: DialNexa: "never poll more often than once per second" (per call). Enforced, not configurable.
MIN_POLL_INTERVAL = 1.0
DEFAULT_POLL_INTERVAL = 10.0
DEFAULT_MAX_POLL_INTERVAL = 60.0
DEFAULT_MAX_RETRIES = 5
DEFAULT_TIMEOUT = 30.0
CONNECT_TIMEOUT = 10.0
#: Conservative default: a public probe saw a 150 requests / 60 s window per key.
DEFAULT_RATE_PER_MINUTE = 120.0


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date); None if absent/invalid."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):  # "inf"/"nan"/"1e400" would park a task (or the whole key's budget) forever
        return None
    return max(0.0, seconds)


@dataclass(frozen=True)
class RetryPolicy:
    """How one request is retried: connection errors, timeouts, 429 and 5xx; nothing else.

    Waits grow exponentially from ``backoff_base`` with full jitter (so thousands of clients do not
    retry in lockstep), capped at ``backoff_max``. A ``Retry-After`` from DialNexa wins, bounded by
    ``retry_after_max`` so a bogus header cannot park a task for hours.
    """

    max_retries: int = DEFAULT_MAX_RETRIES
    backoff_base: float = 1.0
    backoff_max: float = 30.0
    retry_after_max: float = 120.0
    #: Floor of every wait: DialNexa asks clients not to hit a call more than once per second.
    min_wait: float = MIN_POLL_INTERVAL

    @property
    def attempts(self) -> int:
        return self.max_retries + 1

    def wait(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to sleep after failed attempt number ``attempt`` (1-based)."""
        if retry_after is not None:
            return max(self.min_wait, min(retry_after, self.retry_after_max))
        ceiling = min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1))
        return max(self.min_wait, random.uniform(ceiling / 2, ceiling))

    def tenacity_kwargs(self, log: Any, what: str) -> dict[str, Any]:
        """Arguments for ``tenacity.Retrying`` *and* ``AsyncRetrying``: one policy, two loops."""

        def _wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            return self.wait(state.attempt_number, getattr(exc, "retry_after", None))

        def _before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            wait = state.next_action.sleep if state.next_action else 0.0
            log.warning(
                "%s (retry %d of %d in %.2f s)",
                exc or f"{what} failed",
                state.attempt_number,
                self.max_retries,
                wait,
            )

        return {
            "retry": retry_if_exception(lambda exc: isinstance(exc, DialNexaError) and exc.retryable),
            "stop": stop_after_attempt(self.attempts),
            "wait": _wait,
            "before_sleep": _before_sleep,
            "reraise": True,
        }


@dataclass(frozen=True)
class PollPolicy:
    """How a waiting trigger spaces its polls of one call (DialNexa: every 5-10 s, growing, >= 1 s).

    Interval ``n`` (0-based) is ``poll_interval * growth**n`` capped at ``max_poll_interval``, with
    up to ``jitter`` (a fraction) shorter so thousands of waits spread out without ever polling later than
    the nominal interval, and never under ``MIN_POLL_INTERVAL``.
    """

    poll_interval: float = DEFAULT_POLL_INTERVAL
    max_poll_interval: float = DEFAULT_MAX_POLL_INTERVAL
    growth: float = 1.5
    jitter: float = 0.1

    def __post_init__(self) -> None:
        if self.poll_interval < MIN_POLL_INTERVAL:
            raise ValueError(
                f"poll_interval must be >= {MIN_POLL_INTERVAL} s (DialNexa asks clients not to poll a "
                f"call more than once per second), got {self.poll_interval}"
            )
        if self.max_poll_interval < self.poll_interval:
            raise ValueError(
                f"max_poll_interval ({self.max_poll_interval}) must be >= poll_interval ({self.poll_interval})"
            )
        if self.growth < 1:
            raise ValueError(f"poll growth must be >= 1, got {self.growth}")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"poll jitter must be in [0, 1), got {self.jitter}")

    def interval(self, n: int) -> float:
        """Seconds to wait before poll number ``n + 1``."""
        base = min(self.max_poll_interval, self.poll_interval * self.growth ** min(n, 64))
        jittered = base * random.uniform(1 - self.jitter, 1)
        return max(MIN_POLL_INTERVAL, jittered)


class RateBudget:
    """A token bucket shared by every request one process sends with one API key.

    ``reserve()`` hands out send times rather than blocking, so the same object serves threads (sleep)
    and event loops (``asyncio.sleep``) without a lock held across a wait. A 429 ``pause()``s the whole
    key: every waiter behind it holds off for ``Retry-After`` instead of being refused one by one.
    """

    def __init__(self, per_minute: float, burst: float | None = None) -> None:
        self.rate = per_minute / 60.0
        self.capacity = burst if burst is not None else max(1.0, min(20.0, per_minute / 6.0))
        self._tokens = self.capacity
        self._stamp = time.monotonic()
        self._paused_until = 0.0
        self._lock = threading.Lock()

    def reserve(self) -> float:
        """Take one token; return how many seconds the caller must wait before sending."""
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            self._tokens -= 1.0
            delay = 0.0 if self._tokens >= 0 else -self._tokens / self.rate
            return max(delay, self._paused_until - now)

    def pause(self, seconds: float) -> None:
        """Hold every request on this key for ``seconds`` (after a 429)."""
        with self._lock:
            self._paused_until = max(self._paused_until, time.monotonic() + seconds)


_budgets: dict[tuple[str, float], RateBudget] = {}
_budgets_lock = threading.Lock()


def budget_for(api_key: str, per_minute: float) -> RateBudget | None:
    """The process-wide budget of one API key (keyed by a digest, never the key); None = unlimited."""
    if per_minute <= 0:
        return None
    key = (hashlib.sha256(api_key.encode()).hexdigest(), per_minute)
    with _budgets_lock:
        budget = _budgets.get(key)
        if budget is None:
            budget = _budgets[key] = RateBudget(per_minute)
        return budget
