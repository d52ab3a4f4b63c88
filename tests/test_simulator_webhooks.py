"""The simulator's DialNexa webhooks, over real sockets: ``/v1/user-webhooks``, the verification ping, and signed
deliveries of call events to a tiny local receiver (retries, timeouts, duplicates, reordering, styles).

Waiting is on conditions (the receiver's requests, ``wait_for_deliveries``), never on sleeps; calls are
back-dated (``age_s``) or ended with ``set_status`` so nothing waits for a call to ring.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from _receiver import HANG, Received, Receiver

from airflow_provider_dialnexa.simulator import Fault, Simulator, SimulatorProcess

SECRET = "whsec_sim_0123456789abcdef"
ENDED_FIELDS = ("duration", "transcript", "summary", "recording_url", "post_call_analysis", "hangup_reason")


class Api:
    def __init__(self, url: str, key: str) -> None:
        self.url = url + "/v1/user-webhooks"
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {key}"

    def request(self, method: str, path: str = "", **kwargs: Any) -> requests.Response:
        return self.session.request(method, self.url + path, timeout=30, **kwargs)

    def create(self, url: str, events: list[str] | None = None, **extra: Any) -> dict[str, Any]:
        body = {"url": url, "events": events or ["call_ended", "call_initiated"], "secret": SECRET, **extra}
        response = self.request("POST", json=body)
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()["webhook"]
        return created


@pytest.fixture
def api(simulator: Simulator, api_key: str) -> Iterator[Api]:
    client = Api(simulator.url, api_key)
    yield client
    client.session.close()


@pytest.fixture
def rx() -> Iterator[Receiver]:
    with Receiver() as receiver:
        yield receiver


def verified(request: Received, secret: str = SECRET, header: str = "x-nexa-signature") -> dict[str, Any]:
    """The JSON body, after checking its signature the way DialNexa documents it (raw bytes, constant time)."""
    expected = "sha256=" + hmac.new(secret.encode(), request.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(request.headers[header], expected)
    body: dict[str, Any] = json.loads(request.body)
    return body


def events_of(requests_: list[Received]) -> list[tuple[str, str | None]]:
    out = []
    for request in requests_:
        body = json.loads(request.body)
        name = body.get("event_type") or body.get("event")
        call = (body.get("payload") or {}).get("call") or {}
        out.append((name, call.get("id") or body.get("session_id")))
    return out


def ended(sim: Simulator, outcome: str = "completed", **spec: Any) -> str:
    """A call created already over (its initiated and ended events are due at once)."""
    return sim.create_call(outcome=outcome, queued_s=0, ring_s=1, talk_s=5, age_s=60, **spec)


# -- registration ----------------------------------------------------------------------------------------


def test_create_pings_signed_verification_and_masks_the_secret_afterwards(api: Api, rx: Receiver) -> None:
    created = api.create(rx.url, ["call.completed"])
    assert created["secret"] == SECRET  # shown once, at creation
    assert created["id"].startswith("webhook_")
    assert created["is_active"] is True
    assert created["url"] == rx.url
    assert created["events"] == ["call.completed"]
    assert created["createdAt"]

    (ping,) = rx.requests  # synchronous: answered before the 201
    assert verified(ping).keys() == {"message", "timestamp"}
    assert ping.headers["user-agent"] == "DialNexa-External-Webhook-Verification/1.0"

    listed = api.request("GET").json()
    assert listed["webhooks"][0]["secret"] == "********"
    assert {k: listed[k] for k in ("page", "limit", "total", "totalPages")} == {
        "page": 1,
        "limit": 10,
        "total": 1,
        "totalPages": 1,
    }
    fetched = api.request("GET", f"/{created['id']}").json()
    assert fetched["message"]
    assert fetched["webhook"]["secret"] == "********"


def test_registration_fails_when_the_ping_is_not_answered_2xx(simulator: Simulator, api: Api, rx: Receiver) -> None:
    rx.answer(401)
    response = api.request("POST", json={"url": rx.url, "events": ["call_ended"], "secret": SECRET})
    assert response.status_code == 400
    error = response.json()
    assert error["statusCode"] == 400
    assert error["error"] == "Bad Request"
    assert "verification" in error["message"]
    assert "401" in error["message"]
    assert len(rx.requests) == 1  # never retried
    assert api.request("GET").json()["webhooks"] == []
    assert [(d.event, d.response_status, d.is_success) for d in simulator.deliveries()] == [
        ("verification", 401, False)
    ]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"events": ["call_ended"], "secret": SECRET}, "url must be a valid URL"),
        ({"url": "ftp://x.example/hook", "events": ["call_ended"], "secret": SECRET}, "url must be a valid URL"),
        ({"url": "https://x.example/" + "a" * 150, "events": ["a"], "secret": SECRET}, "shorter than or equal"),
        ({"url": "https://x.example/hook", "events": [], "secret": SECRET}, "events should not be empty"),
        ({"url": "https://x.example/hook", "events": "call_ended", "secret": SECRET}, "events must be an array"),
        ({"url": "https://x.example/hook", "events": ["call_ended"]}, "secret must be a string"),
        ({"url": "https://x.example/hook", "events": ["a"], "secret": " "}, "secret should not be empty"),
        ({"url": "https://x.example/h", "events": ["a"], "secret": SECRET, "is_active": "y"}, "is_active must be"),
        ({"url": "https://x.example/h", "events": ["a"], "secret": SECRET, "retries": 3}, "retries should not exist"),
    ],
)
def test_create_validates_like_dialnexa(api: Api, body: dict[str, Any], message: str) -> None:
    response = api.request("POST", json=body)
    assert response.status_code == 400
    assert any(message in part for part in response.json()["message"])


def test_https_can_be_required(simulator: Simulator, api: Api, rx: Receiver) -> None:
    simulator.configure_webhooks(require_https=True)
    response = api.request("POST", json={"url": rx.url, "events": ["call_ended"], "secret": SECRET})
    assert response.status_code == 400
    assert response.json()["message"] == ["url must be an https URL"]
    assert rx.requests == []


def test_patch_get_delete_and_404s(simulator: Simulator, api: Api, rx: Receiver) -> None:
    hook = api.create(rx.url)
    patched = api.request("PATCH", f"/{hook['id']}", json={"is_active": False, "events": ["call.failed"]})
    assert patched.status_code == 200
    assert patched.json()["webhook"]["is_active"] is False
    assert patched.json()["webhook"]["events"] == ["call.failed"]
    assert "secret" not in patched.json()["webhook"]
    assert len(rx.requests) == 1  # same URL: no new verification
    assert api.request("PATCH", f"/{hook['id']}", json={"url": rx.url + "/v2"}).status_code == 200
    assert rx.requests[-1].path == "/hook/v2"  # a new URL is verified like a new webhook
    assert api.request("PATCH", f"/{hook['id']}", json={"bogus": 1}).status_code == 400
    deleted = api.request("DELETE", f"/{hook['id']}")
    assert deleted.json() == {"message": "Webhook deleted successfully", "id": hook["id"]}
    for method in ("GET", "PATCH", "DELETE"):
        response = api.request(method, f"/{hook['id']}", json={"is_active": True} if method == "PATCH" else None)
        assert (response.status_code, response.json()["message"]) == (404, "Webhook not found")
    assert simulator.stats()["by_route"]["webhook_update"] == 4


def test_list_pages_and_the_example_shapes(simulator: Simulator, api: Api, rx: Receiver) -> None:
    simulator.configure_webhooks(list_max_limit=4, id_prefix="wh_")
    ids = [api.create(f"{rx.url}/{i}")["id"] for i in range(10)]
    assert all(i.startswith("wh_") for i in ids)
    pages = [api.request("GET", params={"page": p, "limit": 50}).json() for p in (1, 2, 3, 4)]
    assert [p["limit"] for p in pages] == [4] * 4
    assert pages[0]["totalPages"] == 3
    assert pages[0]["total"] == 10
    assert [h["id"] for p in pages for h in p["webhooks"]] == ids  # oldest first, each once, then empty
    assert api.request("GET", params={"page": 0}).status_code == 400

    simulator.configure_webhooks(response_style="example")
    listed = api.request("GET").json()
    assert set(listed) == {"total", "page", "limit", "webhooks"}
    fetched = api.request("GET", f"/{ids[0]}").json()
    assert fetched["id"] == ids[0]
    assert fetched["secret"] == "********"
    assert api.request("DELETE", f"/{ids[0]}").json() == {"success": True, "message": "Webhook deleted successfully"}


# -- deliveries -------------------------------------------------------------------------------------------


def test_call_events_are_signed_and_shaped_as_documented(simulator: Simulator, api: Api, rx: Receiver) -> None:
    hook = api.create(rx.url)
    completed = ended(simulator, "completed", to_number="+14155550123")
    busy = ended(simulator, "busy")
    log = simulator.wait_for_deliveries()
    got = rx.wait_for(lambda r: len(r) == 5)[1:]  # after the verification ping

    bodies = [verified(r) for r in got]
    assert all(r.headers["user-agent"] == "DialNexa-External-Webhook/1.0" for r in got)
    assert all(r.headers["content-type"] == "application/json" for r in got)
    by_event = {(b["event_type"], b["payload"]["call"]["id"]): b["payload"]["call"] for b in bodies}
    assert set(by_event) == {(e, c) for e in ("call_initiated", "call_ended") for c in (completed, busy)}
    initiated = by_event[("call_initiated", completed)]
    assert initiated["status"] == "initiated"
    assert initiated["type"] == "phone_call"
    assert initiated["to_number"] == "14155550123"  # no "+", as in DialNexa's examples
    assert not str(initiated["from_number"]).startswith("+")
    done = by_event[("call_ended", completed)]
    assert done["status"] == "completed"
    assert all(done.get(f) is not None for f in ENDED_FIELDS)
    hung_up = by_event[("call_ended", busy)]
    assert hung_up["status"] == "hangup"
    assert hung_up["hangup_reason"] == "user_busy"
    assert "transcript" not in hung_up
    # each call: initiated before ended
    order = [(b["event_type"], b["payload"]["call"]["id"]) for b in bodies]
    for call in (completed, busy):
        assert order.index(("call_initiated", call)) < order.index(("call_ended", call))

    calls = [d for d in log if d.call_id]
    assert {(d.call_id, d.event, d.attempt, d.response_status, d.is_success) for d in calls} == {
        (c, e, 1, 200, True) for c in (completed, busy) for e in ("call_initiated", "call_ended")
    }
    assert all(d.webhook_id == hook["id"] and not d.duplicate for d in calls)
    assert simulator.deliveries(call_id=busy, event="call_ended")[0].response_status == 200


@pytest.mark.parametrize(
    ("style", "names"),
    [
        ("dotted", ["call.started", "call.completed", "call.started", "call.no_answer"]),
        ("both", ["call_initiated", "call_ended", "call.completed", "call_initiated", "call_ended", "call.no_answer"]),
        ("flat", ["call.started", "call.ended", "call.started", "call.ended"]),
    ],
)
def test_event_styles_and_the_other_signature_header(
    simulator: Simulator, api: Api, rx: Receiver, style: str, names: list[str]
) -> None:
    simulator.configure_webhooks(event_style=style, signature_header="x-dialnexa-signature")
    subscribed = ["call_ended", "call.started", "call.completed", "call.no_answer"]
    api.create(rx.url, subscribed)
    first = ended(simulator, "completed")
    simulator.wait_for_deliveries()
    second = ended(simulator, "no_answer")
    simulator.wait_for_deliveries()
    got = rx.wait_for(lambda r: len(r) == len(names) + 1)[1:]
    bodies = [verified(r, header="x-dialnexa-signature") for r in got]
    assert all("x-nexa-signature" not in r.headers for r in got)
    assert [b.get("event_type") or b.get("event") for b in bodies] == names
    if style == "flat":
        assert set(bodies[1]) == {"event", "workspace_id", "session_id", "agent_id", "phone_number", "timestamp"}
        assert [b["session_id"] for b in bodies] == [first, first, second, second]
    if style == "dotted":  # the dotted generation reports the status enum
        assert [b["payload"]["call"]["status"] for b in bodies[1::2]] == ["completed", "no_answer"]


def test_only_active_subscribed_webhooks_get_an_event(simulator: Simulator, api: Api) -> None:
    with Receiver() as completed_only, Receiver() as everything, Receiver() as inactive:
        api.create(completed_only.url, ["call.completed"])
        api.create(everything.url, ["call_ended"])
        api.create(inactive.url, ["call_ended"], is_active=False)
        ok, busy = ended(simulator, "completed"), ended(simulator, "busy")
        simulator.wait_for_deliveries()
        assert events_of(completed_only.requests[1:]) == [("call_ended", ok)]
        assert sorted(events_of(everything.requests[1:])) == sorted([("call_ended", ok), ("call_ended", busy)])
        assert len(inactive.requests) == 1  # the ping only


def test_ending_a_scripted_call_delivers_without_any_read(simulator: Simulator, api: Api, rx: Receiver) -> None:
    api.create(rx.url, ["call_ended"])
    call_id = simulator.create_call(outcome="completed", queued_s=0, ring_s=3600, talk_s=0)
    simulator.set_status(call_id, "busy")
    simulator.wait_for_deliveries()
    (request,) = rx.requests[1:]
    assert verified(request)["payload"]["call"]["status"] == "hangup"
    assert simulator.stats()["by_route"] == {"webhook_create": 1}  # no Get Call made it happen


def test_calls_of_before_the_registration_deliver_when_they_end_but_history_does_not(
    simulator: Simulator, api: Api, rx: Receiver
) -> None:
    running = simulator.create_call(outcome="completed", queued_s=0, ring_s=3600, talk_s=0)
    simulator.seed_calls(20, 1_700_000_000, 1_700_003_600)
    api.create(rx.url, ["call_ended"])
    simulator.set_status(running, "completed")
    simulator.wait_for_deliveries()
    assert events_of(rx.requests[1:]) == [("call_ended", running)]


def test_non_2xx_and_timeouts_are_retried_then_given_up(simulator: Simulator, api: Api, rx: Receiver) -> None:
    simulator.configure_webhooks(retry_backoff_s=0, timeout_ms=200)
    api.create(rx.url, ["call_ended"])
    rx.answer(500, HANG, 503)  # then 200
    call_id = ended(simulator)
    log = simulator.wait_for_deliveries()
    attempts = [(d.attempt, d.response_status, d.is_success) for d in log if d.call_id == call_id]
    assert attempts == [(1, 500, False), (2, None, False), (3, 503, False), (4, 200, True)]
    retries = [d for d in log if d.call_id == call_id]
    assert retries[0].parent_delivery_id is None
    assert {d.parent_delivery_id for d in retries[1:]} == {retries[0].id}
    assert "timed out" in (retries[1].error_message or "")
    bodies = {r.body for r in rx.requests[1:]}
    assert len(bodies) == 1  # every attempt carries the same body

    simulator.configure_webhooks(retry_count=1)
    rx.answer(500, 500, 500)
    other = ended(simulator)
    log = simulator.wait_for_deliveries()
    assert [(d.attempt, d.is_success) for d in log if d.call_id == other] == [(1, False), (2, False)]


def test_duplicates_and_reordering_faults(simulator: Simulator, api: Api, rx: Receiver) -> None:
    simulator.configure_webhooks(duplicate_rate=1.0, reorder=True)
    api.create(rx.url)
    call_id = ended(simulator)
    log = simulator.wait_for_deliveries()
    got = rx.requests[1:]
    assert events_of(got) == [("call_ended", call_id)] * 2 + [("call_initiated", call_id)] * 2
    assert got[0].body == got[1].body
    assert got[0].headers["x-nexa-signature"] == got[1].headers["x-nexa-signature"]
    assert [d.duplicate for d in log if d.call_id] == [False, True, False, True]


def test_secret_rotation_signs_the_next_delivery(simulator: Simulator, api: Api, rx: Receiver) -> None:
    hook = api.create(rx.url, ["call_ended"])
    api.request("PATCH", f"/{hook['id']}", json={"secret": "whsec_rotated"})
    ended(simulator)
    simulator.wait_for_deliveries()
    verified(rx.requests[-1], secret="whsec_rotated")


def test_delivery_delay_keeps_the_api_answering(simulator: Simulator, api: Api, rx: Receiver, api_key: str) -> None:
    """A receiver that never answers holds deliveries, never the simulator's API (deliveries are off its path)."""
    simulator.configure_webhooks(retry_count=0, timeout_ms=60_000)
    api.create(rx.url, ["call_ended"])
    rx.answer(HANG)
    call_id = ended(simulator)
    rx.wait_for(lambda r: len(r) == 2)  # the delivery is being held by the receiver now
    headers = {"Authorization": f"Bearer {api_key}"}
    response = requests.get(f"{simulator.url}/v1/calls/{call_id}", headers=headers, timeout=30)
    assert response.status_code == 200
    assert api.request("GET").status_code == 200
    assert simulator.state.webhooks.pending() == 1


def test_reset_forgets_webhooks_and_deliveries(simulator: Simulator, api: Api, rx: Receiver) -> None:
    api.create(rx.url)
    ended(simulator)
    simulator.wait_for_deliveries()
    simulator.reset()
    assert simulator.webhooks() == []
    assert simulator.deliveries() == []
    ended(simulator)
    assert simulator.wait_for_deliveries() == []


def test_webhook_faults_target_the_webhook_routes(simulator: Simulator, api: Api, rx: Receiver) -> None:
    simulator.add_fault(Fault(kind="lost_502", route="webhook_create", count=1))
    response = api.request("POST", json={"url": rx.url, "events": ["call_ended"], "secret": SECRET})
    assert response.status_code == 502
    assert len(simulator.webhooks()) == 1  # created, answer lost
    with pytest.raises(ValueError, match="route must be"):
        Fault(kind="500", route="webhooks")  # type: ignore[arg-type]


def test_the_simulator_process_delivers_too(api_key: str, rx: Receiver) -> None:
    with SimulatorProcess(api_key=api_key) as sim:
        sim.configure_webhooks(signature_header="x-dialnexa-signature")
        client = Api(sim.url, api_key)
        client.create(rx.url, ["call_ended"])
        call_id = sim.create_call(outcome="failed", queued_s=0, ring_s=0, talk_s=0, age_s=5)
        log = sim.wait_for_deliveries()
        assert [(d.event, d.call_id, d.is_success) for d in log] == [
            ("verification", None, True),
            ("call_ended", call_id, True),
        ]
        assert sim.webhooks()[0]["secret"] == "********"
        verified(rx.requests[-1], header="x-dialnexa-signature")
