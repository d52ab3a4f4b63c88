"""HTTP side of the simulator's batch calls: the four public routes and the ``/_sim/batches``, ``/_sim/clock``
control routes, on top of the engine in ``batches.py``."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import time
from collections import deque
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

from airflow_provider_dialnexa.simulator.batches import (
    _QUEUED,
    ACTIONS,
    BATCH_ID_RE,
    MAX_FILE_BYTES,
    MAX_TITLE,
    BatchBook,
    _Batch,
    _Lead,
    _minutes,
    _show,
    book,
)
from airflow_provider_dialnexa.simulator.state import E164_RE, ApiError, SimState, iso8601, split_csv

# -- the public API -------------------------------------------------------------------------------------


def api(
    state: SimState, route: str, batch_id: str | None, query: Mapping[str, Sequence[str]], body: bytes, ctype: str
) -> tuple[int, Any]:
    """Answer one batch route: ``(status, payload)``, or raise ``ApiError``."""
    with state._lock:
        bk = book(state)
        now = bk.advance(state)
        if route == "batch_create":
            return 201, _create(state, bk, _multipart(body, ctype), now)
        if route == "batch_list":
            return 200, _list(bk, query)
        if batch_id is None or not BATCH_ID_RE.match(batch_id):
            raise ApiError(400, "Invalid batch call ID format")
        batch = bk.batches.get(batch_id)
        if batch is None:
            raise ApiError(404, "Batch call not found")
        if route == "batch_get":
            return 200, _detail(state, bk, batch, query)
        return 200, _change(state, bk, batch, body, now)


def _multipart(body: bytes, ctype: str) -> dict[str, tuple[str | None, bytes]]:
    """``name -> (filename, content)`` of a ``multipart/form-data`` body."""
    if "multipart/form-data" not in ctype.lower():
        raise ApiError(400, "Content-Type must be multipart/form-data")
    if len(body) > MAX_FILE_BYTES + 64 * 1024:
        raise ApiError(413, "File too large (max 10 MB)")
    message = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {ctype}\r\n\r\n".encode() + body)
    parts: dict[str, tuple[str | None, bytes]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if isinstance(name, str):
            payload = part.get_payload(decode=True)
            parts[name] = (part.get_filename(), payload if isinstance(payload, bytes) else b"")
    return parts


def _text(parts: Mapping[str, tuple[str | None, bytes]], name: str) -> str | None:
    value = parts.get(name)
    return None if value is None else value[1].decode("utf-8", "replace").strip() or None


def _when(text: str | None, name: str) -> float | None:
    if text is None:
        return None
    try:
        parsed = datetime.fromisoformat(text[:-1] + "+00:00" if text[-1] in "zZ" else text)
    except ValueError:
        raise ApiError(400, [f"{name} must be a valid ISO 8601 date string"]) from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def _rows(filename: str, content: bytes) -> list[dict[str, str]]:
    """The leads of a CSV or .xlsx file as dicts of strings."""
    if filename.lower().endswith((".xlsx", ".xlsm")):
        try:
            import openpyxl
        except ImportError:  # pragma: no cover - depends on the install
            raise ApiError(400, "This simulator cannot read Excel files (install openpyxl)") from None
        try:
            sheet = openpyxl.load_workbook(io.BytesIO(content), read_only=True, data_only=True).worksheets[0]
        except Exception:
            raise ApiError(400, "Invalid file: not a readable Excel workbook") from None
        rows = [["" if v is None else str(v) for v in row] for row in sheet.iter_rows(values_only=True)]
    elif filename.lower().endswith(".xls"):
        raise ApiError(400, "This simulator cannot read .xls files")
    else:
        try:
            rows = list(csv.reader(io.StringIO(content.decode("utf-8-sig"))))
        except (UnicodeDecodeError, csv.Error):
            raise ApiError(400, "Invalid file: the CSV could not be read") from None
    if not rows or "phone_number" not in rows[0]:
        raise ApiError(400, "The uploaded file must include a phone_number column")
    header = rows[0]
    return [dict(zip(header, row, strict=False)) for row in rows[1:] if any(cell.strip() for cell in row)]


def _create(state: SimState, bk: BatchBook, parts: Mapping[str, tuple[str | None, bytes]], now: float) -> Any:
    title, agent_id = _text(parts, "title"), _text(parts, "agent_id")
    errors = []
    if "file" not in parts or not parts["file"][1]:
        errors.append("file should not be empty")
    if title is None:
        errors.append("title should not be empty")
    if agent_id is None:
        errors.append("agent_id should not be empty")
    if errors:
        raise ApiError(400, errors)
    assert title is not None
    assert agent_id is not None
    if len(title) > MAX_TITLE:
        raise ApiError(400, f"title must be {MAX_TITLE} characters or fewer (received {len(title)}).")
    cfg = bk.config
    raw_version = _text(parts, "agent_version_number")
    version = cfg.published_versions[-1]
    if raw_version is not None:
        if not raw_version.isdigit():
            raise ApiError(400, ["agent_version_number must be a number"])
        version = int(raw_version)
        if version in cfg.draft_versions:
            raise ApiError(
                400, f"Version {version} of agent {agent_id} is a draft. Publish it before starting a batch call."
            )
        if version not in cfg.published_versions:
            published = ", ".join(str(v) for v in cfg.published_versions)
            raise ApiError(404, f"Agent {agent_id} has no version {version}. Published versions: {published}.")
    starts_at, ends_at = _when(_text(parts, "starts_at"), "starts_at"), _when(_text(parts, "ends_at"), "ends_at")
    hours_start, hours_end = _text(parts, "calling_hours_start"), _text(parts, "calling_hours_end")
    hours = None
    if hours_start or hours_end:
        hours = (_minutes(hours_start or "00:00"), _minutes(hours_end or "23:59"))
    filename, content = parts["file"]
    if len(content) > MAX_FILE_BYTES:
        raise ApiError(400, "File too large (max 10 MB)")
    rows = _rows(filename or "leads.csv", content)
    bad = [n for n, row in enumerate(rows, start=2) if not E164_RE.match((row.get("phone_number") or "").strip())]
    if bad:
        raise ApiError(400, [f"Row {n}: phone_number must be a valid E.164 phone number" for n in bad[:10]])
    if not rows:
        raise ApiError(400, "The uploaded file contains no leads")
    leads = [
        _Lead(row["phone_number"].strip(), {k: v for k, v in row.items() if k != "phone_number" and k}) for row in rows
    ]
    batch_id = "batch_" + "".join(state._rng.choices("abcdefghijklmnopqrstuvwxyz0123456789", k=14))
    ahead = [b for b in bk.batches.values() if b.status in ("running", *_QUEUED)]
    status = "scheduled" if starts_at is not None and starts_at > now else "waiting"
    bk.batches[batch_id] = _Batch(
        batch_id, title, agent_id, version, now, starts_at, ends_at, hours, leads, status, deque(range(len(leads)))
    )
    answer: dict[str, Any] = {
        "id": batch_id,
        "title": title,
        "total_records": len(leads),
        "status": "initiated",
        "from_number": "+14155552671",
    }
    if ahead:
        answer["warning"] = {
            "message": f"This batch was created, but your organization already has {len(ahead)} batch(es) ahead of "
            "it. Batches run one at a time per organization, so this batch may be delayed.",
            "conflicts": [
                {
                    "kind": b.status,
                    "batch_name": b.title,
                    "processed_leads": sum(1 for lead in b.leads if lead.sent),
                    "total_leads": len(b.leads),
                    **({"starts_at": iso8601(b.starts_at)} if b.starts_at else {}),
                }
                for b in ahead
            ],
        }
    bk.advance(state)
    return answer


def _paging(query: Mapping[str, Sequence[str]], default: int, maximum: int, capped: bool) -> tuple[int, int]:
    errors = []
    try:
        page = int((query.get("page") or ["1"])[-1])
        limit = int((query.get("limit") or [str(default)])[-1])
    except ValueError:
        raise ApiError(400, ["page and limit must be integer numbers"]) from None
    if page < 1 or limit < 1:
        errors.append("page and limit must not be less than 1")
    if limit > maximum and not capped:
        errors.append(f"limit must not be greater than {maximum}")
    if errors:
        raise ApiError(400, errors)
    return page, min(limit, maximum)


def _list(bk: BatchBook, query: Mapping[str, Sequence[str]]) -> Any:
    query = {k: v for k, v in query.items() if k not in bk.config.list_ignores}
    other = bk.config.list_style == "data"
    page, limit = _paging(query, 20, 100, capped=other)
    wanted = set(split_csv(query.get("status")))
    batches = [b for b in reversed(bk.batches.values()) if not wanted or b.status in wanted]  # newest first
    rows = batches[(page - 1) * limit : page * limit]
    if other:
        meta = {"page": page, "limit": limit, "total": len(batches), "totalPages": math.ceil(len(batches) / limit)}
        return {"data": [bk.listed_other(b) for b in rows], "meta": meta}
    return {"items": [bk.listed(b) for b in rows], "total": len(batches), "page": page, "limit": limit}


def _detail(state: SimState, bk: BatchBook, batch: _Batch, query: Mapping[str, Sequence[str]]) -> Any:
    style = bk.config.detail_style
    query = {k: v for k, v in query.items() if k not in bk.config.detail_ignores}
    if style == "record":
        return bk.listed(batch)
    page, limit = _paging(query, 20, 200, capped=False)
    order = (query.get("created_at") or ["desc"])[-1].lower()
    calls = state._calls
    ids = [call_id for lead in batch.leads for call_id in lead.attempts]
    ids.sort(key=lambda i: (calls[i].plan.created_at, calls[i].seq), reverse=order != "asc")
    wanted = set(split_csv(query.get("status")))
    now = time.time()
    if wanted:  # status is shown through the call's script: filter before rendering only the page
        ids = [i for i in ids if (calls[i].plan.script or [""])[0] in wanted]
    page_ids = ids[(page - 1) * limit : page * limit][: bk.config.detail_cap or None]
    page_rows = [state._record(calls[i], now, advance=False) for i in page_ids]
    logs = {"callLogs": page_rows, "total": len(ids), "page": page, "limit": limit}
    logs["totalPages"] = math.ceil(len(ids) / limit)
    return {**bk.listed(batch), **logs} if style == "both" else logs


def _change(state: SimState, bk: BatchBook, batch: _Batch, body: bytes, now: float) -> Any:
    try:
        action = json.loads(body or b"{}").get("action")
    except (ValueError, AttributeError):
        raise ApiError(400, "Unexpected token in JSON body") from None
    if action not in ACTIONS:
        raise ApiError(400, "Invalid action. Must be one of: pause, resume, cancel")
    affected = {"initiated": 0, "queued": 0, "removedFromQueue": 0, "cancelledCallLogs": 0, "resumedCallLogs": 0}
    if batch.status in ("completed", "cancelled"):
        status = 409 if action == "resume" and batch.status == "cancelled" else 400
        raise ApiError(status, f"Cannot {action} a {batch.status} batch call")
    if action == "pause":
        if batch.status == "paused":
            raise ApiError(400, "Batch call is already paused")
        batch.status = "paused"
        affected["removedFromQueue"] = len(batch.queue)
    elif action == "resume":
        if batch.status != "paused":
            raise ApiError(400, "Batch call is not paused")
        batch.status = "waiting"
        affected["resumedCallLogs"] = len(batch.retries)
    else:
        affected["removedFromQueue"] = len(batch.queue)
        affected["cancelledCallLogs"] = len(batch.retries)
        batch.queue.clear()
        for _, lead_index, call_id in batch.retries:
            _show(state._calls[call_id], "cancelled")
            batch.leads[lead_index].final = "cancelled"
        batch.retries.clear()
        batch.status = "cancelled"
    bk.advance(state)
    verb = {"pause": "paused", "resume": "resumed", "cancel": "cancelled"}[action]
    return {
        "success": True,
        "message": f"Campaign {verb} successfully",
        "campaign": {"id": batch.id, "status": batch.status, "title": batch.title},
        "affectedCalls": affected,
    }


# -- control API ------------------------------------------------------------------------------------------


def control(state: SimState, method: str, parts: list[str], body: Mapping[str, Any]) -> tuple[int, Any]:
    """``/_sim/batches[/config]`` and ``/_sim/clock[/advance]``: configure, inspect, move the batch clock."""
    with state._lock:
        bk = book(state)
        match method, parts:
            case "GET", ["batches"]:
                bk.advance(state)
                return 200, {"batches": [_summary(bk, b) for b in bk.batches.values()]}
            case "GET", ["batches", "config"]:
                return 200, dataclasses.asdict(bk.config)
            case "POST", ["batches", "config"]:
                bk.config = dataclasses.replace(bk.config, **body)
                return 200, dataclasses.asdict(bk.config)
            case "POST", ["clock", "advance"]:
                bk.offset += float(body.get("seconds", 0))
                return 200, {"now": bk.advance(state)}
            case "POST", ["clock"]:
                bk.offset = float(body["time"]) - time.time()
                bk.cursor = None
                return 200, {"now": bk.advance(state)}
            case "GET", ["clock"]:
                return 200, {"now": bk.now()}
    return 404, {"statusCode": 404, "message": f"Cannot {method} /_sim/{'/'.join(parts)}", "error": "Not Found"}


def _summary(bk: BatchBook, batch: _Batch) -> dict[str, Any]:
    return {
        **bk.listed(batch),
        "attempts": sum(len(lead.attempts) for lead in batch.leads),
        "finals": {lead.phone: lead.final for lead in batch.leads},
    }
