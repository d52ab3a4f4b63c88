"""The receiver against a real (SQLite) metadata DB, without a web server: verification answers, exactly-once
recording, rollback on failure, and the sweeper that leaves no call behind, with Airflow's own scheduler code
creating the runs (``SchedulerJobRunner._create_dagruns_for_dags``, called in-process, once per "loop").
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from _compat import AIRFLOW_V_3
from sqlalchemy import select, update

from airflow_provider_dialnexa.webhooks import _adapter, calls_asset_uri, calls_from_events, receiver
from airflow_provider_dialnexa.webhooks.events import parse
from airflow_provider_dialnexa.webhooks.receiver import UNAUTHORIZED, handle
from airflow_provider_dialnexa.webhooks.signature import sign
from airflow_provider_dialnexa.webhooks.store import Outcome, ensure_table, receipt_rows, receipts, record
from airflow_provider_dialnexa.webhooks.sweeper import REDATE_GRACE, WATCH_SECONDS, sweep

ROOT = Path(__file__).resolve().parents[1]
CONN_ID = "dialnexa_webhooks_test"  # the one tests/dags/dialnexa_webhook_calls.py schedules on
DAG_ID = "dialnexa_webhook_calls"
SECRET = "whsec_store_test_secret"
OLD_SECRET = "whsec_store_old_secret"


def _body(call_id: str, status: str = "completed", event: str = "call_ended", **call: Any) -> bytes:
    if event == "call_ended":
        data: dict[str, Any] = {"event_type": event, "payload": {"call": {"id": call_id, "status": status, **call}}}
    else:
        data = {"event": event, "call": {"id": call_id, **call}}
    return json.dumps(data).encode()


def _session() -> Any:
    from airflow.utils.session import create_session

    return create_session()


def sync_dag(folder: Path) -> None:
    """Parse ``folder`` and write its DAGs to the DB (what the dag-processor does), unpaused."""
    if AIRFLOW_V_3:
        from airflow.dag_processing.bundles.manager import DagBundlesManager
        from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db

        DagBundlesManager().sync_bundles_to_db()
        bag = DagBag(dag_folder=str(folder), bundle_path=folder, bundle_name="dags-folder")
        assert bag.import_errors == {}
        sync_bag_to_db(bag, "dags-folder", None)
    else:
        from airflow.models.dagbag import DagBag as DagBag2

        bag2 = DagBag2(dag_folder=str(folder), include_examples=False)
        assert bag2.import_errors == {}
        bag2.sync_to_db()
    set_paused(False)


def set_paused(paused: bool) -> None:
    line = _adapter.airflow_line()
    with _session() as session:
        session.execute(update(line.dag_model).where(line.dag_model.dag_id == DAG_ID).values(is_paused=paused))


def schedule_once() -> None:
    """One pass of the scheduler's run creation (the real code; no loop, no executor)."""
    from airflow.jobs.job import Job
    from airflow.jobs.scheduler_job_runner import SchedulerJobRunner
    from airflow.utils.sqlalchemy import prohibit_commit

    runner = SchedulerJobRunner(job=Job())
    with _session() as session, prohibit_commit(session) as guard:
        runner._create_dagruns_for_dags(guard, session)


def runs_by_call() -> dict[str, list[int]]:
    """call id -> ids of the DAG runs that consumed an event of it."""
    line = _adapter.airflow_line()
    event, consumed = line.asset_event, line.consumed
    found: dict[str, list[int]] = {}
    with _session() as session:
        rows = session.execute(
            select(consumed.c.dag_run_id, event.extra).join(event, event.id == consumed.c.event_id)
        ).all()
    for run_id, extra in rows:
        found.setdefault(extra["call_id"], []).append(run_id)
    return found


def events_of(call_id: str) -> list[Any]:
    line = _adapter.airflow_line()
    with _session() as session:
        events = session.scalars(select(line.asset_event).order_by(line.asset_event.id)).all()
        session.expunge_all()
    return [event for event in events if (event.extra or {}).get("call_id") == call_id]


def queue_rows() -> list[tuple[int, str]]:
    line = _adapter.airflow_line()
    with _session() as session:
        return [tuple(row) for row in session.execute(select(line.queue_asset_id, line.queue.target_dag_id))]


@pytest.fixture(scope="module")
def db(airflow_db: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    folder = tmp_path_factory.mktemp("webhook_dags")
    shutil.copy(ROOT / "tests" / "dags" / "dialnexa_webhook_calls.py", folder)
    sync_dag(folder)


@pytest.fixture
def conn(db: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The test connection (env var), with the current and the previous webhook secret; a fresh secrets cache."""
    extra = {"webhook_secret": SECRET, "webhook_secret_previous": OLD_SECRET}
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps({"conn_type": "dialnexa", "password": "k:s", "extra": extra})
    )
    monkeypatch.setenv("AIRFLOW_CONN_DIALNEXA_NO_SECRET", json.dumps({"conn_type": "dialnexa", "password": "k:s"}))
    monkeypatch.setenv(
        "AIRFLOW_CONN_DIALNEXA_NOBODY",
        json.dumps({"conn_type": "dialnexa", "password": "k:s", "extra": {"webhook_secret": SECRET}}),
    )
    receiver.secrets_cache.clear()
    yield
    receiver.secrets_cache.clear()


def deliver(body: bytes, secret: str | None = SECRET, conn_id: str = CONN_ID, header: str = "x-nexa-signature") -> Any:
    signatures = [sign(body, secret)] if secret is not None else []
    return handle(conn_id, signatures, body, remote="203.0.113.9")


# -- authentication ----------------------------------------------------------------------------------------


def test_every_unauthenticated_delivery_gets_one_401_and_records_nothing(
    conn: None, caplog: pytest.LogCaptureFixture
) -> None:
    body = _body("call_auth_1")
    caplog.set_level(logging.INFO, logger="airflow_provider_dialnexa.webhooks")
    replies = {
        "unsigned": deliver(body, secret=None),
        "forged": deliver(body, secret="guessed-secret"),
        "other body": handle(CONN_ID, [sign(b'{"event_type":"verification"}', SECRET)], body),
        "unknown connection": deliver(body, conn_id="dialnexa_missing"),
        "no secret": deliver(body, conn_id="dialnexa_no_secret"),
        "malformed connection id": deliver(body, conn_id="../etc/passwd"),
    }
    assert {name: (reply.status, reply.body) for name, reply in replies.items()} == {
        name: (401, UNAUTHORIZED) for name in replies
    }
    assert events_of("call_auth_1") == []
    with _session() as session:
        assert [row for row in receipt_rows(session) if row["call_id"] == "call_auth_1"] == []
    rejected = [r.getMessage() for r in caplog.records if "rejected with 401" in r.getMessage()]
    assert len(rejected) == len(replies)
    reasons = " | ".join(rejected)
    for reason in ("no x-nexa-signature", "signature does not match", "no such connection", "no webhook_secret"):
        assert reason in reasons
    for secret_or_body in (SECRET, OLD_SECRET, "call_auth_1", "payload", sign(body, SECRET)):
        assert secret_or_body not in caplog.text


def test_both_header_names_both_secrets_and_a_rotation_without_restart(
    conn: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    ping = json.dumps({"event_type": "verification", "message": "verify", "timestamp": 1}).encode()
    assert handle(CONN_ID, [sign(ping, SECRET)], ping).status == 200  # x-nexa-signature
    assert handle(CONN_ID, [sign(ping, OLD_SECRET)], ping).body == {"status": "verified"}
    # The connection gets a new secret; the cached one must not keep the new signature out.
    new = {"webhook_secret": "whsec_rotated"}
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps({"conn_type": "dialnexa", "password": "k:s", "extra": new})
    )
    monkeypatch.setattr(receiver, "_REFRESH_AFTER", 0.0)
    assert handle(CONN_ID, [sign(ping, "whsec_rotated")], ping).status == 200
    assert handle(CONN_ID, [sign(ping, SECRET)], ping).status == 401  # the replaced secret is gone


def test_authentic_events_that_need_no_action_and_unusable_bodies(conn: None) -> None:
    initiated = _body("call_other_1", status="initiated", event="call_initiated")
    initiated = initiated.replace(b'"call_ended"', b'"call_initiated"')
    assert deliver(initiated).body == {"status": "ignored", "event": "call_initiated"}
    assert deliver(b'{"event": "campaign.completed"}').status == 200
    assert deliver(b"not json").status == 400
    no_id = json.dumps({"event_type": "call_ended", "payload": {"call": {"status": "completed"}}}).encode()
    reply = deliver(no_id)
    assert reply.status == 400
    assert "call id" in reply.body["detail"]
    assert events_of("call_other_1") == []


# -- exactly once ------------------------------------------------------------------------------------------


def test_one_event_per_call_and_status_whatever_the_spelling_or_repetition(conn: None) -> None:
    first = deliver(_body("call_once_1", hangup_reason="user_disconnected", to_number="12137771234"))
    assert (first.status, first.body) == (
        200,
        {"status": "recorded", "call_id": "call_once_1", "call_status": "completed"},
    )
    again = [
        deliver(_body("call_once_1", hangup_reason="user_disconnected", to_number="12137771234")),  # retry
        deliver(_body("call_once_1", status="COMPLETED")),  # another body, same call and status
        deliver(_body("call_once_1", event="call.completed")),  # the dotted spelling
        deliver(_body("call_once_1", event="call_initiated").replace(b'"call_ended"', b'"call_initiated"')),
    ]
    assert [reply.body["status"] for reply in again] == ["duplicate", "duplicate", "duplicate", "ignored"]
    assert deliver(_body("call_once_1", status="no-answer")).body["status"] == "recorded"  # another status

    events = events_of("call_once_1")
    assert sorted(event.extra["status"] for event in events) == ["completed", "no_answer"]
    completed = next(event for event in events if event.extra["status"] == "completed")
    assert completed.extra == {
        "source": "dialnexa_webhook",
        "conn_id": CONN_ID,
        "call_id": "call_once_1",
        "status": "completed",
        "event": "call_ended",
        "call": {"id": "call_once_1", "status": "completed", "hangup_reason": "user_disconnected"},
    }
    assert completed.source_dag_id is None
    with _session() as session:
        mine = [row for row in receipt_rows(session, CONN_ID) if row["call_id"] == "call_once_1"]
    assert sorted((row["status"], row["event_name"]) for row in mine) == [
        ("completed", "call_ended"),
        ("no_answer", "call_ended"),
    ]
    assert {row["asset_event_id"] for row in mine} == {event.id for event in events}


def test_a_database_failure_commits_nothing_and_the_retry_records(conn: None, monkeypatch: pytest.MonkeyPatch) -> None:
    body = _body("call_fail_1")

    def broken(*args: Any, **kwargs: Any) -> int:
        raise RuntimeError("database went away")

    with monkeypatch.context() as patch:
        patch.setattr(_adapter, "register_events", broken)
        reply = deliver(body)
    assert reply.status == 503
    assert events_of("call_fail_1") == []
    with _session() as session:
        assert [row for row in receipt_rows(session) if row["call_id"] == "call_fail_1"] == []  # rolled back
    assert deliver(body).body["status"] == "recorded"  # DialNexa's retry
    assert len(events_of("call_fail_1")) == 1


def test_an_asset_no_dag_declares_is_created_and_the_event_kept(conn: None) -> None:
    uri = calls_asset_uri("dialnexa_nobody")
    with _session() as session:
        assert _adapter.find_asset_id(session, uri) is None
    assert deliver(_body("call_nobody_1"), conn_id="dialnexa_nobody").body["status"] == "recorded"
    assert deliver(_body("call_nobody_1"), conn_id="dialnexa_nobody").body["status"] == "duplicate"
    with _session() as session:
        assert _adapter.find_asset_id(session, uri) is not None
        sweep(session)  # no DAG consumes it: the receipt is settled, nothing is queued
        (row,) = [row for row in receipt_rows(session, "dialnexa_nobody") if row["call_id"] == "call_nobody_1"]
    assert row["pending"] is False
    assert len(events_of("call_nobody_1")) == 1


# -- no call left behind -----------------------------------------------------------------------------------


def _drain() -> None:
    """Let earlier tests' events reach runs so each test starts with no queued or pending work."""
    for _ in range(3):
        schedule_once()
        with _session() as session:
            sweep(session)
    with _session() as session:
        ensure_table(session.get_bind().engine)  # the test may be the first of its process (xdist)
        session.execute(update(receipts).values(pending=False))
    schedule_once()


def test_a_burst_leaves_its_tail_behind_until_the_sweeper_queues_it(conn: None) -> None:
    _drain()
    asset_id = _asset_id()
    for call_id in ("call_burst_1", "call_burst_2", "call_burst_3"):
        assert deliver(_body(call_id)).body["status"] == "recorded"
    assert queue_rows() == [(asset_id, DAG_ID)]  # one queue row for the whole burst

    schedule_once()
    consumed = runs_by_call()
    # Airflow's own behaviour: the run holds events up to the queue row's creation, i.e. the first call.
    assert "call_burst_1" in consumed
    assert "call_burst_2" not in consumed
    assert "call_burst_3" not in consumed
    assert queue_rows() == []  # ... and nothing would ever bring the other two without another delivery

    with _session() as session:
        result = sweep(session)
    assert result.queued == [(asset_id, DAG_ID)]
    assert result.redated == []
    schedule_once()
    consumed = runs_by_call()
    assert len(consumed["call_burst_2"]) == len(consumed["call_burst_3"]) == 1
    assert consumed["call_burst_2"] == consumed["call_burst_3"] != consumed["call_burst_1"]

    with _session() as session:
        result = sweep(session)
        pending = [r for r in receipt_rows(session, CONN_ID) if r["call_id"].startswith("call_burst") and r["pending"]]
    assert (result.queued, pending) == ([], [])


def test_an_event_dated_inside_a_passed_window_is_redated_once(conn: None) -> None:
    _drain()
    asset_id = _asset_id()
    assert deliver(_body("call_late_0")).body["status"] == "recorded"
    schedule_once()
    # A delivery that another writer dated before that run's window closed but committed after the run read
    # the events (clock skew between replicas): reproduced by back-dating a new event to just before the one
    # that run consumed (further back could predate the DAG's schedule reference: no longer its event then).
    assert deliver(_body("call_late_1")).body["status"] == "recorded"
    line = _adapter.airflow_line()
    (late,) = events_of("call_late_1")
    with _session() as session:
        session.execute(
            update(line.asset_event)
            .where(line.asset_event.id == late.id)
            .values(timestamp=events_of("call_late_0")[0].timestamp - timedelta(microseconds=1))
        )
    schedule_once()
    assert "call_late_1" not in runs_by_call()  # the run after it skipped it: its date is behind the window
    with _session() as session:
        too_soon = sweep(session)
    assert too_soon.redated == []  # within the grace period, a run might still be committing it
    with _session() as session:
        result = sweep(session, now=datetime.now(UTC) + REDATE_GRACE + timedelta(seconds=1))
    assert result.redated == [late.id]
    assert (asset_id, DAG_ID) in result.queued
    schedule_once()
    assert len(runs_by_call()["call_late_1"]) == 1
    with _session() as session:
        assert sweep(session, now=datetime.now(UTC) + REDATE_GRACE * 2).redated == []


def test_paused_dags_are_not_queued_and_old_receipts_expire(conn: None) -> None:
    _drain()
    set_paused(True)
    try:
        assert deliver(_body("call_paused_1")).body["status"] == "recorded"
        assert queue_rows() == []
        with _session() as session:
            result = sweep(session)
        assert result.queued == []
        assert result.settled >= 1  # no DAG can consume it now: settled, Airflow's own rules apply on unpause
    finally:
        set_paused(False)
    assert deliver(_body("call_expired_1")).body["status"] == "recorded"
    with _session() as session:
        session.execute(
            update(receipts)
            .where(receipts.c.call_id == "call_expired_1")
            .values(received_at=time.time() - 2 * WATCH_SECONDS)
        )
        sweep(session)
        (row,) = [r for r in receipt_rows(session, CONN_ID) if r["call_id"] == "call_expired_1"]
    assert row["pending"] is False


def test_calls_from_events_on_recorded_events(conn: None) -> None:
    for call_id, status in (("call_read_1", "completed"), ("call_read_2", "busy")):
        deliver(_body(call_id, status=status, duration=12))
    events = events_of("call_read_1") + events_of("call_read_2") + events_of("call_read_1")
    assert calls_from_events({calls_asset_uri(CONN_ID): events}) == [
        {"id": "call_read_1", "status": "completed", "duration": 12},
        {"id": "call_read_2", "status": "busy", "duration": 12},
    ]


def test_record_needs_no_request_context(db: None) -> None:
    """``store.record`` is the whole effect: usable from a relay or a queue consumer (docs/webhooks.md)."""
    event = parse(_body("call_direct_1"))
    with _session() as session:
        assert record(session, CONN_ID, event) is Outcome.RECORDED
    with _session() as session:
        assert record(session, CONN_ID, event) is Outcome.DUPLICATE


def _asset_id() -> int:
    with _session() as session:
        asset_id = _adapter.find_asset_id(session, calls_asset_uri(CONN_ID))
    assert asset_id is not None
    return asset_id
