"""Asset events of the export operator: the file it wrote, with the run's summary as the event's ``extra``.

A fixed ``destination`` is known when the DAG is parsed, so it is the task's plain outlet asset (dataset on
Airflow 2). A templated one (or a mapped task's) is known only at run time: the task then declares an asset
alias, ``export_alias(dag_id, task_id)``, and resolves it to the file written
(``outlet_events[alias].add(Asset(uri), extra=...)``). DAGs scheduled on the alias run after each export.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from airflow.providers.common.compat.sdk import Asset, AssetAlias
from airflow.providers.common.compat.version_compat import AIRFLOW_V_3_0_PLUS

#: First part of every export alias name: ``dialnexa-export/<dag_id>/<task_id>``.
EXPORT_ALIAS_PREFIX = "dialnexa-export"


def export_alias_name(dag_id: str, task_id: str) -> str:
    """``dialnexa-export/<dag_id>/<task_id>``: DAG and task ids never contain ``/``, so names cannot collide."""
    return f"{EXPORT_ALIAS_PREFIX}/{dag_id}/{task_id}"


def export_alias(dag_id: str, task_id: str) -> Any:
    """The asset alias (dataset alias on Airflow 2) an export task resolves to each file it writes.

    Schedule a downstream DAG on it: ``schedule=[export_alias("dialnexa_call_export", "export_calls")]``.
    ``task_id`` is the full id (with its task group prefix, e.g. ``"exports.export_calls"``). Every map index
    of a mapped export task feeds the same alias; the event says which (``source_map_index``).
    """
    return AssetAlias(export_alias_name(dag_id, task_id))


def asset_uri(destination: str) -> str:
    """The asset URI of a destination: URLs as given, plain paths as absolute ``file://`` URIs."""
    return destination if "://" in destination else f"file://{os.path.abspath(destination)}"


def asset_for(destination: str) -> Any:
    """An Airflow asset (dataset on 2.x) for a destination, or None when Airflow refuses the URI as one."""
    try:
        return Asset(asset_uri(destination))
    except Exception:  # a URI Airflow refuses as an asset must not break the DAG: just no asset
        return None


class _HashableDict(dict):  # type: ignore[type-arg]
    """A dict Airflow 2.11 can put in a ``frozenset``: it groups alias events by ``frozenset(extra.items())``,
    which fails on a nested dict (the status counts). Stored and read back as a plain JSON object."""

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted(self.items())))


def event_extra(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The export's XCom summary as an asset event's ``extra`` (window, counts, path: never records)."""
    extra = dict(summary)
    if not AIRFLOW_V_3_0_PLUS:
        extra = {k: _HashableDict(v) if isinstance(v, dict) else v for k, v in extra.items()}
    return extra


def record_export_event(
    context: Mapping[str, Any], outlets: Iterable[Any], alias: Any, summary: Mapping[str, Any]
) -> Any:
    """Attach the summary to the event of the file written; return the asset the event is for (None: no event).

    The file's own outlet asset (fixed destination) gets the summary as its event's ``extra``; otherwise the
    alias, if the task declares one, is resolved to the file. Without ``outlet_events`` (a direct
    ``execute`` call outside Airflow) nothing is recorded.
    """
    events = context.get("outlet_events")
    if events is None:
        return None
    asset = asset_for(str(summary["path"]))
    if asset is None:
        return None
    own = next((o for o in outlets if isinstance(o, Asset) and o.uri == asset.uri), None)
    if own is not None:
        events[own].extra = event_extra(summary)
        return own
    if alias is None:
        return None
    if not AIRFLOW_V_3_0_PLUS:
        _ensure_alias_row(alias.name)
    events[alias].add(asset, extra=event_extra(summary))
    return asset


def _ensure_alias_row(name: str) -> None:  # pragma: no cover - Airflow 2.11 leg
    """Airflow 2.11 only: create the alias's row if no DAG parse wrote it yet.

    2.11 records an alias event only for an alias it has a row for, and fails the finished task otherwise
    ("Can't flush None value found in collection DatasetModel.aliases"). The scheduler's DAG parse writes the
    rows of every alias a DAG uses, but ``dag.test()`` and ``airflow dags test`` parse nothing into the
    database. Airflow 3 creates a missing alias row itself when it records the event.
    """
    from airflow.models.dataset import DatasetAliasModel
    from airflow.utils.session import create_session
    from sqlalchemy import select
    from sqlalchemy.exc import IntegrityError

    try:
        with create_session() as session:
            if session.scalar(select(DatasetAliasModel.id).where(DatasetAliasModel.name == name)) is None:
                session.add(DatasetAliasModel(name=name))
    except IntegrityError:  # another map index of the task created it at the same moment
        pass
