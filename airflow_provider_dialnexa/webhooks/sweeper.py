"""No call left behind: make sure every recorded event reaches a run of each DAG scheduled on its asset.

Why it is needed (both Airflow lines): recording an event queues the consumer DAG with one run-queue row
per (asset, DAG) (``AssetDagRunQueue`` / ``DatasetDagRunQueue``). The scheduler creates the run "up to"
the row's ``created_at`` (events dated after it are left for the *next* run) and then deletes the row.
An event recorded while the row already existed (a burst) adds no row, so after that run it waits for
another delivery, which may never come. Rarely, an event can also be dated before a run's window ends
yet commit after the run read the events (concurrent writers on PostgreSQL/MySQL, another replica's
clock, another asset of an OR schedule): the next window starts after its date, so no run would take it.

What the sweeper does, in the api-server (webserver) process, every ``SWEEP_INTERVAL`` seconds while
receipts are pending (``IDLE_INTERVAL`` otherwise, to pick up receipts another replica left):

1. For each pending receipt, the DAGs that should consume its event: scheduled on the asset, not
   paused, and declaring the asset before the event was recorded.
2. A DAG that consumed the event is done; when all are done, the receipt is settled.
3. For a DAG that has not: if a run-queue row exists, a run is coming (wait). Otherwise insert the row,
   so the scheduler creates a run whose window holds the event; if the event is dated inside a window
   the DAG has already passed and *no* run consumed it, re-date it to now first (never an event some
   run consumed, so no run sees an event twice).
4. Receipts older than ``WATCH_SECONDS`` are settled whatever happened (e.g. a DAG whose schedule also
   waits for another asset); the hourly export is the backstop for those.

The bound this gives, from the delivery's commit to a queued DAG run: the scheduler's own delay plus
at most one sweep interval and one scheduler loop (measured by ``benchmarks/webhooks.py``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import exists, func, inspect, select, update

from airflow_provider_dialnexa.webhooks import _adapter
from airflow_provider_dialnexa.webhooks.store import TABLE_NAME, receipts

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

log = logging.getLogger("airflow_provider_dialnexa.webhooks")


def setting(name: str, default: float) -> float:
    """``[dialnexa] <name>`` from Airflow's config (``AIRFLOW__DIALNEXA__<NAME>``), else the default."""
    value = os.environ.get(f"AIRFLOW__DIALNEXA__{name.upper()}")
    try:
        return float(value) if value else default
    except ValueError:
        log.warning("AIRFLOW__DIALNEXA__%s=%r is not a number; using %s", name.upper(), value, default)
        return default


SWEEP_INTERVAL = setting("webhook_sweep_interval", 2.0)
IDLE_INTERVAL = setting("webhook_idle_interval", 15.0)
WATCH_SECONDS = setting("webhook_watch_seconds", 3600.0)
#: An event is re-dated only when older than this: a scheduler transaction consuming it has committed by then.
REDATE_GRACE = timedelta(seconds=10)
BATCH = 1000


@dataclass
class SweepResult:
    """What one sweep saw and did."""

    pending: int = 0
    settled: int = 0
    queued: list[tuple[int, str]] = field(default_factory=list)  # (asset id, dag id) run-queue rows inserted
    redated: list[int] = field(default_factory=list)  # event ids re-dated to now


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


_table_seen: set[str] = set()


def _has_table(session: Session) -> bool:
    engine = session.get_bind().engine  # type: ignore[union-attr]
    key = str(engine.url)
    if key not in _table_seen and inspect(engine).has_table(TABLE_NAME):
        _table_seen.add(key)
    return key in _table_seen


def sweep(session: Session, *, now: datetime | None = None) -> SweepResult:
    """One pass over the pending receipts (see the module docstring); the caller commits ``session``."""
    result = SweepResult()
    if not _has_table(session):  # no delivery was ever recorded in this database
        return result
    line = _adapter.airflow_line()
    now = now or _utcnow()
    rows = session.execute(
        select(receipts.c.asset_event_id, receipts.c.received_at)
        .where(receipts.c.pending.is_(True))
        .order_by(receipts.c.received_at)
        .limit(BATCH)
    ).all()
    if not rows:
        return result
    cutoff = now.timestamp() - WATCH_SECONDS
    watched = [row.asset_event_id for row in rows if row.received_at >= cutoff and row.asset_event_id is not None]
    event = line.asset_event
    events = {
        row.id: (row.asset_id, _aware(row.timestamp))
        for row in session.execute(
            select(event.id, line.event_asset_id.label("asset_id"), event.timestamp).where(event.id.in_(watched))
        )
    }
    asset_ids = {asset_id for asset_id, _ in events.values()}
    # Read the run queue before what runs consumed: a run that deleted a queue row after this read is
    # committed, so the reads below see what it consumed.
    queued = {
        (row.asset_id, row.target_dag_id)
        for row in session.execute(
            select(line.queue_asset_id.label("asset_id"), line.queue.target_dag_id).where(
                line.queue_asset_id.in_(asset_ids)
            )
        )
    }
    consumers: dict[int, list[tuple[str, datetime]]] = defaultdict(list)
    ref, dag = line.schedule_ref, line.dag_model
    for row in session.execute(
        select(line.ref_asset_id.label("asset_id"), ref.dag_id, ref.created_at)
        .join(dag, dag.dag_id == ref.dag_id)
        .where(line.ref_asset_id.in_(asset_ids), line.live_dag())
    ):
        consumers[row.asset_id].append((row.dag_id, _aware(row.created_at)))
    consumed: dict[int, set[str]] = defaultdict(set)
    run = line.dag_run
    for row in session.execute(
        select(line.consumed.c.event_id, run.dag_id)
        .join(run, run.id == line.consumed.c.dag_run_id)
        .where(line.consumed.c.event_id.in_(list(events)))
    ):
        consumed[row.event_id].add(row.dag_id)
    dag_ids = {dag_id for pairs in consumers.values() for dag_id, _ in pairs}
    floors = {
        row.dag_id: _aware(row.floor)
        for row in session.execute(
            select(run.dag_id, func.max(line.run_date).label("floor"))
            .where(run.dag_id.in_(dag_ids), run.run_type == line.asset_triggered)
            .group_by(run.dag_id)
        )
        if row.floor is not None
    }

    done: list[int] = [row.asset_event_id for row in rows if row.asset_event_id not in events]  # expired/cleaned
    to_queue: set[tuple[int, str]] = set()
    to_redate: set[int] = set()
    for event_id, (asset_id, stamp) in events.items():
        waiting = [d for d, since in consumers.get(asset_id, ()) if since <= stamp and d not in consumed[event_id]]
        if not waiting:
            done.append(event_id)
            continue
        for dag_id in waiting:
            if (asset_id, dag_id) in queued:
                continue  # a run is coming; whether its window holds the event is checked next sweep
            floor = floors.get(dag_id)
            if floor is not None and stamp <= floor:  # the DAG's runs have moved past the event's date
                if consumed[event_id] or now - stamp < REDATE_GRACE:
                    continue
                to_redate.add(event_id)
            to_queue.add((asset_id, dag_id))

    for event_id in sorted(to_redate):
        redated = session.execute(
            update(event.__table__)
            .where(
                event.__table__.c.id == event_id,
                ~exists().where(line.consumed.c.event_id == event_id),
            )
            .values(timestamp=now)
        )
        if redated.rowcount:  # type: ignore[attr-defined]
            result.redated.append(event_id)
            log.warning("DialNexa webhook: event %s fell behind its DAG's runs; re-dated it to be consumed", event_id)
    queued_at = _utcnow()
    for asset_id, dag_id in sorted(to_queue):
        _adapter.insert_queue_row(session, line.queue_row(asset_id, dag_id, max(queued_at, now)))
        result.queued.append((asset_id, dag_id))
    if done:
        session.execute(update(receipts).where(receipts.c.asset_event_id.in_(done)).values(pending=False))
    if len(watched) < len(rows):  # expired (or never linked to an event)
        session.execute(
            update(receipts).where(receipts.c.pending.is_(True), receipts.c.received_at < cutoff).values(pending=False)
        )
    result.settled = len(done) + len(rows) - len(watched)
    result.pending = len(rows) - result.settled
    if result.queued:
        log.info("DialNexa webhook: queued %d DAG run(s) for events left behind: %s", len(result.queued), result.queued)
    return result


class Sweeper:
    """The background thread of one web server process (started with the app or by the first delivery)."""

    def __init__(self) -> None:
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid: int | None = None
        self._lock = threading.Lock()

    def ensure_running(self) -> None:
        """Start the thread in this process if it is not running (cheap; a forked worker gets its own)."""
        if self._pid == os.getpid() and self._thread is not None and self._thread.is_alive():
            return
        with self._lock:
            if self._pid == os.getpid() and self._thread is not None and self._thread.is_alive():
                return
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="dialnexa-webhook-sweeper", daemon=True)
            self._pid = os.getpid()
            self._thread.start()

    def wake(self) -> None:
        """A delivery was recorded: sweep soon, then every ``SWEEP_INTERVAL`` while receipts are pending."""
        self.ensure_running()
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        from airflow.utils.session import create_session

        last = -SWEEP_INTERVAL
        next_at = time.monotonic()  # one sweep at start: receipts an earlier process left pending
        while not self._stop.is_set():
            woke = self._wake.wait(max(0.0, next_at - time.monotonic()))
            if self._stop.is_set():
                break
            if woke:  # a delivery: sweep within SWEEP_INTERVAL, but never more often than that
                self._wake.clear()
                next_at = min(next_at, last + SWEEP_INTERVAL)
                if time.monotonic() < next_at:
                    continue
            try:
                with create_session() as session:
                    result = sweep(session)
                pause = SWEEP_INTERVAL if result.pending else IDLE_INTERVAL
            except Exception:
                log.exception("DialNexa webhook sweeper: sweep failed; retrying in %s s", IDLE_INTERVAL)
                pause = IDLE_INTERVAL
            last = time.monotonic()
            next_at = last + pause


sweeper = Sweeper()
