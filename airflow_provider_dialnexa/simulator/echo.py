"""Error messages that echo the phone number, as DialNexa's carrier and validation errors do.

A fault with ``echo_number=True`` answers with DialNexa's error envelope whose ``message`` quotes the number
of the request (Create Call's ``phone_number``) or of the call (Get Call's ``to_number``) in every common
spelling, so tests can check that none of them reaches a log line or an error unmasked.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

#: Used when the request names no number (List Calls): a US number in E.164.
FALLBACK_NUMBER = "+14155550123"


def spellings(number: str) -> list[str]:
    """``number`` (E.164) as people and systems write it: ``+14155550123``, ``14155550123``,
    ``+1 415 555 0123``, ``(415) 555-0123``, ``+1-415-555-0123``, ``+1.415.555.0123`` (the grouping
    assumes a one-digit country code and a ten-digit national number; other lengths group the same way).
    """
    digits = "".join(ch for ch in number if ch.isdigit())
    country, national = digits[:-10] or digits[:1], digits[-10:]
    area, exchange, line = national[:3], national[3:6], national[6:]
    return [
        f"+{digits}",
        digits,
        f"+{country} {area} {exchange} {line}",
        f"({area}) {exchange}-{line}",
        f"+{country}-{area}-{exchange}-{line}",
        f"+{country}.{area}.{exchange}.{line}",
    ]


def echo_message(status: int, number: str) -> str:
    """DialNexa-style ``message`` for ``status`` that quotes ``number`` in every spelling of ``spellings``."""
    first, *others = spellings(number)
    what = {
        429: "Too many calls to",
        400: "phone_number must be a valid E.164 phone number, got",
    }.get(status, "Upstream carrier error calling")
    return f"{what} {first} (also seen as {', '.join(others)})"


def number_of(route: str, call_ids: Sequence[str], body: Any, record: Mapping[str, Any] | None) -> str:
    """The number a request is about: Create Call's body, else the call's record, else ``FALLBACK_NUMBER``."""
    if route == "create" and isinstance(body, Mapping):
        value = body.get("phone_number", body.get("to_phone_number", body.get("to_number")))
        if isinstance(value, str) and value:
            return value
    if record is not None:
        value = record.get("to_number", record.get("to_phone_number"))
        if isinstance(value, str) and value:
            return value
    return FALLBACK_NUMBER
