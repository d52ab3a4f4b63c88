"""Shape a DialNexa call record before it reaches XCom: keep or drop top-level fields, mask phone numbers.

XCom values live in Airflow's metadata database, readable by anyone who can see the task in the UI or
query the DB, and kept until the DB is cleaned. A call record can be large (transcript, analysis) and
is personal data (transcripts, summaries, phone numbers), so the operator stores only what a DAG
needs. Everything here is pure (no Airflow, no I/O) so it can be tested and reused on its own.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping
from typing import Any

#: Top-level fields that hold phone numbers, in every spelling DialNexa's documentation uses.
PHONE_FIELDS: frozenset[str] = frozenset(
    {"to_number", "from_number", "to_phone_number", "from_phone_number", "phone_number"}
)

#: Digits of a number shown unmasked: a 2-digit prefix (roughly the country code) and the last 4.
_KEEP_HEAD, _KEEP_TAIL = 2, 4
_PHONE_LIKE = re.compile(r"\+?[\d\s().-]+")
_FULLY_MASKED = "***"


def mask_phone_number(value: object) -> object:
    """Mask a phone number, keeping ``+``, two leading and four trailing digits (``+91******5678``).

    ``None`` and ``""`` stay as they are (nothing to hide). Anything that does not look like a phone
    number of at least 7 digits (a SIP URI, ``anonymous``, a short code) becomes ``"***"``: when unsure,
    hide it all.
    """
    if value is None or value == "":
        return value
    text = str(value).strip()
    digits = "".join(ch for ch in text if ch.isdigit())
    if not _PHONE_LIKE.fullmatch(text) or len(digits) < _KEEP_HEAD + _KEEP_TAIL + 1:
        return _FULLY_MASKED
    hidden = len(digits) - _KEEP_HEAD - _KEEP_TAIL
    plus = "+" if text.startswith("+") else ""
    return f"{plus}{digits[:_KEEP_HEAD]}{'*' * hidden}{digits[-_KEEP_TAIL:]}"


#: A phone number inside free text: ``+`` (optional), then digits in groups separated by one to three of
#: space, ``.``, ``-``, ``(``, ``)``; not glued to a word, id or longer token on either side (``call_x9y3zp4``,
#: UUID groups, ``airflow-<hex>`` and file extensions stay as they are). Whether it is long enough to be a
#: number, and not a date, an IPv4 address or a decimal, is decided in ``_mask_match``.
_NUMBER_IN_TEXT = re.compile(r"(?<![\w+\-])(?:\+\s?)?\(?\d(?:[ .\-()\u00a0]{0,3}\d)*(?!\w|[-.][^\W\d])")
#: Digit runs shorter than this are never masked (counts, HTTP statuses, years, times of day).
MIN_NUMBER_DIGITS = 7
#: Number-shaped text that is not a phone number: dates (``2026-05-01``, ``01.05.2026``), IPv4, decimals.
_NOT_A_NUMBER = re.compile(
    r"\d{4}[-.]\d{1,2}[-.]\d{1,2}(?:\D.*)?|\d{1,2}[-.]\d{1,2}[-.]\d{4}|\d{1,3}(?:\.\d{1,3}){3}|\d+\.\d+",
    re.DOTALL,
)


def _mask_match(match: re.Match[str]) -> str:
    text = match.group()
    digits = "".join(ch for ch in text if ch.isdigit())
    if len(digits) < MIN_NUMBER_DIGITS or _NOT_A_NUMBER.fullmatch(text):
        return text
    if len(digits) < _KEEP_HEAD + _KEEP_TAIL + 4:  # a short (local) number: show only its last two digits
        return "*" * (len(digits) - 2) + digits[-2:]
    return str(mask_phone_number(("+" if text.startswith("+") else "") + digits))


def mask_numbers(text: str) -> str:
    """``text`` with every phone number in it masked, in any common spelling; everything else unchanged.

    For free text that may reach a log line or an error (DialNexa's ``message``, an exception's text).
    A number is a run of at least 7 digits, optionally led by ``+``, whose digits may be separated by
    spaces, dots, dashes or parentheses: ``+14155550123``, ``14155550123``, ``+1 415 555 0123``,
    ``(415) 555-0123``, ``+1-415-555-0123`` all become ``+14*****0123``-style (``+``, 2 leading and 4
    trailing digits, as ``mask_phone_number``; numbers under 10 digits keep only their last 2). Left alone:
    digits glued to letters or ``_`` (call ids such as ``call_x9y3zp4mq7r1``, hex), UUID groups, ISO dates
    and times, IPv4 addresses, decimals and anything under 7 digits. Pure and idempotent.
    """
    if not text or not any(ch.isdigit() for ch in text):
        return text
    return _NUMBER_IN_TEXT.sub(_mask_match, text)


def field_names(argument: str, names: str | Iterable[str] | None) -> frozenset[str] | None:
    """Validate ``include_fields``/``exclude_fields`` at DAG parse time: None, or non-empty strings.

    A single string is one field name. Unknown names are accepted on purpose: DialNexa's schema is
    open and its fields come in several spellings (``createdAt``/``created_at``).
    """
    if names is None:
        return None
    if isinstance(names, str):
        names = [names]
    try:
        items = list(names)
    except TypeError:
        raise ValueError(f"{argument} must be a list of field names, got {type(names).__name__}") from None
    wrong = [name for name in items if not isinstance(name, str) or not name.strip()]
    if wrong:
        raise ValueError(f"{argument} must contain non-empty strings (top-level field names), got {wrong!r:.200}")
    return frozenset(items)


def field_options(
    task_id: str, include: str | Iterable[str] | None, exclude: str | Iterable[str] | None
) -> tuple[frozenset[str] | None, frozenset[str] | None]:
    """Validate a task's ``include_fields``/``exclude_fields`` together, at DAG parse time (both operators)."""
    included, excluded = field_names("include_fields", include), field_names("exclude_fields", exclude)
    if included is not None and excluded is not None:
        raise ValueError(
            f"Task {task_id!r}: give include_fields or exclude_fields, not both "
            "(include keeps only the named fields, exclude drops them)"
        )
    if included is not None and not included:
        raise ValueError(f"Task {task_id!r}: include_fields is empty; use None to keep every field")
    return included, excluded


def shape_record(
    record: Mapping[str, Any],
    include: Collection[str] | None = None,
    exclude: Collection[str] | None = None,
    mask: bool = False,
) -> dict[str, Any]:
    """A new dict with only the ``include``d top-level fields (or all but the ``exclude``d), numbers masked.

    Only top-level keys are filtered and only the fields in ``PHONE_FIELDS`` are masked; nested objects
    (``metadata``, ``analysis``) are kept or dropped whole.
    """
    if include is not None and exclude is not None:
        raise ValueError("give include_fields or exclude_fields, not both")
    if include is not None:
        shaped = {key: value for key, value in record.items() if key in include}
    else:
        dropped = exclude or ()
        shaped = {key: value for key, value in record.items() if key not in dropped}
    if mask:
        for key in PHONE_FIELDS.intersection(shaped):
            shaped[key] = mask_phone_number(shaped[key])
    return shaped
