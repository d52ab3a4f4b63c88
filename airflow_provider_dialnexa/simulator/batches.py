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

import csv
import dataclasses
import heapq
import io
import json
import math
import random
import re
import time
from collections import deque
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any, Literal

from airflow_provider_dialnexa.simulator.state import (
    CONNECTED,
    E164_RE,
    ApiError,
    SimState,
    _Call,
    iso8601,
    split_csv,
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


# -- the public API -------------------------------------------------------------------------------------


def api(
    state: SimState, route: str, batch_id: str | None, query: Mapping[str, Sequence[str]], body: bytes, ctype: str
) -> tuple[int, Any]:
    """Answer one batch route: ``(status, payload)``, or raise ``ApiError``."""
    with state._lock:
        bk = book(state)
        now = bk.advance(state)
        if route == "batch_create":
            return 201, _create(state, bk, _multipart(body, ctype), now)
        if route == "batch_list":
            return 200, _list(bk, query)
        if batch_id is None or not BATCH_ID_RE.match(batch_id):
            raise ApiError(400, "Invalid batch call ID format")
        batch = bk.batches.get(batch_id)
        if batch is None:
            raise ApiError(404, "Batch call not found")
        if route == "batch_get":
            return 200, _detail(state, bk, batch, query)
        return 200, _change(state, bk, batch, body, now)


def _multipart(body: bytes, ctype: str) -> dict[str, tuple[str | None, bytes]]:
    """``name -> (filename, content)`` of a ``multipart/form-data`` body."""
    if "multipart/form-data" not in ctype.lower():
        raise ApiError(400, "Content-Type must be multipart/form-data")
    if len(body) > MAX_FILE_BYTES + 64 * 1024:
        raise ApiError(413, "File too large (max 10 MB)")
    message = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {ctype}\r\n\r\n".encode() + body)
    parts: dict[str, tuple[str | None, bytes]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if isinstance(name, str):
            payload = part.get_payload(decode=True)
            parts[name] = (part.get_filename(), payload if isinstance(payload, bytes) else b"")
    return parts


def _text(parts: Mapping[str, tuple[str | None, bytes]], name: str) -> str | None:
    value = parts.get(name)
    return None if value is None else value[1].decode("utf-8", "replace").strip() or None


def _when(text: str | None, name: str) -> float | None:
    if text is None:
        return None
    try:
        parsed = datetime.fromisoformat(text[:-1] + "+00:00" if text[-1] in "zZ" else text)
    except ValueError:
        raise ApiError(400, [f"{name} must be a valid ISO 8601 date string"]) from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def _rows(filename: str, content: bytes) -> list[dict[str, str]]:
    """The leads of a CSV or .xlsx file as dicts of strings."""
    if filename.lower().endswith((".xlsx", ".xlsm")):
        try:
            import openpyxl
        except ImportError:  # pragma: no cover - depends on the install
            raise ApiError(400, "This simulator cannot read Excel files (install openpyxl)") from None
        try:
            sheet = openpyxl.load_workbook(io.BytesIO(content), read_only=True, data_only=True).worksheets[0]
        except Exception:
            raise ApiError(400, "Invalid file: not a readable Excel workbook") from None
        rows = [["" if v is None else str(v) for v in row] for row in sheet.iter_rows(values_only=True)]
    elif filename.lower().endswith(".xls"):
        raise ApiError(400, "This simulator cannot read .xls files")
    else:
        try:
            rows = list(csv.reader(io.StringIO(content.decode("utf-8-sig"))))
        except (UnicodeDecodeError, csv.Error):
            raise ApiError(400, "Invalid file: the CSV could not be read") from None
    if not rows or "phone_number" not in rows[0]:
        raise ApiError(400, "The uploaded file must include a phone_number column")
    header = rows[0]
    return [dict(zip(header, row, strict=False)) for row in rows[1:] if any(cell.strip() for cell in row)]


def _create(state: SimState, bk: BatchBook, parts: Mapping[str, tuple[str | None, bytes]], now: float) -> Any:
    title, agent_id = _text(parts, "title"), _text(parts, "agent_id")
    errors = []
    if "file" not in parts or not parts["file"][1]:
        errors.append("file should not be empty")
    if title is None:
        errors.append("title should not be empty")
    if agent_id is None:
        errors.append("agent_id should not be empty")
    if errors:
        raise ApiError(400, errors)
    assert title is not None
    assert agent_id is not None
    if len(title) > MAX_TITLE:
        raise ApiError(400, f"title must be {MAX_TITLE} characters or fewer (received {len(title)}).")
    cfg = bk.config
    raw_version = _text(parts, "agent_version_number")
    version = cfg.published_versions[-1]
    if raw_version is not None:
        if not raw_version.isdigit():
            raise ApiError(400, ["agent_version_number must be a number"])
        version = int(raw_version)
        if version in cfg.draft_versions:
            raise ApiError(
                400, f"Version {version} of agent {agent_id} is a draft. Publish it before starting a batch call."
            )
        if version not in cfg.published_versions:
            published = ", ".join(str(v) for v in cfg.published_versions)
            raise ApiError(404, f"Agent {agent_id} has no version {version}. Published versions: {published}.")
    starts_at, ends_at = _when(_text(parts, "starts_at"), "starts_at"), _when(_text(parts, "ends_at"), "ends_at")
    hours_start, hours_end = _text(parts, "calling_hours_start"), _text(parts, "calling_hours_end")
    hours = None
    if hours_start or hours_end:
        hours = (_minutes(hours_start or "00:00"), _minutes(hours_end or "23:59"))
    filename, content = parts["file"]
    if len(content) > MAX_FILE_BYTES:
        raise ApiError(400, "File too large (max 10 MB)")
    rows = _rows(filename or "leads.csv", content)
    bad = [n for n, row in enumerate(rows, start=2) if not E164_RE.match((row.get("phone_number") or "").strip())]
    if bad:
        raise ApiError(400, [f"Row {n}: phone_number must be a valid E.164 phone number" for n in bad[:10]])
    if not rows:
        raise ApiError(400, "The uploaded file contains no leads")
    leads = [
        _Lead(row["phone_number"].strip(), {k: v for k, v in row.items() if k != "phone_number" and k}) for row in rows
    ]
    batch_id = "batch_" + "".join(state._rng.choices("abcdefghijklmnopqrstuvwxyz0123456789", k=14))
    ahead = [b for b in bk.batches.values() if b.status in ("running", *_QUEUED)]
    status = "scheduled" if starts_at is not None and starts_at > now else "waiting"
    bk.batches[batch_id] = _Batch(
        batch_id, title, agent_id, version, now, starts_at, ends_at, hours, leads, status, deque(range(len(leads)))
    )
    answer: dict[str, Any] = {
        "id": batch_id,
        "title": title,
        "total_records": len(leads),
        "status": "initiated",
        "from_number": "+14155552671",
    }
    if ahead:
        answer["warning"] = {
            "message": f"This batch was created, but your organization already has {len(ahead)} batch(es) ahead of "
            "it. Batches run one at a time per organization, so this batch may be delayed.",
            "conflicts": [
                {
                    "kind": b.status,
                    "batch_name": b.title,
                    "processed_leads": sum(1 for lead in b.leads if lead.sent),
                    "total_leads": len(b.leads),
                    **({"starts_at": iso8601(b.starts_at)} if b.starts_at else {}),
                }
                for b in ahead
            ],
        }
    bk.advance(state)
    return answer


def _paging(query: Mapping[str, Sequence[str]], default: int, maximum: int, capped: bool) -> tuple[int, int]:
    errors = []
    try:
        page = int((query.get("page") or ["1"])[-1])
        limit = int((query.get("limit") or [str(default)])[-1])
    except ValueError:
        raise ApiError(400, ["page and limit must be integer numbers"]) from None
    if page < 1 or limit < 1:
        errors.append("page and limit must not be less than 1")
    if limit > maximum and not capped:
        errors.append(f"limit must not be greater than {maximum}")
    if errors:
        raise ApiError(400, errors)
    return page, min(limit, maximum)


def _list(bk: BatchBook, query: Mapping[str, Sequence[str]]) -> Any:
    query = {k: v for k, v in query.items() if k not in bk.config.list_ignores}
    other = bk.config.list_style == "data"
    page, limit = _paging(query, 20, 100, capped=other)
    wanted = set(split_csv(query.get("status")))
    batches = [b for b in reversed(bk.batches.values()) if not wanted or b.status in wanted]  # newest first
    rows = batches[(page - 1) * limit : page * limit]
    if other:
        meta = {"page": page, "limit": limit, "total": len(batches), "totalPages": math.ceil(len(batches) / limit)}
        return {"data": [bk.listed_other(b) for b in rows], "meta": meta}
    return {"items": [bk.listed(b) for b in rows], "total": len(batches), "page": page, "limit": limit}


def _detail(state: SimState, bk: BatchBook, batch: _Batch, query: Mapping[str, Sequence[str]]) -> Any:
    style = bk.config.detail_style
    query = {k: v for k, v in query.items() if k not in bk.config.detail_ignores}
    if style == "record":
        return bk.listed(batch)
    page, limit = _paging(query, 20, 200, capped=False)
    order = (query.get("created_at") or ["desc"])[-1].lower()
    calls = state._calls
    ids = [call_id for lead in batch.leads for call_id in lead.attempts]
    ids.sort(key=lambda i: (calls[i].plan.created_at, calls[i].seq), reverse=order != "asc")
    wanted = set(split_csv(query.get("status")))
    now = time.time()
    rows = [state._record(calls[i], now, advance=False) for i in ids]
    if wanted:
        rows = [r for r in rows if r["status"] in wanted]
    page_rows = rows[(page - 1) * limit : page * limit][: bk.config.detail_cap or None]
    logs = {"callLogs": page_rows, "total": len(rows), "page": page, "limit": limit}
    logs["totalPages"] = math.ceil(len(rows) / limit)
    return {**bk.listed(batch), **logs} if style == "both" else logs


def _change(state: SimState, bk: BatchBook, batch: _Batch, body: bytes, now: float) -> Any:
    try:
        action = json.loads(body or b"{}").get("action")
    except (ValueError, AttributeError):
        raise ApiError(400, "Unexpected token in JSON body") from None
    if action not in ACTIONS:
        raise ApiError(400, "Invalid action. Must be one of: pause, resume, cancel")
    affected = {"initiated": 0, "queued": 0, "removedFromQueue": 0, "cancelledCallLogs": 0, "resumedCallLogs": 0}
    if batch.status in ("completed", "cancelled"):
        status = 409 if action == "resume" and batch.status == "cancelled" else 400
        raise ApiError(status, f"Cannot {action} a {batch.status} batch call")
    if action == "pause":
        if batch.status == "paused":
            raise ApiError(400, "Batch call is already paused")
        batch.status = "paused"
        affected["removedFromQueue"] = len(batch.queue)
    elif action == "resume":
        if batch.status != "paused":
            raise ApiError(400, "Batch call is not paused")
        batch.status = "waiting"
        affected["resumedCallLogs"] = len(batch.retries)
    else:
        affected["removedFromQueue"] = len(batch.queue)
        affected["cancelledCallLogs"] = len(batch.retries)
        batch.queue.clear()
        for _, lead_index, call_id in batch.retries:
            _show(state._calls[call_id], "cancelled")
            batch.leads[lead_index].final = "cancelled"
        batch.retries.clear()
        batch.status = "cancelled"
    bk.advance(state)
    verb = {"pause": "paused", "resume": "resumed", "cancel": "cancelled"}[action]
    return {
        "success": True,
        "message": f"Campaign {verb} successfully",
        "campaign": {"id": batch.id, "status": batch.status, "title": batch.title},
        "affectedCalls": affected,
    }


# -- control API ------------------------------------------------------------------------------------------


def control(state: SimState, method: str, parts: list[str], body: Mapping[str, Any]) -> tuple[int, Any]:
    """``/_sim/batches[/config]`` and ``/_sim/clock[/advance]``: configure, inspect, move the batch clock."""
    with state._lock:
        bk = book(state)
        match method, parts:
            case "GET", ["batches"]:
                bk.advance(state)
                return 200, {"batches": [_summary(bk, b) for b in bk.batches.values()]}
            case "GET", ["batches", "config"]:
                return 200, dataclasses.asdict(bk.config)
            case "POST", ["batches", "config"]:
                bk.config = dataclasses.replace(bk.config, **body)
                return 200, dataclasses.asdict(bk.config)
            case "POST", ["clock", "advance"]:
                bk.offset += float(body.get("seconds", 0))
                return 200, {"now": bk.advance(state)}
            case "POST", ["clock"]:
                bk.offset = float(body["time"]) - time.time()
                bk.cursor = None
                return 200, {"now": bk.advance(state)}
            case "GET", ["clock"]:
                return 200, {"now": bk.now()}
    return 404, {"statusCode": 404, "message": f"Cannot {method} /_sim/{'/'.join(parts)}", "error": "Not Found"}


def _summary(bk: BatchBook, batch: _Batch) -> dict[str, Any]:
    return {
        **bk.listed(batch),
        "attempts": sum(len(lead.attempts) for lead in batch.leads),
        "finals": {lead.phone: lead.final for lead in batch.leads},
    }
