"""Checks of the values this provider puts into a request (call ids, phone numbers, agent ids), before sending."""

from __future__ import annotations

import re
import unicodedata

from airflow_provider_dialnexa.exceptions import DialNexaBadRequestError, InvalidCallIdError, InvalidPhoneNumberError
from airflow_provider_dialnexa.records import mask_phone_number

MAX_CALL_ID_LENGTH = 128
#: What templates render for a missing value (``{{ params.x }}`` of None): never a DialNexa id.
_MISSING_VALUES = frozenset({"none", "null", "undefined", "nan"})
_E164 = re.compile(r"\+[1-9][0-9]{7,14}")


def arrives_at_run_time(value: object) -> bool:
    """True for a value Airflow fills in when the task runs: a Jinja template, or task output (``XComArg``,
    ``task.output``, ``upstream()``, a mapped argument). Such values are checked once rendered, before any request.
    """
    if isinstance(value, str):
        return "{{" in value or "{%" in value
    return callable(getattr(value, "resolve", None)) and callable(getattr(value, "iter_references", None))


def validate_call_id(call_id: object) -> str:
    """Return ``call_id`` if it is safe to put in a URL path, else raise ``InvalidCallIdError``.

    DialNexa ids are opaque (``call_x9y3zp4mq7r1``), so the rule is what could never be an id or could
    change the request's meaning: path/query/fragment/escape characters, ``..``, whitespace, controls.
    """
    if not isinstance(call_id, str):
        raise InvalidCallIdError(
            f"DialNexa call id must be a string, got {type(call_id).__name__} ({call_id!r:.60}); "
            "check the task's call_id argument or the template/XCom that fills it"
        )
    problem = None
    if not call_id:
        problem = "is empty"
    elif call_id.strip() != call_id or any(ch.isspace() for ch in call_id):
        problem = "contains whitespace"
    elif len(call_id) > MAX_CALL_ID_LENGTH:
        problem = f"is {len(call_id)} characters long (at most {MAX_CALL_ID_LENGTH})"
    elif any(unicodedata.category(ch).startswith("C") for ch in call_id):
        problem = "contains control characters"
    elif any(ch in call_id for ch in "/?#%\\"):
        problem = "contains a URL delimiter (one of / ? # % \\)"
    elif ".." in call_id:
        problem = "contains '..'"
    elif call_id.lower() in _MISSING_VALUES:
        problem = "is how a template renders a missing value (None/null/undefined), not an id"
    if problem:
        raise InvalidCallIdError(
            f"DialNexa call id {call_id[:40]!r}{'...' if len(call_id) > 40 else ''} {problem}; "
            "pass the id exactly as DialNexa returned it (e.g. 'call_x9y3zp4mq7r1')",
            call_id=call_id[:40],
        )
    return call_id


def validate_phone_number(phone_number: object) -> str:
    """Return ``phone_number`` if it is E.164 (``+``, 8 to 15 digits, the first not 0), else raise.

    The one check for every phone number this provider sends; the error shows the number masked.
    """
    if not isinstance(phone_number, str):
        raise InvalidPhoneNumberError(
            f"DialNexa phone_number must be a string in E.164 form (e.g. '+919876543210'), "
            f"got {type(phone_number).__name__}; check the task's phone_number argument or the template that fills it"
        )
    number = phone_number.strip()
    if not _E164.fullmatch(number):
        shown = mask_phone_number(number) if number else "''"
        raise InvalidPhoneNumberError(
            f"DialNexa phone_number {shown} is not E.164: write it as '+', the country code and the number, "
            "8 to 15 digits with no spaces or punctuation (e.g. '+919876543210')"
        )
    return number


def validate_agent_id(agent_id: object) -> str:
    """Return ``agent_id`` if it can be a DialNexa agent id (a non-empty string without spaces or controls)."""
    if (
        not isinstance(agent_id, str)
        or not agent_id
        or len(agent_id) > MAX_CALL_ID_LENGTH
        or any(ch.isspace() or unicodedata.category(ch).startswith("C") for ch in agent_id)
        or agent_id.lower() in _MISSING_VALUES
    ):
        raise DialNexaBadRequestError(
            f"DialNexa agent_id {agent_id!r:.60} is not an agent id; pass it exactly as DialNexa shows it "
            "(e.g. 'agent_2g7Xy3tY53gRlp')"
        )
    return agent_id
