"""Exactly once: a receipt per (connection, call, status) and the asset event, committed together.

The provider owns one small table in Airflow's metadata DB, ``dialnexa_webhook_receipt``, created on
first use, with the primary key ``(conn_id, call_id, status)``. Recording call-ended deliveries (one, or a
group gathered by ``writer.py``) is one transaction: insert each receipt unless its key exists (the
database decides, ``ON CONFLICT DO NOTHING``), record an asset event for each new receipt (``_adapter``:
the rows Airflow's asset manager writes), store the event id on the receipt, commit. The database
enforces the key, so whatever DialNexa does (retries, duplicates, replays of an authentic body) and however
many api-servers receive it, or restart between deliveries, one receipt commits and with it one event;
every other attempt finds the key and answers "duplicate" without recording. A failure anywhere rolls the
transaction back, so DialNexa's retry finds no receipt and records the event then.

``pending`` marks receipts the sweeper (``sweeper.py``) still watches until each DAG scheduled on the
asset has a run that consumed the event.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import Boolean, Column, Float, Index, Integer, MetaData, String, Table, bindparam, insert, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from airflow_provider_dialnexa.webhooks import _adapter
from airflow_provider_dialnexa.webhooks.events import WebhookEvent
from airflow_provider_dialnexa.webhooks.uri import calls_asset_uri

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine
    from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

TABLE_NAME = "dialnexa_webhook_receipt"
#: Kept apart from Airflow's own ``Base.metadata`` so Airflow's migrations never see (or drop) the table.
metadata = MetaData()
receipts = Table(
    TABLE_NAME,
    metadata,
    Column("conn_id", String(250), primary_key=True),
    Column("call_id", String(128), primary_key=True),
    Column("status", String(100), primary_key=True),
    Column("event_name", String(100), nullable=False),
    Column("asset_event_id", Integer, nullable=True),
    Column("received_at", Float, nullable=False),  # epoch seconds (UTC), portable across backends
    Column("pending", Boolean, nullable=False, default=True),
    Index(f"idx_{TABLE_NAME}_pending", "pending", "received_at"),
)


class Outcome(enum.Enum):
    """What recording a call-ended delivery did."""

    RECORDED = "recorded"
    DUPLICATE = "duplicate"


_ready: set[str] = set()
_ready_lock = threading.Lock()


def ensure_table(engine: Engine) -> None:
    """Create the receipt table if it does not exist (once per process and database)."""
    key = str(engine.url)
    if key in _ready:
        return
    with _ready_lock:
        if key in _ready:
            return
        try:
            metadata.create_all(engine, checkfirst=True)
        except SQLAlchemyError:  # another process created it between our check and our CREATE
            from sqlalchemy import inspect

            if not inspect(engine).has_table(TABLE_NAME):
                raise
        _ready.add(key)


def record(
    session: Session,
    conn_id: str,
    event: WebhookEvent,
    *,
    now: float | None = None,
    after_commit: list[Any] | None = None,
) -> Outcome:
    """Record one call-ended event exactly once; the caller commits ``session`` (or rolls it back on error).

    ``after_commit`` collects Airflow's listener notifications to run after the commit (run at once when
    None). Usable outside a request (a relay, a queue consumer): see ``record_group``.
    """
    return record_group(session, [(conn_id, event)], now=now, after_commit=after_commit)[0]


def record_group(
    session: Session,
    deliveries: Sequence[tuple[str, WebhookEvent]],
    *,
    now: float | None = None,
    received_at: Sequence[float] | None = None,
    after_commit: list[Any] | None = None,
) -> list[Outcome]:
    """Record (connection id, call-ended event) pairs in ``session``'s one transaction, each exactly once.

    The caller commits (or rolls back on any error: then nothing of the group is written). Per key
    (connection, call, status), the first delivery of the group inserts the receipt unless the key exists
    (``RECORDED``, else ``DUPLICATE``); later ones in the group are ``DUPLICATE``. Receipts are inserted in
    key order, before any event, so two writers (replicas on PostgreSQL) take the keys' locks in one order:
    a concurrent writer of the same key waits for the first transaction, then finds its receipt (or, if
    that one rolled back, inserts it). Then each connection's new events go to its calls asset in one
    ``_adapter.register_events`` call (which queues each consuming DAG once), and each receipt gets its
    event id. ``received_at`` dates each receipt (epoch seconds), else ``now`` (else the current time) dates all.
    """
    ensure_table(session.get_bind().engine)  # type: ignore[union-attr]
    now = time.time() if now is None else now
    dates = list(received_at) if received_at is not None else [now] * len(deliveries)
    outcomes = [Outcome.DUPLICATE] * len(deliveries)
    first: dict[tuple[str, str, str], int] = {}
    for index, (conn_id, event) in enumerate(deliveries):
        first.setdefault((conn_id, str(event.call_id), str(event.status)), index)
    rows = []
    for key in sorted(first):
        conn_id, call_id, status = key
        name = deliveries[first[key]][1].name
        arrived = dates[first[key]]
        rows.append(dict(conn_id=conn_id, call_id=call_id, status=status, event_name=name, received_at=arrived))
    new: dict[str, list[int]] = defaultdict(list)
    for key in _insert_receipts(session, rows):
        index = first[key]
        outcomes[index] = Outcome.RECORDED
        new[key[0]].append(index)
    for conn_id, indexes in sorted(new.items()):
        uri = calls_asset_uri(conn_id)
        asset = _adapter.find_asset(session, uri)
        if asset is None:
            asset = _adapter.create_asset(session, uri)
            log.warning(
                "DialNexa webhook: no DAG declares %s yet; created the asset so the event is kept "
                "(schedule a DAG on calls_ended_asset(%r) to consume such events)",
                uri,
                conn_id,
            )
        events = [deliveries[index][1] for index in indexes]
        extras = [event.asset_extra(conn_id) for event in events]
        event_ids = _adapter.register_events(session, asset, uri, extras, after_commit)
        session.execute(
            update(receipts)
            .where(
                receipts.c.conn_id == bindparam("b_conn"),
                receipts.c.call_id == bindparam("b_call"),
                receipts.c.status == bindparam("b_status"),
            )
            .values(asset_event_id=bindparam("b_event")),
            [
                {"b_conn": conn_id, "b_call": e.call_id, "b_status": e.status, "b_event": event_id}
                for e, event_id in zip(events, event_ids, strict=True)
            ],
        )
    return outcomes


def _insert_receipts(session: Session, rows: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """Insert the receipts whose key does not exist yet, in the rows' order; the keys inserted.

    The database decides, not this process: ``ON CONFLICT DO NOTHING`` (PostgreSQL, SQLite) reports which
    rows it inserted (all in one statement where SQLAlchemy 2 returns them, else row by row); elsewhere
    (MySQL) a savepoint per row keeps the transaction when a key exists.
    """
    dialect = session.get_bind().dialect.name
    keys = [(row["conn_id"], row["call_id"], row["status"]) for row in rows]
    if dialect not in ("postgresql", "sqlite"):
        inserted = []
        for key, row in zip(keys, rows, strict=True):
            try:
                with session.begin_nested():
                    session.execute(insert(receipts).values(pending=True, **row))
            except IntegrityError:
                continue
            inserted.append(key)
        return inserted
    from sqlalchemy.dialects import postgresql, sqlite

    dialect_insert: Any = postgresql.insert if dialect == "postgresql" else sqlite.insert
    if _adapter.BATCHED_RETURNING and len(rows) > 1:
        statement = dialect_insert(receipts).values([{"pending": True, **row} for row in rows])
        returning = statement.on_conflict_do_nothing().returning(
            receipts.c.conn_id, receipts.c.call_id, receipts.c.status
        )
        found = {tuple(row) for row in session.execute(returning)}
        return [key for key in keys if key in found]
    inserted = []
    for key, row in zip(keys, rows, strict=True):
        result: Any = session.execute(dialect_insert(receipts).values(pending=True, **row).on_conflict_do_nothing())
        if result.rowcount:
            inserted.append(key)
    return inserted


def receipt_rows(session: Session, conn_id: str | None = None) -> list[dict[str, Any]]:
    """Every receipt (of one connection), for tests, benchmarks and operators' checks."""
    from sqlalchemy import select

    ensure_table(session.get_bind().engine)  # type: ignore[union-attr]
    query = select(receipts)
    if conn_id is not None:
        query = query.where(receipts.c.conn_id == conn_id)
    return [dict(row._mapping) for row in session.execute(query.order_by(receipts.c.received_at))]
