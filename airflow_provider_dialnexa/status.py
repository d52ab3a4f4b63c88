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


# -- batch calls (campaigns) --------------------------------------------------------------------------
# A batch's own status is not a call status: read it with ``batch_phase``, never ``phase``. The OpenAPI file
# lists draft, waiting, scheduled, running, paused, completed, cancelled, deleted and legacy ``active``; the
# create answer says ``initiated`` (an acknowledgement, not a state); other pages say queued, processing
# and failed.

#: Batches that have not started dialling (another batch runs, the start time is ahead, or it is a draft).
BATCH_PENDING: frozenset[str] = frozenset({"draft", "waiting", "scheduled", "active", "initiated", "queued", "pending"})
#: Batches that are dialling.
BATCH_RUNNING: frozenset[str] = frozenset({"running", "processing", "in_progress"})
#: A paused batch dials nothing until someone resumes it: neither running nor done.
BATCH_PAUSED: frozenset[str] = frozenset({"paused"})
#: Batches that will never dial again.
BATCH_TERMINAL: frozenset[str] = frozenset({"completed", "cancelled", "deleted", "failed"})


class BatchPhase(enum.Enum):
    """Where a batch is, as far as a waiter cares."""

    PENDING = "pending"
    RUNNING = "running"
    PAUSED = "paused"
    TERMINAL = "terminal"
    UNKNOWN = "unknown"


def batch_phase(raw: object) -> BatchPhase:
    """Classify a raw batch status; anything undocumented is ``UNKNOWN`` (waiters keep waiting and warn)."""
    status = normalise(raw)
    for phase_, statuses in (
        (BatchPhase.TERMINAL, BATCH_TERMINAL),
        (BatchPhase.RUNNING, BATCH_RUNNING),
        (BatchPhase.PAUSED, BATCH_PAUSED),
        (BatchPhase.PENDING, BATCH_PENDING),
    ):
        if status in statuses:
            return phase_
    return BatchPhase.UNKNOWN
