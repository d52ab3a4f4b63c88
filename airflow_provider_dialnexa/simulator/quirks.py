"""List Calls anomalies the simulator can play (switched on through ``SimConfig``), for the paging tests.

Each one is something a real deployment could do and a client must survive without losing or doubling a
call: a row repeated by the server (a join that yields a call twice, so the same id can sit twice on one
page), a row without its id, and creation times in another ISO-8601 spelling. The page size a server
serves when it ignores ``limit`` is ``SimConfig.list_default_limit`` (with ``list_ignores=["limit"]``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Literal, TypeVar

T = TypeVar("T")
#: How ``createdAt``/``created_at`` is written: DialNexa's own ``...T09:15:02.118Z`` or with ``+00:00``.
CreatedStyle = Literal["z", "offset"]
CREATED_STYLES: tuple[str, ...] = ("z", "offset")


def repeated(rows: Iterable[T], every: int) -> Iterator[T]:
    """The rows in order, every ``every``-th one listed a second time right after itself (0: none).

    Pages are cut from this sequence, so a repeat can sit on the same page as its original (the same id
    twice on one page) or open the next page; either way every row is still listed at least once.
    """
    for index, row in enumerate(rows, 1):
        yield row
        if every and index % every == 0:
            yield row


def drop_ids(records: list[dict[str, Any]], first_index: int, every: int) -> list[dict[str, Any]]:
    """Remove ``id`` from every ``every``-th row of the listing (rows counted from 1 across pages; 0: none).

    ``first_index`` is the listing position of ``records[0]`` (0 on page 1). Changes ``records`` in place.
    """
    if every:
        for offset, record in enumerate(records):
            if (first_index + offset + 1) % every == 0:
                record.pop("id", None)
    return records


def created_text(iso: str, style: str) -> str:
    """A creation time (``2026-10-05T09:15:02.118Z``) in the configured spelling."""
    return iso[:-1] + "+00:00" if style == "offset" else iso
