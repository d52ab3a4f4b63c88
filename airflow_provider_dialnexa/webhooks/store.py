"""Exactly once: a receipt per (connection, call, status) and the asset event, committed together.

The provider owns one small table in Airflow's metadata DB, ``dialnexa_webhook_receipt``, created on
first use, with the primary key ``(conn_id, call_id, status)``. Recording a call-ended delivery is one
transaction: insert the receipt, record the asset event through Airflow's asset manager, store the
event id on the receipt, commit. The database enforces the key, so whatever DialNexa does (retries,
duplicates, replays of an authentic body) and however many api-servers receive it, or restart between
deliveries, one receipt commits and with it one event; every other attempt hits the key and answers
"duplicate" without recording. A failure anywhere rolls both back, so DialNexa's retry finds no receipt
and records the event then.

``pending`` marks receipts the sweeper (``sweeper.py``) still watches until each DAG scheduled on the
asset has a run that consumed the event.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from sqlalchemy import Boolean, Column, Float, Index, Integer, MetaData, String, Table, insert, update
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

    ``after_commit`` collects Airflow's listener notifications to run after the commit (where supported).
    Order matters: the receipt before the event, so a duplicate fails on the key before an event exists
    (and the transaction is rolled back). A concurrent delivery of the same (connection, call, status)
    waits on the key for the first transaction, then finds its receipt (or, if that one rolled back,
    records the event itself).
    """
    ensure_table(session.get_bind().engine)  # type: ignore[union-attr]
    uri = calls_asset_uri(conn_id)
    asset = _adapter.find_asset(session, uri)
    receipt = {
        "conn_id": conn_id,
        "call_id": event.call_id,
        "status": event.status,
        "event_name": event.name,
        "received_at": time.time() if now is None else now,
        "pending": True,
    }
    try:
        # No savepoint: on SQLite (pysqlite) a SAVEPOINT opened before any write becomes the outermost
        # transaction and its RELEASE commits, which would commit the receipt even if the event then failed.
        session.execute(insert(receipts).values(**receipt))
    except IntegrityError:
        session.rollback()  # nothing else was written in this transaction
        return Outcome.DUPLICATE
    if asset is None:
        asset = _adapter.create_asset(session, uri)
        log.warning(
            "DialNexa webhook: no DAG declares %s yet; created the asset so the event is kept "
            "(schedule a DAG on calls_ended_asset(%r) to consume such events)",
            uri,
            conn_id,
        )
    event_id = _adapter.register_event(session, asset, uri, event.asset_extra(conn_id), after_commit)
    session.execute(
        update(receipts)
        .where(
            receipts.c.conn_id == conn_id,
            receipts.c.call_id == event.call_id,
            receipts.c.status == event.status,
        )
        .values(asset_event_id=event_id)
    )
    return Outcome.RECORDED


def receipt_rows(session: Session, conn_id: str | None = None) -> list[dict[str, Any]]:
    """Every receipt (of one connection), for tests, benchmarks and operators' checks."""
    from sqlalchemy import select

    ensure_table(session.get_bind().engine)  # type: ignore[union-attr]
    query = select(receipts)
    if conn_id is not None:
        query = query.where(receipts.c.conn_id == conn_id)
    return [dict(row._mapping) for row in session.execute(query.order_by(receipts.c.received_at))]
