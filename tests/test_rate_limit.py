"""The per-key rate budget (issue #11), pure: header parsing and pacing decisions with an injected clock.

Nothing here sleeps or measures time: ``policy.time`` is replaced by a fake clock that the tests move.
The last tests drive several budgets (several "processes" on one key) against the simulator's own
key-wide limiter, event by event on that fake clock, to check that they converge on the key's limit.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest
from conftest import FakeClock

from airflow_provider_dialnexa import policy
from airflow_provider_dialnexa.policy import RateBudget, RateHeaders, budget_for, parse_rate_headers
from airflow_provider_dialnexa.simulator.ratelimit import KeyLimiter, header_values


def rate_headers(limit: object = None, remaining: object = None, reset: object = None) -> httpx.Headers:
    """Response headers as a client sees them (case-insensitive), only those given."""
    values = {"X-RateLimit-Limit": limit, "X-RateLimit-Remaining": remaining, "X-RateLimit-Reset": reset}
    return httpx.Headers({name: str(value) for name, value in values.items() if value is not None})


# -- parsing ---------------------------------------------------------------------------------------------------


def test_reset_as_seconds_remaining_as_seen_live() -> None:
    assert parse_rate_headers(rate_headers(150, 149, 60)) == RateHeaders(150, 149, 60.0)


def test_reset_as_unix_timestamp_as_documented() -> None:
    now = 1_790_000_000.0
    assert parse_rate_headers(rate_headers(150, 20, int(now) + 42), now=now) == RateHeaders(150, 20, 42.0)


def test_reset_timestamp_uses_the_wall_clock(clock: FakeClock) -> None:
    assert parse_rate_headers(rate_headers(150, 20, int(clock.now) + 7)).reset_in == pytest.approx(7.0)


def test_reset_timestamp_just_past_is_clock_skew_far_past_is_nonsense() -> None:
    now = 1_790_000_000.0
    assert parse_rate_headers(rate_headers(150, 0, int(now) - 3), now=now).reset_in == 0.0
    assert parse_rate_headers(rate_headers(150, 0, int(now) - 3600), now=now).reset_in is None


def test_missing_headers() -> None:
    assert parse_rate_headers(httpx.Headers()) == RateHeaders(None, None, None)
    assert parse_rate_headers(rate_headers(remaining=5)) == RateHeaders(None, 5, None)


@pytest.mark.parametrize(
    ("limit", "remaining", "reset", "expected"),
    [
        ("abc", "x", "soon", RateHeaders(None, None, None)),
        ("-1", "-5", "-60", RateHeaders(None, None, None)),
        ("nan", "inf", "1e400", RateHeaders(None, None, None)),
        ("0", "1.5", "", RateHeaders(None, None, None)),
        ("150", "151", "60", RateHeaders(150, None, 60.0)),  # more left than the limit: ignore Remaining
        ("150", "10", "86400", RateHeaders(150, 10, None)),  # neither a window length nor a timestamp
        ("150", "10", "999999999", RateHeaders(150, 10, None)),
        ("150, 150;w=60", "10;w=60", "30", RateHeaders(150, 10, 30.0)),  # IETF-draft lists: the first value
    ],
)
def test_nonsense_values_are_ignored(limit: str, remaining: str, reset: str, expected: RateHeaders) -> None:
    assert parse_rate_headers(rate_headers(limit, remaining, reset), now=1_790_000_000.0) == expected


def test_requests_style_headers_are_read_case_insensitively() -> None:
    from requests.structures import CaseInsensitiveDict

    headers = CaseInsensitiveDict({"x-ratelimit-limit": "150", "X-RATELIMIT-REMAINING": "3", "X-RateLimit-Reset": "9"})
    assert parse_rate_headers(headers) == RateHeaders(150, 3, 9.0)


# -- pacing decisions ------------------------------------------------------------------------------------------


def test_without_headers_the_configured_rate_and_burst_apply(clock: FakeClock) -> None:
    budget = RateBudget(per_minute=120)
    budget.observe(httpx.Headers())
    delays = [budget.reserve() for _ in range(22)]
    assert delays[:20] == [0.0] * 20
    assert delays[20:] == pytest.approx([0.5, 1.0])


def test_plenty_remaining_does_not_slow_us_down(clock: FakeClock) -> None:
    budget = RateBudget(per_minute=120)
    budget.observe(rate_headers(150, 140, 50))
    assert budget.pace() == pytest.approx(2.0)
    assert [budget.reserve() for _ in range(20)] == [0.0] * 20


def test_low_remaining_is_spread_evenly_until_reset(clock: FakeClock) -> None:
    budget = RateBudget(per_minute=120)
    budget.observe(rate_headers(150, 10, 20))  # 10 left for 20 s: one every 2 s, no burst
    assert budget.pace() == pytest.approx(0.5)
    assert [budget.reserve() for _ in range(4)] == pytest.approx([0.0, 2.0, 4.0, 6.0])


def test_both_reset_readings_pace_alike(clock: FakeClock) -> None:
    seconds, epoch = RateBudget(per_minute=120), RateBudget(per_minute=120)
    seconds.observe(rate_headers(150, 10, 20))
    epoch.observe(rate_headers(150, 10, int(clock.now) + 20))
    assert seconds.pace() == pytest.approx(epoch.pace()) == pytest.approx(0.5)


def test_nothing_left_holds_every_request_until_reset(clock: FakeClock) -> None:
    budget = RateBudget(per_minute=120)
    budget.observe(rate_headers(150, 0, 12))
    first, second = budget.reserve(), budget.reserve()
    assert 12.0 < first < second, "held past the reset, then one after another"


def test_nonsense_headers_change_nothing(clock: FakeClock) -> None:
    budget = RateBudget(per_minute=120)
    budget.observe(rate_headers(150, 0, 99_999))  # a Reset that is neither seconds nor a timestamp
    assert budget.reserve() == 0.0
    assert budget.pace() == pytest.approx(2.0)


def test_the_share_of_other_processes_is_left_to_them(clock: FakeClock) -> None:
    """Remaining falls by 4 per answer of ours: we are a quarter of the key's use, so we spend a quarter."""
    budget = RateBudget(per_minute=120)
    for k in range(60):  # a whole window watched first: that is how long a window is
        budget.observe(rate_headers(150, 100, 60 - k))
        clock.now += 1.0
    for k in range(13):
        budget.observe(rate_headers(150, 149 - 4 * k, 60 - k))
        clock.now += 1.0
    clock.now -= 1.0
    remaining, until_reset = 149 - 4 * 12, 60 - 12
    share = 13 / (150 - remaining)
    # sqrt(share): a little more than our part now, so unequal shares drift together (see RateBudget)
    assert budget.pace() == pytest.approx(math.sqrt(share) * remaining / until_reset)
    assert budget.pace() < 0.6 * remaining / until_reset, "far below what a process alone on the key would send"


def test_pause_empties_the_bucket_no_burst_after_it(clock: FakeClock) -> None:
    """Review finding: after ``pause(120)`` on 120/min, 260 of 300 reservations were for the same instant."""
    budget = RateBudget(per_minute=120)
    budget.pause(120, slow_down=False)
    delays = [budget.reserve() for _ in range(300)]
    assert delays[0] >= 120
    gaps = [b - a for a, b in itertools.pairwise(delays)]
    assert min(gaps) == pytest.approx(0.5), "after the pause, one request per 1/rate"


def test_a_pause_re_queues_requests_that_were_already_waiting(clock: FakeClock) -> None:
    """Review finding: requests queued before a 429 were still sent during its pause."""
    budget = RateBudget(per_minute=60, burst=1)
    assert list(budget.delays()) == []  # the one token: goes now
    waiting = budget.delays()
    assert next(waiting) == pytest.approx(1.0)  # next slot in 1 s...
    budget.pause(10)  # ...but a 429 pauses the key meanwhile
    clock.now += 1.0
    again = next(waiting)
    assert again >= 9.0, "woke up inside the pause: must queue again behind it"
    clock.now += again
    assert list(waiting) == []  # this slot stands: send


def test_slots_not_touched_by_a_pause_are_kept(clock: FakeClock) -> None:
    budget = RateBudget(per_minute=60, burst=1)
    list(budget.delays())
    waiting = budget.delays()
    clock.now += next(waiting)
    assert list(waiting) == []


def test_aimd_decreases_once_per_429_event_and_grows_back_to_the_bound(clock: FakeClock) -> None:
    budget = RateBudget(per_minute=120)
    budget.pause(5)
    assert budget.pace() == pytest.approx(2.0 * RateBudget.DECREASE)
    budget.pause(5)  # more 429s of requests already in flight: the same congestion event
    assert budget.pace() == pytest.approx(2.0 * RateBudget.DECREASE)
    clock.now += 6
    budget.pause(5)  # a new event
    assert budget.pace() == pytest.approx(2.0 * RateBudget.DECREASE**2)
    clock.now += 6
    for _ in range(3600):  # an hour of successful answers, one a second
        budget.observe(httpx.Headers())
        clock.now += 1.0
    assert budget.pace() == pytest.approx(2.0), "additive increase up to the configured bound, never beyond"


def test_additive_increase_only_while_requests_flow(clock: FakeClock) -> None:
    budget = RateBudget(per_minute=120)
    budget.pause(1)
    low = budget.pace()
    clock.now += 2
    budget.observe(httpx.Headers())
    clock.now += 3600  # idle for an hour
    budget.observe(httpx.Headers())
    assert budget.pace() < low + 0.01


def test_one_key_one_budget_lowest_bound_wins() -> None:
    first = budget_for("kid:one", 120)
    assert first is not None
    assert budget_for("kid:one", 100) is first, "two connections with one key share one budget and one pause"
    assert first.per_minute == 100
    assert budget_for("kid:one", 300) is first
    assert first.per_minute == 100, "the user's setting is an upper bound: the lowest one holds"
    assert budget_for("kid:two", 100) is not first
    assert budget_for("kid:one", 0) is None
    assert not any("kid:one" in str(key) for key in policy._budgets), "never keyed by the raw key"


def test_threads_never_get_the_same_slot(clock: FakeClock) -> None:
    budget = RateBudget(per_minute=600, burst=1)
    delays: list[float] = []
    lock = threading.Lock()

    def take() -> None:
        mine = [budget.reserve() for _ in range(200)]
        with lock:
            delays.extend(mine)

    threads = [threading.Thread(target=take) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(delays) == pytest.approx([0.1 * k for k in range(1600)])


# -- several processes on one key, event by event on the fake clock ------------------------------------------------


@dataclass(order=True)
class _Event:
    at: float
    seq: int
    process: int = field(compare=False)
    kind: str = field(compare=False)
    waiting: Iterator[float] | None = field(compare=False, default=None)
    answer: tuple[int, float, httpx.Headers] | None = field(compare=False, default=None)


def share_one_key(
    clock: FakeClock,
    *,
    processes: int = 4,
    lanes: int = 2,
    limit: int = 150,
    window: float = 60.0,
    kind: str = "fixed",
    headers: str | None = "seconds",
    minutes: int = 15,
    latency: float = 0.05,
    shares: tuple[float, ...] = (),
) -> tuple[Counter[int], Counter[int], int]:
    """``processes`` budgets (each its own process, ``lanes`` requests in flight) always wanting to send.

    Returns accepted requests per process and 429s per process after the first window, and the number of
    windows after the first. Each answer reaches the budget as ``DialNexaHook._answer`` does.
    """
    random.seed(11)  # the budget jitters the end of a hold
    limiter = KeyLimiter(limit, window, kind)  # type: ignore[arg-type]
    budgets = [RateBudget(per_minute=120) for _ in range(processes)]
    for budget, share in zip(budgets, shares, strict=False):  # as if an earlier window had gone this way
        budget._share = share
    start, end = clock.now, clock.now + minutes * window
    queue: list[_Event] = []
    seq = itertools.count()
    ok: Counter[int] = Counter()
    refused: Counter[int] = Counter()

    def queue_request(process: int) -> None:
        waiting = budgets[process].delays()
        heapq.heappush(queue, _Event(clock.now + next(waiting, 0.0), next(seq), process, "wake", waiting))

    for process in range(processes):
        for _ in range(lanes):
            queue_request(process)
    while queue and clock.now < end:
        event = heapq.heappop(queue)
        clock.now = event.at
        budget = budgets[event.process]
        if event.kind == "wake":
            assert event.waiting is not None
            delay = next(event.waiting, None)
            if delay is not None:  # a pause cancelled the slot: queue again
                heapq.heappush(queue, _Event(clock.now + delay, next(seq), event.process, "wake", event.waiting))
                continue
            refusal = limiter.admit(clock.now)
            state = refusal or limiter.state(clock.now)
            values = httpx.Headers(header_values(state, clock.now, headers) if headers else [])  # type: ignore[arg-type]
            status = 429 if refusal else 200
            if clock.now >= start + window:
                (refused if refusal else ok)[event.process] += 1
            retry_after = float(max(1, -(-state.reset_in // 1))) if refusal else 0.0
            answer = (status, retry_after, values)
            heapq.heappush(queue, _Event(clock.now + latency, next(seq), event.process, "answer", answer=answer))
        else:
            assert event.answer is not None
            status, retry_after, values = event.answer
            if status == 429:
                budget.pause(retry_after)
            else:
                budget.observe(values)
            queue_request(event.process)
    return ok, refused, minutes - 1


@pytest.mark.parametrize(("kind", "most_429s"), [("fixed", 0.02), ("sliding", 0.1)])
@pytest.mark.parametrize("headers", ["seconds", "epoch"])
def test_processes_with_rate_headers_share_the_key_without_429s(
    clock: FakeClock, kind: str, most_429s: float, headers: str
) -> None:
    """DialNexa's throttler (NestJS) counts fixed windows; a sliding window frees one slot at a time, which
    the processes then race for: more 429s there (about 7 %), each costing only its own pause."""
    ok, refused, windows = share_one_key(clock, kind=kind, headers=headers)
    total = sum(ok.values()) + sum(refused.values())
    assert sum(refused.values()) / total < most_429s, (ok, refused)
    assert sum(ok.values()) >= 0.8 * 150 * windows, (ok, refused)
    assert max(ok.values()) <= 2 * min(ok.values()), ok


@pytest.mark.parametrize("kind", ["fixed", "sliding"])
def test_processes_without_rate_headers_converge_on_the_key_limit(clock: FakeClock, kind: str) -> None:
    ok, refused, windows = share_one_key(clock, kind=kind, headers=None)
    total = sum(ok.values()) + sum(refused.values())
    assert sum(refused.values()) / total < 0.05, (ok, refused)
    assert sum(ok.values()) >= 0.8 * 150 * windows, (ok, refused)
    assert max(ok.values()) <= 2 * min(ok.values()), ok


def test_a_process_left_with_a_tiny_share_is_not_starved(clock: FakeClock) -> None:
    """Shares are measured, so they could persist; spending sqrt(share) pulls a starved process back up."""
    ok, refused, windows = share_one_key(clock, shares=(0.02, 0.33, 0.33, 0.33))
    assert sum(ok.values()) >= 0.8 * 150 * windows, (ok, refused)
    assert max(ok.values()) <= 2 * min(ok.values()), ok


def test_slots_paced_by_a_window_do_not_outlive_it(clock: FakeClock) -> None:
    """Seen in the benchmark: one request left for 23 s paced the next slots 23 s apart, far past the reset."""
    budget = RateBudget(per_minute=120)
    budget.observe(rate_headers(150, 2, 20))  # 2 left for 20 s: one every 10 s
    assert list(budget.delays()) == []
    waiting = [budget.delays() for _ in range(3)]
    first = [next(w) for w in waiting]
    assert max(first) <= 20.0, "nobody sleeps past the window's reset"
    clock.now += 20.0  # the window resets: its pace no longer applies
    again = [next(w, 0.0) for w in waiting]
    assert max(again) <= 3.0, again  # one probe a second until an answer describes the new window


# -- the simulator's key-wide limiter (pure) -----------------------------------------------------------------


def test_fixed_window_opens_with_the_first_request() -> None:
    limiter = KeyLimiter(2, 10.0, "fixed")
    assert limiter.admit(100.0) is None
    assert limiter.admit(101.0) is None
    refused = limiter.admit(105.0)
    assert refused is not None
    assert refused.remaining == 0
    assert refused.reset_in == pytest.approx(5.0)
    assert limiter.admit(109.9) is not None
    assert limiter.admit(110.0) is None, "a new window opens once the old one is over"
    assert limiter.state(111.0).remaining == 1


def test_sliding_window_frees_one_slot_at_a_time() -> None:
    limiter = KeyLimiter(2, 10.0, "sliding")
    assert limiter.admit(100.0) is None
    assert limiter.admit(104.0) is None
    refused = limiter.admit(105.0)
    assert refused is not None
    assert refused.reset_in == pytest.approx(5.0), "until the oldest request expires"
    assert limiter.admit(110.5) is None
    assert limiter.admit(111.0) is not None, "the request of 104 s still counts"
    assert limiter.admit(114.5) is None


def test_header_values_in_both_reset_readings() -> None:
    state = KeyLimiter(150, 60.0).state(1000.0)
    seconds = dict(header_values(state._replace(remaining=149, reset_in=59.2), 1000.0, "seconds"))
    epoch = dict(header_values(state._replace(remaining=149, reset_in=59.2), 1000.0, "epoch"))
    assert seconds == {b"x-ratelimit-limit": b"150", b"x-ratelimit-remaining": b"149", b"x-ratelimit-reset": b"60"}
    assert epoch[b"x-ratelimit-reset"] == b"1060"


def test_limiter_rejects_bad_settings() -> None:
    for args in ((0, 60.0, "fixed"), (10, 0.0, "fixed"), (10, 60.0, "leaky")):
        with pytest.raises(ValueError, match="key limit needs"):
            KeyLimiter(*args)  # type: ignore[arg-type]
