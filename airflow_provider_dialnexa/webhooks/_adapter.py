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
