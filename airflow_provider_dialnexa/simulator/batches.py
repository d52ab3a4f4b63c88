"""Batch calls in the simulator: ``POST/GET /v1/batch-calls``, ``GET /v1/batch-calls/{id}``, ``PATCH .../status``.

A batch uploads a CSV or Excel leads file (multipart). Batches run one at a time per organization (the others
wait, and the create answer's ``warning`` names the ones ahead); the running one dials its leads one after
another, ``dial_interval_s`` apart, only inside its calling hours (UTC: DialNexa does not say which time zone)
and before ``ends_at``; each attempt is a call log (a call in the simulator, ``batch_id`` set) that ends
``call_s`` later. Unanswered attempts (``retry_on``) are redialled as retry children ``retry_wait_s`` later,
up to ``retries`` times, as DialNexa's auto-retry does. Pause, resume and cancel work as documented.

Time is the batch clock: ``time.time()`` plus an offset that only the control API moves (``advance_clock``,
``set_clock``), so a test jumps hours ahead without waiting. The engine is advanced lazily, under the state's
lock, whenever a request arrives; attempts show the engine's status verbatim (a one-entry script).
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import random
import re
import time
from collections import deque
from typing import Any, Literal

from airflow_provider_dialnexa.simulator.state import (
    CONNECTED,
    ApiError,
    SimState,
    _Call,
    iso8601,
)

MAX_FILE_BYTES = 10 * 1024 * 1024
MAX_TITLE = 35
BATCH_ID_RE = re.compile(r"^batch_[A-Za-z0-9_-]{1,120}$")
_HOURS_RE = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$")
ACTIONS = ("pause", "resume", "cancel")
#: Statuses that hold or wait for the organization's one running slot.
_QUEUED = ("waiting", "scheduled")
DEFAULT_BATCH_MIX = {"completed": 0.55, "no_answer": 0.2, "busy": 0.1, "did_not_pick": 0.05, "failed": 0.05}
DEFAULT_BATCH_MIX["voicemail"] = 0.05


@dataclasses.dataclass
class BatchConfig:
    """How simulated batches behave; change with ``configure_batches(...)``."""

    #: ``calllogs``: Get Batch Call answers a page of ``callLogs`` only (the OpenAPI example); ``record``: the
    #: batch record only (other pages); ``both``: the record with ``callLogs``.
    detail_style: Literal["calllogs", "record", "both"] = "calllogs"
    #: ``items``: ``{items, total, page, limit}`` (OpenAPI); ``data``: ``{data, meta}`` with ``name`` (other pages).
    list_style: Literal["items", "data"] = "items"
    dial_interval_s: float = 0.2
    call_s: float = 1.0
    retries: int = 2
    retry_wait_s: float = 5.0
    retry_on: tuple[str, ...] = ("no_answer", "busy", "did_not_pick")
    mix: dict[str, float] = dataclasses.field(default_factory=lambda: dict(DEFAULT_BATCH_MIX))
    #: Per phone number, the outcome of each attempt (the last one repeats): deterministic tests.
    outcomes: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    published_versions: tuple[int, ...] = (1, 2, 3)
    draft_versions: tuple[int, ...] = (4,)
    #: Query parameters this deployment ignores on Get Batch Call / List Batch Calls (``["page"]``: always page 1).
    detail_ignores: tuple[str, ...] = ()
    list_ignores: tuple[str, ...] = ()
    #: Return at most this many call logs per Get Batch Call page while reporting the limit asked (0 = honest).
    detail_cap: int = 0

    def __post_init__(self) -> None:
        self.retry_on, self.published_versions = tuple(self.retry_on), tuple(self.published_versions)
        self.draft_versions, self.detail_ignores = tuple(self.draft_versions), tuple(self.detail_ignores)
        self.list_ignores = tuple(self.list_ignores)
        if self.detail_style not in ("calllogs", "record", "both") or self.list_style not in ("items", "data"):
            raise ValueError("detail_style must be calllogs/record/both and list_style items/data")
        if self.dial_interval_s <= 0 or self.call_s < 0 or self.retry_wait_s < 0 or not 0 <= self.retries <= 4:
            raise ValueError("need dial_interval_s > 0, call_s >= 0, retry_wait_s >= 0 and retries within 0..4")


@dataclasses.dataclass
class _Lead:
    phone: str
    variables: dict[str, str]
    attempts: list[str] = dataclasses.field(default_factory=list)
    sent: bool = False
    final: str | None = None


@dataclasses.dataclass
class _Batch:
    id: str
    title: str
    agent_id: str
    version: int
    created_at: float
    starts_at: float | None
    ends_at: float | None
    hours: tuple[int, int] | None
    leads: list[_Lead]
    status: str
    queue: deque[int]
    retries: list[tuple[float, int, str]] = dataclasses.field(default_factory=list)  # (due, lead, call id) heap
    inflight: list[tuple[float, int, str]] = dataclasses.field(default_factory=list)  # (end, lead, call id) heap
    next_dial: float = 0.0
    last_sent: float | None = None
    scheduled: list[int] = dataclasses.field(default_factory=lambda: [0] * 5)  # call logs per depth
    attempted: list[int] = dataclasses.field(default_factory=lambda: [0] * 5)
    picked_up_calls: int = 0
    depth: dict[str, int] = dataclasses.field(default_factory=dict)  # call id -> retry depth

    def pending(self) -> bool:
        return bool(self.queue or self.retries)


class BatchBook:
    """Every batch of one simulator (state) and the batch clock."""

    def __init__(self, calls: dict[str, _Call]) -> None:
        self.calls = calls  # the state's calls dict: a reset replaces it, and with it this book
        self.config = BatchConfig()
        self.offset = 0.0
        self.batches: dict[str, _Batch] = {}
        self.cursor: float | None = None

    def now(self) -> float:
        return time.time() + self.offset

    # -- the engine ---------------------------------------------------------------------------------

    def advance(self, state: SimState) -> float:
        """Run every event up to the batch clock's now (lock held); returns that now."""
        now = self.now()
        t = now if self.cursor is None else min(self.cursor, now)
        while True:
            for _ in range(100_000):
                if not self._step(state, t):
                    break
            nxt = self._next_time(t)
            if nxt is None or nxt > now:
                break
            t = max(nxt, t)
        self.cursor = now
        return now

    def _running(self) -> _Batch | None:
        return next((b for b in self.batches.values() if b.status == "running"), None)

    def _step(self, state: SimState, t: float) -> bool:
        """Do whatever is due at ``t``; True if anything changed."""
        changed = False
        for batch in self.batches.values():
            while batch.inflight and batch.inflight[0][0] <= t:
                _, lead, call_id = heapq.heappop(batch.inflight)
                self._finish(state, batch, lead, call_id, t)
                changed = True
        running = self._running()
        if running is not None and running.ends_at is not None and t >= running.ends_at and running.pending():
            self._expire(state, running)
            changed = True
        if running is not None and not running.pending() and not running.inflight:
            running.status = "completed"
            running, changed = None, True
        if running is None:
            ready = [b for b in self.batches.values() if b.status in _QUEUED and (b.starts_at or 0) <= t]
            if ready:
                running = min(ready, key=lambda b: b.created_at)
                running.status, running.next_dial, changed = "running", max(running.next_dial, t), True
        for batch in self.batches.values():  # scheduled batches whose start came while another runs: waiting
            if batch.status == "scheduled" and (batch.starts_at or 0) <= t:
                batch.status, changed = "waiting", True
        if running is not None and self._dial_time(running, t) == t:
            self._dial(state, running, t)
            changed = True
        return changed

    def _dial_time(self, batch: _Batch, t: float) -> float | None:
        """When the running batch dials next (>= t), or None when nothing is due to be dialled."""
        if batch.queue:
            due = max(batch.next_dial, t)
        elif batch.retries:
            due = max(batch.next_dial, batch.retries[0][0], t)
        else:
            return None
        if batch.hours is not None:
            due = _next_open(due, batch.hours)
        if batch.ends_at is not None and due >= batch.ends_at:
            return None
        return due

    def _next_time(self, t: float) -> float | None:
        times = [b.inflight[0][0] for b in self.batches.values() if b.inflight]
        running = self._running()
        if running is not None:
            dial = self._dial_time(running, t)
            if dial is not None:
                times.append(dial)
            if running.ends_at is not None and running.pending():
                times.append(running.ends_at)
        else:
            times += [max(b.starts_at or 0, t) for b in self.batches.values() if b.status in _QUEUED]
        for batch in self.batches.values():
            if batch.status == "scheduled" and batch.starts_at is not None:
                times.append(batch.starts_at)
        later = [x for x in times if x > t]
        return min(later) if later else None

    def _dial(self, state: SimState, batch: _Batch, t: float) -> None:
        if batch.retries and batch.retries[0][0] <= t:  # a retry child that is due goes first
            _, lead_index, call_id = heapq.heappop(batch.retries)
        else:
            lead_index = batch.queue.popleft()
            batch.leads[lead_index].sent = True
            call_id = self._new_call(state, batch, batch.leads[lead_index], t, depth=0)
        batch.attempted[batch.depth[call_id]] += 1
        _show(state._calls[call_id], "initiated")
        heapq.heappush(batch.inflight, (t + self.config.call_s, lead_index, call_id))
        batch.next_dial, batch.last_sent = t + self.config.dial_interval_s, t

    def _new_call(self, state: SimState, batch: _Batch, lead: _Lead, t: float, depth: int) -> str:
        spec: dict[str, Any] = {
            "outcome": "completed",
            "queued_s": 0.0,
            "ring_s": 0.0,
            "talk_s": 0.0,
            "agent_id": batch.agent_id,
            "agent_version_number": batch.version,
            "to_number": lead.phone,
            "metadata": dict(lead.variables),
            "script": ["created"],
        }
        call_id = state._create_locked(spec, t)  # type: ignore[arg-type]
        call = state._calls[call_id]
        call.plan.created_at, call.created_iso, call.batch_id = t, iso8601(t), batch.id
        lead.attempts.append(call_id)
        batch.depth[call_id] = depth
        batch.scheduled[depth] += 1
        return call_id

    def _outcome(self, batch: _Batch, lead_index: int, depth: int) -> str:
        lead = batch.leads[lead_index]
        scripted = self.config.outcomes.get(lead.phone)
        if scripted:
            return scripted[min(depth, len(scripted) - 1)]
        rng = random.Random(f"{batch.id}/{lead_index}/{depth}")
        mix = self.config.mix
        return rng.choices(list(mix), weights=list(mix.values()))[0]

    def _finish(self, state: SimState, batch: _Batch, lead_index: int, call_id: str, t: float) -> None:
        depth = batch.depth[call_id]
        outcome = self._outcome(batch, lead_index, depth)
        call = state._calls[call_id]
        call.plan.talk_s = 30.0 if outcome in CONNECTED else 0.0
        _show(call, outcome)
        lead = batch.leads[lead_index]
        if outcome == "completed":
            batch.picked_up_calls += 1
        retry = outcome in self.config.retry_on and depth < self.config.retries and batch.status != "cancelled"
        if retry and not (batch.ends_at is not None and t >= batch.ends_at):
            child = self._new_call(state, batch, lead, t, depth=depth + 1)
            heapq.heappush(batch.retries, (t + self.config.retry_wait_s, lead_index, child))
        else:
            lead.final = outcome

    def _expire(self, state: SimState, batch: _Batch) -> None:
        """``ends_at`` passed: nothing more is dialled; retry children still waiting expire."""
        batch.queue.clear()
        for _, lead_index, call_id in batch.retries:
            _show(state._calls[call_id], "retry_expired")
            batch.leads[lead_index].final = "retry_expired"
        batch.retries.clear()

    # -- views ----------------------------------------------------------------------------------------

    def listed(self, batch: _Batch) -> dict[str, Any]:
        """The List Batch Calls item (OpenAPI spelling) of a batch."""
        stages = [
            {"depth": d, "attempted": batch.attempted[d], "total": len(batch.leads) if d == 0 else batch.scheduled[d]}
            for d in range(5)
            if d == 0 or batch.scheduled[d]
        ]
        return {
            "id": batch.id,
            "title": batch.title,
            "status": batch.status,
            "total_records": len(batch.leads),
            "createdAt": iso8601(batch.created_at),
            "total_lead_count": len(batch.leads),
            "sent_lead_count": sum(1 for lead in batch.leads if lead.sent),
            "picked_up_lead_count": sum(1 for lead in batch.leads if lead.final == "completed"),
            "picked_up_calls": batch.picked_up_calls,
            "last_call_sent_at": iso8601(batch.last_sent) if batch.last_sent is not None else None,
            "number_of_retries": self.config.retries,
            "first_retry_count": batch.scheduled[1],
            "second_retry_count": batch.scheduled[2],
            "third_retry_count": batch.scheduled[3],
            "fourth_retry_count": batch.scheduled[4],
            "attempt_stages": stages,
        }

    def listed_other(self, batch: _Batch) -> dict[str, Any]:
        """The same batch as the other documentation generation spells it (``name``, ``total_leads``...)."""
        ended = [lead.final for lead in batch.leads if lead.final]
        return {
            "id": batch.id,
            "name": batch.title,
            "status": batch.status,
            "total_leads": len(batch.leads),
            "completed": sum(1 for f in ended if f == "completed"),
            "failed": sum(1 for f in ended if f != "completed"),
            "agent_id": batch.agent_id,
            "created_at": iso8601(batch.created_at),
        }


def _show(call: _Call, status: str) -> None:
    """Make a simulated call show ``status`` from now on."""
    call.plan.script, call.script_pos, call.scripted_end = [status], 0, None


def _minutes(text: str) -> int:
    match = _HOURS_RE.match(text)
    if match is None:
        raise ApiError(400, [f"calling hours must be HH:MM, got {text!r}"])
    return int(match.group(1)) * 60 + int(match.group(2))


def _in_hours(t: float, hours: tuple[int, int]) -> bool:
    minute = (t % 86400) / 60
    start, end = hours
    return start <= minute < end if start < end else (minute >= start or minute < end)


def _next_open(t: float, hours: tuple[int, int]) -> float:
    """The first moment at or after ``t`` inside the calling hours (UTC)."""
    if _in_hours(t, hours):
        return t
    opening = math.floor(t / 86400) * 86400 + hours[0] * 60
    return opening if opening >= t else opening + 86400


def book(state: SimState) -> BatchBook:
    """The state's batch book (lock held), new after a reset (which replaces the state's calls)."""
    calls = state._calls
    current: BatchBook | None = state.__dict__.get("_batch_book")
    if current is None or current.calls is not calls:
        current = state.__dict__["_batch_book"] = BatchBook(calls)
    return current


def tick(state: SimState) -> None:
    """Advance the batch engine to now, if the simulator has batches (every API request calls this)."""
    current = state.__dict__.get("_batch_book")
    if current is not None and current.batches:
        with state._lock:
            book(state).advance(state)
