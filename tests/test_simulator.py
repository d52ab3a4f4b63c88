"""Tests of the embedded DialNexa simulator itself, over real loopback sockets."""

from __future__ import annotations

import email.utils
import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import requests

from airflow_provider_dialnexa.simulator import (
    FAULT_KINDS,
    Fault,
    SimState,
    Simulator,
    SimulatorError,
    SimulatorProcess,
)
from airflow_provider_dialnexa.simulator.app import HUNG_UP
from airflow_provider_dialnexa.status import normalise

TERMINAL_FIELDS = ("ended_at", "end_reason", "sentiment", "transcript", "summary", "recording_url")


class Api:
    """A keep-alive ``requests`` client of the simulator's public API."""

    def __init__(self, url: str, key: str | None) -> None:
        self.url = url
        self.session = requests.Session()
        if key is not None:
            self.session.headers["Authorization"] = f"Bearer {key}"

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.session.get(self.url + path, timeout=10, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.session.post(self.url + path, timeout=10, **kwargs)

    def call(self, call_id: str) -> dict[str, Any]:
        response = self.get(f"/v1/calls/{call_id}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


@pytest.fixture
def api(simulator: Simulator, api_key: str) -> Iterator[Api]:
    client = Api(simulator.url, api_key)
    yield client
    client.session.close()


def ended(sim: Simulator, **spec: Any) -> str:
    """A call that is already terminal (``completed`` unless told otherwise)."""
    return sim.create_call(**{"outcome": "completed", "queued_s": 0, "ring_s": 0, "talk_s": 0, **spec})


def assert_envelope(response: requests.Response, status: int, message: Any = None) -> None:
    assert response.status_code == status
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["statusCode"] == status
    assert body["error"] == {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found"}[status]
    if message is not None:
        assert body["message"] == message


# ----------------------------------------------------------------------------- auth, ids, errors


def test_auth_is_required(simulator: Simulator, api_key: str) -> None:
    call_id = ended(simulator)
    path = f"/v1/calls/{call_id}"
    assert_envelope(Api(simulator.url, None).get(path), 401, "API key is missing or invalid")
    assert_envelope(Api(simulator.url, "wrong:key").get(path), 401)
    assert_envelope(Api(simulator.url, None).get(path, headers={"Authorization": f"Basic {api_key}"}), 401)
    assert_envelope(Api(simulator.url, None).get("/v1/calls"), 401)
    assert Api(simulator.url, api_key).get(path).status_code == 200


@pytest.mark.parametrize(
    "raw_id",
    ["abc123", "agent_123", "call_a%2Fb", "call_a%20b", "call_%C3%A9", "call_" + "x" * 124, "call_a.b", "%00"],
)
def test_malformed_call_id_is_400(api: Api, raw_id: str) -> None:
    assert_envelope(api.get(f"/v1/calls/{raw_id}"), 400, "Invalid call ID format")


def test_unknown_call_and_route_are_404(api: Api) -> None:
    assert_envelope(api.get("/v1/calls/call_" + "x" * 123), 404, "Call not found")
    assert_envelope(api.get("/v1/agents"), 404, "Cannot GET /v1/agents")
    assert_envelope(api.get("/calls/call_abc"), 404)  # legacy unversioned route, retired


def test_foreign_call_is_403_or_404(simulator: Simulator, api: Api) -> None:
    forbidden = ended(simulator, foreign=True)
    hidden = ended(simulator, foreign=True, foreign_status=404)
    assert_envelope(api.get(f"/v1/calls/{forbidden}"), 403, "Call does not belong to your organization")
    assert_envelope(api.get(f"/v1/calls/{hidden}"), 404, "Call not found")
    assert api.get("/v1/calls", params={"call_id": f"{forbidden},{hidden}"}).json() == []


# ----------------------------------------------------------------------------- records and lifecycle


def test_camel_record_fields(simulator: Simulator, api: Api) -> None:
    call_id = ended(simulator, outcome="completed", spelling="camel", metadata={"lead": "L-1"})
    record = api.call(call_id)
    assert record["id"] == call_id
    assert record["status"] == "completed"
    assert record["type"] == "phone"
    assert record["call_direction"] == "outbound"
    assert record["agent_id"].startswith("agent_")
    assert isinstance(record["agent_version_number"], int)
    assert record["to_number"].startswith("+")
    assert record["from_number"].startswith("+")
    assert record["createdAt"].endswith("Z")
    assert len(record["createdAt"]) == len("2026-10-05T09:15:02.118Z")
    assert record["duration"] == 0
    assert record["end_reason"] in ("user_disconnected", "agent_disconnected")
    assert record["recording_url"] == f"https://recordings.dialnexa.com/{call_id}.mp3"
    assert isinstance(record["analysis"], dict)
    assert record["metadata"] == {"lead": "L-1"}
    assert "created_at" not in record
    assert "to_phone_number" not in record
    assert "post_call_analysis" not in record


def test_snake_record_fields(simulator: Simulator, api: Api) -> None:
    call_id = simulator.create_call(outcome="voicemail", queued_s=0, ring_s=0, talk_s=0, spelling="snake")
    record = api.call(call_id)
    assert record["status"] == "voicemail"
    assert {"created_at", "to_phone_number", "from_phone_number", "duration_seconds", "post_call_analysis"} <= set(
        record
    )
    assert {"createdAt", "to_number", "from_number", "duration", "analysis"}.isdisjoint(record)
    assert record["end_reason"] == "voicemail_detected"
    assert record["transcript"].startswith("Agent: ")


@pytest.mark.parametrize(
    ("queued_s", "ring_s", "talk_s", "outcome", "hyphenated", "expected"),
    [
        (3600, 0, 0, "completed", False, "created"),
        (0, 3600, 0, "completed", False, "initiated"),
        (0, 0, 3600, "completed", False, "in_progress"),
        (0, 0, 3600, "completed", True, "in-progress"),
        (0, 0, 3600, "busy", False, "initiated"),  # never connects, so never in progress
    ],
)
def test_running_phases(
    simulator: Simulator,
    api: Api,
    queued_s: float,
    ring_s: float,
    talk_s: float,
    outcome: str,
    hyphenated: bool,
    expected: str,
) -> None:
    call_id = simulator.create_call(
        outcome=outcome, queued_s=queued_s, ring_s=ring_s, talk_s=talk_s, hyphenated=hyphenated
    )
    record = api.call(call_id)
    assert record["status"] == expected
    assert all(record[field] is None for field in TERMINAL_FIELDS)
    assert record["duration"] is None
    assert record["analysis"] is None
    plan = simulator.plan(call_id)
    assert plan.terminal_at == pytest.approx(plan.created_at + queued_s + ring_s + talk_s)


@pytest.mark.parametrize(
    ("outcome", "hyphenated", "status", "end_reasons"),
    [
        ("no_answer", True, "no-answer", {"user_did_not_pick_up"}),
        ("did_not_pick", True, "did-not-pick", {"user_did_not_pick_up"}),
        ("retry_expired", True, "retry-expired", {"user_did_not_pick_up"}),
        ("no_answer", False, "no_answer", {"user_did_not_pick_up"}),
        ("busy", False, "busy", {"user_busy"}),
        ("failed", False, "failed", {"invalid_phone_number", "network_failure"}),
        ("cancelled", False, "cancelled", {"unknown"}),
        ("hangup", False, "hangup", {"user_unreachable"}),
    ],
)
def test_terminal_outcomes(
    simulator: Simulator, api: Api, outcome: str, hyphenated: bool, status: str, end_reasons: set[str]
) -> None:
    record = api.call(ended(simulator, outcome=outcome, hyphenated=hyphenated))
    assert record["status"] == status
    assert record["end_reason"] in end_reasons
    assert record["duration"] == 0
    assert record["sentiment"] == "unknown"
    assert record["transcript"] is None
    assert record["recording_url"] is None
    assert record["ended_at"] == record["createdAt"]


def test_connected_calls_have_labelled_multilingual_transcripts(simulator: Simulator, api: Api) -> None:
    ids = simulator.create_calls(30, mix={"completed": 1.0}, queued_s=0, ring_s=5, talk_s=(60, 120), age_s=200)
    response = api.get("/v1/calls", params={"call_id": ",".join(ids), "limit": 30})
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    records = json.loads(response.content.decode("utf-8"))
    assert len(records) == 30
    transcripts = [r["transcript"] for r in records]
    assert all(line.startswith(("Agent: ", "User: ")) for t in transcripts for line in t.split("\n"))
    assert any(not t.isascii() for t in transcripts)
    assert any(t.isascii() for t in transcripts)
    assert all(60 <= r["duration"] <= 120 and r["summary"] and r["sentiment"] for r in records)
    assert {r["metadata"]["sim_index"] for r in records} == set(range(30))


def test_raw_status_overrides(simulator: Simulator, api: Api) -> None:
    done = ended(simulator, raw_statuses={"completed": "Completed"})
    odd = simulator.create_call(
        outcome="completed", queued_s=0, ring_s=0, talk_s=3600, raw_statuses={"in-progress": "mystery_state"}
    )
    assert api.call(done)["status"] == "Completed"
    assert api.call(odd)["status"] == "mystery_state"


def test_script_advances_one_step_per_get(simulator: Simulator, api: Api) -> None:
    call_id = simulator.create_call(queued_s=3600)
    simulator.script(call_id, ["initiated", "in-progress", "mystery_state", "completed"])
    seen = [api.call(call_id) for _ in range(3)]
    assert [r["status"] for r in seen] == ["initiated", "in-progress", "mystery_state"]
    assert all(r["ended_at"] is None for r in seen)
    listed = api.get("/v1/calls", params={"call_id": call_id}).json()
    assert listed[0]["status"] == "mystery_state"  # List Calls shows the last step without advancing
    final = [api.call(call_id) for _ in range(2)]
    assert [r["status"] for r in final] == ["completed", "completed"]
    assert final[0]["ended_at"] is not None
    assert final[0]["transcript"]
    assert simulator.get_count(call_id) == 5


def test_set_status_forces_a_terminal_record(simulator: Simulator, api: Api) -> None:
    call_id = simulator.create_call(outcome="completed", queued_s=0, ring_s=0, talk_s=3600, hyphenated=True)
    assert api.call(call_id)["status"] == "in-progress"
    simulator.set_status(call_id, "busy")
    record = api.call(call_id)
    assert record["status"] == "busy"
    assert record["end_reason"] == "user_busy"
    assert record["ended_at"]
    assert simulator.record(call_id)["status"] == "busy"


# ----------------------------------------------------------------------------- List Calls


def test_list_is_a_bare_array_newest_first_and_paged(simulator: Simulator, api: Api) -> None:
    ids = [ended(simulator) for _ in range(5)]
    assert [r["id"] for r in api.get("/v1/calls").json()] == ids[::-1]
    assert [r["id"] for r in api.get("/v1/calls", params={"limit": 2, "page": 2}).json()] == ids[2:0:-1]
    assert api.get("/v1/calls", params={"limit": 2, "page": 9}).json() == []


def test_list_filters(simulator: Simulator, api: Api) -> None:
    busy = ended(simulator, outcome="busy")
    no_answer = ended(simulator, outcome="no_answer", hyphenated=True)
    done = ended(simulator, outcome="completed")
    running = simulator.create_call(queued_s=3600)
    ids = f"{busy},call_unknown00000,not-an-id,{no_answer}"
    assert [r["id"] for r in api.get("/v1/calls", params={"call_id": ids}).json()] == [no_answer, busy]
    both = [f"{done},{running}", busy]  # repeated parameter and comma list combine
    assert {r["id"] for r in api.get("/v1/calls", params={"call_id": both}).json()} == {done, running, busy}
    by_status = api.get("/v1/calls", params={"status": "No_Answer, BUSY"}).json()
    assert [r["id"] for r in by_status] == [no_answer, busy]
    assert [r["id"] for r in api.get("/v1/calls", params={"status": "created"}).json()] == [running]


@pytest.mark.parametrize(("name", "value"), [("limit", "0"), ("limit", "201"), ("limit", "ten"), ("page", "0")])
def test_list_rejects_bad_paging(api: Api, name: str, value: str) -> None:
    response = api.get("/v1/calls", params={name: value})
    assert_envelope(response, 400)
    assert isinstance(response.json()["message"], list)


def test_list_accepts_limit_200(simulator: Simulator, api: Api) -> None:
    simulator.create_calls(210)
    assert len(api.get("/v1/calls", params={"limit": 200}).json()) == 200


def test_list_envelope_style_caps_limit(simulator: Simulator, api: Api) -> None:
    simulator.create_calls(120)
    simulator.configure(list_style="envelope")
    body = api.get("/v1/calls", params={"limit": 150, "page": 1}).json()
    assert len(body["data"]) == 100
    assert body["meta"] == {"page": 1, "limit": 100, "total": 120, "totalPages": 2}
    assert len(api.get("/v1/calls", params={"limit": 100, "page": 2}).json()["data"]) == 20


@pytest.mark.parametrize(("mode", "status"), [("missing", 404), ("forbidden", 403)])
def test_list_route_can_be_missing_or_forbidden(simulator: Simulator, api: Api, mode: str, status: int) -> None:
    simulator.configure(list_route=mode)
    assert_envelope(api.get("/v1/calls"), status)


# ----------------------------------------------------------------------------- Create Call


def test_create_call(simulator: Simulator, api: Api) -> None:
    body = {"phone_number": "+919812345678", "agent_id": "agent_2g7Xy3tY53gRlp", "metadata": {"run": "r1"}}
    response = api.post("/v1/calls", json=body)
    assert response.status_code == 201
    created = response.json()
    assert created["status"] == "initiated"
    assert created["to_phone_number"] == "+919812345678"
    assert created["agent_id"] == "agent_2g7Xy3tY53gRlp"
    assert isinstance(created["agent_version_number"], int)
    record = api.call(created["id"])
    assert normalise(record["status"]) in {"created", "initiated", "in_progress"} | set(simulator.configure()["mix"])
    assert record["metadata"] == {"run": "r1"}
    for alias in ("to_phone_number", "to_number"):
        other = {alias: "+14155550100", "agent_id": "agent_x", "agent_version_number": 3, "metadata": {}}
        assert api.post("/v1/calls", json=other).json()["agent_version_number"] == 3


def test_create_call_validation(api: Api) -> None:
    response = api.post("/v1/calls", json={"phone_number": "12345"})
    assert_envelope(response, 400)
    assert response.json()["message"] == [
        "phone_number must be a valid E.164 phone number",
        "agent_id should not be empty",
        "metadata must be an object",
    ]
    assert_envelope(api.post("/v1/calls", data=b"{not json", headers={"Content-Type": "application/json"}), 400)


# ----------------------------------------------------------------------------- faults


def _check_fault(kind: str, response: requests.Response) -> None:
    """What a client observes for each fault kind."""
    content_type = response.headers.get("content-type", "")
    if kind in ("429", "500", "503", "504"):
        assert response.status_code == int(kind)
        assert content_type.startswith("application/json")
        assert response.json()["statusCode"] == int(kind)
    elif kind == "502_html":
        assert response.status_code == 502
        assert content_type.startswith("text/html")
    elif kind == "html_200":
        assert response.status_code == 200
        assert content_type.startswith("text/html")
    elif kind == "truncated_json":
        assert response.status_code == 200
        with pytest.raises(ValueError, match=r"\w"):
            response.json()
    elif kind == "not_object":
        assert isinstance(response.json(), list)
    elif kind in ("no_id", "no_status", "no_metadata"):
        assert kind[3:] not in response.json()
        assert "agent_id" in response.json()
    elif kind == "object_id":
        assert isinstance(response.json()["id"], dict)
    elif kind in ("lost_502", "lost_504") or kind.isdigit():  # Create Call faults, on Get Call here
        assert response.status_code == {"lost_502": 502, "lost_504": 504}.get(kind) or int(kind)
    else:
        assert kind in ("slow", "lost_slow")
        assert response.json()["status"] == "completed"


@pytest.mark.parametrize("kind", [k for k in FAULT_KINDS if k != "reset"])
def test_fault_kinds_on_get(simulator: Simulator, api: Api, kind: str) -> None:
    call_id = ended(simulator)
    simulator.add_fault(Fault(kind=kind, route="get", call_id=call_id, count=1, delay_s=0.01))  # type: ignore[arg-type]
    _check_fault(kind, api.get(f"/v1/calls/{call_id}"))
    assert api.call(call_id)["status"] == "completed"  # count=1: the next request is clean
    assert simulator.stats()["faults_fired"] == {kind: 1}


@pytest.mark.parametrize("kind", ["slow", "lost_slow"])
def test_a_held_answer_ends_when_the_client_hangs_up(simulator: Simulator, api_key: str, kind: str) -> None:
    """A ``slow`` answer is held ``delay_s`` or until the client hangs up, whichever is first: the request is
    logged as soon as the client has gone, so a test can hold answers far longer than any stall of a loaded
    machine (the client always times out first) without waiting for them. It is logged as ``HUNG_UP`` (499):
    no answer reached the client."""
    call_id = ended(simulator)
    simulator.add_fault(Fault(kind=kind, route="get", call_id=call_id, count=1, delay_s=3600))
    host, port = simulator.url.removeprefix("http://").split(":")
    request = f"GET /v1/calls/{call_id} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {api_key}\r\n\r\n"
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(request.encode())
    # hang-up guard only (the hold ends at once; 3600 s without the hang-up): the request is logged
    deadline = time.monotonic() + 30
    while not simulator.requests(call_id=call_id) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [(e.route, e.status_code) for e in simulator.requests(call_id=call_id)] == [("get", HUNG_UP)]
    assert simulator.stats()["faults_fired"] == {kind: 1}


def test_reset_fault_drops_the_connection_mid_body(simulator: Simulator, api: Api, api_key: str) -> None:
    call_id = ended(simulator)
    simulator.add_fault(Fault(kind="reset", route="get", count=2))
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        api.get(f"/v1/calls/{call_id}")
    headers = {"Authorization": f"Bearer {api_key}"}
    with httpx.Client(base_url=simulator.url, headers=headers) as client, pytest.raises(httpx.RemoteProtocolError):
        client.get(f"/v1/calls/{call_id}")
    assert api.call(call_id)["id"] == call_id
    assert simulator.stats()["by_status"] == {0: 2, 200: 1}


async def test_reset_fault_seen_by_async_httpx(simulator: Simulator, api_key: str) -> None:
    call_id = ended(simulator)
    simulator.add_fault(Fault(kind="reset", route="any", count=1))
    headers = {"Authorization": f"Bearer {api_key}"}
    async with httpx.AsyncClient(base_url=simulator.url, headers=headers) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(f"/v1/calls/{call_id}")
        assert (await client.get(f"/v1/calls/{call_id}")).status_code == 200


def test_retry_after_header_is_verbatim(simulator: Simulator, api: Api) -> None:
    call_id = ended(simulator)
    date = email.utils.formatdate(usegmt=True)
    simulator.add_fault(Fault(kind="429", route="get", count=1, retry_after="2"))
    simulator.add_fault(Fault(kind="503", route="get", count=1, retry_after=date))
    limited = api.get(f"/v1/calls/{call_id}")
    assert limited.headers["Retry-After"] == "2"
    assert limited.headers["X-RateLimit-Remaining"] == "0"
    assert limited.json()["error"] == "Too Many Requests"
    assert api.get(f"/v1/calls/{call_id}").headers["Retry-After"] == date
    clean = api.get(f"/v1/calls/{call_id}")
    assert "Retry-After" not in clean.headers
    assert all(name in clean.headers for name in ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"))


def test_fault_scoping_by_route_and_call(simulator: Simulator, api: Api) -> None:
    target, other = ended(simulator), ended(simulator)
    simulator.add_fault(Fault(kind="500", route="get", call_id=target))
    simulator.add_fault(Fault(kind="503", route="list", count=1))
    assert api.get(f"/v1/calls/{other}").status_code == 200
    assert [api.get(f"/v1/calls/{target}").status_code for _ in range(3)] == [500, 500, 500]  # no count: persistent
    assert api.get("/v1/calls").status_code == 503
    assert api.get("/v1/calls").status_code == 200
    simulator.clear_faults()
    assert api.get(f"/v1/calls/{target}").status_code == 200


def test_fault_rates(simulator: Simulator, api: Api) -> None:
    call_id = ended(simulator)
    simulator.add_fault(Fault(kind="500", rate=0.0))
    simulator.add_fault(Fault(kind="504", route="any", rate=1.0))
    assert {api.get(f"/v1/calls/{call_id}").status_code for _ in range(5)} == {504}


def test_faults_on_list_and_create(simulator: Simulator, api: Api) -> None:
    ended(simulator)
    simulator.add_fault(Fault(kind="no_status", route="list", count=1))
    simulator.add_fault(Fault(kind="not_object", route="list", count=1))
    simulator.add_fault(Fault(kind="502_html", route="create", count=1))
    assert all("status" not in r for r in api.get("/v1/calls").json())
    assert isinstance(api.get("/v1/calls").json(), str)
    body = {"phone_number": "+14155550100", "agent_id": "agent_x", "metadata": {}}
    assert api.post("/v1/calls", json=body).status_code == 502
    assert simulator.stats()["calls"] == 1  # the faulted create had no side effect


def test_invalid_fault_is_rejected() -> None:
    with pytest.raises(ValueError, match="kind"):
        Fault(kind="418")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="count or rate"):
        Fault(kind="500", count=1, rate=0.5)


# ----------------------------------------------------------------------------- counters, reset, control API


def test_counters_log_and_connections(simulator: Simulator, api: Api, api_key: str) -> None:
    call_id = ended(simulator)
    for _ in range(3):
        api.call(call_id)
    api.get("/v1/calls", params={"call_id": call_id})
    for _ in range(2):
        Api(simulator.url, api_key).get("/v1/calls/call_missing")
    stats = simulator.stats()
    assert stats["requests"] == 6
    assert stats["by_route"] == {"get": 5, "list": 1}
    assert stats["by_status"] == {200: 4, 404: 2}
    assert stats["connections"] == 3  # one keep-alive session + two one-off clients
    assert stats["calls"] == 1
    assert stats["control"] == 0
    assert simulator.get_count(call_id) == 3
    assert stats["get_by_call"][call_id] == 3
    log = simulator.requests(call_id=call_id)
    assert [(e.method, e.route, e.call_ids, e.status_code) for e in log] == [("GET", "get", (call_id,), 200)] * 3 + [
        ("GET", "list", (call_id,), 200)
    ]
    assert len(simulator.requests(route="get")) == 5
    simulator.configure(record_log=False)
    api.call(call_id)
    assert len(simulator.requests()) == 6
    assert simulator.stats()["requests"] == 7


def test_reset_forgets_everything(simulator: Simulator, api: Api) -> None:
    call_id = ended(simulator)
    simulator.add_fault(Fault(kind="500"))
    simulator.configure(list_style="envelope", api_key="rotated:key")
    assert api.get(f"/v1/calls/{call_id}").status_code == 401  # key rotated
    simulator.reset()
    assert simulator.configure()["list_style"] == "array"
    assert api.get("/v1/calls").json() == []
    assert api.get(f"/v1/calls/{call_id}").status_code == 404
    assert [e.route for e in simulator.requests()] == ["list", "get"]
    with pytest.raises(SimulatorError, match="unknown call"):
        simulator.plan(call_id)


def test_seed_makes_calls_reproducible(simulator: Simulator) -> None:
    first = simulator.create_calls(50)
    simulator.reset(seed=99)
    again = simulator.create_calls(50)
    simulator.reset(seed=99)
    assert simulator.create_calls(50) == again != first
    a, b = SimState(seed=5), SimState(seed=5)
    ids = a.create_calls(200)
    assert ids == b.create_calls(200)
    plans = [a.plan(i) for i in ids]
    assert [(p.outcome, p.talk_s) for p in plans] == [(p.outcome, p.talk_s) for p in map(b.plan, ids)]
    assert {p.outcome for p in plans} >= {"completed", "no_answer", "busy", "failed"}


def test_control_api_over_http(simulator: Simulator) -> None:
    with httpx.Client(base_url=simulator.url) as control:
        created = control.post("/_sim/calls", json={"outcome": "busy", "queued_s": 0, "ring_s": 0, "talk_s": 5})
        assert created.status_code == 201
        call_id = created.json()["id"]
        assert created.json()["record"]["status"] == "initiated"
        plan = control.get(f"/_sim/calls/{call_id}/plan").json()
        assert plan["terminal_at"] == pytest.approx(plan["created_at"] + 5)
        assert control.post(f"/_sim/calls/{call_id}/status", json={"status": "failed"}).status_code == 200
        assert control.get(f"/_sim/calls/{call_id}").json()["status"] == "failed"
        assert control.post("/_sim/faults", json={"kind": "bogus"}).status_code == 400
        assert control.post("/_sim/calls", json={"outcome": "exploded"}).status_code == 400
        assert control.get("/_sim/calls/call_nope/plan").status_code == 404
        assert control.post("/_sim/config", json={"latency_s": 0.0}).json()["latency_s"] == 0.0
        assert control.get("/_sim/stats").json()["control"] == 9
    assert simulator.stats()["requests"] == 0


def test_stop_releases_the_port() -> None:
    sim = Simulator(seed=1).start()
    host, port = sim.url.removeprefix("http://").split(":")
    sim.stop()
    with pytest.raises(OSError, match=r"\w"), socket.create_connection((host, int(port)), timeout=2):
        pass


# ----------------------------------------------------------------------------- CLI and child process


def _wait_for_url(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line.startswith("DIALNEXA_SIMULATOR_URL=http://127.0.0.1:"), line
    return line.split("=", 1)[1]


def test_cli_prints_its_url_and_serves() -> None:
    command = [sys.executable, "-m", "airflow_provider_dialnexa.simulator", "--port", "0"]
    proc = subprocess.Popen(
        [*command, "--api-key", "cli:key", "--calls", "7", "--rng-seed", "3"], stdout=subprocess.PIPE, text=True
    )
    try:
        url = _wait_for_url(proc)
        response = _retry_until_served(
            lambda: httpx.get(f"{url}/v1/calls", headers={"Authorization": "Bearer cli:key"})
        )
        assert response.status_code == 200
        assert len(response.json()) == 7
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        assert proc.stdout is not None
        proc.stdout.close()


def _retry_until_served(request: Callable[[], httpx.Response]) -> httpx.Response:
    """The URL is printed once the socket listens, so the first attempt normally succeeds."""
    for _ in range(100):
        try:
            return request()
        except httpx.TransportError:
            continue
    return request()


def test_simulator_process_round_trip(api_key: str) -> None:
    with SimulatorProcess(api_key=api_key, seed=11) as sim:
        assert sim.pid is not None
        api = Api(sim.url, api_key)
        call_id = sim.create_call(outcome="completed", queued_s=0, ring_s=0, talk_s=0, spelling="snake")
        plan = sim.plan(call_id)
        assert plan.spelling == "snake"
        assert plan.terminal_at == pytest.approx(plan.created_at)
        sim.script(call_id, ["initiated", "completed"])
        sim.add_fault(Fault(kind="503", route="get", count=1, retry_after="1"))
        assert api.get(f"/v1/calls/{call_id}").status_code == 503
        assert [api.call(call_id)["status"] for _ in range(2)] == ["initiated", "completed"]
        assert len(sim.create_calls(20, talk_s=(55, 65))) == 20
        sim.set_status(call_id, "busy")
        assert sim.record(call_id)["status"] == "busy"
        sim.configure(list_style="envelope")
        assert api.get("/v1/calls").json()["meta"]["total"] == 21
        stats = sim.stats()
        assert stats["by_status"] == {503: 1, 200: 3}
        assert stats["calls"] == 21
        assert sim.get_count(call_id) == 3
        assert [e.status_code for e in sim.requests(call_id=call_id)] == [503, 200, 200]
        with pytest.raises(SimulatorError):
            sim.plan("call_unknown")
        sim.reset()
        assert sim.stats()["calls"] == 0
        api.session.close()
    with pytest.raises(RuntimeError):
        _ = sim.url
