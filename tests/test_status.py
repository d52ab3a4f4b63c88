"""The call-status vocabulary: every documented spelling normalises and classifies the same way."""

from __future__ import annotations

import pytest

from airflow_provider_dialnexa import status
from airflow_provider_dialnexa.status import RUNNING, TERMINAL, Phase, is_terminal, normalise, phase

#: Canonical enum of the Get/List Call reference pages plus the non-enum spellings other pages use.
DOCUMENTED_RUNNING = ("created", "queued", "initiated", "sent", "received", "in_progress", "in-progress")
DOCUMENTED_TERMINAL = (
    "completed",
    "did_not_pick",
    "busy",
    "no_answer",
    "no-answer",
    "failed",
    "cancelled",
    "retry_expired",
    "voicemail",
    "hangup",
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("completed", "completed"),
        ("COMPLETED", "completed"),
        ("Completed", "completed"),
        ("  busy\t", "busy"),
        ("\nfailed \n", "failed"),
        ("no-answer", "no_answer"),
        ("No-Answer", "no_answer"),
        (" NO-ANSWER ", "no_answer"),
        ("no answer", "no_answer"),
        ("in-progress", "in_progress"),
        ("In Progress", "in_progress"),
        ("in_progress", "in_progress"),
        ("did-not-pick", "did_not_pick"),
        ("Retry-Expired", "retry_expired"),
        ("no  -  answer", "no_answer"),
    ],
)
def test_normalise_spellings(raw: str, expected: str) -> None:
    assert normalise(raw) == expected


def test_normalise_is_idempotent() -> None:
    for raw in (*DOCUMENTED_RUNNING, *DOCUMENTED_TERMINAL, " No-Answer "):
        once = normalise(raw)
        assert normalise(once) == once


def test_normalise_non_string_values() -> None:
    # A record could carry a null or a number in ``status``; normalising must not raise.
    assert normalise(None) == "none"
    assert normalise(3) == "3"
    assert phase(None) is Phase.UNKNOWN
    assert phase(3) is Phase.UNKNOWN


@pytest.mark.parametrize("raw", DOCUMENTED_RUNNING)
def test_documented_running_statuses(raw: str) -> None:
    assert phase(raw) is Phase.RUNNING
    assert phase(raw.upper()) is Phase.RUNNING
    assert not is_terminal(raw)


@pytest.mark.parametrize("raw", DOCUMENTED_TERMINAL)
def test_documented_terminal_statuses(raw: str) -> None:
    assert phase(raw) is Phase.TERMINAL
    assert phase(f" {raw.title()} ") is Phase.TERMINAL
    assert is_terminal(raw)


@pytest.mark.parametrize(
    "raw",
    ["", "   ", "ringing", "in_progresss", "complete", "done", "success", "no_answer_yet", "call.completed", "-"],
)
def test_unknown_statuses(raw: str) -> None:
    assert phase(raw) is Phase.UNKNOWN
    assert not is_terminal(raw)


def test_vocabularies_are_disjoint_and_canonical() -> None:
    assert not RUNNING & TERMINAL
    for value in RUNNING | TERMINAL:
        assert normalise(value) == value, f"{value!r} is not in canonical spelling"


def test_every_canonical_enum_value_is_classified() -> None:
    """The Get Call enum (API facts §3.1); ``received`` is not documented as final, so it is running."""
    enum_values = (
        "created",
        "initiated",
        "sent",
        "received",
        "completed",
        "did_not_pick",
        "busy",
        "no_answer",
        "failed",
        "cancelled",
        "retry_expired",
    )
    assert {value for value in enum_values if phase(value) is Phase.UNKNOWN} == set()
    assert phase("received") is Phase.RUNNING


def test_module_exports() -> None:
    assert {p.value for p in status.Phase} == {"running", "terminal", "unknown"}
