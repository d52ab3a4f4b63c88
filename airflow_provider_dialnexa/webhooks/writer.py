"""Group commit: the deliveries one web server process has in flight are recorded by one writer, in one transaction.

Each request hands its parsed call-ended event to ``writer.submit`` and waits for its own outcome (a
``concurrent.futures.Future``; the async route awaits it without holding a thread). The writer thread takes
the oldest waiting delivery, gathers what else arrives within ``GROUP_WINDOW`` seconds of it (at most
``GROUP_MAX``), and records the group with ``store.record_group`` in one transaction: one commit, one asset
lookup and one run-queue write per group instead of per delivery, and no two transactions of this process
competing for the database (SQLite's single writer lock). A request is answered only after the commit that
holds its receipt and event.

When the group's transaction fails, nothing of it is committed, and the writer records each of its
deliveries again in a transaction of its own: a delivery that fails alone gets the error (the route answers
503 and DialNexa retries it), the others are recorded as if they had come alone. Listeners are notified
after the commit, once the requests have their answers.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_dialnexa.webhooks.events import WebhookEvent
from airflow_provider_dialnexa.webhooks.store import Outcome
from airflow_provider_dialnexa.webhooks.sweeper import setting

log = logging.getLogger("airflow_provider_dialnexa.webhooks")


#: How long the writer waits, from the oldest delivery's arrival, for others to join its group (seconds).
GROUP_WINDOW = setting("webhook_group_window", 0.005)
#: The most deliveries one transaction records.
GROUP_MAX = max(1, int(setting("webhook_group_max", 200)))

Commit = Callable[[Sequence["Delivery"], list[Any]], list[Outcome]]


def commit_group(group: Sequence[Delivery], notifications: list[Any]) -> list[Outcome]:
    """Record ``group`` in one metadata-DB transaction and commit it (roll back and raise on any error)."""
    from airflow.utils.session import create_session

    from airflow_provider_dialnexa.webhooks.store import record_group

    deliveries = [(item.conn_id, item.event) for item in group]
    with create_session() as session:  # commits on success, rolls back on any exception
        return record_group(
            session, deliveries, received_at=[item.received_at for item in group], after_commit=notifications
        )


@dataclass
class Delivery:
    """One call-ended event waiting for the writer; ``future`` gets its outcome."""

    conn_id: str
    event: WebhookEvent
    arrived: float  # time.monotonic() when the request handed it over
    future: Future[Outcome] = field(default_factory=Future)
    received_at: float = field(default_factory=time.time)  # the receipt's ``received_at`` (epoch seconds)


class GroupWriter:
    """The writer thread of one process (started by the first delivery; a forked worker starts its own)."""

    def __init__(self, commit: Commit = commit_group) -> None:
        self._commit = commit
        self._queue: queue.SimpleQueue[Delivery | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._pid: int | None = None
        self._lock = threading.Lock()

    def submit(self, conn_id: str, event: WebhookEvent) -> Future[Outcome]:
        """Queue one call-ended event; the future holds its ``Outcome`` once committed, or the error."""
        self.ensure_running()
        pending = Delivery(conn_id, event, time.monotonic())
        self._queue.put(pending)
        return pending.future

    def ensure_running(self) -> None:
        if self._pid == os.getpid() and self._thread is not None and self._thread.is_alive():
            return
        with self._lock:
            if self._pid == os.getpid() and self._thread is not None and self._thread.is_alive():
                return
            if self._pid != os.getpid():  # a forked child: the parent's queue and thread are not ours
                self._queue = queue.SimpleQueue()
            self._thread = threading.Thread(target=self._run, name="dialnexa-webhook-writer", daemon=True)
            self._pid = os.getpid()
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Record what is queued, then end the thread."""
        thread = self._thread
        if thread is not None and thread.is_alive() and self._pid == os.getpid():
            self._queue.put(None)
            thread.join(timeout)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            group, stop = self._gather(first)
            live = [item for item in group if item.future.set_running_or_notify_cancel()]
            try:
                self._write(live)
            except Exception:  # a bug here must not leave requests waiting forever
                log.exception("DialNexa webhook writer: unexpected error; the group's requests answer 503")
                for item in live:
                    if not item.future.done():
                        item.future.set_exception(RecordingFailedError("the writer failed"))
            if stop:
                return

    def _gather(self, first: Delivery) -> tuple[list[Delivery], bool]:
        """The oldest delivery and those arriving within ``GROUP_WINDOW`` of it (at most ``GROUP_MAX``)."""
        group = [first]
        deadline = first.arrived + GROUP_WINDOW
        while len(group) < GROUP_MAX:
            wait = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                return group, True
            group.append(item)
        return group, False

    def _write(self, group: list[Delivery]) -> None:
        if not group:
            return
        notifications: list[Any] = []
        try:
            outcomes = self._commit(group, notifications)
        except Exception:
            if len(group) == 1:
                group[0].future.set_exception(_failure(group[0]))
                return
            log.warning(
                "DialNexa webhook: a group of %d deliveries could not be recorded; recording each alone",
                len(group),
                exc_info=True,
            )
            for item in group:
                self._write_alone(item)
            return
        for item, outcome in zip(group, outcomes, strict=True):
            item.future.set_result(outcome)
        _log_group(group, outcomes)
        _notify(notifications)

    def _write_alone(self, item: Delivery) -> None:
        notifications: list[Any] = []
        try:
            (outcome,) = self._commit([item], notifications)
        except Exception:
            item.future.set_exception(_failure(item))
            return
        item.future.set_result(outcome)
        _log_group([item], [outcome])
        _notify(notifications)


def _log_group(group: list[Delivery], outcomes: list[Outcome]) -> None:
    """One line per transaction: which calls it recorded (ids only), how many were duplicates."""
    pairs = zip(group, outcomes, strict=True)
    new = [f"{item.event.call_id} ({item.event.status})" for item, outcome in pairs if outcome is Outcome.RECORDED]
    log.info(
        "DialNexa webhook: recorded %d call(s) in one transaction, %d duplicate(s): %s",
        len(new),
        len(group) - len(new),
        ", ".join(new[:20]) + (f" and {len(new) - 20} more" if len(new) > 20 else ""),
    )


class RecordingFailedError(RuntimeError):
    """The delivery's transaction failed and was rolled back (the cause is chained)."""


def _failure(item: Delivery) -> RecordingFailedError:
    log.exception(
        "DialNexa webhook for %r: could not record call %r (%s); answered 503 so DialNexa retries",
        item.conn_id,
        item.event.call_id,
        item.event.status,
    )
    import sys

    error = RecordingFailedError(f"call {item.event.call_id!r} ({item.event.status}) was not recorded")
    error.__cause__ = sys.exc_info()[1]
    return error


def _notify(notifications: list[Any]) -> None:
    """Airflow's listeners, told only about committed events; a listener's failure changes no answer."""
    for notify in notifications:
        try:
            notify()
        except Exception:
            log.exception("DialNexa webhook: an asset listener failed")


writer = GroupWriter()
