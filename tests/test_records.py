"""Record shaping for XCom (pure functions: no Airflow, no server)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from airflow_provider_dialnexa.records import PHONE_FIELDS, field_names, mask_phone_number, shape_record

RECORD: dict[str, Any] = {
    "id": "call_k3v8q2m7x1pz",
    "to_number": "+919812345678",
    "from_number": "+912240001234",
    "status": "completed",
    "createdAt": "2026-10-05T09:15:02.118Z",
    "duration": 142,
    "transcript": "Agent: Hello, am I speaking with Anil?\nUser: Yes.",
    "summary": "Customer confirmed renewal.",
    "recording_url": "https://recordings.dialnexa.com/call_k3v8q2m7x1pz.mp3",
    "analysis": {"renewal_confirmed": True},
    "metadata": {"crm_lead_id": "L-20931", "callback": "+919812345678"},
}


@pytest.mark.parametrize(
    ("raw", "masked"),
    [
        ("+919812345678", "+91******5678"),
        ("+14155550123", "+14*****0123"),
        ("12137771234", "12*****1234"),  # webhook spelling without '+'
        ("+91 98123 45678", "+91******5678"),  # formatting is dropped, digits counted
        ("+1 (415) 555-0123", "+14*****0123"),
        (919812345678, "91******5678"),  # a number sent as a JSON number
        ("+1234567", "+12*4567"),  # 7 digits: the shortest number still partly shown
        ("+123456", "***"),  # too short to hide anything while showing 6 digits
        ("anonymous", "***"),
        ("sip:agent@pbx.example.com", "***"),
        ("+91abc5678", "***"),
        (None, None),
        ("", ""),
    ],
)
def test_mask_phone_number(raw: object, masked: object) -> None:
    assert mask_phone_number(raw) == masked


def test_shape_keeps_everything_by_default_and_copies() -> None:
    shaped = shape_record(RECORD)
    assert shaped == RECORD
    assert shaped is not RECORD
    shaped["status"] = "changed"
    assert RECORD["status"] == "completed"


def test_include_keeps_only_named_top_level_fields() -> None:
    shaped = shape_record(RECORD, include={"id", "status", "created_at", "metadata"})
    assert shaped == {"id": RECORD["id"], "status": "completed", "metadata": RECORD["metadata"]}


def test_exclude_drops_named_fields_and_ignores_unknown_names() -> None:
    shaped = shape_record(RECORD, exclude={"transcript", "recording_url", "no_such_field"})
    assert set(RECORD) - set(shaped) == {"transcript", "recording_url"}


def test_mask_masks_every_phone_spelling_and_nothing_else() -> None:
    record = {**RECORD, "to_phone_number": "+34612345678", "from_phone_number": None, "phone_number": "+15550100"}
    shaped = shape_record(record, mask=True)
    assert shaped["to_number"] == "+91******5678"
    assert shaped["from_number"] == "+91******1234"
    assert shaped["to_phone_number"] == "+34*****5678"
    assert shaped["from_phone_number"] is None
    assert shaped["phone_number"] == "+15**0100"
    assert shaped["metadata"] == RECORD["metadata"], "nested objects are kept or dropped whole, never rewritten"
    assert {k: v for k, v in shaped.items() if k not in PHONE_FIELDS} == {
        k: v for k, v in record.items() if k not in PHONE_FIELDS
    }
    assert record["to_number"] == "+919812345678", "the input is not modified"


def test_mask_after_include() -> None:
    assert shape_record(RECORD, include={"id", "to_number"}, mask=True) == {
        "id": RECORD["id"],
        "to_number": "+91******5678",
    }


def test_shaped_record_is_json_safe() -> None:
    shaped = shape_record(RECORD, exclude={"transcript"}, mask=True)
    assert json.loads(json.dumps(shaped)) == shaped


def test_include_and_exclude_together_is_an_error() -> None:
    with pytest.raises(ValueError, match="not both"):
        shape_record(RECORD, include={"id"}, exclude={"transcript"})


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (None, None),
        ("transcript", frozenset({"transcript"})),
        (["id", "status", "id"], frozenset({"id", "status"})),
        (("createdAt", "created_at"), frozenset({"createdAt", "created_at"})),
        ([], frozenset()),
    ],
)
def test_field_names_accepts(names: Any, expected: frozenset[str] | None) -> None:
    assert field_names("include_fields", names) == expected


@pytest.mark.parametrize("names", [["id", 3], ["id", ""], ["  "], [None], 42, {"id": 1, 2: 3}])
def test_field_names_rejects_non_strings_and_empty_names(names: Any) -> None:
    with pytest.raises(ValueError, match="include_fields"):
        field_names("include_fields", names)
