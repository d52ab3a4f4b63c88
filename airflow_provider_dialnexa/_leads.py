"""Leads files for Create Batch Call: where they come from, checking them before upload, streaming the upload.

A leads file is CSV or Excel with a ``phone_number`` column (DialNexa: column names are case-sensitive, every
other column becomes a variable of the agent's prompt, at most 10 MB). ``prepare_leads`` turns any source (a
local path, an ``ObjectStoragePath`` or URL, or rows as dicts) into a local file checked row by row, reading it
in chunks; ``MultipartBody`` streams that file as the ``multipart/form-data`` body with a known length, so a
10,000-lead upload never sits in memory. Nothing here does HTTP.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airflow_provider_dialnexa._validation import validate_phone_number
from airflow_provider_dialnexa.exceptions import InvalidLeadsError, InvalidPhoneNumberError
from airflow_provider_dialnexa.records import mask_phone_number

#: DialNexa's limit on one leads file.
MAX_LEADS_BYTES = 10 * 1024 * 1024
PHONE_COLUMN = "phone_number"
#: Bad rows an error names (the count says how many more there are).
SHOWN_BAD_ROWS = 5
CHUNK = 64 * 1024
CSV_TYPE = "text/csv"
XLSX_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
XLS_TYPE = "application/vnd.ms-excel"
#: File name suffix -> content type. Anything else is sent (and checked) as CSV.
CONTENT_TYPES = {".csv": CSV_TYPE, ".txt": CSV_TYPE, ".xlsx": XLSX_TYPE, ".xlsm": XLSX_TYPE, ".xls": XLS_TYPE}


@dataclass(frozen=True)
class LeadsFile:
    """A checked leads file on local disk, ready to upload (and to upload again after a refused attempt)."""

    path: Path
    filename: str
    content_type: str
    size: int
    #: Data rows with a phone number (None when the file was not checked).
    leads: int | None
    #: A copy made for the upload (rows, or a remote object): deleted by ``cleanup``.
    temporary: bool

    def cleanup(self) -> None:
        if self.temporary:
            self.path.unlink(missing_ok=True)


def _is_object_storage(value: object) -> bool:
    return type(value).__name__ == "ObjectStoragePath" or (hasattr(value, "fs") and hasattr(value, "protocol"))


def prepare_leads(source: Any, *, validate: bool = True, name: str | None = None) -> LeadsFile:
    """A local, checked copy of ``source`` (or the local file itself): see the module docstring.

    ``source`` is a local path (``str``/``os.PathLike``), a URL or ``ObjectStoragePath`` (``s3://...``,
    ``file://...``), or rows: an iterable of mappings, written as CSV with the first row's keys as header.
    ``validate=False`` skips the row checks (e.g. for ``.xls``, which cannot be read here). ``name`` is the
    file name DialNexa is told (default: the source's).

    :raises InvalidLeadsError: before anything is uploaded; the message names the bad rows, numbers masked.
    """
    if isinstance(source, str | bytes) and not isinstance(source, str):
        raise InvalidLeadsError("leads must be a path, a URL, an ObjectStoragePath or rows (dicts), not bytes")
    if isinstance(source, str) and not source.strip():
        raise InvalidLeadsError("leads is an empty string; pass a path, a URL, an ObjectStoragePath or rows")
    if isinstance(source, str) and "://" in source:
        from airflow.providers.common.compat.sdk import ObjectStoragePath

        source = ObjectStoragePath(source)
    if _is_object_storage(source):
        return _from_object_storage(source, validate, name)
    if isinstance(source, str | os.PathLike):
        path = Path(source).expanduser()
        if not path.is_file():
            raise InvalidLeadsError(f"leads file {str(path)!r} does not exist (or is not a file)")
        return _checked(path, name or path.name, validate, temporary=False)
    if isinstance(source, Mapping):
        raise InvalidLeadsError("leads is one mapping; pass rows as a list of dicts (one per lead)")
    if isinstance(source, Iterable):
        return _from_rows(source, name or "leads.csv")
    raise InvalidLeadsError(
        f"leads must be a path, a URL, an ObjectStoragePath or rows (dicts), not {type(source).__name__}"
    )


def _temp_path(suffix: str) -> Path:
    return Path(tempfile.gettempdir()) / f"dialnexa-leads-{uuid.uuid4().hex}{suffix}"


def _from_object_storage(source: Any, validate: bool, name: str | None) -> LeadsFile:
    filename = name or source.name or "leads.csv"
    if getattr(source, "protocol", "") in ("", "file", "local"):
        return prepare_leads(Path(source.path), validate=validate, name=filename)
    temp = _temp_path(Path(filename).suffix or ".csv")
    try:
        with source.open("rb") as remote, temp.open("wb") as local:
            copied = 0
            while chunk := remote.read(CHUNK):
                copied += len(chunk)
                if copied > MAX_LEADS_BYTES:
                    raise InvalidLeadsError(_too_large(str(source), copied, more=True))
                local.write(chunk)
        return _checked(temp, filename, validate, temporary=True)
    except InvalidLeadsError:
        temp.unlink(missing_ok=True)
        raise
    except Exception as exc:
        temp.unlink(missing_ok=True)
        raise InvalidLeadsError(f"cannot read leads from {str(source)!r} ({type(exc).__name__}: {exc})") from exc


def _from_rows(rows: Iterable[Any], filename: str) -> LeadsFile:
    """Write rows (mappings) to a temporary CSV, checking each as it goes."""
    temp = _temp_path(".csv")
    check = _RowCheck(filename)
    try:
        with temp.open("w", newline="", encoding="utf-8") as out:
            writer: csv.DictWriter[str] | None = None
            for number, row in enumerate(rows, start=2):
                if not isinstance(row, Mapping):
                    raise InvalidLeadsError(f"leads row {number - 1} is a {type(row).__name__}, not a dict")
                if writer is None:
                    columns = [str(key) for key in row]
                    check.header(columns)
                    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="raise", lineterminator="\r\n")
                    writer.writeheader()
                try:
                    writer.writerow({str(k): "" if v is None else v for k, v in row.items()})
                except ValueError:
                    extra = sorted(set(map(str, row)) - set(writer.fieldnames))
                    raise InvalidLeadsError(
                        f"leads row {number - 1} has columns the first row lacks ({extra}); give every row the "
                        "same keys (the first row's keys are the file's header)"
                    ) from None
                check.row(number, row.get(PHONE_COLUMN))
        if writer is None:
            raise InvalidLeadsError("leads is an empty list of rows; a batch needs at least one lead")
        check.done()
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return LeadsFile(temp, filename, CSV_TYPE, temp.stat().st_size, check.leads, temporary=True)


def _too_large(what: str, size: int, more: bool = False) -> str:
    shown = f"more than {size / 2**20:.1f}" if more else f"{size / 2**20:.1f}"
    return (
        f"leads file {what!r} is {shown} MB; DialNexa accepts at most {MAX_LEADS_BYTES // 2**20} MB per batch: "
        "split the leads into several batches"
    )


def _checked(path: Path, filename: str, validate: bool, *, temporary: bool) -> LeadsFile:
    size = path.stat().st_size
    content_type = CONTENT_TYPES.get(Path(filename).suffix.lower(), CSV_TYPE)
    try:
        if size > MAX_LEADS_BYTES:
            raise InvalidLeadsError(_too_large(filename, size))
        leads = None
        if validate:
            if content_type == XLS_TYPE:
                raise InvalidLeadsError(
                    f"leads file {filename!r} is an old Excel (.xls) workbook, which cannot be checked before upload; "
                    "save it as .xlsx or .csv, or pass validate_leads=False to upload it unchecked"
                )
            rows = _xlsx_rows(path, filename) if content_type == XLSX_TYPE else _csv_rows(path, filename)
            leads = _check_rows(rows, filename)
    except BaseException:
        if temporary:
            path.unlink(missing_ok=True)
        raise
    return LeadsFile(path, filename, content_type, size, leads, temporary)


def _csv_rows(path: Path, filename: str) -> Iterator[tuple[int, list[Any]]]:
    """``(row number, cells)`` of a CSV file, the header being row 1 (as a spreadsheet numbers them)."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as file:
            yield from enumerate(csv.reader(file), start=1)
    except UnicodeDecodeError:
        raise InvalidLeadsError(
            f"leads file {filename!r} is not UTF-8 text; save the CSV as UTF-8 (or upload .xlsx)"
        ) from None
    except csv.Error as exc:
        raise InvalidLeadsError(f"leads file {filename!r} is not valid CSV: {exc}") from None


def _xlsx_rows(path: Path, filename: str) -> Iterator[tuple[int, list[Any]]]:
    """Rows of the first worksheet (read-only mode: one row in memory at a time)."""
    try:
        import openpyxl
    except ImportError:
        raise InvalidLeadsError(
            f"leads file {filename!r} is an Excel workbook; checking it before upload needs openpyxl: "
            "pip install 'airflow-provider-dialnexa[excel]' (or upload CSV, or pass validate_leads=False)"
        ) from None
    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:
        raise InvalidLeadsError(f"leads file {filename!r} is not a readable .xlsx workbook ({exc})") from None
    try:
        sheet = book.worksheets[0]
        for number, cells in enumerate(sheet.iter_rows(values_only=True), start=1):
            yield number, list(cells)
    finally:
        book.close()


def _check_rows(rows: Iterator[tuple[int, list[Any]]], filename: str) -> int:
    check = _RowCheck(filename)
    column = -1
    for number, cells in rows:
        if column < 0:
            column = check.header(["" if c is None else str(c) for c in cells])
            continue
        if all(cell is None or str(cell).strip() == "" for cell in cells):
            continue  # a blank line: no lead
        check.row(number, cells[column] if column < len(cells) else None)
    if column < 0:
        raise InvalidLeadsError(f"leads file {filename!r} is empty; it needs a header row with a phone_number column")
    check.done()
    return check.leads


class _RowCheck:
    """Counts leads and remembers the first few bad ones while rows stream past."""

    def __init__(self, filename: str) -> None:
        self.filename, self.leads, self.bad = filename, 0, 0
        self.shown: list[str] = []

    def header(self, columns: list[str]) -> int:
        if PHONE_COLUMN in columns:
            return columns.index(PHONE_COLUMN)
        near = [c for c in columns if c.strip().lower().replace(" ", "_") == PHONE_COLUMN]
        hint = f" (found {near[0]!r}: column names are case-sensitive and exact)" if near else ""
        raise InvalidLeadsError(
            f"leads file {self.filename!r} has no {PHONE_COLUMN!r} column{hint}; DialNexa requires it. "
            f"Columns: {[c[:30] for c in columns[:12]]}"
        )

    def row(self, number: int, value: object) -> None:
        text = "" if value is None else str(value)
        try:
            validate_phone_number(text)
        except InvalidPhoneNumberError:
            self.bad += 1
            if len(self.shown) < SHOWN_BAD_ROWS:
                masked = "empty" if not text.strip() else str(mask_phone_number(text.strip()))
                self.shown.append(f"row {number} ({masked})")
            return
        self.leads += 1

    def done(self) -> None:
        if self.bad:
            more = f" and {self.bad - len(self.shown)} more" if self.bad > len(self.shown) else ""
            raise InvalidLeadsError(
                f"leads file {self.filename!r}: {self.bad} of {self.bad + self.leads} rows have a phone_number "
                f"that is not E.164 ('+', country code and number, 8 to 15 digits, no spaces; Excel drops the '+' "
                f"of numbers stored as numbers): {', '.join(self.shown)}{more}. Fix or remove those rows; "
                "nothing was uploaded"
            )
        if not self.leads:
            raise InvalidLeadsError(f"leads file {self.filename!r} has no leads (only a header row)")


def _quoted(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', "%22").replace("\r", "").replace("\n", "")


class MultipartBody:
    """A ``multipart/form-data`` body (text fields, then the leads file) read in chunks, with a known length.

    ``requests`` sends a body with ``__len__`` and ``read`` with a ``Content-Length``, reading it block by
    block: the file is never loaded whole. One instance serves one attempt; build another to send again.
    Deliberately not an ``io`` object: ``requests`` would call its ``tell()`` and fall back to chunked
    transfer encoding, which DialNexa does not document.
    """

    def __init__(self, fields: Iterable[tuple[str, str]], leads: LeadsFile) -> None:
        self.boundary = f"dialnexa-{uuid.uuid4().hex}"
        head = io.BytesIO()
        for name, value in fields:
            head.write(f'--{self.boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode())
            head.write(value.encode() + b"\r\n")
        disposition = f'form-data; name="file"; filename="{_quoted(leads.filename)}"'
        part = f"--{self.boundary}\r\nContent-Disposition: {disposition}\r\nContent-Type: {leads.content_type}"
        head.write(f"{part}\r\n\r\n".encode())
        self._head = head.getvalue()
        self._tail = f"\r\n--{self.boundary}--\r\n".encode()
        self._length = len(self._head) + leads.size + len(self._tail)
        self._leads = leads
        self._parts: list[Any] = [io.BytesIO(self._head), None, io.BytesIO(self._tail)]
        self._index = 0

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    def __len__(self) -> int:
        return self._length

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            size = self._length
        out = bytearray()
        while len(out) < size and self._index < len(self._parts):
            part = self._parts[self._index]
            if part is None:
                part = self._parts[self._index] = self._leads.path.open("rb")
            chunk = part.read(size - len(out))
            if chunk:
                out += chunk
                continue
            part.close()
            self._index += 1
        return bytes(out)

    def close(self) -> None:
        for part in self._parts:
            if part is not None:
                part.close()
