"""The DialNexa Airflow connection, validated once: base URL, API key, extras (``ConnectionSettings``)."""

from __future__ import annotations

import difflib
import ipaddress
import json
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from airflow_provider_dialnexa import __version__
from airflow_provider_dialnexa.exceptions import DialNexaConfigError
from airflow_provider_dialnexa.policy import DEFAULT_MAX_RETRIES, DEFAULT_RATE_PER_MINUTE, DEFAULT_TIMEOUT

DEFAULT_BASE_URL = "https://api.dialnexa.com"
USER_AGENT = f"airflow-provider-dialnexa/{__version__}"
POLLING_MODES = ("batched", "per_call")
#: Extras holding the webhook signing secrets: the current one, and the previous one during a rotation.
WEBHOOK_SECRET_EXTRAS = ("webhook_secret", "webhook_secret_previous")
_EXTRA_PREFIX = "extra__dialnexa__"
_KNOWN_EXTRAS = ("timeout", "max_retries", "rate_limit_per_minute", "polling", *WEBHOOK_SECRET_EXTRAS)


@dataclass(frozen=True)
class ConnectionSettings:
    """A validated ``dialnexa`` connection. ``repr`` hides the key and the webhook secrets."""

    conn_id: str
    base_url: str
    api_key: str
    timeout: float = DEFAULT_TIMEOUT
    max_retries: int = DEFAULT_MAX_RETRIES
    rate_limit_per_minute: float = DEFAULT_RATE_PER_MINUTE
    polling: str = "batched"
    webhook_secret: str | None = None
    webhook_secret_previous: str | None = None

    def __repr__(self) -> str:
        return (
            f"ConnectionSettings(conn_id={self.conn_id!r}, base_url={self.base_url!r}, api_key='***', "
            f"timeout={self.timeout}, max_retries={self.max_retries}, "
            f"rate_limit_per_minute={self.rate_limit_per_minute}, polling={self.polling!r}, "
            f"webhook_secret={'***' if self.webhook_secret else None}, "
            f"webhook_secret_previous={'***' if self.webhook_secret_previous else None})"
        )

    @property
    def headers(self) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self.api_key}",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }

    def call_url(self, call_id: str) -> str:
        return f"{self.base_url}/v1/calls/{quote(call_id, safe='')}"

    @property
    def calls_url(self) -> str:
        return f"{self.base_url}/v1/calls"


def _config_error(conn_id: str, problem: str) -> DialNexaConfigError:
    return DialNexaConfigError(f"DialNexa connection {conn_id!r}: {problem}", conn_id=conn_id)


def connection_env_var(conn_id: str) -> str:
    """The environment variable Airflow reads a connection from (``AIRFLOW_CONN_<ID>``)."""
    return f"AIRFLOW_CONN_{conn_id.upper()}"


def missing_connection_message(conn_id: str) -> str:
    """What to do when the connection does not exist: the two usual ways to define it."""
    example = json.dumps({"conn_type": "dialnexa", "password": "<key_id>:<secret>"})
    return (
        f"DialNexa connection {conn_id!r} is not defined. Define it for every Airflow process, e.g. "
        f"export {connection_env_var(conn_id)}='{example}' (dialnexa-simulator prints the line for itself), "
        "or in the UI/CLI as type 'dialnexa' with the API key as password; or set dialnexa_conn_id to an "
        "existing connection"
    )


def did_you_mean(value: str, choices: tuple[str, ...] | list[str] | frozenset[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest choice, or ``""`` when none is close."""
    close = difflib.get_close_matches(value, sorted(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def polling_mode(value: object, where: str = "polling", *, or_none: bool = False) -> str:
    """A polling mode in its canonical spelling (``per-call`` -> ``per_call``); ``ValueError`` naming the modes."""
    mode = str(value).strip().lower().replace("-", "_")
    if not isinstance(value, str) or mode not in POLLING_MODES:
        choices = f"{POLLING_MODES}{' or None (the connection extra decides)' if or_none else ''}"
        raise ValueError(f"{where} must be one of {choices}, got {value!r}{did_you_mean(mode, POLLING_MODES)}")
    return mode


def _is_loopback(hostname: str) -> bool:
    name = hostname.strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _with_scheme_hint(host: str, port: int | None) -> str:
    """The base URL to suggest for a host given without a scheme: its port kept, ``http://`` on loopback."""
    netloc = host.rstrip("/")
    if port and not urlsplit(f"//{netloc}").port:
        netloc = f"{netloc}:{port}"
    hostname = urlsplit(f"//{netloc}").hostname or netloc
    scheme = "http" if _is_loopback(hostname) else "https"
    return f"{scheme}://{netloc}"


def normalise_base_url(conn_id: str, host: str | None, schema: str | None, port: int | None) -> str:
    """Base URL without a trailing ``/`` or ``/v1``; empty host means DialNexa's production URL."""
    host = (host or "").strip()
    if not host:
        return DEFAULT_BASE_URL
    if "://" not in host:
        if (schema or "").lower() in ("http", "https"):
            host = f"{schema.lower()}://{host}"  # type: ignore[union-attr]
        else:
            hint = _with_scheme_hint(host, port)
            also = "" if hint.startswith("http://") else f" (or leave it empty for {DEFAULT_BASE_URL})"
            raise _config_error(conn_id, f"host {host!r} has no scheme; set it to {hint!r}{also}")
    parts = urlsplit(host)
    if parts.scheme.lower() not in ("http", "https"):
        raise _config_error(conn_id, f"host scheme {parts.scheme!r} is not supported; use https://")
    if not parts.hostname:
        raise _config_error(conn_id, f"host {host!r} names no server")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise _config_error(conn_id, "host must be a plain base URL (no credentials, query or fragment)")
    try:
        netloc_port = parts.port
    except ValueError as exc:
        raise _config_error(conn_id, f"host {host!r} has an invalid port") from exc
    netloc = parts.netloc
    if port and netloc_port is None:
        netloc = f"{netloc}:{port}"
    path = parts.path.rstrip("/")
    if path.endswith("/v1"):
        path = path[: -len("/v1")]
    return f"{parts.scheme.lower()}://{netloc}{path}"


def _number(conn_id: str, name: str, value: Any, low: float, high: float, integer: bool) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise _config_error(conn_id, f"extra {name!r} must be a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _config_error(conn_id, f"extra {name!r} must be a number, got {type(value).__name__}")
    if integer and value != int(value):
        raise _config_error(conn_id, f"extra {name!r} must be a whole number, got {value}")
    if not low <= value <= high:
        raise _config_error(conn_id, f"extra {name!r} must be between {low:g} and {high:g}, got {value}")
    return float(value)


def settings_from_connection(
    conn_id: str,
    *,
    host: str | None,
    password: str | None,
    schema: str | None = None,
    port: int | None = None,
    extra: Mapping[str, Any] | None = None,
) -> tuple[ConnectionSettings, list[str]]:
    """Validate a connection's fields; return the settings and warnings (unknown extras)."""
    api_key = (password or "").strip()
    if not api_key:
        raise _config_error(conn_id, "no API key; put the DialNexa API key (<key_id>:<secret>) in the password field")
    if any(ch.isspace() or unicodedata.category(ch).startswith("C") for ch in api_key):
        raise _config_error(conn_id, "the API key contains whitespace or control characters")
    values: dict[str, Any] = {}
    warnings: list[str] = []
    for raw_name, value in (extra or {}).items():
        name = raw_name.removeprefix(_EXTRA_PREFIX)
        if name not in _KNOWN_EXTRAS:
            guess = did_you_mean(name, _KNOWN_EXTRAS) or f" (known extras: {', '.join(_KNOWN_EXTRAS)})"
            warnings.append(f"DialNexa connection {conn_id!r}: ignoring unknown extra {raw_name!r}{guess}")
        elif value is not None and value != "":
            values[name] = value
    settings = ConnectionSettings(
        conn_id=conn_id,
        base_url=normalise_base_url(conn_id, host, schema, port),
        api_key=api_key,
    )
    changes: dict[str, Any] = {}
    if "timeout" in values:
        changes["timeout"] = _number(conn_id, "timeout", values["timeout"], 1, 300, integer=False)
    if "max_retries" in values:
        changes["max_retries"] = int(_number(conn_id, "max_retries", values["max_retries"], 0, 20, True))
    if "rate_limit_per_minute" in values:
        changes["rate_limit_per_minute"] = _number(
            conn_id, "rate_limit_per_minute", values["rate_limit_per_minute"], 0, 100_000, integer=False
        )
    if "polling" in values:
        try:
            changes["polling"] = polling_mode(str(values["polling"]), "extra 'polling'")
        except ValueError as exc:
            raise _config_error(conn_id, str(exc)) from None
    changes.update(webhook_secrets(values))
    if changes:
        settings = ConnectionSettings(**{**settings.__dict__, **changes})
    return settings, warnings


def webhook_secrets(extra: Mapping[str, Any] | None) -> dict[str, str]:
    """The webhook secrets a connection's extras hold (``webhook_secret``, ``webhook_secret_previous``), trimmed.

    Also read with the form's ``extra__dialnexa__`` prefix; empty or non-string values count as unset.
    The values are secrets: never log or show them.
    """
    secrets: dict[str, str] = {}
    for raw_name, value in (extra or {}).items():
        name = raw_name.removeprefix(_EXTRA_PREFIX)
        if name in WEBHOOK_SECRET_EXTRAS and isinstance(value, str) and value.strip():
            secrets[name] = value.strip()
    return secrets
