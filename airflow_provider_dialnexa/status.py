"""The one place that knows DialNexa's call-status vocabulary.

DialNexa's documentation spells statuses several ways (``no_answer`` in the enum, ``no-answer``
and ``in-progress`` in prose, ``voicemail`` and ``hangup`` on some pages), so every status is
normalised before it is compared: stripped, lower-cased, hyphens and spaces turned into ``_``.
"""

from __future__ import annotations

import enum

#: Statuses of a call that has not ended yet (``queued`` and ``in_progress`` come from prose/older pages).
RUNNING: frozenset[str] = frozenset({"created", "queued", "initiated", "sent", "received", "in_progress"})

#: Statuses of a call that has ended. ``completed`` says the call connected, nothing about the business
#: outcome; ``voicemail`` and ``hangup`` are used as statuses by some pages and by webhooks.
TERMINAL: frozenset[str] = frozenset(
    {
        "completed",
        "did_not_pick",
        "busy",
        "no_answer",
        "failed",
        "cancelled",
        "retry_expired",
        "voicemail",
        "hangup",
    }
)


class Phase(enum.Enum):
    """Where a call is in its lifecycle, as far as a waiter cares."""

    RUNNING = "running"
    TERMINAL = "terminal"
    UNKNOWN = "unknown"


def normalise(raw: object) -> str:
    """Return the canonical spelling of a raw status (``" No-Answer "`` -> ``"no_answer"``)."""
    return "_".join(str(raw).strip().lower().replace("-", " ").split())


def phase(raw: object) -> Phase:
    """Classify a raw status; anything not documented is ``UNKNOWN`` (callers keep waiting and warn)."""
    status = normalise(raw)
    if status in TERMINAL:
        return Phase.TERMINAL
    if status in RUNNING:
        return Phase.RUNNING
    return Phase.UNKNOWN


def is_terminal(raw: object) -> bool:
    """True when the call has ended, whatever the spelling."""
    return phase(raw) is Phase.TERMINAL
