"""The receiver, free of any web framework: (connection id, signature headers, raw body) -> (HTTP status, JSON).

Both routes (FastAPI on Airflow 3, Flask on 2.11) read the body bounded and hand it here. The route is
reachable without Airflow's login (DialNexa cannot log in), so the signature is the only credential:

* 401 with one identical body for every authentication failure (no or bad signature, unknown or
  malformed connection id, connection without a webhook secret), and nothing is read or recorded;
  the log line names the reason and the connection id, never the secret, the signature or the body;
* 413 for a body over ``MAX_BODY_BYTES`` (checked by the routes while reading, not from Content-Length);
* 400 for an authentic body that is not a JSON object, or a call-ended event without a usable call id
  (a retry cannot fix it; DialNexa's delivery log shows the failure);
* 200 for the verification ping and for authentic events this provider does not act on (logged);
* 200 after an authentic call-ended event is committed (``recorded`` or ``duplicate``), 503 when the
  metadata DB failed: nothing was committed, and DialNexa's retry records it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_dialnexa._connection import webhook_secrets
from airflow_provider_dialnexa.webhooks import signature
from airflow_provider_dialnexa.webhooks.events import Kind, MalformedEventError, WebhookEvent, parse
from airflow_provider_dialnexa.webhooks.store import Outcome
from airflow_provider_dialnexa.webhooks.uri import valid_conn_id

log = logging.getLogger("airflow_provider_dialnexa.webhooks")

#: Largest body accepted (1 MiB); larger ones get 413 before any work.
MAX_BODY_BYTES = 1024 * 1024
#: The one body of every 401: it says nothing about why.
UNAUTHORIZED: dict[str, Any] = {"detail": "Unauthorized"}
TOO_LARGE: dict[str, Any] = {"detail": f"Request body larger than {MAX_BODY_BYTES} bytes"}
#: A connection's secrets are re-read after this many seconds, or at once (at most once a second) when
#: a signature fails to verify with them: a rotated secret works on the next delivery.
SECRETS_TTL = 5.0
_REFRESH_AFTER = 1.0
_CACHE_SIZE = 256


@dataclass(frozen=True)
class Reply:
    """What the route answers."""

    status: int
    body: dict[str, Any] = field(default_factory=dict)


class _SecretsCache:
    """conn_id -> (read at, secrets or None when the connection is undefined). Small, thread-safe, LRU."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[float, tuple[str, ...] | None]] = OrderedDict()

    def get(self, conn_id: str, *, refresh: bool = False) -> tuple[tuple[str, ...] | None, bool]:
        """The connection's secrets (None: no such connection) and whether they were just read."""
        now = time.monotonic()
        with self._lock:
            cached = self._entries.get(conn_id)
        if cached is not None:
            age = now - cached[0]
            if age < SECRETS_TTL and not (refresh and age >= _REFRESH_AFTER):
                return cached[1], False
        secrets = _read_secrets(conn_id)
        with self._lock:
            self._entries[conn_id] = (now, secrets)
            self._entries.move_to_end(conn_id)
            while len(self._entries) > _CACHE_SIZE:
                self._entries.popitem(last=False)
        return secrets, True

    def peek(self, conn_id: str) -> tuple[str, ...] | None:
        """The cached secrets while fresh (never reads the connection); None when absent or stale."""
        with self._lock:
            cached = self._entries.get(conn_id)
        if cached is None or time.monotonic() - cached[0] >= SECRETS_TTL:
            return None
        return cached[1]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


def _read_secrets(conn_id: str) -> tuple[str, ...] | None:
    from airflow_provider_dialnexa.webhooks._adapter import get_connection

    conn = get_connection(conn_id)
    if conn is None:
        return None
    found = webhook_secrets(conn.extra_dejson)
    return tuple(found[name] for name in ("webhook_secret", "webhook_secret_previous") if name in found)


secrets_cache = _SecretsCache()


def _reject(reason: str, conn_id: str, remote: str | None, size: int) -> Reply:
    log.warning(
        "DialNexa webhook rejected with 401: %s (conn_id=%r, remote=%s, %d body bytes)",
        reason,
        conn_id[:80],
        remote or "?",
        size,
    )
    return Reply(401, UNAUTHORIZED)


def authenticate(conn_id: str, signatures: Iterable[str], body: bytes, remote: str | None = None) -> Reply | None:
    """None when ``body`` carries a valid signature for ``conn_id``'s webhook secret, else the 401 reply."""
    signatures = [value for value in signatures if value]
    if not valid_conn_id(conn_id):
        return _reject("malformed connection id", conn_id, remote, len(body))
    secrets, fresh = secrets_cache.get(conn_id)
    if not signatures:
        return _reject("no x-nexa-signature / x-dialnexa-signature header", conn_id, remote, len(body))
    if secrets and signature.verify(body, signatures, secrets):
        return None
    if not fresh:  # maybe the connection changed (a rotated secret, a new connection): read it again
        secrets, fresh = secrets_cache.get(conn_id, refresh=True)
        if fresh and secrets and signature.verify(body, signatures, secrets):
            return None
    if secrets is None:
        return _reject("no such connection", conn_id, remote, len(body))
    if not secrets:
        return _reject("the connection has no webhook_secret extra", conn_id, remote, len(body))
    return _reject("signature does not match", conn_id, remote, len(body))


def verified_from_cache(conn_id: str, signatures: Iterable[str], body: bytes) -> bool:
    """True when the connection's cached secrets verify ``body`` (no I/O: the async route calls it on its loop)."""
    if not valid_conn_id(conn_id):
        return False
    secrets = secrets_cache.peek(conn_id)
    return bool(secrets) and signature.verify(body, [value for value in signatures if value], secrets or ())


def check(
    conn_id: str,
    signatures: Iterable[str],
    body: bytes,
    *,
    remote: str | None = None,
    authenticated: bool = False,
) -> Reply | WebhookEvent:
    """Authenticate and read one delivery: the reply when that settles it, else the call-ended event to record.

    ``authenticated`` skips the signature check (the caller just verified it with ``verified_from_cache``).
    """
    if not authenticated:
        rejected = authenticate(conn_id, signatures, body, remote)
        if rejected is not None:
            return rejected
    try:
        event = parse(body)
    except MalformedEventError as exc:
        log.warning("DialNexa webhook for %r: authentic but unusable, answered 400: %s", conn_id, exc)
        return Reply(400, {"detail": str(exc)})
    if event.kind is Kind.VERIFICATION:
        log.info("DialNexa webhook for %r: verification request answered", conn_id)
        return Reply(200, {"status": "verified"})
    if event.kind is Kind.OTHER:
        log.info("DialNexa webhook for %r: event %r needs no action", conn_id, event.name or "(unnamed)")
        return Reply(200, {"status": "ignored", "event": event.name})
    return event


def recorded(conn_id: str, event: WebhookEvent, outcome: Outcome) -> Reply:
    """The 200 after the commit that holds (or already held) the event (the writer logs each group)."""
    log.debug("DialNexa webhook for %r: call %r ended (%s): %s", conn_id, event.call_id, event.status, outcome.value)
    return Reply(200, {"status": outcome.value, "call_id": event.call_id, "call_status": event.status})


#: The answer when the metadata DB failed: nothing was committed, DialNexa's retry records it.
NOT_RECORDED = Reply(503, {"detail": "The event could not be recorded; retry later"})


def handle(
    conn_id: str,
    signatures: Iterable[str],
    body: bytes,
    *,
    remote: str | None = None,
    on_recorded: Callable[[], None] | None = None,
) -> Reply:
    """Authenticate, read and act on one delivery (every answer: the module docstring); waits for the commit."""
    from airflow_provider_dialnexa.webhooks.writer import writer

    checked = check(conn_id, signatures, body, remote=remote)
    if isinstance(checked, Reply):
        return checked
    try:
        outcome = writer.submit(conn_id, checked).result()
    except Exception:  # logged by the writer, with its cause
        return NOT_RECORDED
    if on_recorded is not None:
        on_recorded()
    return recorded(conn_id, checked, outcome)
