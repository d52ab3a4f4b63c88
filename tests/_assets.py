"""Asset events (dataset events on Airflow 2.11) as the metadata DB holds them, read the same way on both lines."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from _compat import AIRFLOW_V_3

_PREFIX = "asset" if AIRFLOW_V_3 else "dataset"

#: One row per event: the asset's URI, the event's extra, where it came from, and the aliases it went through.
EVENTS_SQL = f"""
SELECT a.uri, e.extra, e.source_dag_id, e.source_run_id, e.source_task_id, e.source_map_index,
       (SELECT group_concat(al.name) FROM {_PREFIX}_alias_{_PREFIX}_event x
        JOIN {_PREFIX}_alias al ON al.id = x.alias_id WHERE x.event_id = e.id)
FROM {_PREFIX}_event e JOIN {_PREFIX} a ON a.id = e.{_PREFIX}_id
ORDER BY e.id
"""  # noqa: S608 - table names only

#: Runs the scheduler created from asset (dataset) events.
TRIGGERED_RUN_TYPE = "asset_triggered" if AIRFLOW_V_3 else "dataset_triggered"


@dataclass(frozen=True)
class Event:
    uri: str
    extra: dict[str, Any]
    dag_id: str | None
    run_id: str | None
    task_id: str | None
    map_index: int | None
    aliases: tuple[str, ...]


def as_events(rows: list[tuple[Any, ...]]) -> list[Event]:
    """Rows of ``EVENTS_SQL`` as ``Event``s (extra decoded; SQLite hands JSON back as text)."""
    events = []
    for uri, extra, dag_id, run_id, task_id, map_index, aliases in rows:
        decoded = json.loads(extra) if isinstance(extra, str | bytes) else (extra or {})
        events.append(
            Event(
                uri,
                decoded,
                dag_id,
                run_id,
                task_id,
                map_index,
                tuple(sorted((aliases or "").split(",")) if aliases else ()),
            )
        )
    return events


def recorded_events() -> list[Event]:
    """Every asset event in the configured metadata DB (for ``dag.test()`` runs in this process)."""
    from airflow import settings
    from sqlalchemy import text

    assert settings.engine is not None
    with settings.engine.connect() as conn:
        return as_events([tuple(row) for row in conn.execute(text(EVENTS_SQL))])
