"""The simulator's key-wide rate limit: one budget for every client of the API key, as DialNexa enforces it.

``fixed``: a window of ``window_s`` opens with the first request after the previous one closed and
admits ``limit`` requests (NestJS's throttler, which DialNexa's 429 body names, works this way; a live
probe saw ``limit 150, remaining 149, reset 60``). ``sliding``: at most ``limit`` requests in any
``window_s``. Refused requests are not counted. Not thread-safe on its own: ``SimState`` holds its lock.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Literal, NamedTuple

WindowKind = Literal["fixed", "sliding"]
ResetStyle = Literal["epoch", "seconds"]


class RateState(NamedTuple):
    """The key's window after a request: ``reset_in`` is seconds until it (or its oldest request) expires."""

    limit: int
    remaining: int
    reset_in: float


class KeyLimiter:
    """Counts one key's requests in a fixed or sliding window and refuses those beyond ``limit``."""

    def __init__(self, limit: int, window_s: float = 60.0, kind: WindowKind = "fixed") -> None:
        if limit < 1 or window_s <= 0 or kind not in ("fixed", "sliding"):
            raise ValueError("key limit needs limit >= 1, window_s > 0 and kind 'fixed' or 'sliding'")
        self.limit, self.window_s, self.kind = limit, window_s, kind
        self._start = -math.inf  # fixed: when the current window opened
        self._count = 0
        self._times: deque[float] = deque()  # sliding: admitted requests within the window

    def state(self, now: float) -> RateState:
        if self.kind == "fixed":
            if now >= self._start + self.window_s:
                return RateState(self.limit, self.limit, self.window_s)
            return RateState(self.limit, self.limit - self._count, self._start + self.window_s - now)
        while self._times and self._times[0] <= now - self.window_s:
            self._times.popleft()
        reset_in = self._times[0] + self.window_s - now if self._times else self.window_s
        return RateState(self.limit, self.limit - len(self._times), reset_in)

    def admit(self, now: float) -> RateState | None:
        """Count one request; None if admitted, else the state to answer the 429 with."""
        state = self.state(now)
        if state.remaining <= 0:
            return state
        if self.kind == "fixed":
            if now >= self._start + self.window_s:
                self._start, self._count = now, 0
            self._count += 1
        else:
            self._times.append(now)
        return None


def header_values(state: RateState, now: float, style: ResetStyle) -> list[tuple[bytes, bytes]]:
    """``X-RateLimit-*`` headers; ``Reset`` as whole seconds remaining or as a Unix timestamp (rounded up)."""
    reset = math.ceil(state.reset_in) if style == "seconds" else math.ceil(now + state.reset_in)
    return [
        (b"x-ratelimit-limit", str(state.limit).encode()),
        (b"x-ratelimit-remaining", str(max(0, state.remaining)).encode()),
        (b"x-ratelimit-reset", str(reset).encode()),
    ]
