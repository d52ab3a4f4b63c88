"""In-memory state of the DialNexa simulator: calls, their lifecycle, fault rules, counters and the request log.

Pure Python and thread-safe (one lock): the ASGI app runs on the server's event-loop thread while tests and
benchmarks drive the same object from their own thread. A call's status is computed from the clock each time
it is read, so 10,000 idle calls cost nothing between requests.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import math
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple, TypedDict, Unpack, get_args

from airflow_provider_dialnexa.simulator import quirks
from airflow_provider_dialnexa.simulator.ratelimit import KeyLimiter, RateState, ResetStyle, WindowKind
from airflow_provider_dialnexa.simulator.webhooks import CallView, WebhookHub
from airflow_provider_dialnexa.status import TERMINAL, normalise

Spelling = Literal["camel", "snake"]
FaultRoute = Literal[
    "get",
    "list",
    "create",
    "any",
    "batch_create",
    "batch_list",
    "batch_get",
    "batch_status",
    "webhook_list",
    "webhook_create",
    "webhook_get",
    "webhook_update",
    "webhook_delete",
]
FaultKind = Literal[
    "429",
    "500",
    "502_html",
    "503",
    "504",
    "slow",
    "reset",
    "truncated_json",
    "not_object",
    "no_id",
    "object_id",
    "no_status",
    "html_200",
    # Create Call: the call is created, then the answer is lost (502 page, 504, held past the client's timeout).
    "lost_502",
    "lost_504",
    "lost_slow",
    # Create Call refusals DialNexa documents (nothing is created), and a list view without ``metadata``.
    "400",
    "402",
    "403",
    "404",
    "409",
    "422",
    "no_metadata",
]

DEFAULT_API_KEY = "sim_key:sim_secret"
#: The outcomes the simulator can play, in the documentation's order (tests and seeded plans rely on it):
#: exactly the provider's terminal vocabulary, checked at import so the two can never drift apart.
OUTCOMES: tuple[str, ...] = (
    "completed",
    "did_not_pick",
    "busy",
    "no_answer",
    "failed",
    "cancelled",
    "retry_expired",
    "voicemail",
    "hangup",
)
if set(OUTCOMES) != TERMINAL:  # pragma: no cover - a vocabulary change must reach the simulator too
    raise RuntimeError(f"simulator outcomes {sorted(OUTCOMES)} differ from status.TERMINAL {sorted(TERMINAL)}")
#: Outcomes where someone (or a voicemail box) answered: they have a talk time, transcript and recording.
CONNECTED: frozenset[str] = frozenset({"completed", "voicemail"})
DEFAULT_MIX: dict[str, float] = {
    "completed": 0.60,
    "no_answer": 0.12,
    "busy": 0.10,
    "failed": 0.08,
    "did_not_pick": 0.05,
    "voicemail": 0.03,
    "cancelled": 0.02,
}
FAULT_KINDS: tuple[str, ...] = get_args(FaultKind)
#: Faults answered with an error status instead of running the route (no side effect, e.g. no call created).
ERROR_FAULTS: frozenset[str] = frozenset({"429", "500", "502_html", "503", "504"})
ERROR_FAULTS |= {"400", "402", "403", "404", "409", "422"}  # Create Call refusals: nothing is created either


#: Error statuses DialNexa documents (API facts 4.2): any of them can be a fault's ``kind``.
DOCUMENTED_ERROR_STATUSES = frozenset({400, 401, 402, 403, 404, 409, 422, 429, 500, 502, 503, 504})


def is_status_fault(kind: object) -> bool:
    """Whether ``kind`` is a documented error status as a string (``"402"``, ``"409"``, ``"422"``...)."""
    return isinstance(kind, str) and kind.isdigit() and int(kind) in DOCUMENTED_ERROR_STATUSES


CALL_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
E164_RE = re.compile(r"^\+[1-9][0-9]{6,14}$")
LIST_MAX_LIMIT = 200
ENVELOPE_MAX_LIMIT = 100

_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
_AGENTS = ("agent_2g7Xy3tY53gRlp", "agent_mgao6051Rk718Y", "agent_Q8w3Lr5Zt1Vb9K")
_FROM_NUMBER = "+912240001234"
_END_REASONS: dict[str, tuple[str, ...]] = {
    "completed": ("user_disconnected", "agent_disconnected"),
    "busy": ("user_busy",),
    "no_answer": ("user_did_not_pick_up",),
    "did_not_pick": ("user_did_not_pick_up",),
    "failed": ("invalid_phone_number", "network_failure"),
    "voicemail": ("voicemail_detected",),
    "cancelled": ("unknown",),
    "retry_expired": ("user_did_not_pick_up",),
    "hangup": ("user_unreachable",),
}
# (transcript, summary, sentiment, analysis) of connected calls; several are deliberately not ASCII.
_CONVERSATIONS: tuple[tuple[str, str, str, dict[str, Any]], ...] = (
    (
        "Agent: Hello, am I speaking with Anil?\nUser: Yes.\n"
        "Agent: I'm calling about your policy renewal.\nUser: Please renew it and email me the invoice.",
        "Customer confirmed renewal and asked for an invoice by email.",
        "positive",
        {"renewal_confirmed": True, "follow_up_required": False},
    ),
    (
        "Agent: नमस्ते, क्या मेरी बात अनिल जी से हो रही है?\nUser: हाँ, बोलिए।\n"
        "Agent: आपकी बीमा पॉलिसी के नवीनीकरण के बारे में कॉल किया है।\nUser: ठीक है, इनवॉइस ईमेल पर भेज दीजिए।",
        "Customer agreed to renew (call in Hindi) and asked for the invoice by email.",
        "positive",
        {"renewal_confirmed": True, "follow_up_required": True, "language": "hi"},
    ),
    (
        "Agent: Hola, ¿hablo con María José?\nUser: Sí, dígame.\n"
        "Agent: Le llamo para confirmar su cita del miércoles a las 10:00.\n"
        "User: Ese día no puedo, ¿podemos cambiarla?",
        "Customer asked to reschedule Wednesday's appointment (call in Spanish).",
        "neutral",
        {"appointment_confirmed": False, "reschedule_requested": True, "language": "es"},
    ),
    (
        "Agent: Hi Sam! Your parcel 📦 arrives tomorrow between 9 and 12.\nUser: Great, thanks 👍\n"
        "Agent: Anything else I can help with?\nUser: No, that's all. Bye! 😊",
        "Customer acknowledged tomorrow's delivery window.",
        "positive",
        {"delivery_acknowledged": True, "follow_up_required": False},
    ),
    (
        "Agent: Hello, I'm calling from Acme Broadband about an overdue bill.\n"
        "User: I already paid it last week, please stop calling me.\nAgent: I'm sorry, I'll note that on your account.",
        "Customer says the bill is already paid and is annoyed by the call.",
        "negative",
        {"payment_claimed": True, "follow_up_required": True},
    ),
)
_VOICEMAIL = (
    "Agent: Hi, this is Nexa from Acme Insurance about your policy renewal. "
    "Please call us back on +91 22 4000 1234. Thank you!",
    "Reached voicemail; left a callback message.",
    "neutral",
    {"voicemail_left": True},
)


class ApiError(Exception):
    """An error answer of the public API: HTTP status plus the envelope's ``message``."""

    def __init__(self, status: int, message: str | list[str]) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message


class LogEntry(NamedTuple):
    """One request seen by the public API (control requests are not logged)."""

    t: float
    method: str
    route: str
    call_ids: tuple[str, ...]
    status_code: int


class CallSpec(TypedDict, total=False):
    """What a test may fix when it creates a call; anything left out is drawn from the seeded RNG/config.

    Durations take a number or a ``(low, high)`` range drawn uniformly. ``age_s`` back-dates the creation, so a
    call with a realistic talk time can already be over without the test waiting for it.
    """

    outcome: str
    queued_s: float | Sequence[float]
    ring_s: float | Sequence[float]
    talk_s: float | Sequence[float]
    spelling: Spelling
    hyphenated: bool
    raw_statuses: dict[str, str]
    script: list[str]
    foreign: bool
    foreign_status: int
    metadata: dict[str, Any]
    agent_id: str
    agent_version_number: int
    to_number: str
    call_id: str
    age_s: float


@dataclasses.dataclass
class CallPlan:
    """How one call behaves: phase durations, final outcome and how its record is spelled.

    Status by time since ``created_at``: ``created`` while queued, ``initiated`` while ringing, ``in_progress``
    while talking (calls that never connect stay ``initiated``), then ``outcome`` at ``terminal_at``.
    A ``script`` replaces the clock: each Get Call shows the next entry verbatim and stays on the last.
    """

    outcome: str = "completed"
    queued_s: float = 0.0
    ring_s: float = 0.0
    talk_s: float = 0.0
    spelling: Spelling = "camel"
    hyphenated: bool = False
    raw_statuses: dict[str, str] | None = None
    script: list[str] | None = None
    foreign: bool = False
    foreign_status: int = 403
    created_at: float = 0.0

    @property
    def terminal_at(self) -> float:
        """Epoch seconds at which the (unscripted) call reaches its outcome."""
        return self.created_at + self.queued_s + self.ring_s + self.talk_s

    def to_dict(self) -> dict[str, Any]:
        """JSON form, with ``terminal_at`` added."""
        return {**dataclasses.asdict(self), "terminal_at": self.terminal_at}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CallPlan:
        """Inverse of :meth:`to_dict` (ignores ``terminal_at``)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def validate(self) -> None:
        """Raise ``ValueError`` when the plan cannot be simulated."""
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}, not {self.outcome!r}")
        if self.spelling not in ("camel", "snake"):
            raise ValueError(f"spelling must be 'camel' or 'snake', not {self.spelling!r}")
        if min(self.queued_s, self.ring_s, self.talk_s) < 0:
            raise ValueError("durations must be >= 0")
        if self.foreign_status not in (403, 404):
            raise ValueError("foreign_status must be 403 or 404")
        if self.script is not None and (not self.script or not all(isinstance(s, str) for s in self.script)):
            raise ValueError("script must be a non-empty list of strings")


@dataclasses.dataclass
class Fault:
    """A fault rule. It fires on the next ``count`` matching requests, with probability ``rate`` per matching
    request (seeded RNG), or — with neither — on every matching request until cleared or reset.

    ``kind`` is one of ``FAULT_KINDS``, or any error status DialNexa documents, as a string (e.g. ``"402"``,
    ``"409"``, ``"422"``): answered with that status in DialNexa's error envelope.
    """

    kind: FaultKind | str
    route: FaultRoute = "any"
    call_id: str | None = None
    count: int | None = None
    rate: float | None = None
    retry_after: str | None = None
    #: ``slow``/``lost_slow``: hold the answer this long, or until the client hangs up (it timed out).
    delay_s: float = 1.0
    #: Error faults only: the ``message`` quotes the request's (or the call's) phone number in several spellings.
    echo_number: bool = False

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS and not is_status_fault(self.kind):
            raise ValueError(
                f"kind must be one of {FAULT_KINDS} or one of DialNexa's error statuses "
                f"{sorted(DOCUMENTED_ERROR_STATUSES)}, not {self.kind!r}"
            )
        if self.route not in get_args(FaultRoute):
            raise ValueError(f"route must be one of {get_args(FaultRoute)}, not {self.route!r}")
        if self.count is not None and self.rate is not None:
            raise ValueError("give count or rate, not both")
        if self.count is not None and self.count < 1:
            raise ValueError("count must be >= 1")
        if self.rate is not None and not 0.0 <= self.rate <= 1.0:
            raise ValueError("rate must be within [0, 1]")
        if self.delay_s < 0:
            raise ValueError("delay_s must be >= 0")
        if self.retry_after is not None:
            self.retry_after = str(self.retry_after)

    def matches(self, route: str, call_ids: Sequence[str]) -> bool:
        """True when this rule applies to a request on ``route`` naming ``call_ids``."""
        return self.route in ("any", route) and (self.call_id is None or self.call_id in call_ids)


@dataclasses.dataclass
class SimConfig:
    """Switches of the simulated deployment and defaults for calls created without an explicit plan."""

    api_key: str = DEFAULT_API_KEY
    list_style: Literal["array", "envelope"] = "array"
    list_route: Literal["ok", "missing", "forbidden"] = "ok"
    latency_s: float = 0.0
    record_log: bool = True
    mix: dict[str, float] = dataclasses.field(default_factory=lambda: dict(DEFAULT_MIX))
    queued_s: tuple[float, float] = (0.0, 1.0)
    ring_s: tuple[float, float] = (1.0, 4.0)
    talk_s: tuple[float, float] = (5.0, 30.0)
    spelling: Spelling = "camel"
    hyphenated: bool = False
    ratelimit_limit: int = 1000
    #: List Calls query parameters this deployment ignores (e.g. ``["status"]``, ``["created_at"]``).
    list_ignores: tuple[str, ...] = ()
    #: Silently cap a bare-array page at this many records (0 = honour ``limit`` up to 200).
    list_cap: int = 0
    #: Calls created (now) at the start of every List Calls request: a population growing while a client pages.
    grow_per_list: int = 0
    #: Page size when ``limit`` is absent (or ignored through ``list_ignores``): DialNexa documents 20.
    list_default_limit: int = 20
    #: List every N-th row twice in a row (0 = never): the same id can sit twice on one page (see ``quirks``).
    list_repeat_every: int = 0
    #: List every N-th row without its ``id`` (0 = never), counted across pages.
    list_missing_id_every: int = 0
    #: ``createdAt`` spelling: ``z`` (``...02.118Z``, DialNexa's) or ``offset`` (``...02.118+00:00``).
    created_style: quirks.CreatedStyle = "z"
    #: Key-wide limit across all clients (requests per ``key_window_s``; 0 = none): 429 + Retry-After beyond it.
    key_limit: int = 0
    key_window_s: float = 60.0
    key_window: WindowKind = "fixed"
    #: Send ``X-RateLimit-*`` headers; ``Reset`` as a Unix timestamp (docs) or seconds remaining (seen live).
    rate_headers: bool = True
    reset_style: ResetStyle = "epoch"

    def __post_init__(self) -> None:
        self.list_ignores = tuple(self.list_ignores)
        self.queued_s, self.ring_s, self.talk_s = (_range(r) for r in (self.queued_s, self.ring_s, self.talk_s))
        self.mix = _check_mix(self.mix)
        if self.list_style not in ("array", "envelope"):
            raise ValueError("list_style must be 'array' or 'envelope'")
        if self.list_route not in ("ok", "missing", "forbidden"):
            raise ValueError("list_route must be 'ok', 'missing' or 'forbidden'")
        if self.spelling not in ("camel", "snake"):
            raise ValueError("spelling must be 'camel' or 'snake'")
        if self.latency_s < 0 or self.ratelimit_limit < 1 or not self.api_key:
            raise ValueError("latency_s must be >= 0, ratelimit_limit >= 1 and api_key non-empty")
        if min(self.list_repeat_every, self.list_missing_id_every) < 0 or self.list_default_limit < 1:
            raise ValueError("list_repeat_every/list_missing_id_every must be >= 0 and list_default_limit >= 1")
        if self.created_style not in quirks.CREATED_STYLES:
            raise ValueError(f"created_style must be one of {quirks.CREATED_STYLES}")
        if self.key_limit < 0 or self.reset_style not in ("epoch", "seconds"):
            raise ValueError("key_limit must be >= 0 and reset_style 'epoch' or 'seconds'")
        if self.key_limit:
            KeyLimiter(self.key_limit, self.key_window_s, self.key_window)  # validates window and kind

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(slots=True)
class _Call:
    id: str
    seq: int
    plan: CallPlan
    created_iso: str
    agent_id: str
    agent_version_number: int
    to_number: str
    metadata: dict[str, Any]
    content: int
    script_pos: int = 0
    scripted_end: float | None = None
    batch_id: str | None = None
    direction: str = "outbound"


def iso8601(t: float) -> str:
    """ISO-8601 UTC with milliseconds and ``Z``, as DialNexa writes timestamps."""
    dt = datetime.fromtimestamp(t, UTC)
    return f"{dt:%Y-%m-%dT%H:%M:%S}.{dt.microsecond // 1000:03d}Z"


def valid_call_id(call_id: str) -> bool:
    """The simulator's rule for a well-formed call id (DialNexa does not publish one)."""
    return call_id.startswith("call_") and CALL_ID_RE.match(call_id) is not None


def _range(value: float | Sequence[float]) -> tuple[float, float]:
    if isinstance(value, int | float):
        return float(value), float(value)
    low, high = (float(v) for v in value)
    if not 0 <= low <= high:
        raise ValueError(f"bad duration range {value!r}")
    return low, high


def _check_mix(mix: Mapping[str, float]) -> dict[str, float]:
    unknown = set(mix) - set(OUTCOMES)
    if unknown or any(w < 0 for w in mix.values()) or sum(mix.values()) <= 0:
        raise ValueError(f"mix must map outcomes {OUTCOMES} to weights >= 0 (sum > 0), got {dict(mix)!r}")
    return dict(mix)


def split_csv(values: Iterable[str] | None) -> list[str]:
    """Comma lists from repeated query values: ``["a,b", "c"]`` -> ``["a", "b", "c"]``."""
    return [part.strip() for value in values or () for part in value.split(",") if part.strip()]


def _int_param(query: Mapping[str, Sequence[str]], name: str, default: int, errors: list[str]) -> int:
    values = query.get(name)
    if not values:
        return default
    try:
        return int(values[-1])
    except ValueError:
        errors.append(f"{name} must be an integer number")
        return default


class SimState:
    """Calls, faults, config and counters of one simulator. Every public method takes the lock."""

    def __init__(self, api_key: str = DEFAULT_API_KEY, seed: int = 0) -> None:
        self._lock = threading.Lock()
        self._api_key = api_key
        self._seed = seed
        self._resets = 0
        #: Registered webhooks and their deliveries (``simulator/webhooks.py``).
        self.webhooks = WebhookHub(self.webhook_view, self._schedule_existing, seed)
        self._reset_locked(seed)
        # Creation-time index of the calls, (created_at, seq, id), caught up lazily by List Calls.
        self._order: list[tuple[float, int, str]] = []  # foreign calls never list, so they are left out
        self._order_count = 0  # calls of ``_order_of`` already looked at
        self._order_of: dict[str, _Call] | None = None

    # ----------------------------------------------------------------- admin

    def reset(self, seed: int | None = None) -> None:
        """Forget calls, faults, counters and log; restore the config. Without ``seed`` the RNG moves on to a
        new generation (so call ids differ from before the reset); with ``seed`` it restarts exactly.
        """
        with self._lock:
            self._resets += 1
            self._reset_locked(f"{self._seed}/{self._resets}" if seed is None else seed)
            self.webhooks.reset(f"{self._seed}/{self._resets}" if seed is None else seed)

    def _reset_locked(self, seed: int | str) -> None:
        self._rng = random.Random(seed)
        self._fault_rng = random.Random(f"{seed}/faults")
        self._calls: dict[str, _Call] = {}
        self._faults: list[Fault] = []
        self.config = SimConfig(api_key=self._api_key)
        self._requests = 0
        self._control = 0
        self._by_route: Counter[str] = Counter()
        self._by_status: Counter[int] = Counter()
        self._get_by_call: Counter[str] = Counter()
        self._faults_fired: Counter[str] = Counter()
        self._clients: set[tuple[str, int]] = set()
        self._log: list[LogEntry] = []
        self._window = 0
        self._window_count = 0
        self._limiter: KeyLimiter | None = None
        # Requests that started before a reset (e.g. held by a ``slow`` fault) are not counted after it.
        self._reset_at = time.time()

    def configure(self, **changes: Any) -> dict[str, Any]:
        """Change config fields (see :class:`SimConfig`); returns the new config. Unknown names raise."""
        with self._lock:
            self.config = dataclasses.replace(self.config, **changes)
            if {"key_limit", "key_window_s", "key_window"} & set(changes):
                cfg = self.config
                self._limiter = KeyLimiter(cfg.key_limit, cfg.key_window_s, cfg.key_window) if cfg.key_limit else None
            return self.config.to_dict()

    def add_fault(self, fault: Fault) -> None:
        """Append a fault rule; rules are tried in the order they were added."""
        with self._lock:
            self._faults.append(dataclasses.replace(fault))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def create_call(self, **spec: Unpack[CallSpec]) -> str:
        """Create one call; returns its id."""
        with self._lock:
            return self._create_locked(spec, time.time())

    def create_calls(self, n: int, mix: Mapping[str, float] | None = None, **spec: Unpack[CallSpec]) -> list[str]:
        """Create ``n`` calls whose outcomes follow ``mix`` (default: the config's); returns their ids."""
        if "call_id" in spec:
            raise ValueError("call_id cannot be fixed for several calls")
        mix = _check_mix(mix) if mix is not None else None
        with self._lock:
            mix = mix or self.config.mix
            outcomes = self._rng.choices(list(mix), weights=list(mix.values()), k=n)
            now = time.time()
            return [
                self._create_locked(
                    {"outcome": outcome, **spec, "metadata": {"sim_index": i, **spec.get("metadata", {})}}, now
                )
                for i, outcome in enumerate(outcomes)
            ]

    def _create_locked(self, spec: CallSpec, now: float, *, notify: bool = True) -> str:
        rng, cfg = self._rng, self.config
        outcome = spec.get("outcome") or rng.choices(list(cfg.mix), weights=list(cfg.mix.values()))[0]
        plan = CallPlan(
            outcome=outcome,
            queued_s=self._draw(spec.get("queued_s"), cfg.queued_s),
            ring_s=self._draw(spec.get("ring_s"), cfg.ring_s),
            talk_s=self._draw(spec.get("talk_s"), cfg.talk_s),
            spelling=spec.get("spelling", cfg.spelling),
            hyphenated=bool(spec.get("hyphenated", cfg.hyphenated)),
            raw_statuses={normalise(k): str(v) for k, v in spec["raw_statuses"].items()}
            if spec.get("raw_statuses")
            else None,
            script=list(spec["script"]) if spec.get("script") else None,
            foreign=bool(spec.get("foreign", False)),
            foreign_status=int(spec.get("foreign_status", 403)),
            created_at=now - float(spec.get("age_s", 0.0)),
        )
        plan.validate()
        metadata = spec.get("metadata", {})
        if not isinstance(metadata, dict):
            raise ValueError("metadata must be an object")
        metadata = dict(metadata)  # the caller's dict may change later; the record must not
        call_id = spec.get("call_id") or self._new_id()
        if not valid_call_id(call_id) or call_id in self._calls:
            raise ValueError(f"call_id {call_id!r} is malformed or already used")
        self._calls[call_id] = _Call(
            id=call_id,
            seq=len(self._calls),
            plan=plan,
            created_iso=iso8601(plan.created_at),
            agent_id=spec.get("agent_id") or rng.choice(_AGENTS),
            agent_version_number=spec.get("agent_version_number") or rng.randint(1, 5),
            to_number=spec.get("to_number") or self._new_number(),
            metadata=metadata,
            content=rng.getrandbits(16),
        )
        if notify and not plan.foreign and self.webhooks.active:
            self._schedule_webhook_events(self._calls[call_id], now)
        return call_id

    # --------------------------------------------------------------- webhooks

    def _schedule_webhook_events(self, call: _Call, now: float, *, future_only: bool = False) -> None:
        """Tell the webhook hub when this call is initiated and (unscripted) when it ends.

        A new call's events that are already past (``age_s``) are sent at once; ``future_only`` (a webhook
        registered while calls exist) skips them.
        """
        plan = call.plan
        initiated = plan.created_at + plan.queued_s
        if not future_only or initiated > now:
            self.webhooks.schedule(call.id, initiated, "initiated")
        if not plan.script and (not future_only or plan.terminal_at > now):
            self.webhooks.schedule(call.id, plan.terminal_at, "ended")

    def _schedule_existing(self) -> None:
        """The first webhook was registered: schedule the events still to come of calls that already exist."""
        with self._lock:
            now = time.time()
            for call in self._calls.values():
                if not call.plan.foreign:
                    self._schedule_webhook_events(call, now, future_only=True)

    def webhook_view(self, call_id: str) -> CallView | None:
        """The call as a webhook delivery shows it now (None for an unknown or foreign call)."""
        with self._lock:
            call = self._calls.get(call_id)
            if call is None or call.plan.foreign:
                return None
            record = self._record(call, time.time(), advance=False)
            return CallView(record, call.plan.created_at + call.plan.queued_s, bool(call.plan.script))

    def _draw(self, value: float | Sequence[float] | None, default: tuple[float, float]) -> float:
        low, high = _range(value) if value is not None else default
        return low if low == high else round(self._rng.uniform(low, high), 3)

    def _new_id(self) -> str:
        while (call_id := "call_" + "".join(self._rng.choices(_ID_ALPHABET, k=14))) in self._calls:
            pass
        return call_id

    def _new_number(self) -> str:
        digits = "".join(self._rng.choices("0123456789", k=9))
        return self._rng.choice((f"+91{self._rng.choice('6789')}{digits}", f"+1415{digits[:7]}", f"+346{digits[:8]}"))

    def script(self, call_id: str, statuses: Sequence[str]) -> None:
        """Make the call show ``statuses`` verbatim, one more per Get Call, staying on the last."""
        if not statuses or not all(isinstance(s, str) for s in statuses):
            raise ValueError("statuses must be a non-empty list of strings")
        with self._lock:
            call = self._call(call_id)
            call.plan.script = list(statuses)
            call.script_pos = 0
            call.scripted_end = None
            if normalise(statuses[0]) in TERMINAL and self.webhooks.active:  # it ends now: deliver without a read
                self.webhooks.schedule(call_id, time.time(), "ended")

    def set_status(self, call_id: str, status: str) -> None:
        """Force the status shown from now on (a one-entry script)."""
        self.script(call_id, [status])

    def plan(self, call_id: str) -> CallPlan:
        """A copy of the call's plan (``created_at`` and ``terminal_at`` included)."""
        with self._lock:
            return CallPlan.from_dict(dataclasses.asdict(self._call(call_id).plan))

    def record(self, call_id: str) -> dict[str, Any]:
        """The record Get Call would return now, without advancing a script or counting a request."""
        with self._lock:
            return self._record(self._call(call_id), time.time(), advance=False)

    def delete_call(self, call_id: str) -> None:
        """Make the call disappear, as a deleted call does: Get Call answers 404, List Calls no longer shows it."""
        with self._lock:
            self._call(call_id)
            del self._calls[call_id]
            self._order_of = None  # rebuild the creation-time index without it

    def _call(self, call_id: str) -> _Call:
        try:
            return self._calls[call_id]
        except KeyError:
            raise KeyError(f"unknown call {call_id!r}") from None

    # --------------------------------------------------------------- counters

    def stats(self) -> dict[str, Any]:
        """Counters since the last reset. ``requests`` excludes control-API requests (counted in ``control``)."""
        with self._lock:
            return {
                "requests": self._requests,
                "by_route": dict(self._by_route),
                "by_status": dict(self._by_status),
                "control": self._control,
                "connections": len(self._clients),
                "calls": len(self._calls),
                "faults_fired": dict(self._faults_fired),
                "faults_pending": len(self._faults),
                "get_by_call": dict(self._get_by_call),
            }

    def get_count(self, call_id: str) -> int:
        with self._lock:
            return self._get_by_call[call_id]

    def calls_by_metadata(self, key: str) -> dict[str, int]:
        """How many calls carry each value of ``metadata[key]`` (a correlation value): >1 is a duplicate."""
        with self._lock:
            counts = Counter(str(c.metadata[key]) for c in self._calls.values() if key in c.metadata)
        return dict(counts)

    def requests(self, call_id: str | None = None, route: str | None = None) -> list[LogEntry]:
        """The request log, optionally only entries naming ``call_id`` and/or on ``route``."""
        with self._lock:
            log = list(self._log)
        return [e for e in log if (call_id is None or call_id in e.call_ids) and (route is None or e.route == route)]

    def note_control(self) -> None:
        with self._lock:
            self._control += 1

    def note(
        self,
        method: str,
        route: str,
        call_ids: tuple[str, ...],
        status: int,
        client: tuple[str, int] | None,
        now: float,
    ) -> RateState:
        """Count one public-API request; returns the key's rate window for the ``X-RateLimit-*`` headers.

        With a key-wide limit these are its real numbers; without, cosmetic ones (``ratelimit_limit`` per
        clock minute, never enforced).
        """
        with self._lock:
            real = self._limiter.state(now) if self._limiter is not None else None
            if now < self._reset_at:
                return real or self._cosmetic(self.config.ratelimit_limit, now)
            self._requests += 1
            self._by_route[route] += 1
            self._by_status[status] += 1
            if route == "get":
                self._get_by_call[call_ids[0]] += 1
            if client is not None:
                self._clients.add(client)
            if self.config.record_log:
                self._log.append(LogEntry(now, method, route, call_ids, status))
            window = int(now // 60)
            if window != self._window:
                self._window, self._window_count = window, 0
            self._window_count += 1
            return real or self._cosmetic(self.config.ratelimit_limit - self._window_count, now)

    def _cosmetic(self, remaining: int, now: float) -> RateState:
        return RateState(self.config.ratelimit_limit, max(0, remaining), (int(now // 60) + 1) * 60 - now)

    def admit(self, now: float) -> RateState | None:
        """Apply the key-wide limit to one request: None if admitted, else the window to answer 429 with."""
        with self._lock:
            if self._limiter is None or now < self._reset_at:
                return None
            return self._limiter.admit(now)

    def match_fault(self, route: str, call_ids: Sequence[str]) -> Fault | None:
        """The first rule that fires for this request (consuming one of its ``count``), if any."""
        if not self._faults:
            return None
        with self._lock:
            for i, fault in enumerate(self._faults):
                if not fault.matches(route, call_ids):
                    continue
                if fault.count is not None:
                    fault.count -= 1
                    if fault.count == 0:
                        del self._faults[i]
                elif fault.rate is not None and self._fault_rng.random() >= fault.rate:
                    continue
                self._faults_fired[fault.kind] += 1
                return fault
            return None

    # ------------------------------------------------------------- public API

    def authorized(self, token: str) -> bool:
        return token == self.config.api_key

    def api_get(self, call_id: str, now: float) -> dict[str, Any]:
        """Get Call: the record, advancing its script one step."""
        if not valid_call_id(call_id):
            raise ApiError(400, "Invalid call ID format")
        with self._lock:
            call = self._calls.get(call_id)
            if call is None:
                raise ApiError(404, "Call not found")
            if call.plan.foreign:
                if call.plan.foreign_status == 404:
                    raise ApiError(404, "Call not found")
                raise ApiError(403, "Call does not belong to your organization")
            return self._record(call, now, advance=True)

    def api_list(self, query: Mapping[str, Sequence[str]], now: float) -> Any:
        """List Calls: newest first, filtered by ``call_id``/``status``, paged; foreign calls never show."""
        cfg = self.config
        if cfg.list_route == "missing":
            raise ApiError(404, "Cannot GET /v1/calls")
        if cfg.list_route == "forbidden":
            raise ApiError(403, "Forbidden resource")
        query = {k: v for k, v in query.items() if k not in cfg.list_ignores}
        envelope = cfg.list_style == "envelope"
        errors: list[str] = []
        page = _int_param(query, "page", 1, errors)
        limit = _int_param(query, "limit", cfg.list_default_limit, errors)
        if page < 1:
            errors.append("page must not be less than 1")
        if limit < 1:
            errors.append("limit must not be less than 1")
        elif limit > LIST_MAX_LIMIT and not envelope:
            errors.append(f"limit must not be greater than {LIST_MAX_LIMIT}")
        if errors:
            raise ApiError(400, errors)
        if envelope:
            limit = min(limit, ENVELOPE_MAX_LIMIT)
        ids = split_csv(query.get("call_id"))
        wanted = {normalise(s) for s in split_csv(query.get("status"))}
        window = _window_params(query)
        with self._lock:
            calls: Iterable[_Call]
            if ids:
                found = {c: self._calls[c] for c in ids if c in self._calls}
                calls = sorted(found.values(), key=lambda c: c.seq, reverse=True)
            else:
                for _ in range(cfg.grow_per_list):
                    self._create_locked({}, now)
                order, positions = self._creation_rows_locked(window)
                if cfg.list_cap and not envelope:
                    limit = min(limit, cfg.list_cap)
                if not wanted and not (window.agent_ids or window.batch_ids or window.directions):
                    # Nothing to test per call: slice the index (a page costs O(limit), not O(offset)).
                    start = (page - 1) * limit
                    taken: Sequence[int] = (
                        positions[start : start + limit]
                        if not cfg.list_repeat_every
                        else list(
                            itertools.islice(quirks.repeated(positions, cfg.list_repeat_every), start, start + limit)
                        )
                    )
                    data = [self._record(self._calls[order[i][2]], now, False) for i in taken]
                    quirks.drop_ids(data, start, cfg.list_missing_id_every)
                    if not envelope:
                        return data
                    total = len(positions) + (len(positions) // cfg.list_repeat_every if cfg.list_repeat_every else 0)
                    meta = {"page": page, "limit": limit, "total": total, "totalPages": math.ceil(total / limit)}
                    return {"data": data, "meta": meta}
                calls = (self._calls[order[i][2]] for i in positions)
            matches = quirks.repeated(
                (
                    c
                    for c in calls
                    if not c.plan.foreign
                    and (not wanted or normalise(self._status(c, now, advance=False)[0]) in wanted)
                    and _listed(c, window)
                ),
                0 if ids else cfg.list_repeat_every,
            )
            if cfg.list_cap and not envelope:
                limit = min(limit, cfg.list_cap)
            start = (page - 1) * limit
            missing_every = 0 if ids else cfg.list_missing_id_every
            if not envelope:
                page_rows = [
                    self._record(c, now, advance=False) for c in itertools.islice(matches, start, start + limit)
                ]
                return quirks.drop_ids(page_rows, start, missing_every)
            everything = list(matches)
            rows = [self._record(c, now, advance=False) for c in everything[start : start + limit]]
            quirks.drop_ids(rows, start, missing_every)
        total = len(everything)
        meta = {"page": page, "limit": limit, "total": total, "totalPages": math.ceil(total / limit)}
        return {"data": rows, "meta": meta}

    def _creation_rows_locked(self, window: _ListWindow) -> tuple[list[tuple[float, int, str]], range]:
        """The creation-time index and the positions in it of the window (both bounds inclusive), in order."""
        if self._order_of is not self._calls:  # a reset replaced the calls
            self._order, self._order_count, self._order_of = [], 0, self._calls
        if self._order_count < len(self._calls):
            added = itertools.islice(self._calls.values(), self._order_count, None)
            new = [(c.plan.created_at, c.seq, c.id) for c in added if not c.plan.foreign]
            self._order_count = len(self._calls)
            in_order = new == sorted(new) and (not self._order or not new or new[0] >= self._order[-1])
            self._order.extend(new)
            if not in_order:
                self._order.sort()
        order = self._order
        lo = 0 if window.start is None else bisect.bisect_left(order, (window.start,))
        hi = len(order) if window.end is None else bisect.bisect_right(order, (window.end, math.inf))
        return order, range(lo, hi) if window.ascending else range(hi - 1, lo - 1, -1)

    def seed_calls(
        self,
        n: int,
        start: float,
        end: float,
        *,
        mix: Mapping[str, float] | None = None,
        batch_ids: int = 0,
        inbound_share: float = 0.0,
    ) -> int:
        """Create ``n`` ended calls spread evenly over creation times ``[start, end)`` (epoch seconds), fast.

        Connected calls carry transcripts. ``batch_ids`` > 0 spreads the calls over that many ``batch_id``s;
        ``inbound_share`` makes that fraction ``inbound``. Returns ``n``.
        """
        if n < 0 or end <= start or not 0 <= inbound_share <= 1:
            raise ValueError("need n >= 0, end > start and inbound_share within [0, 1]")
        mix = _check_mix(mix) if mix is not None else None
        step = (end - start) / max(n, 1)
        with self._lock:
            mix = mix or self.config.mix
            outcomes = self._rng.choices(list(mix), weights=list(mix.values()), k=n)
            now = time.time()
            for i, outcome in enumerate(outcomes):
                created = start + i * step
                spec: CallSpec = {"outcome": outcome, "age_s": max(now - created, 0.0), "queued_s": 0.0}
                spec["ring_s"], spec["talk_s"] = 1.0, (20.0 if outcome in CONNECTED else 0.0)
                call = self._calls[self._create_locked(spec, now, notify=False)]  # history: no webhook events
                call.plan.created_at = created  # exact, not via now - age
                call.created_iso = iso8601(created)
                if batch_ids:
                    call.batch_id = f"batch_sim{i % batch_ids:04d}"
                if inbound_share and self._rng.random() < inbound_share:
                    call.direction = "inbound"
        return n

    def api_create(self, body: Any, now: float) -> dict[str, Any]:
        """Create Call: validate like DialNexa (``message`` is a list of problems), then start the lifecycle."""
        if not isinstance(body, dict):
            raise ApiError(400, ["body must be a JSON object"])
        phone = body.get("phone_number", body.get("to_phone_number", body.get("to_number")))
        agent_id = body.get("agent_id")
        version = body.get("agent_version_number")
        errors = []
        if not isinstance(phone, str) or not E164_RE.match(phone):
            errors.append("phone_number must be a valid E.164 phone number")
        if not isinstance(agent_id, str) or not agent_id:
            errors.append("agent_id should not be empty")
        if not isinstance(body.get("metadata"), dict):
            errors.append("metadata must be an object")
        if version is not None and (not isinstance(version, int) or isinstance(version, bool) or version < 1):
            errors.append("agent_version_number must be a positive integer")
        if errors:
            raise ApiError(400, errors)
        with self._lock:
            spec: CallSpec = {"metadata": body["metadata"], "agent_id": str(agent_id), "to_number": str(phone)}
            if version is not None:
                spec["agent_version_number"] = version
            call = self._calls[self._create_locked(spec, now)]
            return {
                "id": call.id,
                "to_phone_number": call.to_number,
                "agent_id": call.agent_id,
                "agent_version_number": call.agent_version_number,
                "status": "initiated",
            }

    # ------------------------------------------------------------- rendering

    def _status(self, call: _Call, now: float, advance: bool) -> tuple[str, str | None, float | None]:
        """``(raw status, outcome or None while running, ended_at epoch or None)`` of a call at ``now``."""
        plan = call.plan
        outcome: str | None
        if plan.script:
            step = call.script_pos if advance else call.script_pos - 1
            raw = plan.script[min(max(step, 0), len(plan.script) - 1)]
            if advance:
                call.script_pos += 1
            outcome = normalise(raw)
            if outcome not in TERMINAL:
                call.scripted_end = None
                return raw, None, None
            if call.scripted_end is None:
                call.scripted_end = now
                if self.webhooks.active:
                    self.webhooks.schedule(call.id, now, "ended")
            return raw, outcome, call.scripted_end
        elapsed = now - plan.created_at
        if elapsed >= plan.queued_s + plan.ring_s + plan.talk_s:
            canonical, outcome = plan.outcome, plan.outcome
        elif elapsed >= plan.queued_s + plan.ring_s and plan.outcome in CONNECTED:
            canonical, outcome = "in_progress", None
        elif elapsed >= plan.queued_s:
            canonical, outcome = "initiated", None
        else:
            canonical, outcome = "created", None
        if plan.raw_statuses and canonical in plan.raw_statuses:
            raw = plan.raw_statuses[canonical]
        else:
            raw = canonical.replace("_", "-") if plan.hyphenated else canonical
        return raw, outcome, plan.terminal_at if outcome else None

    def _record(self, call: _Call, now: float, advance: bool) -> dict[str, Any]:
        raw, outcome, ended_at = self._status(call, now, advance)
        plan = call.plan
        camel = plan.spelling == "camel"
        duration: int | None = None
        end_reason: str | None = None
        sentiment: str | None = None
        transcript: str | None = None
        summary: str | None = None
        recording_url: str | None = None
        analysis: dict[str, Any] | None = None
        if outcome is not None:
            duration = round(plan.talk_s) if outcome in CONNECTED else 0
            reasons = _END_REASONS.get(outcome, ("unknown",))
            end_reason = reasons[call.content % len(reasons)]
            sentiment = "unknown"
            if outcome in CONNECTED:
                convo = _VOICEMAIL if outcome == "voicemail" else _CONVERSATIONS[call.content % len(_CONVERSATIONS)]
                transcript, summary, sentiment, analysis = convo[0], convo[1], convo[2], dict(convo[3])
                recording_url = f"https://recordings.dialnexa.com/{call.id}.mp3"
        return {
            "id": call.id,
            "agent_id": call.agent_id,
            "agent_version_number": call.agent_version_number,
            "to_number" if camel else "to_phone_number": call.to_number,
            "from_number" if camel else "from_phone_number": _FROM_NUMBER,
            "type": "phone",
            "call_direction": call.direction,
            "status": raw,
            "createdAt" if camel else "created_at": quirks.created_text(call.created_iso, self.config.created_style),
            "ended_at": iso8601(ended_at) if ended_at is not None else None,
            "duration" if camel else "duration_seconds": duration,
            "end_reason": end_reason,
            "sentiment": sentiment,
            "transcript": transcript,
            "summary": summary,
            "recording_url": recording_url,
            "analysis" if camel else "post_call_analysis": analysis,
            "metadata": call.metadata,
            **({"batch_id": call.batch_id} if call.batch_id else {}),
        }


class _ListWindow(NamedTuple):
    """The List Calls parameters the creation-time index answers, plus the per-call filters on it."""

    start: float | None
    end: float | None
    ascending: bool
    agent_ids: frozenset[str]
    batch_ids: frozenset[str]
    directions: frozenset[str]


def _epoch(query: Mapping[str, Sequence[str]], name: str) -> float | None:
    values = query.get(name)
    if not values or not values[-1].strip():
        return None
    text = values[-1].strip()
    try:
        parsed = datetime.fromisoformat(text[:-1] + "+00:00" if text[-1] in "zZ" else text)
    except ValueError:
        raise ApiError(400, [f"{name} must be a valid ISO 8601 date string"]) from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def _window_params(query: Mapping[str, Sequence[str]]) -> _ListWindow:
    """``start_date``/``end_date`` (creation time, inclusive), ``created_at=asc|desc`` and three id filters."""
    order = (query.get("created_at") or ["desc"])[-1].lower()
    if order not in ("asc", "desc"):
        raise ApiError(400, ["created_at must be one of the following values: asc, desc"])
    return _ListWindow(
        _epoch(query, "start_date"),
        _epoch(query, "end_date"),
        order == "asc",
        frozenset(split_csv(query.get("agent_id"))),
        frozenset(split_csv(query.get("batch_call_id"))),
        frozenset(split_csv(query.get("call_direction"))),
    )


def _listed(call: _Call, window: _ListWindow) -> bool:
    return (
        (not window.agent_ids or call.agent_id in window.agent_ids)
        and (not window.batch_ids or call.batch_id in window.batch_ids)
        and (not window.directions or call.direction in window.directions)
    )
