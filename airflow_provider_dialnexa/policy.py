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
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

from tenacity import RetryCallState, retry_if_exception, stop_after_attempt

from airflow_provider_dialnexa.exceptions import DialNexaError
from airflow_provider_dialnexa.records import mask_numbers

#: DialNexa: "never poll more often than once per second" (per call). Enforced, not configurable.
MIN_POLL_INTERVAL = 1.0
DEFAULT_POLL_INTERVAL = 10.0
DEFAULT_MAX_POLL_INTERVAL = 60.0
DEFAULT_MAX_RETRIES = 5
DEFAULT_TIMEOUT = 30.0
CONNECT_TIMEOUT = 10.0
#: Conservative default: a public probe saw a 150 requests / 60 s window per key.
DEFAULT_RATE_PER_MINUTE = 120.0
#: Seconds a resolved connection is trusted (an event loop reads it again after this), and how long a
#: connection's ``rate_limit_per_minute`` keeps holding down its key's budget after its last request.
CONNECTION_TTL = 60.0


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
                mask_numbers(str(exc or f"{what} failed")),  # DialNexa's messages echo phone numbers
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


@dataclass(frozen=True)
class RateHeaders:
    """What one response said about the key's rate window (``X-RateLimit-*``); None = absent or nonsense."""

    limit: int | None = None
    remaining: int | None = None
    #: Seconds until the window resets, whichever reading of ``X-RateLimit-Reset`` the server used.
    reset_in: float | None = None


#: A ``Reset`` at or above this is a Unix timestamp (docs); below, seconds remaining (seen live: ``60``).
_EPOCH_THRESHOLD = 1_000_000_000.0
#: Longest window a ``Reset`` may describe; anything longer is treated as nonsense, not obeyed.
MAX_RESET_SECONDS = 3600.0
#: An epoch ``Reset`` up to this far in the past is clock skew (window already over), not nonsense.
_RESET_SKEW = 5.0


def _header_number(headers: Mapping[str, str], name: str) -> float | None:
    value = headers.get(name)
    if not value:
        return None
    first = str(value).split(",")[0].split(";")[0].strip()  # "150, 150;w=60" (IETF draft style): the first
    try:
        number = float(first)
    except ValueError:
        return None
    return number if math.isfinite(number) and number >= 0 else None


def parse_rate_headers(headers: Mapping[str, str], now: float | None = None) -> RateHeaders:
    """Read ``X-RateLimit-Limit/Remaining/Reset``; values that make no sense come back as None.

    ``Reset`` is accepted as seconds remaining (what a live probe saw) or as a Unix timestamp (what the
    docs say); a number too large for a window and too small for a timestamp, or a timestamp long past,
    is ignored. ``Remaining`` above ``Limit`` is ignored.
    """
    limit = _header_number(headers, "x-ratelimit-limit")
    remaining = _header_number(headers, "x-ratelimit-remaining")
    reset = _header_number(headers, "x-ratelimit-reset")
    if limit is not None and (limit < 1 or limit != int(limit)):
        limit = None
    if remaining is not None and (remaining != int(remaining) or (limit is not None and remaining > limit)):
        remaining = None
    reset_in: float | None = None
    if reset is not None:
        if reset >= _EPOCH_THRESHOLD:
            reset = reset - (time.time() if now is None else now)
            reset = max(0.0, reset) if reset >= -_RESET_SKEW else math.nan  # long past: nonsense
        if 0 <= reset <= MAX_RESET_SECONDS:
            reset_in = reset
    return RateHeaders(
        int(limit) if limit is not None else None, int(remaining) if remaining is not None else None, reset_in
    )


class RateBudget:
    """The pacing of every request one process sends with one API key (one budget, one pause per key).

    A token bucket whose rate adapts: it starts at ``per_minute`` (the user's upper bound) and

    * with ``X-RateLimit-*`` headers, spends about this process's share of ``Remaining`` evenly until
      ``Reset`` (the share is estimated from how much of the key's use was ours), so several processes
      on one key finish the window together instead of overrunning it; a process whose part is spent
      holds until ``Reset``, then probes the new window with one request before sending more;
    * without them, adapts the way TCP shares a link: additive increase while requests succeed,
      multiplicative decrease on each 429, so several processes converge on the key's limit.

    ``reserve()`` hands out send times rather than blocking, so the same object serves threads (sleep)
    and event loops (``asyncio.sleep``) without a lock held across a wait; callers loop over
    ``delays()``, which re-queues a request whose slot was cancelled by a pause while it slept. A 429
    ``pause()``s the whole key: every waiter holds off for ``Retry-After``, then they resume at the
    rate, one after another (the bucket is emptied), never in a burst.
    """

    #: Multiplicative decrease on a 429 (as TCP CUBIC: keeps more of the rate than halving).
    DECREASE = 0.7
    #: Additive increase while requests succeed: this fraction of the upper bound per minute.
    INCREASE_PER_MINUTE = 0.05
    #: Lowest adaptive rate, requests per minute.
    MIN_PER_MINUTE = 1.0
    #: Each process spends share**SHARE_EXPONENT of what is left: > its share, so unequal shares drift together.
    SHARE_EXPONENT = 0.5
    #: Safety margin after a window's ``Reset`` before sending again (``Reset`` is in whole seconds).
    RESET_MARGIN = 0.5
    #: Requests per second while a new window is unknown (after a hold or a Reset): one, then its answer.
    PROBE_RATE = 1.0

    def __init__(self, per_minute: float, burst: float | None = None) -> None:
        self.cap = per_minute / 60.0
        self.rate = self.cap  # the adaptive (AIMD) rate, <= cap
        self.burst = burst
        self.capacity = burst if burst is not None else max(1.0, min(20.0, per_minute / 6.0))
        self.generation = 0  # bumped whenever slots already handed out are cancelled (pause, pace, new window)
        self._tokens = self.capacity
        self._stamp = time.monotonic()
        self._paused_until = 0.0
        self._booked_rate = self.cap
        self._last_ok: float | None = None
        # Header state: the key's window as last reported, and when this process's responses came back.
        self._remaining: int | None = None
        self._reset_at = 0.0
        self._window = 0.0
        self._share = 1.0  # until measured: as if this process were alone on the key
        self._watching_since: float | None = None
        self._mine: deque[float] = deque()
        self._probing = False  # a window ended: send one request to learn the next before any burst
        # Who asked for which upper bound, and when last (``bound_by``): the lowest recent one is ``cap``.
        self._bounds: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    @property
    def per_minute(self) -> float:
        """The user's upper bound (requests per minute)."""
        return self.cap * 60.0

    def limit_to(self, per_minute: float) -> None:
        """Lower the upper bound (another connection with the same key asked for less); never raises it."""
        with self._lock:
            if 0 < per_minute / 60.0 < self.cap:
                self._set_cap(per_minute, time.monotonic())

    def bound_by(self, source: str, per_minute: float) -> None:
        """``source`` (a connection id) sends with at most ``per_minute`` now: raise or lower the bound to match.

        The bound is the lowest value among the sources seen within ``CONNECTION_TTL``; a source's latest value
        replaces its earlier one at once, so a connection whose ``rate_limit_per_minute`` was raised paces by
        the new value from its next request, unless another connection on the key asked for less meanwhile.
        """
        if per_minute <= 0:
            return
        with self._lock:
            now = time.monotonic()
            self._bounds[source] = (per_minute, now)
            if len(self._bounds) > 1:
                for other, (_, seen) in list(self._bounds.items()):
                    if now - seen >= CONNECTION_TTL:
                        del self._bounds[other]
            self._set_cap(min(value for value, _ in self._bounds.values()), now)

    def _set_cap(self, per_minute: float, now: float) -> None:
        cap = per_minute / 60.0
        if cap == self.cap:
            return
        if cap > self.cap:  # raised: keep whatever a 429 took off the adaptive rate, move the bound
            self.rate = min(cap, self.rate + cap - self.cap)
        else:
            self.rate = min(self.rate, cap)
        lowered = cap < self.cap
        self.cap = cap
        if self.burst is None:
            self.capacity = max(1.0, min(20.0, per_minute / 6.0))
        if lowered and self._tokens < 0:
            self._rebook(now)  # slots handed out at the faster pace would overrun the new bound: queue again

    def pace(self, now: float | None = None) -> float:
        """Requests per second this process may send now (adaptive rate, headers' pace)."""
        with self._lock:
            return self._pace(time.monotonic() if now is None else now)

    def _pace(self, now: float) -> float:
        return self._pace_and_ceiling(now)[0]

    def _pace_and_ceiling(self, now: float) -> tuple[float, float]:
        """Requests per second now, and how many may go at once (one at a time while headers pace us)."""
        rate = self.rate
        if self._probing:
            return min(rate, self.PROBE_RATE), 1.0
        if self._remaining is not None and now < self._reset_at:
            until_reset = max(self._reset_at - now, 1e-3)
            # Our share of what is left, spread until the reset. sqrt(share) > share: a little more than our
            # share now (the sum over processes is > 1, so Remaining shrinks faster and everyone slows down)
            # pulls unequal shares together window after window; ``observe`` holds us until the reset once
            # sqrt(share) * Remaining < 1, so the window's last slots are not raced for.
            paced = self._share**self.SHARE_EXPONENT * self._remaining / until_reset
            if paced < rate:  # a burst now would spend what the rest of the window needs
                return max(paced, 1e-6), 1.0
        ceiling = self.capacity if self.burst is not None else max(1.0, min(self.capacity, rate * 10))
        return max(rate, 1e-6), ceiling

    def reserve(self) -> float:
        """Take one slot; return how many seconds the caller must wait before sending."""
        with self._lock:
            now = time.monotonic()
            rate, ceiling = self._pace_and_ceiling(now)
            self._booked_rate = rate
            if now > self._stamp:
                self._tokens += (now - self._stamp) * rate
                self._stamp = now
            self._tokens = min(ceiling, self._tokens)
            self._tokens -= 1.0
            wait = self._stamp - now  # > 0 only while paused: slots start when the pause ends
            if self._tokens < 0:
                wait += -self._tokens / rate
            return max(wait, self._paused_until - now, 0.0)

    def delays(self) -> Iterator[float]:
        """Seconds to sleep, one after another, before a request may go; empty when it may go now.

        After each sleep the slot is checked again: if a pause (or a tighter pace) cancelled the slots
        handed out meanwhile, the request queues again behind it instead of going out during the pause.
        """
        while True:
            generation = self.generation
            delay = self.reserve()
            while delay > 0:
                # Sleep no further than the window's Reset: a slot paced by that window is void after it.
                chunk = min(delay, self._until_reset())
                yield chunk
                delay -= chunk
                self._expire_window()
                if self.generation != generation:
                    break  # cancelled meanwhile (pause, tighter pace, new window): queue again
            else:
                return

    def _until_reset(self) -> float:
        with self._lock:
            if self._remaining is None:
                return math.inf
            return max(self._reset_at - time.monotonic(), 1e-3)

    def _expire_window(self) -> None:
        """Once the window the headers described has reset, forget its pace and re-queue its slots."""
        with self._lock:
            now = time.monotonic()
            if self._remaining is not None and now >= self._reset_at:
                self._remaining = None
                self._probing = True
                self._rebook(now)

    def pause(self, seconds: float, *, slow_down: bool = True) -> None:
        """Hold every request on this key for ``seconds`` (after a 429: also lower the adaptive rate).

        Slots already handed out are cancelled (their holders queue again) and the bucket is emptied,
        so requests resume one after another at the rate when the pause ends.
        """
        with self._lock:
            now = time.monotonic()
            # One decrease per congestion event, not per 429; with rate headers, they pace us instead.
            if slow_down and now >= self._paused_until and self._watching_since is None:
                self.rate = max(min(self.cap, self.MIN_PER_MINUTE / 60.0), self.rate * self.DECREASE)
            if self._watching_since is not None:  # the window the headers described is spent: learn the next
                self._remaining, self._probing = None, True
            until = now + max(0.0, seconds)
            if until > self._paused_until:
                self._paused_until = until
                self._rebook(until)
            self._last_ok = None

    def _rebook(self, start: float) -> None:
        self.generation += 1
        self._tokens = 0.0
        self._stamp = max(start, self._stamp)

    def observe(self, headers: Mapping[str, str]) -> None:
        """Learn from one response (not a 429: ``pause`` handles those): headers' window, or AIMD increase."""
        rate = parse_rate_headers(headers)
        with self._lock:
            now = time.monotonic()
            if self._last_ok is not None:  # additive increase, only while requests flow
                step = min(now - self._last_ok, 5.0) * self.cap * self.INCREASE_PER_MINUTE / 60.0
                self.rate = min(self.cap, self.rate + step)
            self._last_ok = now
            if self._probing:  # the answer we waited for: slots handed out meanwhile queue again with it
                self._probing = False
                self._rebook(now)
            if rate.remaining is None or rate.reset_in is None:
                self._remaining = self._watching_since = None
                self._mine.clear()
                return
            if self._watching_since is None:
                self._watching_since = now
            self._mine.append(now)
            # The window's length is the longest Reset seen; trusted once we have watched that long.
            self._window = min(MAX_RESET_SECONDS, max(self._window, rate.reset_in, 1.0))
            began = now - max(0.0, self._window - rate.reset_in)  # when the current window began
            while self._mine and (self._mine[0] < now - self._window or len(self._mine) > 10_000):
                self._mine.popleft()
            if rate.limit is None:
                self._share = 1.0
            elif now - self._watching_since >= self._window and self._watching_since <= began:
                # Our share of the key: our answers in this window against the key's use (everyone's).
                used = rate.limit - rate.remaining
                mine = sum(1 for t in self._mine if t >= began)
                if used >= 10 and mine:
                    self._share = min(1.0, max(0.02, mine / used))
            self._remaining = rate.remaining
            self._reset_at = now + rate.reset_in
            if self._share**self.SHARE_EXPONENT * rate.remaining < 1:
                # Our part of the window is spent: hold until it resets, then start again at the rate.
                until = self._reset_at + self.RESET_MARGIN * random.uniform(1.0, 3.0)  # not all at once
                if until > self._paused_until:
                    self._paused_until = until
                    self._rebook(until)
                self._remaining, self._probing = None, True  # the next window's numbers come with its first answer
                return
            if self._tokens < 0 and self._pace(now) < 0.8 * self._booked_rate:
                self._rebook(now)  # slots handed out at the old pace would overrun the window: re-queue


_budgets: dict[str, RateBudget] = {}
_budgets_lock = threading.Lock()


def budget_for(api_key: str, per_minute: float, conn_id: str | None = None) -> RateBudget | None:
    """The process-wide budget of one API key (keyed by a digest, never the key); None = unlimited.

    One key, one budget: connections that share a key share its pacing and its pauses, whatever rate
    each asks for. The budget's upper bound is the lowest ``rate_limit_per_minute`` among the connections
    that used the key within ``CONNECTION_TTL``; a connection's current value replaces its earlier one at
    once, raised or lowered (``RateBudget.bound_by``). Without ``conn_id`` each value counts as its own source.
    """
    if per_minute <= 0:
        return None
    key = hashlib.sha256(api_key.encode()).hexdigest()
    with _budgets_lock:
        budget = _budgets.get(key)
        if budget is None:
            budget = _budgets[key] = RateBudget(per_minute)
    budget.bound_by(conn_id if conn_id is not None else f"{per_minute:g} per minute", per_minute)
    return budget
