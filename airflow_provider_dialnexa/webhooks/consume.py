"""Asset events -> call records, in the DAG run the events triggered (``calls_from_events``).

Everything a DAG needs to load a call's outcome is in the event (``id``, normalised ``status``, the slim
record), so the default path sends no request to DialNexa. Full records (transcript, recording URL,
analysis) are an explicit ``full_records=True``: one Get Call per call through ``DialNexaHook``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from airflow_provider_dialnexa.records import shape_record
from airflow_provider_dialnexa.webhooks.events import EVENT_SOURCE

#: Context keys holding the run's triggering events: Airflow 3, then Airflow 2.11.
_CONTEXT_KEYS = ("triggering_asset_events", "triggering_dataset_events")


def _extra(event: Any) -> Mapping[str, Any] | None:
    extra = event.get("extra") if isinstance(event, dict) else getattr(event, "extra", None)
    return extra if isinstance(extra, Mapping) else None


def _timestamp(event: Any) -> datetime | None:
    value = event.get("timestamp") if isinstance(event, dict) else getattr(event, "timestamp", None)
    return value if isinstance(value, datetime) else None


def _context_value(source: Mapping[Any, Any], key: str) -> Any:
    """``source[key]`` for a task context; None for other mappings (Airflow 3's accessor refuses str keys)."""
    try:
        return source.get(key)
    except (TypeError, KeyError):
        return None


def _events_of(source: Any) -> list[Any]:
    """Every event in ``source``: a task context, a triggering-events mapping, or an iterable of events."""
    if source is None:
        from airflow.providers.common.compat.sdk import get_current_context

        source = get_current_context()
    if isinstance(source, Mapping):
        source = next((found for key in _CONTEXT_KEYS if (found := _context_value(source, key)) is not None), source)
    if isinstance(source, dict) and "extra" in source:  # one event given as a dict
        return [source]
    if isinstance(source, Mapping):  # asset (URI, alias) -> its events; Airflow 3's accessor is such a mapping
        return [event for group in source.values() for event in (group or ())]
    if isinstance(source, str | bytes) or not isinstance(source, Iterable):
        raise TypeError(
            "calls_from_events() takes the task context, triggering_asset_events (Airflow 3), "
            f"triggering_dataset_events (Airflow 2.11) or a list of asset events, got {type(source).__name__}"
        )
    return list(source)


def calls_from_events(
    events: Any = None,
    *,
    conn_id: str | None = None,
    full_records: bool = False,
    mask_phone_numbers: bool = True,
) -> list[dict[str, Any]]:
    """The calls a DAG run's DialNexa webhook events report: one record per call, each with ``id`` and ``status``.

    :param events: ``triggering_asset_events`` (Airflow 3) or ``triggering_dataset_events`` (Airflow 2.11),
        the task context holding either, or a list of events; None reads the current task's context.
        Every event of the run counts (not only the first per asset); events this receiver did not
        write are skipped.
    :param conn_id: Only calls of this connection's asset (default: every DialNexa connection's).
    :param full_records: Fetch each call's full record (transcript, recording URL, analysis) with one
        Get Call through ``DialNexaHook``; the default (False) sends no request and returns the slim
        record the event carries.
    :param mask_phone_numbers: With ``full_records``, mask phone numbers (default True; slim records never
        hold any).
    :return: One dict per call, in the order the calls ended; a call reported twice (e.g. two statuses)
        appears once, with its latest report.
    """
    found = _dialnexa_events(_events_of(events), conn_id)
    if all(stamp is not None for stamp, _, _ in found):
        found.sort(key=lambda item: item[0])  # type: ignore[arg-type,return-value]  # stable: ties keep order
    calls: dict[str, dict[str, Any]] = {}
    conns: dict[str, str] = {}
    for _, event_conn, record in found:
        calls.pop(record["id"], None)  # the latest report wins and moves to its place in the order
        calls[record["id"]] = record
        conns[record["id"]] = event_conn
    if not full_records:
        return list(calls.values())
    from airflow_provider_dialnexa.hooks.dialnexa import DialNexaHook

    hooks: dict[str, DialNexaHook] = {}
    fetched = []
    for call_id, record in calls.items():
        hook = hooks.setdefault(conns[call_id], DialNexaHook(conns[call_id]))
        fetched.append(shape_record({**record, **hook.get_call(call_id)}, mask=mask_phone_numbers))
    return fetched


def _dialnexa_events(events: list[Any], conn_id: str | None) -> list[tuple[datetime | None, str, dict[str, Any]]]:
    """(timestamp, connection id, record) of each event this receiver wrote (of ``conn_id`` when given)."""
    found = []
    for event in events:
        extra = _extra(event)
        if not extra or extra.get("source") != EVENT_SOURCE:
            continue
        call_id, status, event_conn = extra.get("call_id"), extra.get("status"), extra.get("conn_id")
        if not isinstance(call_id, str) or not isinstance(status, str) or not isinstance(event_conn, str):
            continue
        if conn_id is not None and event_conn != conn_id:
            continue
        call = extra.get("call")
        record = {**(call if isinstance(call, Mapping) else {}), "id": call_id, "status": status}
        found.append((_timestamp(event), event_conn, record))
    return found
