"""Group commit (``webhooks/writer.py``) against a real (SQLite) metadata DB: the deliveries a process has in
flight are recorded in one transaction, duplicates inside a group resolve on the receipt key, and a failing
delivery fails alone: 503 for it (and its copies), nothing recorded for it, the rest of its group recorded.

Groups are formed deterministically: a first delivery's commit is held on an event until the others are
queued behind it, so the writer takes them as one group (no timing involved).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from test_webhook_store import CONN_ID, SECRET, _body, _session, conn, db, events_of, queue_rows
from test_webhook_store import _drain as _drain_store

from airflow_provider_dialnexa.webhooks import _adapter, store
from airflow_provider_dialnexa.webhooks import writer as writer_module
from airflow_provider_dialnexa.webhooks.events import WebhookEvent, parse
from airflow_provider_dialnexa.webhooks.receiver import handle
from airflow_provider_dialnexa.webhooks.signature import sign
from airflow_provider_dialnexa.webhooks.store import Outcome, receipt_rows
from airflow_provider_dialnexa.webhooks.writer import Delivery, GroupWriter, commit_group

__all__ = ["conn", "db"]  # fixtures: the test DAG in the metadata DB, the test connection

HOLD = "call_grp_hold"


class HeldWriter(GroupWriter):
    """A writer whose first group (the ``HOLD`` delivery) commits only when released; it counts submissions."""

    def __init__(self, fail_call: str | None = None) -> None:
        super().__init__(commit=self._commit_group)
        self.fail_call = fail_call
        self.release = threading.Event()
        self.holding = threading.Event()
        self.groups: list[list[str]] = []  # call ids of each attempted transaction
        self._submitted = threading.Condition()
        self.submitted = 0

    def submit(self, conn_id: str, event: WebhookEvent) -> Any:
        future = super().submit(conn_id, event)
        with self._submitted:
            self.submitted += 1
            self._submitted.notify_all()
        return future

    def wait_submitted(self, count: int) -> None:
        with self._submitted:
            assert self._submitted.wait_for(lambda: self.submitted >= count, timeout=120)

    def _commit_group(self, deliveries: Sequence[Delivery], notifications: list[Any]) -> Any:
        call_ids = [str(item.event.call_id) for item in deliveries]
        self.groups.append(call_ids)
        if HOLD in call_ids:
            self.holding.set()
            assert self.release.wait(120)
        return commit_group(deliveries, notifications)


@pytest.fixture
def held(conn: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[HeldWriter]:
    with _session() as session:
        store.ensure_table(session.get_bind().engine)
    _drain_store()
    writer = HeldWriter()
    monkeypatch.setattr(writer_module, "writer", writer)
    yield writer
    writer.release.set()
    writer.stop()


def _deliver_as_one_group(writer: HeldWriter, bodies: list[bytes]) -> list[Any]:
    """Deliver ``bodies`` concurrently (through ``handle``), all queued behind the held first delivery."""
    with ThreadPoolExecutor(len(bodies) + 1) as pool:
        hold = pool.submit(handle, CONN_ID, [sign(_body(HOLD), SECRET)], _body(HOLD))
        assert writer.holding.wait(120)  # the writer is inside the first group's commit: the rest queue up
        replies = [pool.submit(handle, CONN_ID, [sign(body, SECRET)], body) for body in bodies]
        writer.wait_submitted(1 + len(bodies))
        writer.release.set()
        assert hold.result().status == 200
        return [reply.result() for reply in replies]


def test_a_group_is_one_transaction_and_resolves_its_duplicates(held: HeldWriter) -> None:
    assert handle(CONN_ID, [sign(_body("call_grp_0"), SECRET)], _body("call_grp_0")).body["status"] == "recorded"
    bodies = [
        _body("call_grp_1"),
        _body("call_grp_2"),
        _body("call_grp_1"),  # a copy in the same group
        _body("call_grp_3", status="busy"),
        _body("call_grp_0"),  # recorded before the group
    ]
    replies = _deliver_as_one_group(held, bodies)
    assert held.groups[-2] == [HOLD]
    assert sorted(held.groups[-1]) == ["call_grp_0", "call_grp_1", "call_grp_1", "call_grp_2", "call_grp_3"]
    assert [(reply.status, reply.body["status"]) for reply in replies] == [
        (200, "recorded"),
        (200, "recorded"),
        (200, "duplicate"),
        (200, "recorded"),
        (200, "duplicate"),
    ]
    assert [len(events_of(f"call_grp_{index}")) for index in range(4)] == [1, 1, 1, 1]
    assert len(queue_rows()) == 1  # the consuming DAG queued once for the group


def test_a_failing_delivery_fails_alone_and_the_rest_of_its_group_is_recorded(
    held: HeldWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = _adapter.register_events

    def fails_on_bad(session: Any, asset: Any, uri: str, extras: list[dict[str, Any]], *args: Any) -> list[int]:
        ids = real(session, asset, uri, extras, *args)  # the rows are written, then the DB "fails"
        if any(extra["call_id"] == "call_grp_bad" for extra in extras):
            raise RuntimeError("database went away")
        return ids

    monkeypatch.setattr(_adapter, "register_events", fails_on_bad)
    bodies = [
        _body("call_grp_ok_1"),
        _body("call_grp_bad"),
        _body("call_grp_ok_2"),
        _body("call_grp_bad"),  # its copy in the same group
        _body("call_grp_ok_1"),  # a duplicate of a good one
    ]
    replies = _deliver_as_one_group(held, bodies)
    assert [(reply.status, reply.body.get("status")) for reply in replies] == [
        (200, "recorded"),
        (503, None),
        (200, "recorded"),
        (503, None),
        (200, "duplicate"),
    ]
    # The group was tried once, then each delivery alone.
    call_ids = sorted(str(parse(body).call_id) for body in bodies)
    assert [sorted(group) for group in held.groups[:2]] == [[HOLD], call_ids]
    assert sorted(held.groups[2:]) == [[call_id] for call_id in call_ids]
    assert events_of("call_grp_bad") == []  # nothing recorded for the failing delivery...
    with _session() as session:
        assert [row for row in receipt_rows(session, CONN_ID) if row["call_id"] == "call_grp_bad"] == []
    assert [len(events_of(call_id)) for call_id in ("call_grp_ok_1", "call_grp_ok_2")] == [1, 1]  # ...the rest is

    monkeypatch.setattr(_adapter, "register_events", real)  # DialNexa's retry, once the DB is back
    body = _body("call_grp_bad")
    assert handle(CONN_ID, [sign(body, SECRET)], body).body["status"] == "recorded"
    assert len(events_of("call_grp_bad")) == 1


def test_a_cancelled_delivery_is_not_recorded(conn: None) -> None:
    """A request that gave up (client gone) before its group formed records nothing; DialNexa retries it."""
    committed: list[Any] = []

    def commit(deliveries: Sequence[Delivery], notifications: list[Any]) -> list[Outcome]:
        committed.extend(deliveries)
        return [Outcome.RECORDED] * len(deliveries)

    writer = GroupWriter(commit=commit)
    gone, kept = (writer_module.Delivery(CONN_ID, parse(_body(call_id)), 0.0) for call_id in ("call_c_1", "call_c_2"))
    assert gone.future.cancel()
    writer._write([item for item in (gone, kept) if item.future.set_running_or_notify_cancel()])
    assert [item.event.call_id for item in committed] == ["call_c_2"]
    assert kept.future.result() is Outcome.RECORDED
