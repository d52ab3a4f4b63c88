"""The one version-gated place that touches Airflow's internal asset (dataset) models.

Recording an event from outside a task has no public API on either line: Airflow 3 has
``AssetManager.register_asset_change`` (``airflow.assets.manager``) over ``AssetModel``/``AssetEvent``/
``AssetDagRunQueue``; Airflow 2.11 has ``DatasetManager.register_dataset_change`` over
``DatasetModel``/``DatasetEvent``/``DatasetDagRunQueue``, and asset-triggered runs are dated by
``run_after`` (3) or ``execution_date`` (2.11). ``airflow_line()`` maps both onto one ``Line``; nothing
else in the provider imports these modules. Only the receiver and its sweeper (web server processes)
call this, never DAG parsing.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import __version__ as sqlalchemy_version

if TYPE_CHECKING:
    from sqlalchemy.orm import Session


@dataclass(frozen=True)
class Line:
    """Airflow's asset models and names on the running Airflow line."""

    v3: bool
    asset_model: Any  # AssetModel | DatasetModel
    asset_event: Any  # AssetEvent | DatasetEvent
    queue: Any  # AssetDagRunQueue | DatasetDagRunQueue
    schedule_ref: Any  # DagScheduleAssetReference | DagScheduleDatasetReference
    consumed: Any  # the dagrun <-> event association table
    dag_model: Any
    dag_run: Any
    manager: Any  # the configured asset (dataset) manager instance
    asset_triggered: str  # DagRun.run_type of asset-triggered runs

    @property
    def event_asset_id(self) -> Any:
        """``AssetEvent.asset_id`` / ``DatasetEvent.dataset_id``."""
        return self.asset_event.asset_id if self.v3 else self.asset_event.dataset_id

    @property
    def queue_asset_id(self) -> Any:
        return self.queue.asset_id if self.v3 else self.queue.dataset_id

    @property
    def ref_asset_id(self) -> Any:
        return self.schedule_ref.asset_id if self.v3 else self.schedule_ref.dataset_id

    @property
    def run_date(self) -> Any:
        """The column asset-triggered runs are windowed by: ``run_after`` (3) / ``execution_date`` (2.11)."""
        return self.dag_run.run_after if self.v3 else self.dag_run.execution_date

    def live_dag(self) -> Any:
        """SQL condition: a DAG that can get runs (not paused; active on 2.11, not stale on 3)."""
        dag = self.dag_model
        if self.v3:
            return dag.is_paused.is_(False) & dag.is_stale.is_(False)
        return dag.is_paused.is_(False) & dag.is_active.is_(True)

    def queue_row(self, asset_id: int, dag_id: str, created_at: datetime) -> dict[str, Any]:
        """Column values of a run-queue row (the scheduler's "this DAG has new events" marker)."""
        key = "asset_id" if self.v3 else "dataset_id"
        return {key: asset_id, "target_dag_id": dag_id, "created_at": created_at}


@functools.cache
def airflow_line() -> Line:
    """The models of the Airflow line this process runs (imported on first use, then cached)."""
    from airflow.providers.common.compat.version_compat import AIRFLOW_V_3_0_PLUS

    if AIRFLOW_V_3_0_PLUS:
        from airflow.assets.manager import asset_manager
        from airflow.models.asset import (
            AssetDagRunQueue,
            AssetEvent,
            AssetModel,
            DagScheduleAssetReference,
        )
        from airflow.models.asset import association_table as consumed_v3
        from airflow.models.dag import DagModel
        from airflow.models.dagrun import DagRun
        from airflow.utils.types import DagRunType

        return Line(
            v3=True,
            asset_model=AssetModel,
            asset_event=AssetEvent,
            queue=AssetDagRunQueue,
            schedule_ref=DagScheduleAssetReference,
            consumed=consumed_v3,
            dag_model=DagModel,
            dag_run=DagRun,
            manager=asset_manager,
            asset_triggered=DagRunType.ASSET_TRIGGERED.value,
        )
    from airflow.datasets.manager import dataset_manager
    from airflow.models.dag import DagModel as DagModel2
    from airflow.models.dagrun import DagRun as DagRun2
    from airflow.models.dataset import (
        DagScheduleDatasetReference,
        DatasetDagRunQueue,
        DatasetEvent,
        DatasetModel,
    )
    from airflow.models.dataset import association_table as consumed_v2

    return Line(
        v3=False,
        asset_model=DatasetModel,
        asset_event=DatasetEvent,
        queue=DatasetDagRunQueue,
        schedule_ref=DagScheduleDatasetReference,
        consumed=consumed_v2,
        dag_model=DagModel2,
        dag_run=DagRun2,
        manager=dataset_manager,
        asset_triggered="dataset_triggered",  # DagRunType.DATASET_TRIGGERED
    )


def get_connection(conn_id: str) -> Any | None:
    """The connection from Airflow's secrets backends and metadata DB (server side), None when undefined."""
    from airflow.models.connection import Connection
    from airflow.providers.common.compat.sdk import AirflowNotFoundException

    try:
        return Connection.get_connection_from_secrets(conn_id)
    except AirflowNotFoundException:
        return None


def find_asset_id(session: Session, uri: str) -> int | None:
    """The id of the asset with this URI (the one named after its URI first, as ``Asset(uri)`` makes it)."""
    found = find_asset(session, uri)
    return found[0] if found else None


def find_asset(session: Session, uri: str) -> tuple[int, str] | None:
    """(id, name) of the asset with this URI (the one named after its URI first, as ``Asset(uri)`` makes it)."""
    from sqlalchemy import case, literal, select

    line = airflow_line()
    model = line.asset_model
    if line.v3:
        query = select(model.id, model.name).where(model.uri == uri)
        query = query.order_by(case((model.name == uri, 0), else_=1), model.id)
    else:
        query = select(model.id, literal(uri)).where(model.uri == uri)
    row = session.execute(query.limit(1)).first()
    return (int(row[0]), str(row[1])) if row else None


def create_asset(session: Session, uri: str) -> tuple[int, str]:
    """Create the calls asset when no DAG declared it yet (see docs/webhooks.md: events are kept, not dropped)."""
    line = airflow_line()
    if line.v3:
        from airflow.models.asset import AssetActive

        asset = line.asset_model(name=uri, uri=uri, group="asset", extra={})
        session.add(asset)
        session.flush()
        session.add(AssetActive.for_asset(asset))
    else:
        asset = line.asset_model(uri=uri, extra={})
        session.add(asset)
    session.flush()
    return int(asset.id), uri


@functools.cache
def _takes_callback_sink() -> bool:
    import inspect

    return "callback_sink" in inspect.signature(airflow_line().manager.register_asset_change).parameters


def register_event(
    session: Session,
    asset: tuple[int, str],
    uri: str,
    extra: dict[str, Any],
    after_commit: list[Any] | None = None,
) -> int:
    """Record one asset (dataset) event through Airflow's own manager, in ``session``'s transaction.

    The manager also queues every DAG scheduled on the asset (``AssetDagRunQueue``) and notifies
    listeners (e.g. OpenLineage), exactly as for an event a task emits. Where Airflow can defer the
    notifications (3.x ``callback_sink``), they go to ``after_commit`` for the caller to run once the
    event is committed, so a rolled-back attempt notifies no one. Returns the event id.
    """
    line = airflow_line()
    if line.v3:
        from airflow.serialization.definitions.assets import SerializedAssetUniqueKey

        key = SerializedAssetUniqueKey(name=asset[1], uri=uri)
        deferred = {"callback_sink": after_commit} if after_commit is not None and _takes_callback_sink() else {}
        event = line.manager.register_asset_change(asset=key, extra=extra, session=session, **deferred)
    else:
        from airflow.datasets import Dataset

        event = line.manager.register_dataset_change(dataset=Dataset(uri=uri), extra=extra, session=session)
    if event is None:  # the asset vanished between lookup and recording: let the sender retry
        raise RuntimeError(f"Airflow did not record the event on {uri}")
    session.flush()
    return int(event.id)


# -- the direct path: what the manager writes for an event from outside a task, without its ORM work ---------
#
# For an event with no producing task, no alias and no partition key (the receiver's events), Airflow's own
# manager (3.3 ``AssetManager.register_asset_change``, 2.11 ``DatasetManager.register_dataset_change``)
# writes exactly: one event row (asset id, extra; source columns NULL, ``source_map_index`` -1 by server
# default, ``timestamp`` now), then one run-queue row per consuming DAG unless one exists (``ON CONFLICT DO
# NOTHING`` on PostgreSQL, a savepoint around ``merge`` elsewhere: the same "insert if absent"), and counts
# ``asset.updates`` (``dataset.updates``). It notifies listeners ``on_asset_changed`` and
# ``on_asset_event_emitted`` (2.11: ``on_dataset_changed``, before commit; here always after it).
# Consuming DAGs: 3.3: scheduled on the asset (by reference, name or URI) and not paused; 2.11: scheduled on
# it, active and not paused. Whatever else the manager could do sends the events through it instead: an
# Airflow line not checked here (``DIRECT_PATH_LINES``), a manager class configured in place of Airflow's own,
# 3.x multi-team mode, or a partition-aware consumer (Airflow writes a "missing partition key" log row for
# it). ``tests/test_webhook_fastpath.py`` proves the rows, the notifications and the scheduler's runs equal
# the manager's.


#: SQLAlchemy 2 (Airflow 3) returns generated ids of a many-row INSERT in the rows' order; 1.4 (2.11) does not.
BATCHED_RETURNING = int(sqlalchemy_version.split(".")[0]) >= 2


#: The Airflow lines whose manager the direct path was checked against (others use the manager itself).
DIRECT_PATH_LINES = ("2.11", "3.3")


@functools.cache
def _direct_path_allowed() -> bool:
    """A checked Airflow line, its own manager class configured (not a replacement), 3.x multi-team mode off."""
    from airflow import __version__ as airflow_version

    if ".".join(airflow_version.split(".")[:2]) not in DIRECT_PATH_LINES:
        return False
    line = airflow_line()
    if line.v3:
        from airflow.assets.manager import AssetManager
        from airflow.configuration import conf

        own = type(line.manager) is AssetManager and hasattr(AssetManager, "nofity_asset_event_emitted")
        return own and not conf.getboolean("core", "multi_team", fallback=False)
    from airflow.datasets.manager import DatasetManager

    return type(line.manager) is DatasetManager


def _not_paused(dag: Any) -> Any:
    """``not dag.is_paused`` as Python reads it (NULL counts as not paused)."""
    from sqlalchemy import or_

    return or_(dag.is_paused.is_(False), dag.is_paused.is_(None))


def consuming_dags(session: Session, asset: tuple[int, str], uri: str) -> list[str] | None:
    """The DAG ids the manager would queue for an event on ``asset``; None when it must record it itself."""
    from sqlalchemy import select, union

    if not _direct_path_allowed():
        return None
    line = airflow_line()
    dag, ref = line.dag_model, line.schedule_ref
    if not line.v3:
        rows = session.execute(
            select(dag.dag_id)
            .join(ref, ref.dag_id == dag.dag_id)
            .where(ref.dataset_id == asset[0], dag.is_active.is_(True), _not_paused(dag))
        )
        return sorted({row[0] for row in rows})
    from airflow.models.asset import DagScheduleAssetNameReference, DagScheduleAssetUriReference

    by_name, by_uri = DagScheduleAssetNameReference, DagScheduleAssetUriReference
    unpaused = dag.is_paused.is_(False)
    columns = (dag.dag_id, dag.timetable_partitioned)
    query = union(
        select(*columns).join(ref, ref.dag_id == dag.dag_id).where(ref.asset_id == asset[0], _not_paused(dag)),
        # The manager reads these two in SQL (``is_paused IS false``), the first through Python (``not is_paused``).
        select(*columns).join(by_name, by_name.dag_id == dag.dag_id).where(by_name.name == asset[1], unpaused),
        select(*columns).join(by_uri, by_uri.dag_id == dag.dag_id).where(by_uri.uri == uri, unpaused),
    )
    found = session.execute(query).all()
    if any(partitioned for _, partitioned in found):
        return None
    return sorted({dag_id for dag_id, _ in found})


def insert_queue_row(session: Session, values: dict[str, Any]) -> None:
    """Insert a run-queue row unless one exists (the receiver, the sweeper or the scheduler may race us)."""
    from sqlalchemy import insert

    table = airflow_line().queue.__table__
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        session.execute(pg_insert(table).values(**values).on_conflict_do_nothing())
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        session.execute(sqlite_insert(table).values(**values).on_conflict_do_nothing())
    else:
        session.execute(insert(table).values(**values).prefix_with("IGNORE"))


def register_events(
    session: Session,
    asset: tuple[int, str],
    uri: str,
    extras: list[dict[str, Any]],
    after_commit: list[Any] | None = None,
) -> list[int]:
    """Record asset (dataset) events on one asset in ``session``'s transaction; their ids, in order.

    Writes what Airflow's manager writes (see above) with a few plain statements, and queues each
    consuming DAG once for all ``extras``, after the events (so the queue row is dated after them, as
    the manager does). Listener notifications go to ``after_commit`` (run at once when it is None, as the
    manager does without a sink). Falls back to the manager, event by event, where it could do more.
    """
    from sqlalchemy import insert

    line = airflow_line()
    dag_ids = consuming_dags(session, asset, uri)
    if dag_ids is None:
        return [register_event(session, asset, uri, extra, after_commit) for extra in extras]
    table = line.asset_event.__table__
    key = "asset_id" if line.v3 else "dataset_id"
    rows = [{key: asset[0], "extra": extra} for extra in extras]
    if len(rows) > 1 and BATCHED_RETURNING:  # one statement, ids in the rows' order
        result: Any = session.execute(insert(table).returning(table.c.id, sort_by_parameter_order=True), rows)
        ids = [int(event_id) for event_id in result.scalars()]
    else:
        ids = [int(session.execute(insert(table).values(row)).inserted_primary_key[0]) for row in rows]  # type: ignore[attr-defined]
    _count_updates(line, len(extras))
    for dag_id in dag_ids:
        insert_queue_row(session, {key: asset[0], "target_dag_id": dag_id})
    notifications = _notifications(session, line, asset, uri, extras)
    if after_commit is None:
        for notify in notifications:
            notify()
    else:
        after_commit.extend(notifications)
    return ids


def _count_updates(line: Line, count: int) -> None:
    """The manager's counter, once per event (one call adding ``count``)."""
    if line.v3:
        from airflow._shared.observability.metrics import stats

        stats.incr("asset.updates", count=count, tags={})
    else:
        from airflow.stats import Stats

        Stats.incr("dataset.updates", count=count)


def _notifications(
    session: Session, line: Line, asset: tuple[int, str], uri: str, extras: list[dict[str, Any]]
) -> list[Any]:
    """The manager's listener calls for these events (none to build when no listener is registered)."""
    from functools import partial

    from airflow.listeners.listener import get_listener_manager

    if not get_listener_manager().has_listeners:
        return []
    manager = line.manager
    if not line.v3:
        from airflow.datasets import Dataset

        return [partial(manager.notify_dataset_changed, dataset=Dataset(uri=uri)) for _ in extras]
    from airflow.listeners.types import AssetEvent as ListenerAssetEvent

    model: Any = session.get(line.asset_model, asset[0])
    serialized = model.to_serialized()
    calls: list[Any] = []
    for extra in extras:
        emitted = ListenerAssetEvent(
            asset=serialized,
            extra=extra,
            source_dag_id=None,
            source_task_id=None,
            source_run_id=None,
            source_map_index=-1,
            source_aliases=[],
            partition_key=None,
            partition_date=None,
        )
        calls.append(partial(manager.notify_asset_changed, asset=serialized))
        calls.append(partial(manager.nofity_asset_event_emitted, asset_event=emitted))
    return calls
