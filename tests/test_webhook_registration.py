"""``DialNexaHook.ensure_webhook`` and the thin webhook calls, against the simulator over real sockets.

Idempotency is counted on the simulator's request log: a second ``ensure_webhook`` sends no POST and no
PATCH; a changed subscription is one PATCH; a create whose answer is lost is found by listing, never sent
twice. The secret is never logged, raised or returned.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from _compat import capture_logs
from _receiver import Receiver

from airflow_provider_dialnexa.exceptions import (
    DialNexaAuthError,
    DialNexaBadRequestError,
    DialNexaConfigError,
    DialNexaMalformedResponseError,
    DialNexaUnconfirmedWebhookError,
)
from airflow_provider_dialnexa.hooks._webhooks import as_webhook_page
from airflow_provider_dialnexa.hooks.dialnexa import DEFAULT_WEBHOOK_EVENTS, DialNexaHook
from airflow_provider_dialnexa.policy import RetryPolicy
from airflow_provider_dialnexa.simulator import Fault, Simulator

SECRET = "whsec_registration_0123456789"
FAST = RetryPolicy(backoff_base=0.01, backoff_max=0.05, min_wait=0)


@pytest.fixture
def conn(simulator: Simulator, api_key: str, monkeypatch: pytest.MonkeyPatch) -> Simulator:
    """``dialnexa_default`` at the simulator, with a webhook secret."""
    extra = {"timeout": 5, "max_retries": 3, "webhook_secret": SECRET}
    value = {"conn_type": "dialnexa", "host": simulator.url, "password": api_key, "extra": extra}
    monkeypatch.setenv("AIRFLOW_CONN_DIALNEXA_DEFAULT", json.dumps(value))
    return simulator


@pytest.fixture
def rx() -> Iterator[Receiver]:
    with Receiver() as receiver:
        yield receiver


def hook() -> DialNexaHook:
    return DialNexaHook(retry_policy=FAST)


def routes(sim: Simulator) -> dict[str, int]:
    return {route: n for route, n in sim.stats()["by_route"].items() if route.startswith("webhook_")}


def test_ensure_twice_registers_once_and_the_second_run_only_lists(conn: Simulator, rx: Receiver) -> None:
    first = hook().ensure_webhook(rx.url)
    assert first["url"] == rx.url
    assert first["events"] == list(DEFAULT_WEBHOOK_EVENTS)
    assert first["secret"] == "********"  # DialNexa showed it in clear once; the hook never returns it
    assert routes(conn) == {"webhook_list": 1, "webhook_create": 1}

    second = hook().ensure_webhook(rx.url)
    assert second["id"] == first["id"]
    assert routes(conn) == {"webhook_list": 2, "webhook_create": 1}  # no POST, no PATCH
    assert len(conn.webhooks()) == 1

    # The registration works: the verification ping and a delivery are signed with the connection's secret.
    call_id = conn.create_call(outcome="busy", queued_s=0, ring_s=1, talk_s=0, age_s=30)
    conn.wait_for_deliveries()
    ping, delivery = rx.requests
    for request in (ping, delivery):
        expected = "sha256=" + hmac.new(SECRET.encode(), request.body, hashlib.sha256).hexdigest()
        assert request.headers["x-nexa-signature"] == expected
    assert json.loads(delivery.body)["payload"]["call"]["id"] == call_id


def test_changed_events_or_active_flag_are_one_patch(conn: Simulator, rx: Receiver) -> None:
    created = hook().ensure_webhook(rx.url, ["call_ended"])
    updated = hook().ensure_webhook(rx.url, ["call_ended", "call.completed"])
    assert updated["id"] == created["id"]
    assert updated["events"] == ["call_ended", "call.completed"]
    assert routes(conn) == {"webhook_list": 2, "webhook_create": 1, "webhook_update": 1}
    # the same events in another order are the same subscription
    hook().ensure_webhook(rx.url, ["call.completed", "call_ended"])
    assert routes(conn)["webhook_update"] == 1
    paused = hook().ensure_webhook(rx.url, ["call.completed", "call_ended"], is_active=False)
    assert paused["is_active"] is False
    assert routes(conn)["webhook_update"] == 2
    assert conn.webhooks()[0]["is_active"] is False


@pytest.mark.parametrize("kind", ["lost_502", "lost_504", "truncated_json", "html_200", "reset"])
def test_a_create_whose_answer_is_lost_is_found_not_repeated(conn: Simulator, rx: Receiver, kind: str) -> None:
    conn.add_fault(Fault(kind=kind, route="webhook_create", count=1))
    found = hook().ensure_webhook(rx.url)
    assert len(conn.webhooks()) == 1
    assert found["id"] == conn.webhooks()[0]["id"]
    assert routes(conn) == {"webhook_list": 2, "webhook_create": 1}  # listed again instead of a second POST


def test_a_refused_create_is_sent_again_once_the_listing_proves_nothing_exists(conn: Simulator, rx: Receiver) -> None:
    conn.add_fault(Fault(kind="500", route="webhook_create", count=1))  # answered before anything was created
    hook().ensure_webhook(rx.url)
    assert len(conn.webhooks()) == 1
    assert routes(conn) == {"webhook_list": 2, "webhook_create": 2}
    conn.add_fault(Fault(kind="429", route="webhook_create", count=1, retry_after="0"))
    hook().ensure_webhook(rx.url + "/other")
    assert routes(conn)["webhook_create"] == 4  # a 429 registered nothing: sent again without listing


def test_an_unprovable_create_raises_unconfirmed(conn: Simulator, rx: Receiver) -> None:
    conn.add_fault(Fault(kind="lost_502", route="webhook_create", count=1))
    conn.add_fault(Fault(kind="403", route="webhook_list"))
    with pytest.raises(DialNexaUnconfirmedWebhookError, match="may have reached DialNexa") as info:
        hook().create_webhook(rx.url, ["call_ended"])
    assert info.value.retryable
    assert routes(conn)["webhook_create"] == 1


def test_a_failed_verification_is_a_clear_bad_request(conn: Simulator, rx: Receiver) -> None:
    rx.answer(401)
    with pytest.raises(DialNexaBadRequestError, match="verification") as info:
        hook().ensure_webhook(rx.url)
    assert "webhook_secret" in str(info.value)  # the hint says what to check
    assert conn.webhooks() == []
    assert routes(conn)["webhook_create"] == 1  # a 4xx is final


def test_the_secret_never_reaches_logs_errors_or_results(
    conn: Simulator, rx: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    conn.add_fault(Fault(kind="lost_502", route="webhook_create", count=1))
    with caplog.at_level(logging.DEBUG), capture_logs() as events:
        result = hook().ensure_webhook(rx.url)
        hook().ensure_webhook(rx.url, ["call_ended"], update_secret=True)
        rx.answer(500)
        with pytest.raises(DialNexaBadRequestError) as info:
            hook().create_webhook(rx.url + "/x", ["call_ended"])
    text = caplog.text + json.dumps([dict(e) for e in events], default=str) + str(info.value) + json.dumps(result)
    assert SECRET not in text
    assert "registered by the earlier attempt" in text  # the logs were captured
    assert routes(conn)["webhook_update"] == 1


def test_rotation_sends_the_new_secret(conn: Simulator, rx: Receiver) -> None:
    hook().ensure_webhook(rx.url, ["call_ended"])
    hook().ensure_webhook(rx.url, ["call_ended"], secret="whsec_next_0123456789", update_secret=True)
    conn.create_call(outcome="failed", queued_s=0, ring_s=0, talk_s=0, age_s=5)
    conn.wait_for_deliveries()
    body = rx.requests[-1].body
    expected = "sha256=" + hmac.new(b"whsec_next_0123456789", body, hashlib.sha256).hexdigest()
    assert rx.requests[-1].headers["x-nexa-signature"] == expected


@pytest.mark.parametrize("style", ["schema", "example"])
def test_listing_reads_every_page_of_every_documented_envelope(
    conn: Simulator, rx: Receiver, style: str, api_key: str
) -> None:
    conn.configure_webhooks(list_max_limit=7, response_style=style)
    with requests.Session() as session:  # straight to the API: the hook's rate budget would pace 20 creates
        session.headers["Authorization"] = f"Bearer {api_key}"
        for i in range(20):
            body = {"url": f"{rx.url}/{i}", "events": ["call_ended"], "secret": SECRET}
            assert session.post(f"{conn.url}/v1/user-webhooks", json=body, timeout=30).status_code == 201
    listed = hook().list_webhooks()
    assert [w["url"] for w in listed] == [f"{rx.url}/{i}" for i in range(20)]
    assert {w["secret"] for w in listed} == {"********"}
    # the one on the last page is found: no duplicate
    before = routes(conn)["webhook_create"]
    assert hook().ensure_webhook(f"{rx.url}/19", ["call_ended"])["url"] == f"{rx.url}/19"
    assert routes(conn)["webhook_create"] == before


def test_page_shapes_without_totals() -> None:
    """A bare array and a page without totals are read too; paging then stops at a short page."""
    from airflow_provider_dialnexa._connection import ConnectionSettings

    settings = ConnectionSettings(conn_id="c", base_url="https://x", api_key="k:s")
    page = as_webhook_page([{"id": "wh_1", "url": "https://a", "secret": "s"}], subject="s", settings=settings)
    assert page.webhooks == [{"id": "wh_1", "url": "https://a", "secret": "********"}]
    assert (page.limit, page.total, page.total_pages) == (None, None, None)
    wrapped = as_webhook_page({"webhooks": [], "limit": "10"}, subject="s", settings=settings)
    assert (wrapped.limit, wrapped.total) == (10, None)
    with pytest.raises(DialNexaMalformedResponseError):
        as_webhook_page({"message": "ok"}, subject="s", settings=settings)
    with pytest.raises(DialNexaMalformedResponseError):
        as_webhook_page({"webhooks": [{"url": "https://a"}]}, subject="s", settings=settings)


def test_duplicates_by_url_are_named_not_deleted(conn: Simulator, rx: Receiver) -> None:
    first = hook().create_webhook(rx.url, ["call_ended"])
    hook().create_webhook(rx.url, ["call_ended"])
    with capture_logs() as events:
        assert hook().ensure_webhook(rx.url, ["call_ended"])["id"] == first["id"]
    assert any("2 webhooks have this URL" in str(e["event"]) for e in events)
    assert len(conn.webhooks()) == 2


def test_bad_arguments_fail_before_any_request(
    conn: Simulator, rx: Receiver, monkeypatch: pytest.MonkeyPatch, api_key: str
) -> None:
    for url in ("", "airflow.example.com/dialnexa", "ftp://x/y", "https://user:pw@x/y"):
        with pytest.raises(ValueError, match="webhook URL"):
            hook().ensure_webhook(url)
    for events in ([], [""], [" call_ended"]):
        with pytest.raises(ValueError, match="events"):
            hook().ensure_webhook(rx.url, events)
    no_secret: dict[str, Any] = {"conn_type": "dialnexa", "host": conn.url, "password": api_key}
    monkeypatch.setenv("AIRFLOW_CONN_DIALNEXA_DEFAULT", json.dumps(no_secret))
    with pytest.raises(DialNexaConfigError, match="webhook_secret"):
        hook().ensure_webhook(rx.url)
    assert routes(conn) == {}
    assert rx.requests == []


def test_a_wrong_api_key_is_an_auth_error(conn: Simulator, rx: Receiver) -> None:
    conn.configure(api_key="another:key")
    with pytest.raises(DialNexaAuthError):
        hook().ensure_webhook(rx.url)
    assert conn.webhooks() == []
