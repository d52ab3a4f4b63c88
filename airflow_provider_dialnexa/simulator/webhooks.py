"""DialNexa's webhooks in the simulator: the ``/v1/user-webhooks`` resource and what it sends (API-FACTS §5).

* REST: create (``url``, ``events``, ``secret``, ``is_active``; the secret is shown once), list (paged, secrets
  masked ``********``), get, patch, delete; 400s in DialNexa's envelope. Objects are wrapped
  ``{message, webhook}`` as the OpenAPI schemas say, or bare as its examples show (``response_style``).
* Registration sends a synchronous, signed ``verification`` ping; the webhook is saved only on a 2xx.
* When a call is initiated and when it ends, every active webhook subscribed to the event gets a delivery,
  signed ``sha256=<hex>`` (HMAC-SHA256 of the raw body with the webhook's secret) in ``x-nexa-signature``
  or ``x-dialnexa-signature`` (the docs disagree: ``signature_header``), with DialNexa-like retries.
  Bodies are built by ``webhook_payloads.py``; deliveries are sent by ``webhook_sender.Sender`` on its own
  thread, never on the API's request path. Faults: duplicates, delays, ``call_initiated`` after ``call_ended``.

This module knows nothing of ``SimState``: the state hands it a ``view`` of a call (``CallView``) and tells
it when call events are due (``schedule``); it never takes the state's lock while holding its own.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import json
import math
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, NamedTuple
from urllib.parse import urlsplit

from airflow_provider_dialnexa.simulator.webhook_payloads import (
    CallView,
    EventStyle,
    Kind,
    event_bodies,
    iso8601,
    sign,
)
from airflow_provider_dialnexa.status import TERMINAL, normalise

__all__ = ["WEBHOOK_ROUTES", "ApiRefusal", "CallView", "Delivery", "WebhookConfig", "WebhookHub", "sign"]

MASK = "********"
SIGNATURE_HEADERS = ("x-nexa-signature", "x-dialnexa-signature")
USER_AGENT = "DialNexa-External-Webhook/1.0"
VERIFICATION_USER_AGENT = "DialNexa-External-Webhook-Verification/1.0"
#: Request routes of the resource (fault rules and the request log name them).
WEBHOOK_ROUTES = ("webhook_list", "webhook_create", "webhook_get", "webhook_update", "webhook_delete")
MAX_URL_LENGTH = 150
_FIELDS = ("url", "events", "secret", "is_active")
_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"


@dataclasses.dataclass
class WebhookConfig:
    """How the simulated DialNexa registers webhooks and delivers to them (``/_sim/webhooks/config``)."""

    #: The signature header's name: the OpenAPI file says ``x-nexa-signature``, the webhook pages ``x-dialnexa-…``.
    signature_header: str = "x-nexa-signature"
    #: ``underscore``: ``call_initiated``/``call_ended`` envelopes (delivered payloads, the default);
    #: ``dotted``: ``call.started`` and ``call.completed``/``call.failed``/``call.no_answer`` in the same envelope;
    #: ``flat``: the older ``{event, workspace_id, session_id, ...}`` shape; ``both``: each call end twice,
    #: as ``call_ended`` and as its dotted name.
    event_style: EventStyle = "underscore"
    #: Retries after a non-2xx answer, a timeout or a connection error (DialNexa: 0 to 3).
    retry_count: int = 3
    #: Request timeout of one delivery (DialNexa: 1,000 to 60,000 ms; the simulator takes 50 ms and up).
    timeout_ms: int = 10_000
    #: Retry ``n`` waits ``retry_backoff_s * 2 ** (n - 1)`` (DialNexa's schedule is not documented).
    retry_backoff_s: float = 1.0
    #: Faults: hold every delivery this long; send this share of deliveries twice (seeded); send a call's
    #: ``call_initiated`` only after its ``call_ended`` delivery is over.
    delay_s: float = 0.0
    duplicate_rate: float = 0.0
    reorder: bool = False
    #: Indented JSON bodies (catches receivers that verify a re-serialised body instead of the raw bytes).
    pretty_body: bool = False
    #: ``schema``: wrapped ``{message, webhook}`` / full list envelope; ``example``: bare objects, list without
    #: ``message``/``totalPages`` (the OpenAPI examples).
    response_style: Literal["schema", "example"] = "schema"
    id_prefix: Literal["webhook_", "wh_"] = "webhook_"
    #: Largest page List Webhooks serves (a bigger ``limit`` is cut to it, and the answer says so).
    list_max_limit: int = 100
    #: Refuse ``http://`` URLs (DialNexa's workspace webhooks must be HTTPS; off so loopback receivers work).
    require_https: bool = False
    verify_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if self.signature_header.lower() not in SIGNATURE_HEADERS:
            raise ValueError(f"signature_header must be one of {SIGNATURE_HEADERS}")
        self.signature_header = self.signature_header.lower()
        if self.event_style not in ("underscore", "dotted", "flat", "both"):
            raise ValueError("event_style must be underscore, dotted, flat or both")
        if not 0 <= self.retry_count <= 3:
            raise ValueError("retry_count must be between 0 and 3")
        if not 50 <= self.timeout_ms <= 60_000:
            raise ValueError("timeout_ms must be between 50 and 60000")
        if min(self.retry_backoff_s, self.delay_s) < 0 or not 0 <= self.duplicate_rate <= 1:
            raise ValueError("retry_backoff_s and delay_s must be >= 0, duplicate_rate within [0, 1]")
        if self.response_style not in ("schema", "example") or self.id_prefix not in ("webhook_", "wh_"):
            raise ValueError("response_style must be schema or example, id_prefix webhook_ or wh_")
        if self.list_max_limit < 1 or self.verify_timeout_s <= 0:
            raise ValueError("list_max_limit must be >= 1 and verify_timeout_s > 0")


@dataclasses.dataclass
class Webhook:
    id: str
    url: str
    events: list[str]
    is_active: bool
    secret: str
    created_at: float

    def public(self, *, secret: bool | None = False) -> dict[str, Any]:
        """The API's view: the secret in clear (``True``, only when created), masked (``False``) or left out."""
        out: dict[str, Any] = {"id": self.id, "url": self.url, "events": list(self.events), "is_active": self.is_active}
        if secret is not None:
            out["secret"] = self.secret if secret else MASK
        out["createdAt"] = iso8601(self.created_at)
        return out


class Delivery(NamedTuple):
    """One HTTP attempt, as DialNexa's delivery log shows it (``attempt`` 1 is the first try)."""

    id: str
    parent_delivery_id: str | None
    webhook_id: str | None
    call_id: str | None
    event: str
    attempt: int
    response_status: int | None
    is_success: bool
    error_message: str | None
    duplicate: bool
    t: float


class Outgoing(NamedTuple):
    """One delivery to make: its webhook, event, call and body; ``twice`` sends it again once it is over."""

    webhook_id: str
    event: str
    call_id: str | None
    body: bytes
    twice: bool = False


class ApiRefusal(Exception):
    """An error answer of the webhook routes (DialNexa's envelope is built by the app)."""

    def __init__(self, status: int, message: str | list[str]) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message


def _valid_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and not any(c.isspace() for c in url)


class WebhookHub:
    """Registered webhooks, call events waiting to be sent, the delivery log; thread-safe (one condition).

    :param view: The state's current view of a call (None once it is gone, e.g. after a reset).
    :param on_first: Called (without this hub's lock) when the first webhook is registered, so the state
        schedules the future events of calls that already exist; while no webhook exists nothing is scheduled.
    """

    def __init__(self, view: Callable[[str], CallView | None], on_first: Callable[[], None], seed: Any = 0) -> None:
        from airflow_provider_dialnexa.simulator.webhook_sender import Sender

        self._view = view
        self._on_first = on_first
        self._cond = threading.Condition()
        self.sender = Sender(self)
        self._seed = seed
        self._reset_locked(seed)

    # ----------------------------------------------------------------- admin

    def _reset_locked(self, seed: Any) -> None:
        self.config = WebhookConfig()
        self.generation = getattr(self, "generation", 0) + 1
        self._rng = random.Random(f"{seed}/webhooks")
        self._webhooks: dict[str, Webhook] = {}
        self._heap: list[tuple[float, int, str, Kind]] = []
        self._seq = itertools.count()
        self._emitted: set[tuple[str, Kind]] = set()
        self._held: dict[str, list[Outgoing]] = {}
        self._log: list[Delivery] = []
        self._in_flight = 0
        self._ids = itertools.count(1)

    def reset(self, seed: Any = None) -> None:
        """Forget webhooks, pending events and the log; deliveries in flight stop before their next attempt."""
        with self._cond:
            self._reset_locked(self._seed if seed is None else seed)
            self._cond.notify_all()
        self.sender.cancel_all()

    def close(self) -> None:
        """Stop the sender thread (it starts again on the next registration)."""
        self.sender.stop()

    def configure(self, **changes: Any) -> dict[str, Any]:
        with self._cond:
            self.config = dataclasses.replace(self.config, **changes)
            return dataclasses.asdict(self.config)

    @property
    def active(self) -> bool:
        """Whether any webhook is registered (call events are scheduled only then)."""
        return bool(self._webhooks)

    # -------------------------------------------------------------- schedule

    def schedule(self, call_id: str, due: float, kind: Kind) -> None:
        """Send ``kind`` of ``call_id`` at ``due`` (epoch s) to the webhooks subscribed then. Cheap; never blocks."""
        due = max(due, time.time())  # a past event (a back-dated call) is news now, for webhooks registered now
        with self._cond:
            if not self._webhooks or (call_id, kind) in self._emitted:
                return
            heapq.heappush(self._heap, (due, next(self._seq), call_id, kind))
        self.sender.wake()

    def take_due(self, now: float) -> tuple[int, list[tuple[float, str, Kind]], float | None]:
        """``(generation, events due at now, next due time)``; the events count as in flight until ``fired``."""
        with self._cond:
            due = []
            while self._heap and self._heap[0][0] <= now:
                when, _, call_id, kind = heapq.heappop(self._heap)
                due.append((when, call_id, kind))
            self._in_flight += len(due)
            return self.generation, due, (self._heap[0][0] if self._heap else None)

    def fire(self, when: float, call_id: str, kind: Kind) -> list[list[Outgoing]]:
        """The deliveries one due event makes, as sequences to send in order (``reorder`` chains two).

        Never holds this hub's lock while reading the call (the state's lock).
        """
        with self._cond:
            if (call_id, kind) in self._emitted:
                return []
            generation, style = self.generation, self.config.event_style
        view = self._view(call_id)
        if view is None:
            return []
        if kind == "ended" and normalise(view.record.get("status")) not in TERMINAL:
            if not view.scripted:  # the clock has not quite reached the end: look again shortly
                self.schedule(call_id, time.time() + 0.05, kind)
            return []
        out: list[Outgoing] = []
        with self._cond:
            if generation != self.generation or (call_id, kind) in self._emitted:
                return []
            self._emitted.add((call_id, kind))
            cfg = self.config
            for event, names, payload in event_bodies(view, kind, style):
                layout: dict[str, Any] = {"indent": 2} if cfg.pretty_body else {"separators": (",", ":")}
                raw = json.dumps(payload, ensure_ascii=False, **layout).encode()
                for hook in self._webhooks.values():
                    if hook.is_active and hook.created_at <= when and names & set(hook.events):
                        twice = cfg.duplicate_rate > 0 and self._rng.random() < cfg.duplicate_rate
                        out.append(Outgoing(hook.id, event, call_id, raw, twice))
            if kind == "initiated" and cfg.reorder:
                self._held.setdefault(call_id, []).extend(out)
                return []
            held = self._held.pop(call_id, []) if kind == "ended" else []
        if held:  # reorder: the held ``call_initiated`` deliveries go once the ``call_ended`` ones are over
            return [[*out, *held]]
        return [[o] for o in out]

    def fired(self, generation: int) -> None:
        """One event popped by ``take_due`` is handed over (its deliveries are counted on their own)."""
        self.end(generation)

    # ------------------------------------------------------------ deliveries

    def begin(self) -> int:
        """Count a delivery sequence in flight; returns the generation it belongs to."""
        with self._cond:
            self._in_flight += 1
            return self.generation

    def end(self, generation: int) -> None:
        """A delivery sequence (or a due event) of ``generation`` is over; a reset already forgot older ones."""
        with self._cond:
            if generation == self.generation:
                self._in_flight -= 1
            self._cond.notify_all()

    def target(self, webhook_id: str, generation: int) -> tuple[str, str, WebhookConfig] | None:
        """``(url, secret, config)`` for the next attempt, None if the webhook is gone or the hub was reset."""
        with self._cond:
            hook = self._webhooks.get(webhook_id)
            if hook is None or generation != self.generation:
                return None
            return hook.url, hook.secret, self.config

    def record(self, generation: int, **fields: Any) -> str | None:
        """Append one attempt to the log; returns its delivery id (None after a reset)."""
        with self._cond:
            if generation != self.generation:
                return None
            delivery = Delivery(id=f"dlv_{next(self._ids):06d}", t=time.time(), **fields)
            self._log.append(delivery)
            self._cond.notify_all()
            return delivery.id

    def deliveries(self, call_id: str | None = None, event: str | None = None) -> list[Delivery]:
        with self._cond:
            log = list(self._log)
        return [d for d in log if (call_id is None or d.call_id == call_id) and (event is None or d.event == event)]

    def _pending_locked(self, now: float) -> int:
        return self._in_flight + sum(1 for due, *_ in self._heap if due <= now)

    def pending(self) -> int:
        """Deliveries in flight (retries and fault delays included) plus call events already due."""
        with self._cond:
            return self._pending_locked(time.time())

    def wait_idle(self, timeout: float) -> bool:
        """Block until nothing is due or in flight (events of calls still running do not count)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending_locked(time.time()):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                soon = min((due for due, *_ in self._heap), default=math.inf) - time.time()
                self._cond.wait(min(left, max(soon, 0.01)))
            return True

    # ------------------------------------------------------------------- REST

    async def api(self, route: str, webhook_id: str | None, query: Mapping[str, Sequence[str]], body: Any) -> Any:
        """Answer one public request; returns ``(status, payload)`` or raises ``ApiRefusal``."""
        if route == "webhook_list":
            return 200, self._list(query)
        if route == "webhook_create":
            return 201, await self._create(body)
        assert webhook_id is not None
        if route == "webhook_get":
            return 200, self._wrap("Webhook fetched successfully", self._get(webhook_id).public())
        if route == "webhook_update":
            return 200, await self._update(webhook_id, body)
        with self._cond:
            if self._webhooks.pop(webhook_id, None) is None:
                raise ApiRefusal(404, "Webhook not found")
            example = self.config.response_style == "example"
        message = "Webhook deleted successfully"
        return 200, ({"success": True, "message": message} if example else {"message": message, "id": webhook_id})

    def _wrap(self, message: str, webhook: dict[str, Any]) -> dict[str, Any]:
        return webhook if self.config.response_style == "example" else {"message": message, "webhook": webhook}

    def _get(self, webhook_id: str) -> Webhook:
        with self._cond:
            hook = self._webhooks.get(webhook_id)
        if hook is None:
            raise ApiRefusal(404, "Webhook not found")
        return hook

    def _validate(self, body: Any, partial: bool) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise ApiRefusal(400, ["body must be a JSON object"])
        errors = [f"property {key} should not exist" for key in body if key not in _FIELDS]
        if "url" in body or not partial:
            url = body.get("url")
            if not isinstance(url, str) or not _valid_url(url):
                errors.append("url must be a valid URL")
            elif len(url) > MAX_URL_LENGTH:
                errors.append(f"url must be shorter than or equal to {MAX_URL_LENGTH} characters")
            elif self.config.require_https and not url.startswith("https://"):
                errors.append("url must be an https URL")
        if "events" in body or not partial:
            events = body.get("events")
            if not isinstance(events, list):
                errors.append("events must be an array")
            elif not events:
                errors.append("events should not be empty")
            elif not all(isinstance(e, str) and e.strip() for e in events):
                errors.append("each value in events must be a non-empty string")
        if "secret" in body or not partial:
            secret = body.get("secret")
            if not isinstance(secret, str):
                errors.append("secret must be a string")
            elif not secret.strip():
                errors.append("secret should not be empty")
        if "is_active" in body and not isinstance(body["is_active"], bool):
            errors.append("is_active must be a boolean value")
        if errors:
            raise ApiRefusal(400, errors)
        return body

    async def _verify(self, url: str, secret: str) -> None:
        status, error = await self.sender.verify(url, secret)
        if status is None or not 200 <= status < 300:
            got = f"HTTP {status}" if status is not None else error
            raise ApiRefusal(400, f"Webhook verification failed: the URL must answer with a 2xx status (got {got})")

    async def _create(self, body: Any) -> dict[str, Any]:
        body = self._validate(body, partial=False)
        await self._verify(body["url"], body["secret"])
        with self._cond:
            first = not self._webhooks
            while (hook_id := self.config.id_prefix + "".join(self._rng.choices(_ID_ALPHABET, k=12))) in self._webhooks:
                pass
            hook = Webhook(
                hook_id, body["url"], list(body["events"]), body.get("is_active", True), body["secret"], time.time()
            )
            self._webhooks[hook_id] = hook
        if first:
            self._on_first()
        return self._wrap("Webhook created successfully", hook.public(secret=True))

    async def _update(self, webhook_id: str, body: Any) -> dict[str, Any]:
        body = self._validate(body, partial=True)
        hook = self._get(webhook_id)
        if "url" in body and body["url"] != hook.url:  # a new address must prove itself like a new webhook
            await self._verify(body["url"], body.get("secret", hook.secret))
        with self._cond:
            hook = self._get(webhook_id)
            for key in _FIELDS:
                if key in body:
                    setattr(hook, key, list(body[key]) if key == "events" else body[key])
            return self._wrap("Webhook updated successfully", hook.public(secret=None))

    def _list(self, query: Mapping[str, Sequence[str]]) -> dict[str, Any]:
        errors: list[str] = []
        page, limit = _int(query, "page", 1, errors), _int(query, "limit", 10, errors)
        if errors or page < 1 or limit < 1:
            raise ApiRefusal(400, errors or ["page and limit must not be less than 1"])
        with self._cond:
            limit = min(limit, self.config.list_max_limit)
            hooks = sorted(self._webhooks.values(), key=lambda h: h.created_at)
            example = self.config.response_style == "example"
        rows = [h.public() for h in hooks[(page - 1) * limit : page * limit]]
        if example:
            return {"total": len(hooks), "page": page, "limit": limit, "webhooks": rows}
        return {
            "message": "Webhooks fetched successfully",
            "webhooks": rows,
            "page": page,
            "limit": limit,
            "total": len(hooks),
            "totalPages": math.ceil(len(hooks) / limit),
        }

    # ---------------------------------------------------------------- control

    def control(self, method: str, parts: Sequence[str], query: Mapping[str, Sequence[str]], body: Any) -> Any:
        """``/_sim/webhooks[/config|/deliveries]``; returns ``(status, payload)``."""
        match method, list(parts):
            case "GET", []:
                with self._cond:
                    return 200, {"webhooks": [h.public() for h in self._webhooks.values()]}
            case "GET", ["config"]:
                return 200, self.configure()
            case "POST", ["config"]:
                return 200, self.configure(**body)
            case "GET", ["deliveries"]:
                call_id, event = (query.get(k, [None])[-1] for k in ("call_id", "event"))
                rows = [d._asdict() for d in self.deliveries(call_id, event)]
                return 200, {"deliveries": rows, "pending": self.pending()}
        return 404, {"statusCode": 404, "message": f"Cannot {method} /_sim/webhooks/{'/'.join(parts)}"}


def _int(query: Mapping[str, Sequence[str]], name: str, default: int, errors: list[str]) -> int:
    values = query.get(name)
    if not values:
        return default
    try:
        return int(values[-1])
    except ValueError:
        errors.append(f"{name} must be an integer number")
        return default
