"""The receiver's direct recording path (``_adapter.register_events``) writes what Airflow's own asset (dataset)
manager writes, notifies the listeners it notifies, and the scheduler treats both events alike.

Real SQLite metadata DB, the real scheduler's run creation (``schedule_once``), Airflow's manager on the
one side (``_adapter.register_event`` calls ``register_asset_change`` / ``register_dataset_change``), the
direct path on the other, with the manager disabled so it cannot be what wrote the rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from _compat import AIRFLOW_V_3
from sqlalchemy import select
from test_webhook_store import CONN_ID, DAG_ID, _session, db, queue_rows, schedule_once, set_paused
from test_webhook_store import _drain as _drain_store

from airflow_provider_dialnexa.webhooks import _adapter, calls_asset_uri, store

__all__ = ["db"]  # the module-scoped fixture: the test DAG parsed into the metadata DB

URI = calls_asset_uri(CONN_ID)


class Listener:
    """An Airflow listener that keeps what it was told."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    if AIRFLOW_V_3:
        from airflow.listeners import hookimpl

        @hookimpl
        def on_asset_changed(self, asset: Any) -> None:
            self.calls.append(("on_asset_changed", asset))

        @hookimpl
        def on_asset_event_emitted(self, asset_event: Any) -> None:
            self.calls.append(("on_asset_event_emitted", asset_event))
    else:
        from airflow.listeners import hookimpl

        @hookimpl
        def on_dataset_changed(self, dataset: Any) -> None:
            self.calls.append(("on_dataset_changed", dataset))


@pytest.fixture
def listener(db: None) -> Iterator[Listener]:
    from airflow.listeners.listener import get_listener_manager

    found = Listener()
    manager = get_listener_manager()
    manager.add_listener(found)
    yield found
    manager.pm.unregister(found)


def _drain() -> None:
    """No queued or pending work left by earlier tests (the receipt table exists even before any delivery)."""
    with _session() as session:
        store.ensure_table(session.get_bind().engine)
    _drain_store()


def _extra(call_id: str) -> dict[str, Any]:
    return {"source": "dialnexa_webhook", "conn_id": CONN_ID, "call_id": call_id, "status": "completed"}


def _record(direct: bool, call_ids: list[str]) -> tuple[list[int], list[Any]]:
    """Record events on the test asset through one path in one committed transaction; (event ids, sink)."""
    sink: list[Any] = []
    with _session() as session:
        asset = _adapter.find_asset(session, URI)
        assert asset is not None
        extras = [_extra(call_id) for call_id in call_ids]
        if direct:
            assert _adapter.consuming_dags(session, asset, URI) is not None  # the direct path applies here
            ids = _adapter.register_events(session, asset, URI, extras, after_commit=sink)
        else:
            ids = [_adapter.register_event(session, asset, URI, extra, after_commit=sink) for extra in extras]
    return ids, sink


def _rows(event_ids: list[int]) -> tuple[list[dict[str, Any]], list[tuple[Any, ...]]]:
    """The events' columns (but id, timestamp) and the run-queue rows (asset, DAG), after the commit.

    Checks that each queue row is dated no earlier than the events, so the scheduler's window holds them.
    """
    line = _adapter.airflow_line()
    table = line.asset_event.__table__
    with _session() as session:
        events = [
            {key: value for key, value in row._mapping.items() if key not in ("id", "timestamp")}
            for row in session.execute(select(table).where(table.c.id.in_(event_ids)).order_by(table.c.id))
        ]
        stamps = [row[0] for row in session.execute(select(table.c.timestamp).where(table.c.id.in_(event_ids)))]
        queued = session.execute(select(line.queue.__table__)).all()
    for row in queued:
        assert all(row._mapping["created_at"] >= stamp for stamp in stamps)
    return events, sorted(tuple(row)[:2] for row in queued)


def _consumed_by_new_run(event_ids: list[int]) -> tuple[str, list[int]]:
    """Let the scheduler create a run; (its run type, the event ids it consumed)."""
    line = _adapter.airflow_line()
    run, consumed = line.dag_run, line.consumed
    with _session() as session:
        before = set(session.scalars(select(run.id).where(run.dag_id == DAG_ID)))
    schedule_once()
    with _session() as session:
        (new,) = [
            row
            for row in session.execute(select(run.id, run.run_type).where(run.dag_id == DAG_ID))
            if row.id not in before
        ]
        took = sorted(session.scalars(select(consumed.c.event_id).where(consumed.c.dag_run_id == new.id)))
    return str(new.run_type), took


def _without_call_ids(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**row, "extra": {**row["extra"], "call_id": "*"}} for row in rows]


def _disable_manager(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the direct path must not go through Airflow's manager")

    method = "register_asset_change" if AIRFLOW_V_3 else "register_dataset_change"
    monkeypatch.setattr(_adapter.airflow_line().manager, method, refuse)


def test_direct_path_writes_the_managers_rows_and_the_scheduler_runs_both_alike(
    listener: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    _drain()
    own_ids, own_sink = _record(False, ["call_eq_own_1"])
    own_inline, listener.calls = listener.calls, []  # 2.11's manager notifies inside the transaction
    own_rows, own_queue = _rows(own_ids)
    own_run = _consumed_by_new_run(own_ids)

    with monkeypatch.context() as patch:
        _disable_manager(patch)
        direct_ids, direct_sink = _record(True, ["call_eq_direct_1"])
    direct_rows, direct_queue = _rows(direct_ids)
    direct_run = _consumed_by_new_run(direct_ids)

    assert _without_call_ids(direct_rows) == _without_call_ids(own_rows)  # every column but id and timestamp
    assert direct_queue == own_queue == [(_asset_id(), DAG_ID)]  # one queue row for the consuming DAG
    assert direct_run == (own_run[0], direct_ids)  # an asset-triggered run that took exactly these events
    assert own_run[1] == own_ids

    # The listeners hear the same; the direct path only once the sink is run (after the commit).
    assert listener.calls == []
    for notify in own_sink:
        notify()
    own_heard, listener.calls = own_inline + listener.calls, []
    for notify in direct_sink:
        notify()
    direct_heard = listener.calls
    assert len(direct_heard) == (2 if AIRFLOW_V_3 else 1)
    assert (own_inline == []) is AIRFLOW_V_3  # 3.x defers its own notifications to the sink too
    assert [name for name, _ in direct_heard] == [name for name, _ in own_heard]
    assert [_comparable(value) for _, value in direct_heard] == [_comparable(value) for _, value in own_heard]


def test_a_group_of_events_is_queued_once_after_all_of_them(db: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Several events in one call: one queue row dated after every one, so one run takes them all (the manager,
    called event by event, would queue at the first and leave the rest for a later run)."""
    _drain()
    with monkeypatch.context() as patch:
        _disable_manager(patch)
        ids, _ = _record(True, ["call_eq_group_1", "call_eq_group_2", "call_eq_group_3"])
    assert _rows(ids)[1] == [(_asset_id(), DAG_ID)]
    assert _consumed_by_new_run(ids)[1] == ids


def test_paused_consumer_is_queued_by_neither_path(db: None, monkeypatch: pytest.MonkeyPatch) -> None:
    _drain()
    set_paused(True)
    try:
        own_ids, _ = _record(False, ["call_eq_paused_1"])
        assert queue_rows() == []
        with monkeypatch.context() as patch:
            _disable_manager(patch)
            direct_ids, _ = _record(True, ["call_eq_paused_2"])
        assert queue_rows() == []
        assert _without_call_ids(_rows(direct_ids)[0]) == _without_call_ids(_rows(own_ids)[0])
    finally:
        set_paused(False)
    _drain()


def test_a_replaced_manager_records_every_event_itself(db: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """A deployment that configured its own manager class keeps getting every event through it."""
    line = _adapter.airflow_line()
    seen: list[dict[str, Any]] = []
    own = line.manager

    class Replaced(type(own)):  # type: ignore[misc]
        pass

    replaced = Replaced()
    method = "register_asset_change" if AIRFLOW_V_3 else "register_dataset_change"
    original = getattr(own, method)

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs["extra"])
        return original(*args, **kwargs)

    monkeypatch.setattr(replaced, method, spy)
    monkeypatch.setattr(_adapter, "airflow_line", lambda: _replace(line, replaced))
    _adapter._direct_path_allowed.cache_clear()
    try:
        with _session() as session:
            asset = _adapter.find_asset(session, URI)
            assert asset is not None
            assert _adapter.consuming_dags(session, asset, URI) is None
            _adapter.register_events(session, asset, URI, [_extra("call_eq_replaced_1")], after_commit=[])
    finally:
        _adapter._direct_path_allowed.cache_clear()
    assert [extra["call_id"] for extra in seen] == ["call_eq_replaced_1"]
    _drain()


def _replace(line: Any, manager: Any) -> Any:
    import dataclasses

    return dataclasses.replace(line, manager=manager)


def _comparable(value: Any) -> Any:
    """A listener argument with the call id masked (the events differ only there)."""
    if hasattr(value, "extra") and hasattr(value, "asset"):  # 3.x listener AssetEvent
        import attrs

        fields = attrs.asdict(value, recurse=False)
        fields["extra"] = {**fields["extra"], "call_id": "*"}
        fields["asset"] = (value.asset.name, value.asset.uri, value.asset.group, value.asset.extra)
        return fields
    if hasattr(value, "uri"):
        return (getattr(value, "name", None), value.uri, getattr(value, "group", None), value.extra)
    return value


def _asset_id() -> int:
    with _session() as session:
        found = _adapter.find_asset_id(session, URI)
    assert found is not None
    return found


def test_an_airflow_line_not_checked_uses_the_manager(db: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_adapter, "DIRECT_PATH_LINES", ("9.9",))
    _adapter._direct_path_allowed.cache_clear()
    try:
        with _session() as session:
            asset = _adapter.find_asset(session, URI)
            assert asset is not None
            assert _adapter.consuming_dags(session, asset, URI) is None
    finally:
        _adapter._direct_path_allowed.cache_clear()
