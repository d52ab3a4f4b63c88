"""The ``dialnexa`` connection: field validation, and the real Airflow lookup of env-var connections."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pytest
from _compat import capture_logs
from airflow.providers.common.compat.sdk import AirflowNotFoundException

from airflow_provider_dialnexa._connection import DEFAULT_BASE_URL, ConnectionSettings, settings_from_connection
from airflow_provider_dialnexa.exceptions import DialNexaConfigError
from airflow_provider_dialnexa.hooks.dialnexa import DialNexaHook
from airflow_provider_dialnexa.policy import DEFAULT_MAX_RETRIES, DEFAULT_RATE_PER_MINUTE, DEFAULT_TIMEOUT
from airflow_provider_dialnexa.simulator import Simulator

KEY = "kid_4Qx9:s3cr3t/Val+ue="
CONN_ID = "dialnexa_test"


def settings(
    host: str | None = "https://api.dialnexa.com",
    password: str | None = KEY,
    *,
    schema: str | None = None,
    port: int | None = None,
    extra: dict[str, Any] | None = None,
) -> ConnectionSettings:
    result, _ = settings_from_connection(CONN_ID, host=host, password=password, schema=schema, port=port, extra=extra)
    return result


def config_error(**kwargs: Any) -> DialNexaConfigError:
    kwargs.setdefault("host", "https://api.dialnexa.com")
    kwargs.setdefault("password", KEY)
    with pytest.raises(DialNexaConfigError) as info:
        settings_from_connection(CONN_ID, **kwargs)
    exc = info.value
    assert CONN_ID in str(exc), "a config error must name the connection id"
    assert exc.conn_id == CONN_ID
    return exc


# -- base URL ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("https://api.dialnexa.com", "https://api.dialnexa.com"),
        ("https://api.dialnexa.com/", "https://api.dialnexa.com"),
        ("https://api.dialnexa.com/v1", "https://api.dialnexa.com"),
        ("https://api.dialnexa.com/v1/", "https://api.dialnexa.com"),
        ("  https://api.dialnexa.com/v1/  ", "https://api.dialnexa.com"),
        ("HTTPS://api.dialnexa.com", "https://api.dialnexa.com"),
        ("http://127.0.0.1:8089", "http://127.0.0.1:8089"),
        ("http://127.0.0.1:8089/", "http://127.0.0.1:8089"),
        ("http://127.0.0.1:8089/v1", "http://127.0.0.1:8089"),
        ("http://127.0.0.1:8089/v1/", "http://127.0.0.1:8089"),
        ("https://proxy.example.com/dialnexa/v1/", "https://proxy.example.com/dialnexa"),
        ("https://proxy.example.com/dialnexa", "https://proxy.example.com/dialnexa"),
        ("http://[::1]:8089/v1", "http://[::1]:8089"),
    ],
)
def test_base_url_normalised(host: str, expected: str) -> None:
    result = settings(host)
    assert result.base_url == expected
    assert result.call_url("call_abc123") == f"{expected}/v1/calls/call_abc123"
    assert result.calls_url == f"{expected}/v1/calls"


@pytest.mark.parametrize("host", [None, "", "   "])
def test_empty_host_means_production(host: str | None) -> None:
    assert settings(host).base_url == DEFAULT_BASE_URL == "https://api.dialnexa.com"


def test_schema_field_supplies_the_scheme() -> None:
    assert settings("127.0.0.1", schema="http", port=8089).base_url == "http://127.0.0.1:8089"
    assert settings("api.dialnexa.com", schema="HTTPS").base_url == "https://api.dialnexa.com"


def test_port_field_does_not_override_a_port_in_the_host() -> None:
    assert settings("http://127.0.0.1:8089", port=9999).base_url == "http://127.0.0.1:8089"
    assert settings("http://127.0.0.1", port=8089).base_url == "http://127.0.0.1:8089"


def test_host_without_scheme_is_rejected_with_a_fix() -> None:
    exc = config_error(host="api.dialnexa.com")
    assert "https://api.dialnexa.com" in str(exc), "the message should say how to fix the host"


def test_host_without_scheme_and_a_non_http_schema_is_rejected() -> None:
    config_error(host="api.dialnexa.com", schema="ftp")


@pytest.mark.parametrize("host", ["ftp://api.dialnexa.com", "ws://api.dialnexa.com", "file:///etc/passwd"])
def test_unsupported_scheme(host: str) -> None:
    exc = config_error(host=host)
    assert "scheme" in str(exc)


@pytest.mark.parametrize(
    "host",
    [
        "https://",
        "https://user:pw@api.dialnexa.com",
        "https://api.dialnexa.com/?x=1",
        "https://api.dialnexa.com/#frag",
        "https://api.dialnexa.com:notaport",
    ],
)
def test_unusable_host(host: str) -> None:
    exc = config_error(host=host)
    assert "host" in str(exc)


def test_credentials_in_host_are_rejected_without_echoing_them() -> None:
    exc = config_error(host="https://user:hunter22@api.dialnexa.com")
    assert "hunter22" not in str(exc)


# -- API key -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("password", [None, "", "   ", "\t\n"])
def test_missing_api_key(password: str | None) -> None:
    exc = config_error(password=password)
    assert "API key" in str(exc)


@pytest.mark.parametrize("password", ["kid:sec ret", "kid:sec\tret", "kid:sec\x00ret", "kid:\u200bsecret"])
def test_api_key_with_inner_whitespace_or_control_characters(password: str) -> None:
    exc = config_error(password=password)
    assert password not in str(exc)
    assert password not in repr(exc)


def test_api_key_surrounding_whitespace_is_stripped() -> None:
    result = settings(password=f"  {KEY}\n")
    assert result.api_key == KEY
    assert result.headers["Authorization"] == f"Bearer {KEY}"


def test_settings_repr_hides_the_key() -> None:
    result = settings()
    assert KEY not in repr(result)
    assert KEY not in str(result)
    assert "kid_4Qx9" not in repr(result)
    assert "api_key='***'" in repr(result)
    assert CONN_ID in repr(result)


# -- extras ------------------------------------------------------------------------------------------


def test_defaults_without_extras() -> None:
    result, warnings = settings_from_connection(CONN_ID, host=None, password=KEY)
    assert (result.timeout, result.max_retries, result.rate_limit_per_minute, result.polling) == (
        DEFAULT_TIMEOUT,
        DEFAULT_MAX_RETRIES,
        DEFAULT_RATE_PER_MINUTE,
        "batched",
    )
    assert warnings == []


def test_extras_are_parsed() -> None:
    result = settings(extra={"timeout": "12.5", "max_retries": "3", "rate_limit_per_minute": 60, "polling": "Per-Call"})
    assert result.timeout == 12.5
    assert result.max_retries == 3
    assert isinstance(result.max_retries, int)
    assert result.rate_limit_per_minute == 60.0
    assert result.polling == "per_call"


def test_prefixed_extras_are_accepted() -> None:
    result, warnings = settings_from_connection(
        CONN_ID,
        host=None,
        password=KEY,
        extra={
            "extra__dialnexa__timeout": "7",
            "extra__dialnexa__max_retries": 1,
            "extra__dialnexa__polling": "batched",
            "extra__dialnexa__rate_limit_per_minute": "30",
        },
    )
    assert (result.timeout, result.max_retries, result.polling, result.rate_limit_per_minute) == (
        7.0,
        1,
        "batched",
        30.0,
    )
    assert warnings == []


def test_empty_and_null_extras_mean_default() -> None:
    result = settings(extra={"timeout": "", "max_retries": None, "polling": ""})
    assert (result.timeout, result.max_retries, result.polling) == (DEFAULT_TIMEOUT, DEFAULT_MAX_RETRIES, "batched")


def test_rate_limit_zero_disables_the_budget() -> None:
    assert settings(extra={"rate_limit_per_minute": 0}).rate_limit_per_minute == 0


@pytest.mark.parametrize(
    ("extra", "name"),
    [
        ({"timeout": "abc"}, "timeout"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": 301}, "timeout"),
        ({"timeout": True}, "timeout"),
        ({"timeout": [5]}, "timeout"),
        ({"max_retries": -1}, "max_retries"),
        ({"max_retries": "-1"}, "max_retries"),
        ({"max_retries": 2.5}, "max_retries"),
        ({"max_retries": 21}, "max_retries"),
        ({"max_retries": "many"}, "max_retries"),
        ({"rate_limit_per_minute": -5}, "rate_limit_per_minute"),
        ({"polling": "sometimes"}, "polling"),
        ({"extra__dialnexa__polling": "sometimes"}, "polling"),
        ({"extra__dialnexa__timeout": "abc"}, "timeout"),
    ],
)
def test_invalid_extras(extra: dict[str, Any], name: str) -> None:
    exc = config_error(extra=extra)
    assert repr(name) in str(exc), f"the message should name the extra {name!r}: {exc}"
    assert KEY not in str(exc)


def test_unknown_extra_gives_a_warning() -> None:
    result, warnings = settings_from_connection(
        CONN_ID, host=None, password=KEY, extra={"timout": 5, "extra__dialnexa__colour": "red"}
    )
    assert result.timeout == DEFAULT_TIMEOUT, "a misspelt extra must not be applied"
    assert len(warnings) == 2
    assert any("'timout'" in w for w in warnings)
    assert any("extra__dialnexa__colour" in w for w in warnings)
    assert all(CONN_ID in w for w in warnings)


# -- the real Airflow lookup (env-var connections) -----------------------------------------------------


def _hook_settings(monkeypatch: pytest.MonkeyPatch, conn_id: str, value: str) -> ConnectionSettings:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", value)
    return DialNexaHook(conn_id).settings


def test_json_env_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    value = json.dumps(
        {
            "conn_type": "dialnexa",
            "host": "http://127.0.0.1:8089/v1/",
            "password": KEY,
            "extra": {"timeout": 9, "max_retries": 2, "polling": "per_call"},
        }
    )
    result = _hook_settings(monkeypatch, "dialnexa_default", value)
    assert result.conn_id == "dialnexa_default"
    assert result.base_url == "http://127.0.0.1:8089"
    assert result.api_key == KEY
    assert (result.timeout, result.max_retries, result.polling) == (9.0, 2, "per_call")


def test_default_conn_id_is_dialnexa_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_DIALNEXA_DEFAULT", json.dumps({"conn_type": "dialnexa", "password": KEY}))
    hook = DialNexaHook()
    assert hook.dialnexa_conn_id == "dialnexa_default"
    assert hook.settings.base_url == DEFAULT_BASE_URL


def test_uri_env_connection_with_schema_as_scheme(monkeypatch: pytest.MonkeyPatch) -> None:
    """``dialnexa://:<key>@host:port/http``: the URI path is the schema field, which gives the scheme."""
    uri = f"dialnexa://:{quote(KEY, safe='')}@127.0.0.1:8089/http?timeout=4&extra__dialnexa__max_retries=1"
    result = _hook_settings(monkeypatch, "dialnexa_uri", uri)
    assert result.base_url == "http://127.0.0.1:8089"
    assert result.api_key == KEY
    assert (result.timeout, result.max_retries) == (4.0, 1)


def test_uri_env_connection_with_encoded_url_as_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """Airflow 3.3 URL-decodes the host, so the whole base URL can sit there, scheme included."""
    host = quote("http://127.0.0.1:8089/v1/", safe="")
    result = _hook_settings(monkeypatch, "dialnexa_uri_host", f"dialnexa://:{quote(KEY, safe='')}@{host}")
    assert result.base_url == "http://127.0.0.1:8089"
    assert result.api_key == KEY


def test_uri_env_connection_without_scheme_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DialNexaConfigError, match="dialnexa_noscheme"):
        _hook_settings(monkeypatch, "dialnexa_noscheme", f"dialnexa://:{quote(KEY, safe='')}@127.0.0.1:8089")


def test_env_connection_without_key_names_the_conn_id(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DialNexaConfigError, match="dialnexa_nokey") as info:
        _hook_settings(monkeypatch, "dialnexa_nokey", json.dumps({"conn_type": "dialnexa", "host": "http://x"}))
    assert "API key" in str(info.value)


def test_hook_logs_a_warning_for_an_unknown_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_DIALNEXA_WARN",
        json.dumps({"conn_type": "dialnexa", "password": KEY, "extra": {"time_out": 3}}),
    )
    with capture_logs() as logs:
        result = DialNexaHook("dialnexa_warn").settings
    assert result.timeout == DEFAULT_TIMEOUT
    warnings = [entry for entry in logs if entry["log_level"] == "warning"]
    assert any("'time_out'" in str(entry["event"]) for entry in warnings), logs


def test_creating_a_hook_reads_no_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hooks are built while DAGs are parsed: construction must not look the connection up."""
    monkeypatch.delenv("AIRFLOW_CONN_DIALNEXA_NOWHERE", raising=False)
    hook = DialNexaHook("dialnexa_nowhere")  # a lookup would fail: the connection does not exist
    assert "settings" not in hook.__dict__
    assert "session" not in hook.__dict__
    with pytest.raises(AirflowNotFoundException, match="dialnexa_nowhere"):
        _ = hook.settings


# -- an unusable connection fails before any request reaches DialNexa -------------------------------------------


@pytest.mark.parametrize("password", [None, "", "   "], ids=["missing", "empty", "whitespace"])
def test_no_api_key_fails_before_any_request(
    simulator: Simulator, monkeypatch: pytest.MonkeyPatch, password: str | None
) -> None:
    conn: dict[str, Any] = {"conn_type": "dialnexa", "host": simulator.url}
    if password is not None:
        conn["password"] = password
    monkeypatch.setenv("AIRFLOW_CONN_DIALNEXA_KEYLESS", json.dumps(conn))
    call_id = simulator.create_call(outcome="completed")
    with pytest.raises(DialNexaConfigError, match="dialnexa_keyless") as info:
        DialNexaHook("dialnexa_keyless").get_call(call_id)
    assert "API key" in str(info.value)
    assert simulator.stats()["requests"] == 0


@pytest.mark.parametrize(
    "extra",
    [{"timeout": "abc"}, {"max_retries": -1}, {"polling": "sometimes"}, {"extra__dialnexa__timeout": "soon"}],
)
def test_invalid_extras_fail_before_any_request(
    simulator: Simulator, api_key: str, monkeypatch: pytest.MonkeyPatch, extra: dict[str, Any]
) -> None:
    conn = {"conn_type": "dialnexa", "host": simulator.url, "password": api_key, "extra": extra}
    monkeypatch.setenv("AIRFLOW_CONN_DIALNEXA_BADEXTRA", json.dumps(conn))
    with pytest.raises(DialNexaConfigError, match="dialnexa_badextra") as info:
        DialNexaHook("dialnexa_badextra").get_call(simulator.create_call(outcome="completed"))
    assert api_key not in str(info.value)
    assert simulator.stats()["requests"] == 0


def test_host_without_scheme_fails_before_any_request(
    simulator: Simulator, api_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    bare = simulator.url.removeprefix("http://")
    conn = {"conn_type": "dialnexa", "host": bare, "password": api_key}
    monkeypatch.setenv("AIRFLOW_CONN_DIALNEXA_BARE", json.dumps(conn))
    with pytest.raises(DialNexaConfigError, match="no scheme"):
        DialNexaHook("dialnexa_bare").get_call("call_abc123")
    assert simulator.stats()["requests"] == 0


def test_uri_env_connection_reaches_the_simulator(
    simulator: Simulator, api_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """End to end: the URI form (schema as scheme, URL-encoded key) authenticates against a real server."""
    port = simulator.url.rsplit(":", 1)[1]
    monkeypatch.setenv(
        "AIRFLOW_CONN_DIALNEXA_URI_E2E",
        f"dialnexa://:{quote(api_key, safe='')}@127.0.0.1:{port}/http?rate_limit_per_minute=0",
    )
    call_id = simulator.create_call(outcome="busy", queued_s=0, ring_s=0, talk_s=0)
    hook = DialNexaHook("dialnexa_uri_e2e")
    assert hook.get_call(call_id)["status"] == "busy"
    assert simulator.stats()["by_status"] == {200: 1}
