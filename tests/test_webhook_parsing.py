"""Webhook pieces without a server or a database: signatures, the asset URI, body parsing, calls_from_events."""

from __future__ import annotations

import hashlib
import hmac
import json
import urllib.parse
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from _compat import AIRFLOW_V_3

from airflow_provider_dialnexa import get_provider_info
from airflow_provider_dialnexa._connection import settings_from_connection, webhook_secrets
from airflow_provider_dialnexa.webhooks import (
    ROUTE_PREFIX,
    calls_asset_uri,
    calls_ended_asset,
    calls_from_events,
    webhook_path,
)
from airflow_provider_dialnexa.webhooks.events import (
    ENDED_UNKNOWN,
    EVENT_SOURCE,
    MAX_SLIM_BYTES,
    Kind,
    MalformedEventError,
    parse,
)
from airflow_provider_dialnexa.webhooks.signature import SIGNATURE_HEADERS, sign, verify
from airflow_provider_dialnexa.webhooks.uri import conn_id_from_uri, sanitize_uri

SECRET = "whsec_test_0123456789"
BODY = b'{"event_type":"call_ended","payload":{"call":{"id":"call_1","status":"completed"}}}'


# -- signature ------------------------------------------------------------------------------------------


def test_sign_is_hmac_sha256_hex_with_the_documented_prefix() -> None:
    expected = hmac.new(SECRET.encode(), BODY, hashlib.sha256).hexdigest()
    assert sign(BODY, SECRET) == f"sha256={expected}"
    assert SIGNATURE_HEADERS == ("x-nexa-signature", "x-dialnexa-signature")


@pytest.mark.parametrize(
    "value",
    [
        sign(BODY, SECRET),
        sign(BODY, SECRET).upper().replace("SHA256=", "sha256="),  # hex case does not matter
        sign(BODY, SECRET).replace("sha256=", "SHA256="),
        sign(BODY, SECRET).removeprefix("sha256="),  # a bare hex digest (same MAC, no label)
        f"  {sign(BODY, SECRET)}  ",
    ],
)
def test_valid_signatures_verify(value: str) -> None:
    assert verify(BODY, [value], [SECRET])


@pytest.mark.parametrize(
    "value",
    [
        "",
        "sha256=",
        sign(BODY, "another-secret"),
        sign(BODY + b" ", SECRET),  # the exact raw body is signed: one byte more fails
        sign(BODY, SECRET)[:-1],  # truncated
        sign(BODY, SECRET) + "0",  # too long
        "sha1=" + hmac.new(SECRET.encode(), BODY, hashlib.sha1).hexdigest(),  # another algorithm
        "sha512=" + sign(BODY, SECRET).removeprefix("sha256="),  # another label
        "sha256=" + "g" * 64,  # not hex
        "x" * 10_000,
    ],
)
def test_invalid_signatures_do_not_verify(value: str) -> None:
    assert not verify(BODY, [value], [SECRET])


def test_either_secret_of_a_rotation_verifies_and_no_secret_never_does() -> None:
    old, new = "old-secret", "new-secret"
    assert verify(BODY, [sign(BODY, old)], [new, old])
    assert verify(BODY, [sign(BODY, new)], [new, old])
    assert not verify(BODY, [sign(BODY, "third")], [new, old])
    assert not verify(BODY, [sign(BODY, "")], [])
    assert not verify(BODY, [sign(BODY, "")], [""])  # an empty secret is no secret


def test_any_of_several_signature_headers_may_carry_the_signature() -> None:
    assert verify(BODY, ["sha256=" + "0" * 64, sign(BODY, SECRET)], [SECRET])


# -- URI and connection extras ----------------------------------------------------------------------------


def test_calls_asset_uri_form_and_round_trip() -> None:
    assert calls_asset_uri() == "dialnexa://dialnexa_default/calls"
    assert calls_asset_uri("crm.prod-2") == "dialnexa://crm.prod-2/calls"
    assert conn_id_from_uri("dialnexa://crm.prod-2/calls") == "crm.prod-2"
    assert conn_id_from_uri("dialnexa://x/other") is None
    assert conn_id_from_uri("s3://bucket/calls") is None
    assert webhook_path("crm") == "/dialnexa/webhooks/crm"
    assert ROUTE_PREFIX == "/dialnexa"


@pytest.mark.parametrize("conn_id", ["", "a/b", "a b", "a?b", "é", "x" * 251, None])
def test_calls_asset_uri_refuses_what_is_not_a_connection_id(conn_id: Any) -> None:
    with pytest.raises(ValueError, match="connection id"):
        calls_asset_uri(conn_id)


@pytest.mark.parametrize(
    ("uri", "ok"),
    [
        ("dialnexa://dialnexa_default/calls", True),
        ("dialnexa://Mixed.Case-1/calls", True),
        ("dialnexa://dialnexa_default/other", False),
        ("dialnexa://dialnexa_default/calls?x=1", False),
        ("dialnexa:///calls", False),
        ("dialnexa://bad%20id/calls", False),
    ],
)
def test_sanitize_uri_accepts_only_the_calls_asset(uri: str, ok: bool) -> None:
    parsed = urllib.parse.urlsplit(uri)
    if ok:
        assert sanitize_uri(parsed) == parsed
    else:
        with pytest.raises(ValueError, match="DialNexa asset URI"):
            sanitize_uri(parsed)


def test_provider_info_registers_the_scheme_for_both_lines() -> None:
    info = get_provider_info()
    handler = "airflow_provider_dialnexa.webhooks.uri.sanitize_uri"
    assert info["asset-uris"] == [{"schemes": ["dialnexa"], "handler": handler}]
    assert info["dataset-uris"] == [{"schemes": ["dialnexa"], "handler": handler}]
    assert "plugins" not in info  # the entry point loads it; both would be a duplicate on Airflow 3


def test_calls_ended_asset_is_an_asset_or_dataset_airflow_sanitizes_with_our_handler() -> None:
    from airflow.providers.common.compat.sdk import Asset

    asset = calls_ended_asset("crm")
    assert isinstance(asset, Asset)
    assert type(asset).__name__ == ("Asset" if AIRFLOW_V_3 else "Dataset")
    assert asset.uri == "dialnexa://crm/calls"
    assert calls_ended_asset() == Asset(uri="dialnexa://dialnexa_default/calls")
    if AIRFLOW_V_3:  # Airflow called our handler
        with pytest.raises(ValueError, match="DialNexa asset URI"):
            Asset(uri="dialnexa://crm/calls/extra")
    else:  # 2.11 warns unless [core] strict_dataset_uri_validation is set
        with pytest.warns(UserWarning, match="DialNexa asset URI"):
            Asset(uri="dialnexa://crm/calls/extra")


def test_webhook_secrets_are_known_extras_hidden_from_repr() -> None:
    settings, warnings = settings_from_connection(
        "c",
        host=None,
        password="k:s",
        extra={"webhook_secret": " new-secret\n", "extra__dialnexa__webhook_secret_previous": "old-secret"},
    )
    assert warnings == []
    assert (settings.webhook_secret, settings.webhook_secret_previous) == ("new-secret", "old-secret")
    assert "new-secret" not in repr(settings)
    assert "old-secret" not in repr(settings)
    assert webhook_secrets({"webhook_secret": "", "webhook_secret_previous": 5}) == {}


# -- parsing ----------------------------------------------------------------------------------------------


def _body(data: Any) -> bytes:
    return json.dumps(data).encode()


FULL_CALL = {
    "id": "call_9",
    "status": "completed",
    "to_number": "12137771234",
    "from_number": "+14155550100",
    "transcript": "Agent: hello ..." * 50,
    "summary": "The customer agreed to ...",
    "recording_url": "https://rec.example/signed?token=abc",
    "post_call_analysis": {"sentiment": "positive"},
    "duration": 42,
    "hangup_reason": "user_disconnected",
    "agent_id": "agent_1",
    "direction": "outbound",
    "metadata": {"airflow_correlation_id": "dag.run.task.0", "customer_name": "Ann"},
}


@pytest.mark.parametrize(
    ("data", "call_id", "status"),
    [
        ({"event_type": "call_ended", "payload": {"call": FULL_CALL}}, "call_9", "completed"),
        ({"event_type": "call_ended", "payload": {"call": {"id": "c1", "status": "hangup"}}}, "c1", "hangup"),
        ({"event_type": "call.completed", "payload": {"call": {"id": "c1"}}}, "c1", "completed"),
        ({"event": "call.failed", "data": {"id": "c1", "status": "busy"}}, "c1", "busy"),  # payload is specific
        ({"event": "call.no_answer", "call": {"id": "c1"}}, "c1", "no_answer"),
        ({"event": "call.no-answer", "call": {"id": "c1", "status": "No-Answer"}}, "c1", "no_answer"),
        ({"event": "CALL.ENDED", "session_id": "c1", "agent_id": "a", "phone_number": "+1415"}, "c1", ENDED_UNKNOWN),
        ({"event": "call_ended", "call_id": "c1", "status": "completed"}, "c1", "completed"),  # flat
        ({"event_type": "call_ended", "payload": {"call": {"id": "c1", "status": "transferred"}}}, "c1", "transferred"),
        ({"event_type": "call_ended", "payload": {"call": {"id": "c1", "status": "in_progress"}}}, "c1", "ended"),
    ],
)
def test_call_ended_in_every_documented_shape(data: dict[str, Any], call_id: str, status: str) -> None:
    event = parse(_body(data))
    assert (event.kind, event.call_id, event.status) == (Kind.CALL_ENDED, call_id, status)
    assert event.call["id"] == call_id
    assert event.call["status"] == status


def test_call_ended_and_call_completed_for_one_call_share_their_key() -> None:
    a = parse(_body({"event_type": "call_ended", "payload": {"call": {"id": "c1", "status": "completed"}}}))
    b = parse(_body({"event_type": "call.completed", "payload": {"call": {"id": "c1"}}}))
    assert (a.call_id, a.status) == (b.call_id, b.status)


def test_slim_record_keeps_small_fields_and_never_personal_data() -> None:
    event = parse(_body({"event_type": "call_ended", "payload": {"call": FULL_CALL}}))
    extra = event.asset_extra("dialnexa_default")
    text = json.dumps(extra)
    for secret in ("12137771234", "4155550100", "Agent: hello", "customer agreed", "token=abc", "Ann", "positive"):
        assert secret not in text
    assert extra == {
        "source": EVENT_SOURCE,
        "conn_id": "dialnexa_default",
        "call_id": "call_9",
        "status": "completed",
        "event": "call_ended",
        "call": {
            "id": "call_9",
            "status": "completed",
            "hangup_reason": "user_disconnected",
            "duration": 42,
            "agent_id": "agent_1",
            "direction": "outbound",
            "metadata": {"airflow_correlation_id": "dag.run.task.0"},
        },
    }


def test_slim_record_is_bounded() -> None:
    call = {"id": "c1", "status": "completed", **{key: "x" * 10_000 for key in ("end_reason", "agent_id", "type")}}
    call.update({key: "y" * 150 for key in ("ended_at", "started_at", "initiated_at", "created_at", "createdAt")})
    call.update({key: "z" * 150 for key in ("category", "category_id", "batch_id", "campaign_id", "direction")})
    event = parse(_body({"event_type": "call_ended", "payload": {"call": call}}))
    assert len(json.dumps(event.call)) <= MAX_SLIM_BYTES
    assert event.call["id"] == "c1"
    assert event.call["end_reason"] == "x" * 200


@pytest.mark.parametrize(
    ("data", "kind", "name"),
    [
        ({"event_type": "verification", "message": "verify", "timestamp": 1}, Kind.VERIFICATION, "verification"),
        ({"message": "Webhook verification", "timestamp": "2026-01-01T00:00:00Z"}, Kind.VERIFICATION, "verification"),
        ({"event_type": "call_initiated", "payload": {"call": {"id": "c1", "status": "initiated"}}}, Kind.OTHER, None),
        ({"event": "call.started", "session_id": "c1"}, Kind.OTHER, "call.started"),
        ({"event_type": "transfer_completed", "payload": {"call": {"id": "c1"}}}, Kind.OTHER, None),
        ({"event": "call.transcript_ready", "call": {"id": "c1"}}, Kind.OTHER, None),
        ({"event": "campaign.completed"}, Kind.OTHER, "campaign.completed"),
        ({"event": "order.paid"}, Kind.OTHER, None),
        ({}, Kind.OTHER, ""),
    ],
)
def test_events_this_provider_does_not_act_on(data: dict[str, Any], kind: Kind, name: str | None) -> None:
    event = parse(_body(data))
    assert event.kind is kind
    assert event.call_id is None
    if name is not None:
        assert event.name == name


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"\xff\xfe",
        b"[1, 2]",
        b'"call_ended"',
        b"[" * 100_000,
        _body({"event_type": "call_ended", "payload": {"call": {"status": "completed"}}}),
        _body({"event_type": "call_ended", "payload": {"call": {"id": "../etc", "status": "completed"}}}),
        _body({"event_type": "call.completed", "payload": {"call": {"id": 42}}}),
    ],
)
def test_malformed_bodies(body: bytes) -> None:
    with pytest.raises(MalformedEventError):
        parse(body)


# -- calls_from_events ----------------------------------------------------------------------------------


class _Event:
    """The shape of an Airflow 3 ``AssetEventDagRunReference`` / 2.11 ``DatasetEvent`` (``extra``, ``timestamp``)."""

    def __init__(self, extra: dict[str, Any], timestamp: datetime) -> None:
        self.extra = extra
        self.timestamp = timestamp


T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _event(call_id: str, status: str, seconds: int, conn_id: str = "dialnexa_default") -> _Event:
    body = {"event_type": "call_ended", "payload": {"call": {"id": call_id, "status": status, "duration": seconds}}}
    return _Event(parse(_body(body)).asset_extra(conn_id), T0 + timedelta(seconds=seconds))


def test_calls_from_events_every_event_each_call_once_latest_report_wins() -> None:
    uri = calls_asset_uri()
    events = {
        uri: [_event("c1", "completed", 1), _event("c2", "busy", 2), _event("c2", "no_answer", 5)],
        "s3://other/asset": [_Event({"rows": 3}, T0)],
        "dialnexa://crm/calls": [_event("c3", "failed", 3, conn_id="crm")],
    }
    calls = calls_from_events(events)
    assert [(c["id"], c["status"]) for c in calls] == [("c1", "completed"), ("c3", "failed"), ("c2", "no_answer")]
    assert calls[0] == {"id": "c1", "status": "completed", "duration": 1}
    assert [c["id"] for c in calls_from_events(events, conn_id="crm")] == ["c3"]
    # the task context (either line's key), a plain list, and an alias key repeating an event
    assert calls_from_events({"triggering_asset_events": events}) == calls
    assert calls_from_events({"triggering_dataset_events": events}) == calls
    assert calls_from_events([*events[uri], events[uri][0]]) == [
        {"id": "c1", "status": "completed", "duration": 1},
        {"id": "c2", "status": "no_answer", "duration": 5},
    ]
    assert calls_from_events({}) == []


def test_calls_from_events_rejects_what_is_not_events() -> None:
    with pytest.raises(TypeError, match="triggering_asset_events"):
        calls_from_events("dialnexa://dialnexa_default/calls")


def test_calls_from_events_reads_airflows_own_triggering_events_objects() -> None:
    """The mapping a task really gets: Airflow 3's ``TriggeringAssetEventsAccessor`` (refuses str keys), or
    2.11's dict of URI -> ``DatasetEvent``-like objects, also inside a task context."""
    events = [_event("c1", "completed", 1), _event("c2", "busy", 2)]
    if AIRFLOW_V_3:
        from airflow.sdk.execution_time.comms import AssetEventDagRunReferenceResult
        from airflow.sdk.execution_time.context import TriggeringAssetEventsAccessor

        uri = calls_asset_uri()
        refs = [
            AssetEventDagRunReferenceResult(
                asset={"name": uri, "uri": uri, "extra": {}},  # type: ignore[arg-type]
                extra=event.extra,
                source_task_id=None,
                source_dag_id=None,
                source_run_id=None,
                source_map_index=None,
                source_aliases=[],
                timestamp=event.timestamp,
            )
            for event in events
        ]
        triggering: Any = TriggeringAssetEventsAccessor.build(refs)
        context: Any = {"triggering_asset_events": triggering, "run_id": "r"}
    else:
        triggering = {calls_asset_uri(): events}
        context = {"triggering_dataset_events": triggering, "run_id": "r"}
    expected = [{"id": "c1", "status": "completed", "duration": 1}, {"id": "c2", "status": "busy", "duration": 2}]
    assert calls_from_events(triggering) == expected
    assert calls_from_events(context) == expected
