"""DialNexa webhook registrations (``/v1/user-webhooks``) for ``DialNexaHook``: list, create, update, ensure.

``ensure_webhook`` is the one most DAGs need: it makes DialNexa post the call events to a URL (the receiver
of ``airflow_provider_dialnexa.webhooks``), idempotently. Requests share the hook's rate budget, retries and
typed errors; a create is never sent twice blindly (DialNexa has no idempotency key): after an answer that
may hide a created webhook, the webhooks are listed and the one with the URL is used. The webhook secret
never reaches a log, an exception or a return value (``********``).

Both documented response shapes are read (API-FACTS §5.2): objects wrapped ``{message, webhook}`` (OpenAPI
schemas) or bare (its examples); lists ``{webhooks, page, limit, total, totalPages}`` with any of the
paging fields missing, or a bare array.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import quote, urlsplit

from tenacity import Retrying

from airflow_provider_dialnexa._connection import ConnectionSettings
from airflow_provider_dialnexa.exceptions import (
    DialNexaConfigError,
    DialNexaError,
    DialNexaMalformedResponseError,
    DialNexaRateLimitError,
    DialNexaServerError,
    DialNexaUnconfirmedWebhookError,
    describe,
)

if TYPE_CHECKING:
    from airflow_provider_dialnexa.policy import RetryPolicy

#: What ``ensure_webhook`` subscribes to by default: every documented name of "a call ended" (the delivered
#: ``call_ended`` and the OpenAPI/Register Webhook page's dotted names). The receiver records one event per
#: call whichever arrives, and acts on nothing else.
DEFAULT_WEBHOOK_EVENTS: tuple[str, ...] = ("call_ended", "call.completed", "call.failed", "call.no_answer")
#: How DialNexa shows a secret after creation, and how this provider always shows it.
SECRET_MASK = "********"  # noqa: S105 - a mask, not a secret
#: Page size asked of List Webhooks (DialNexa's default is 10; a server that serves fewer says so in ``limit``).
WEBHOOK_PAGE_SIZE = 100
#: Most pages one listing reads before it gives up proving a webhook is absent.
MAX_WEBHOOK_PAGES = 100

#: Hints by HTTP status for every webhook request (the class hints speak about reading calls).
WEBHOOK_HINTS: dict[int, str] = {
    400: "DialNexa refused the webhook: check the URL (https, at most 150 characters), the events and the "
    "secret. Registration also fails when the URL does not answer DialNexa's signed verification request with "
    "2xx: the receiver must be reachable from the internet and the connection's webhook_secret must be the "
    "secret sent here.",
    403: "The API key may not manage this organization's webhooks.",
    404: "No such webhook (deleted meanwhile?); ensure_webhook creates it again.",
    409: "The request conflicts with the webhook's current state.",
    422: "DialNexa could not process the webhook request as sent; check the arguments.",
}


class _Page(NamedTuple):
    """One List Webhooks page: its webhooks and the paging fields the server sent (None when absent)."""

    webhooks: list[dict[str, Any]]
    limit: int | None
    total: int | None
    total_pages: int | None


def _malformed(subject: str, settings: ConnectionSettings, problem: str) -> DialNexaMalformedResponseError:
    return DialNexaMalformedResponseError(
        f"{describe(subject, settings.conn_id)}: HTTP 2xx with {problem}. {DialNexaMalformedResponseError.hint}",
        conn_id=settings.conn_id,
        http_status=200,
    )


def _count(value: Any) -> int | None:
    """A paging number as sent (numbers or numeric strings); None when absent or unusable."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float) and value >= 0:
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def _checked(item: Any, subject: str, settings: ConnectionSettings) -> dict[str, Any]:
    if not isinstance(item, dict) or not isinstance(item.get("id"), str) or not item["id"]:
        raise _malformed(subject, settings, "a webhook that is not an object with a string 'id'")
    return masked(item)


def as_webhook(data: Any, *, subject: str, settings: ConnectionSettings) -> dict[str, Any]:
    """The webhook of a create/get/update answer, wrapped (``{message, webhook}``) or bare; secret masked."""
    if isinstance(data, dict):
        for key in ("webhook", "data"):
            if isinstance(data.get(key), dict):
                data = data[key]
                break
    return _checked(data, subject, settings)


def as_webhook_page(data: Any, *, subject: str, settings: ConnectionSettings) -> _Page:
    """One List Webhooks answer in any documented shape; every webhook checked and masked."""
    if isinstance(data, list):
        return _Page([_checked(item, subject, settings) for item in data], None, None, None)
    if not isinstance(data, dict):
        raise _malformed(subject, settings, f"a JSON {type(data).__name__} instead of a webhook list")
    items = next((data[key] for key in ("webhooks", "data") if isinstance(data.get(key), list)), None)
    if items is None:
        raise _malformed(subject, settings, "an object without a 'webhooks' list")
    meta: dict[str, Any] = data["meta"] if isinstance(data.get("meta"), dict) else data
    return _Page(
        [_checked(item, subject, settings) for item in items],
        _count(meta.get("limit")),
        _count(meta.get("total")),
        _count(meta.get("totalPages", meta.get("total_pages"))),
    )


def masked(webhook: Mapping[str, Any]) -> dict[str, Any]:
    """A copy with the secret (if any) replaced by ``********``."""
    out = dict(webhook)
    if "secret" in out:
        out["secret"] = SECRET_MASK
    return out


def validate_webhook_url(url: Any) -> str:
    """An absolute ``http(s)`` URL without credentials or whitespace; raise ``ValueError`` naming the problem."""
    if not isinstance(url, str) or not url.strip():
        raise ValueError("the webhook URL must be a non-empty string, e.g. https://airflow.example.com/dialnexa/...")
    text: str = url.strip()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname or any(ch.isspace() for ch in text):
        raise ValueError(f"the webhook URL must be an absolute https:// URL, got {display_url(text)!r}")
    if parts.username or parts.password:
        raise ValueError("the webhook URL must not carry credentials: DialNexa signs deliveries with the secret")
    return text


def validate_events(events: Iterable[str] | str) -> list[str]:
    """Event names as a list without duplicates, in order; raise ``ValueError`` for an empty or bad list."""
    if isinstance(events, str):
        events = [events]
    names: list[str] = list(dict.fromkeys(events))
    if not names or not all(isinstance(name, str) and name.strip() and name == name.strip() for name in names):
        raise ValueError(f"events must be a non-empty list of event names, e.g. {list(DEFAULT_WEBHOOK_EVENTS)}")
    return names


def display_url(url: str) -> str:
    """The URL for logs and messages: scheme, host and path only (a query may hold a token)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<unparseable URL>"
    return f"{parts.scheme}://{host}{port}{parts.path}"


def same_url(a: Any, b: str) -> bool:
    """Whether two webhook URLs name the same endpoint (scheme and host compared case-insensitively)."""
    if not isinstance(a, str):
        return False
    try:
        x, y = urlsplit(a.strip()), urlsplit(b)
        return (x.scheme.lower(), x.hostname, x.port, x.path, x.query) == (
            y.scheme.lower(),
            y.hostname,
            y.port,
            y.path,
            y.query,
        )
    except ValueError:
        return False


def _hide_secret(exc: DialNexaError, secret: str | None) -> DialNexaError:
    """Remove the secret wherever DialNexa's message echoed it (in place; returns ``exc``)."""
    if secret:
        exc.args = tuple(arg.replace(secret, SECRET_MASK) if isinstance(arg, str) else arg for arg in exc.args)
        if exc.api_message:
            exc.api_message = exc.api_message.replace(secret, SECRET_MASK)
    return exc


class WebhookMixin:
    """DialNexa's webhook registrations, for ``DialNexaHook`` (sync; tasks and setup scripts)."""

    if TYPE_CHECKING:  # provided by DialNexaHook

        @property
        def settings(self) -> ConnectionSettings: ...

        @property
        def log(self) -> Any: ...

        def _policy(self, settings: ConnectionSettings) -> RetryPolicy: ...

        def _send_once(self, method: str, url: str, *, subject: str, call_id: str | None, **request: Any) -> Any: ...

    def _webhooks_url(self, webhook_id: str | None = None) -> str:
        base = f"{self.settings.base_url}/v1/user-webhooks"
        return base if webhook_id is None else f"{base}/{quote(webhook_id, safe='')}"

    def _webhook_request(
        self, method: str, url: str, *, subject: str, secret: str | None = None, **request: Any
    ) -> Any:
        """One idempotent webhook request (GET, PATCH) with the hook's retries on 429, 5xx and transport errors."""
        policy = self._policy(self.settings)
        try:
            for attempt in Retrying(**policy.tenacity_kwargs(self.log, describe(subject, None))):
                with attempt:
                    return self._send_once(method, url, subject=subject, call_id=None, hints=WEBHOOK_HINTS, **request)
        except DialNexaError as exc:
            raise _hide_secret(exc, secret) from None
        raise AssertionError("unreachable")  # pragma: no cover - tenacity either returns or raises

    def _webhook_secret(self, secret: str | None) -> str:
        """The secret to register: the argument, else the connection's ``webhook_secret`` extra."""
        if secret is not None:
            if not isinstance(secret, str) or not secret.strip():
                raise ValueError("secret must be a non-empty string (or None to use the connection's webhook_secret)")
            return secret.strip()
        settings = self.settings
        found = getattr(settings, "webhook_secret", None)
        if not found:
            raise DialNexaConfigError(
                f"DialNexa connection {settings.conn_id!r} has no 'webhook_secret' extra: set it to a long random "
                "secret (the receiver verifies deliveries with it) or pass secret=...",
                conn_id=settings.conn_id,
            )
        return str(found)

    def list_webhooks(self) -> list[dict[str, Any]]:
        """Every webhook of the organization (List Webhooks, all pages), secrets masked.

        :raises DialNexaMalformedResponseError: when the pages cannot be read to the end (a server that
            ignores ``page``, or more than ``MAX_WEBHOOK_PAGES`` pages): a partial list proves nothing.
        """
        subject = "List Webhooks"
        found: dict[str, dict[str, Any]] = {}
        for page in range(1, MAX_WEBHOOK_PAGES + 1):
            params = {"page": str(page), "limit": str(WEBHOOK_PAGE_SIZE)}
            data = self._webhook_request("GET", self._webhooks_url(), subject=f"{subject} page {page}", params=params)
            current = as_webhook_page(data, subject=f"{subject} page {page}", settings=self.settings)
            new = [hook for hook in current.webhooks if hook["id"] not in found]
            found.update((hook["id"], hook) for hook in new)
            if not current.webhooks:
                return list(found.values())
            if current.total_pages is not None:
                if page >= current.total_pages:
                    return list(found.values())
            elif current.total is not None:
                if len(found) >= current.total:
                    return list(found.values())
            elif len(current.webhooks) < min(WEBHOOK_PAGE_SIZE, current.limit or WEBHOOK_PAGE_SIZE):
                return list(found.values())
            if not new:
                break  # the server answers the same page again: it ignores `page`
        raise _malformed(
            subject,
            self.settings,
            f"pages that never end ({len(found)} webhooks read in up to {MAX_WEBHOOK_PAGES} pages, or a server "
            "that ignores 'page'); the list is incomplete",
        )

    def create_webhook(
        self, url: str, events: Iterable[str] | str, *, secret: str | None = None, is_active: bool = True
    ) -> dict[str, Any]:
        """``POST /v1/user-webhooks``: register ``url`` for ``events``, at most once.

        DialNexa sends a signed verification request to ``url`` first and registers it only on a 2xx. A POST
        that may have reached DialNexa (timeout, dropped connection, 5xx, a 2xx without an id) is not sent
        again before List Webhooks proves no webhook has this URL; the one found is returned instead.

        :param secret: The signing secret (default: the connection's ``webhook_secret`` extra).
        :returns: The webhook, secret masked.
        :raises DialNexaUnconfirmedWebhookError: it may have been created and no listing could tell.
        """
        url, names = validate_webhook_url(url), validate_events(events)
        secret = self._webhook_secret(secret)
        body = {"url": url, "events": names, "secret": secret, "is_active": is_active}
        subject = f"Create Webhook for {display_url(url)}"
        settings = self.settings
        policy = self._policy(settings)
        failure: DialNexaError | None = None
        uncertain = False
        for attempt in range(1, policy.attempts + 1):
            try:
                data = self._send_once(
                    "POST",
                    self._webhooks_url(),
                    json=body,
                    subject=subject,
                    call_id=None,
                    hints=WEBHOOK_HINTS,
                    wait_out_timeouts=True,
                )
                created = as_webhook(data, subject=subject, settings=settings)
            except DialNexaRateLimitError as exc:  # refused before anything was registered
                failure = _hide_secret(exc, secret)
            except (DialNexaServerError, DialNexaMalformedResponseError) as exc:  # it may exist now
                failure, uncertain = _hide_secret(exc, secret), True
            except DialNexaError as exc:  # 4xx: final, nothing was registered
                raise _hide_secret(exc, secret) from None
            else:
                where = describe(subject, settings.conn_id)
                self.log.info("%s: registered webhook %r for %s", where, created["id"], names)
                return created
            if attempt == policy.attempts and not uncertain:
                break
            wait = policy.wait(attempt, failure.retry_after)
            next_step = "looking for the webhook" if uncertain else "sending again"
            self.log.warning("%s (attempt %d of %d; %s in %.2f s)", failure, attempt, policy.attempts, next_step, wait)
            time.sleep(wait)
            if uncertain:
                found = self._find_created(url, subject, failure)
                if found is not None:
                    return found
                uncertain = False  # proven: nothing was registered
        assert failure is not None
        raise failure

    def _find_created(self, url: str, subject: str, cause: DialNexaError) -> dict[str, Any] | None:
        """The webhook an uncertain create may have registered; None only when the full list proves there is none."""
        settings = self.settings
        try:
            hooks = self.list_webhooks()
        except DialNexaError as exc:
            raise DialNexaUnconfirmedWebhookError(
                f"{describe(subject, settings.conn_id)}: the request may have reached DialNexa ({cause}), and "
                f"listing the webhooks failed: {exc}. {DialNexaUnconfirmedWebhookError.hint}",
                conn_id=settings.conn_id,
                http_status=exc.http_status,
            ) from exc
        found = next((hook for hook in hooks if same_url(hook.get("url"), url)), None)
        if found is not None:
            self.log.warning(
                "%s: webhook %r was registered by the earlier attempt; using it",
                describe(subject, settings.conn_id),
                found["id"],
            )
        return found

    def update_webhook(
        self,
        webhook_id: str,
        *,
        url: str | None = None,
        events: Iterable[str] | str | None = None,
        is_active: bool | None = None,
        secret: str | None = None,
    ) -> dict[str, Any]:
        """``PATCH /v1/user-webhooks/{id}``: change only the fields given (idempotent, so retried like reads).

        A new ``secret`` signs the very next delivery (DialNexa keeps no overlap): put the old one in the
        connection's ``webhook_secret_previous`` first. Returns the webhook, secret masked.
        """
        if not isinstance(webhook_id, str) or not webhook_id.strip():
            raise ValueError("webhook_id must be a non-empty string (the id List Webhooks shows)")
        body: dict[str, Any] = {}
        if url is not None:
            body["url"] = validate_webhook_url(url)
        if events is not None:
            body["events"] = validate_events(events)
        if is_active is not None:
            body["is_active"] = bool(is_active)
        if secret is not None:
            body["secret"] = self._webhook_secret(secret)
        if not body:
            raise ValueError("update_webhook needs at least one of url, events, is_active, secret")
        subject = f"Update Webhook {webhook_id!r}"
        data = self._webhook_request("PATCH", self._webhooks_url(webhook_id), subject=subject, secret=secret, json=body)
        updated = as_webhook(data, subject=subject, settings=self.settings)
        changed = sorted(key if key != "secret" else "secret (rotated)" for key in body)
        self.log.info("%s: updated %s", describe(subject, self.settings.conn_id), ", ".join(changed))
        return updated

    def ensure_webhook(
        self,
        url: str,
        events: Iterable[str] | str = DEFAULT_WEBHOOK_EVENTS,
        *,
        secret: str | None = None,
        is_active: bool = True,
        update_secret: bool = False,
    ) -> dict[str, Any]:
        """Make DialNexa post ``events`` to ``url``: idempotent, safe to run on every deploy or DAG run.

        Lists every webhook and matches on the URL. None: creates it (see ``create_webhook``). One: sends
        a PATCH only for what differs (the set of events, the active flag); nothing when it already matches.
        Several with the URL (made by hand, or by two concurrent first runs): the first is used and the
        others are named in a warning, never deleted.

        DialNexa shows a secret only when the webhook is created, so an existing webhook's secret cannot be
        compared: ``update_secret=True`` sends the secret (rotation: set ``webhook_secret_previous`` first).

        :param url: Where DialNexa posts, e.g. ``https://airflow.example.com`` + ``webhooks.webhook_path()``.
        :param events: Event names to subscribe to (default ``DEFAULT_WEBHOOK_EVENTS``).
        :param secret: The signing secret (default: the connection's ``webhook_secret`` extra).
        :returns: The webhook as DialNexa shows it, secret masked (``********``).
        """
        url, names = validate_webhook_url(url), validate_events(events)
        secret = self._webhook_secret(secret)  # fail fast: a receiver without the secret refuses every delivery
        settings = self.settings
        subject = describe(f"webhook for {display_url(url)}", settings.conn_id)
        matches = [hook for hook in self.list_webhooks() if same_url(hook.get("url"), url)]
        if not matches:
            return self.create_webhook(url, names, secret=secret, is_active=is_active)
        current = matches[0]
        if len(matches) > 1:
            others = ", ".join(repr(hook["id"]) for hook in matches[1:])
            self.log.warning(
                "%s: %d webhooks have this URL; using %r. Delete the others (%s) in DialNexa: each one makes "
                "DialNexa deliver every event again (the receiver records it once)",
                subject,
                len(matches),
                current["id"],
                others,
            )
        changes: dict[str, Any] = {}
        if set(current.get("events") or ()) != set(names):
            changes["events"] = names
        if current.get("is_active") is not is_active:
            changes["is_active"] = is_active
        if update_secret:
            changes["secret"] = secret
        if not changes:
            self.log.info("%s: webhook %r already matches (events %s)", subject, current["id"], names)
            return current
        return self.update_webhook(str(current["id"]), **changes)
