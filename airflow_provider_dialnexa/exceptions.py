"""The one place for DialNexa errors: the typed hierarchy and the HTTP-response-to-error mapping.

Every error subclasses ``AirflowException`` so task retries and ``soft_fail`` behave as Airflow users
expect. Messages name the call id, the connection id, the HTTP status and DialNexa's own ``message``;
they never contain the API key or a whole response body (call records hold transcripts: personal data),
and every phone number in them is masked (``records.mask_numbers``), whoever built the text.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from http import HTTPStatus
from typing import Any, ClassVar

from airflow.providers.common.compat.sdk import AirflowException, AirflowFailException, AirflowNotFoundException

from airflow_provider_dialnexa.records import mask_numbers

_MAX_MESSAGE = 300
#: How much of DialNexa's ``message`` is read before masking (masking first, then cutting to ``_MAX_MESSAGE``,
#: never leaves half a number unmasked at the cut).
_READ_MESSAGE = 4 * _MAX_MESSAGE


class DialNexaError(AirflowException):
    """Base class of every error this provider raises about DialNexa.

    Phone numbers in ``message`` and ``api_message`` are masked here, once for every error: DialNexa echoes
    numbers in its messages, and error text reaches task logs, retry warnings and trigger events.
    """

    #: Short machine-readable name, used as the ``kind`` of trigger ``error`` events.
    kind: ClassVar[str] = "error"
    #: True when resending the same request may succeed (the hook retries these).
    retryable: ClassVar[bool] = False
    #: What the user should do about it.
    hint: ClassVar[str] = ""

    def __init__(
        self,
        message: str,
        *,
        call_id: str | None = None,
        conn_id: str | None = None,
        http_status: int | None = None,
        api_message: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(mask_numbers(message))
        self.call_id = call_id
        self.conn_id = conn_id
        self.http_status = http_status
        self.api_message = None if api_message is None else mask_numbers(api_message)
        self.retry_after = retry_after


class DialNexaConfigError(DialNexaError):
    """The Airflow connection cannot be used (no API key, unusable host, invalid extras)."""

    kind = "config"


class DialNexaConnectionNotFoundError(DialNexaConfigError, AirflowNotFoundException):
    """The connection id is not defined anywhere Airflow looks; the message says how to define it.

    Also an ``AirflowNotFoundException``, which Airflow's own lookup raises, so existing handlers still match.
    """


class InvalidCallIdError(DialNexaError, ValueError):
    """A call id that must not be sent (empty, path characters, control characters, too long)."""

    kind = "bad_request"


class InvalidPhoneNumberError(DialNexaError, ValueError):
    """A phone number that is not E.164 (``+`` and 8 to 15 digits, the first not 0): never sent."""

    kind = "bad_request"


class DialNexaBadRequestError(DialNexaError):
    """400 (and other 4xx DialNexa documents as final: 402, 409, 422)."""

    kind = "bad_request"
    hint = "DialNexa rejected the request; check the call id format."


class DialNexaAuthError(DialNexaError):
    """401: the API key is missing, invalid or revoked."""

    kind = "auth"
    hint = "Check the API key (password field) of the connection."


class DialNexaPermissionError(DialNexaError):
    """403: the key may not read this call (e.g. it belongs to another organization)."""

    kind = "permission"
    hint = "The call belongs to another organization, or the key lacks permission."


class DialNexaNotFoundError(DialNexaError):
    """404: no such call for this key (DialNexa also answers 404 for other organizations' calls)."""

    kind = "not_found"
    hint = "Check the call id, and that the key belongs to the organization that placed the call."


class DialNexaRateLimitError(DialNexaError):
    """429 that outlasted the retries."""

    kind = "rate_limited"
    retryable = True
    hint = "DialNexa rate-limits per API key: lower concurrency or the connection's rate_limit_per_minute."


class DialNexaServerError(DialNexaError):
    """5xx that outlasted the retries."""

    kind = "server"
    retryable = True
    hint = "DialNexa kept failing; retry later."


class DialNexaUnreachableError(DialNexaServerError):
    """Connection refused/reset or timed out, after the retries."""

    hint = "Check the connection's host and the network path to DialNexa."


class DialNexaMalformedResponseError(DialNexaError):
    """A 2xx whose body is not a JSON object with an ``id`` (or not JSON at all)."""

    kind = "malformed"
    hint = "DialNexa sent an unexpected body; if it persists, report it to DialNexa."


class DialNexaCallFailedError(DialNexaError, AirflowFailException):
    """The call ended in a status the task was told to treat as failure (``failure_statuses``).

    An ``AirflowFailException``: the outcome is final, so the task is not retried, and ``soft_fail``
    turns it into a skip in poke and deferrable modes alike.
    """

    kind = "call_failed"


class DialNexaWaitTimeoutError(DialNexaError):
    """The call did not end before the wait's deadline."""

    kind = "timeout"


class DialNexaUnconfirmedCallError(DialNexaServerError):
    """A Create Call whose outcome is unknown: DialNexa may have placed the call, and no lookup could tell.

    Retryable: a retry of the task looks for the call (by its correlation value) before placing another.
    """

    hint = (
        "A retry of this task looks for the call before placing another; do not place it by hand without "
        "first checking List Calls for this correlation value."
    )


class DialNexaUnconfirmedWebhookError(DialNexaServerError):
    """A Create Webhook whose outcome is unknown: DialNexa may have registered it, and no listing could tell.

    Retryable: ``ensure_webhook`` lists the webhooks before it creates one, so a retry never adds a second.
    """

    hint = (
        "Run ensure_webhook again (a task retry does): it lists the webhooks and creates one only if none has "
        "this URL; do not create it by hand without checking List Webhooks first."
    )


#: Event ``kind`` -> exception class, for turning trigger events back into typed errors.
ERROR_KINDS: dict[str, type[DialNexaError]] = {
    cls.kind: cls
    for cls in (
        DialNexaBadRequestError,
        DialNexaAuthError,
        DialNexaPermissionError,
        DialNexaNotFoundError,
        DialNexaRateLimitError,
        DialNexaServerError,
        DialNexaMalformedResponseError,
        DialNexaConfigError,
    )
}

#: Kinds a waiting trigger outlives by polling again (up to its consecutive-failure cap).
TRANSIENT_KINDS: frozenset[str] = frozenset({"server", "rate_limited", "malformed"})

_BY_STATUS: dict[int, type[DialNexaError]] = {
    400: DialNexaBadRequestError,
    401: DialNexaAuthError,
    403: DialNexaPermissionError,
    404: DialNexaNotFoundError,
    429: DialNexaRateLimitError,
}


#: Hints for a refused Create Call, by HTTP status (the class hints speak about reading a call).
CREATE_CALL_HINTS: dict[int, str] = {
    400: "Check phone_number (E.164, e.g. +919876543210), agent_id, agent_version_number and metadata.",
    402: "Top up the DialNexa billing wallet of the workspace; nothing was placed.",
    403: "The destination country/prefix is not enabled for the workspace, KYC is pending, or the key lacks access.",
    404: "Check agent_id: the agent (or the caller number) does not exist in this organization.",
    409: "The request conflicts with the current state of the agent or workspace.",
    422: "DialNexa could not process the request as sent; check the arguments.",
}


def scrub(text: str, secrets: Iterable[str]) -> str:
    """Remove secrets (the API key) from text that may reach a log or an exception."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def api_message(body: bytes) -> str | None:
    """DialNexa's ``message`` from an error envelope (a string or a list of strings), else None."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, Mapping):
        return None
    message = data.get("message")
    if isinstance(message, list):
        message = "; ".join(str(part) for part in message)
    return None if message is None else str(message)


def describe(subject: str, conn_id: str | None) -> str:
    """The prefix every message starts with: what was asked, through which connection."""
    via = f" (connection {conn_id!r})" if conn_id else ""
    return f"DialNexa {subject}{via}"


def error_for_status(
    status_code: int,
    body: bytes,
    *,
    subject: str,
    call_id: str | None,
    conn_id: str | None,
    secrets: Iterable[str] = (),
    retry_after: float | None = None,
    hint: str | None = None,
) -> DialNexaError:
    """Map a non-2xx response to its typed error (the one mapping sync and async paths share).

    ``hint`` replaces the class's hint when the request was not about reading a call (e.g. Create Call).
    """
    if status_code in _BY_STATUS:
        cls = _BY_STATUS[status_code]
    elif status_code >= 500:
        cls = DialNexaServerError
    else:
        cls = DialNexaBadRequestError
    try:
        reason = HTTPStatus(status_code).phrase
    except ValueError:
        reason = "HTTP error"
    message = api_message(body)
    detail = mask_numbers(scrub(message[:_READ_MESSAGE], secrets))[:_MAX_MESSAGE] if message else None
    text = f"{describe(subject, conn_id)}: HTTP {status_code} {reason}"
    if detail:
        text += f": {detail}"
    hint = hint or cls.hint
    if hint:
        text += f". {hint}"
    return cls(
        text,
        call_id=call_id,
        conn_id=conn_id,
        http_status=status_code,
        api_message=detail,
        retry_after=retry_after,
    )


def error_from_event(event: Mapping[str, Any]) -> DialNexaError:
    """Rebuild the typed error a trigger ``error`` event stands for."""
    cls = ERROR_KINDS.get(str(event.get("kind")), DialNexaError)
    return cls(str(event.get("message") or "DialNexa trigger failed"), call_id=event.get("call_id"))


# -- batch calls (campaigns) --------------------------------------------------------------------------


class InvalidLeadsError(DialNexaBadRequestError, ValueError):
    """A leads file that DialNexa would refuse (no ``phone_number`` column, numbers not E.164, too large).

    Raised before anything is uploaded; the message names the rows (numbers masked).
    """


class DialNexaBatchFailedError(DialNexaError, AirflowFailException):
    """The batch ended (or paused) in a status the task was told to treat as failure (``failure_statuses``).

    Final like ``DialNexaCallFailedError``: not retried; ``soft_fail`` turns it into a skip.
    """

    kind = "batch_failed"


class DialNexaUnconfirmedBatchError(DialNexaUnconfirmedCallError):
    """A Create Batch Call whose outcome is unknown: DialNexa may have created the batch, and no lookup could tell."""

    hint = (
        "A retry of this task looks for the batch (by the correlation token in its title) before uploading "
        "again; do not upload the leads by hand without first checking List Batch Calls for that title."
    )


#: Hints for a refused Create Batch Call, by HTTP status.
CREATE_BATCH_HINTS: dict[int, str] = {
    400: "Check the leads file (a phone_number column, at most 10 MB), the title (at most 35 characters) and that "
    "the agent version is published and has an outbound number; nothing was created.",
    402: "Top up the DialNexa billing wallet of the workspace; nothing was created.",
    403: "The destination country/prefix is not enabled for the workspace, KYC is pending, or the key lacks access.",
    404: "Check agent_id and agent_version_number: the agent or that version does not exist in this organization.",
    409: "The request conflicts with the current state of the agent or workspace.",
    422: "DialNexa could not process the request as sent; check the arguments.",
}
#: Hints for reading or changing one batch, by HTTP status.
BATCH_HINTS: dict[int, str] = {
    400: "Check the batch id (as DialNexa returned it, e.g. 'batch_abc123'), or the action is not allowed in the "
    "batch's current status.",
    403: "The batch belongs to another organization, or the key lacks permission.",
    404: "Check the batch id, and that the key belongs to the organization that created the batch.",
    409: "The action conflicts with the batch's status (e.g. resuming a cancelled batch).",
}
