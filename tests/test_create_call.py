"""Placing calls exactly once (issue #13): DialNexaHook.create_call and DialNexaCreateCallOperator.

Everything runs against the embedded simulator over real sockets. Each test counts what DialNexa would
have billed: the calls the simulator holds per correlation value (``calls_by_metadata``) and the POSTs
in its request log. Timeouts are driven by faults that hold the answer longer than the client waits
(the call is created first), so no test depends on how fast this machine is.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from _compat import capture_logs, dag_bag, return_values

from airflow_provider_dialnexa._placement import CORRELATION_KEY
from airflow_provider_dialnexa._validation import validate_phone_number
from airflow_provider_dialnexa.exceptions import (
    DialNexaBadRequestError,
    DialNexaNotFoundError,
    DialNexaPermissionError,
    DialNexaRateLimitError,
    DialNexaServerError,
    DialNexaUnconfirmedCallError,
    InvalidPhoneNumberError,
)
from airflow_provider_dialnexa.hooks.dialnexa import DialNexaHook
from airflow_provider_dialnexa.operators.dialnexa import DialNexaCreateCallOperator, correlation_id_for
from airflow_provider_dialnexa.policy import RetryPolicy
from airflow_provider_dialnexa.simulator import Fault, Simulator

MASKED = "+14*****0123"
FAST = RetryPolicy(backoff_base=0.01, backoff_max=0.05, min_wait=0)
PHONE = "+14155550123"
AGENT = "agent_2g7Xy3tY53gRlp"
#: Faults after which the call exists but the client never saw the answer (or saw a broken one).
LOST = ("reset", "lost_502", "lost_504", "html_200", "truncated_json", "not_object", "no_id")
#: Faults answered before the call was created (the POST was refused by a proxy or an overloaded API).
REFUSED = ("500", "502_html", "503", "504")


def _set_conn(monkeypatch: pytest.MonkeyPatch, url: str, api_key: str, **extra: Any) -> None:
    conn = {"conn_type": "dialnexa", "host": url, "password": api_key, "extra": {"rate_limit_per_minute": 0, **extra}}
    monkeypatch.setenv("AIRFLOW_CONN_DIALNEXA_DEFAULT", json.dumps(conn))


@pytest.fixture
def sim(dialnexa_conn: Simulator, api_key: str, monkeypatch: pytest.MonkeyPatch) -> Simulator:
    """The simulator behind ``dialnexa_default``: 3 retries, 5 s read timeout, no rate budget."""
    _set_conn(monkeypatch, dialnexa_conn.url, api_key, timeout=5, max_retries=3)
    return dialnexa_conn


@pytest.fixture
def hook(sim: Simulator) -> Iterator[DialNexaHook]:
    result = DialNexaHook(retry_policy=FAST)
    yield result
    result.close()


def posts(sim: Simulator) -> int:
    return len(sim.requests(route="create"))


def lists(sim: Simulator) -> int:
    return len(sim.requests(route="list"))


def create(hook: DialNexaHook, correlation: str = "corr-1", **kwargs: Any) -> dict[str, Any]:
    """Place with a correlation value standing for the operator's per-task-instance one: searches reach back to
    a day before now, and none runs before the first POST unless ``adopt_existing=True`` (a value the caller
    chose is searched first, in the agent's whole history: tests/test_defects_paging.py)."""
    kwargs.setdefault("adopt_existing", False)
    kwargs.setdefault("placed_after", datetime.now(UTC))
    return hook.create_call(PHONE, AGENT, {"lead_id": "L-1"}, correlation_id=correlation, **kwargs)


@dataclass
class Logs:
    caplog: pytest.LogCaptureFixture
    events: list[MutableMapping[str, Any]]

    def text(self) -> str:
        return self.caplog.text + "\n" + "\n".join(repr(event) for event in self.events)


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[Logs]:
    caplog.set_level(logging.DEBUG)
    with capture_logs() as events:
        yield Logs(caplog, events)


# -- the plain path ------------------------------------------------------------------------------------


def test_create_call_places_one_call_with_the_correlation_value_in_metadata(sim: Simulator, hook: DialNexaHook) -> None:
    created = hook.create_call(PHONE, AGENT, {"lead_id": "L-1"}, agent_version_number=2, correlation_id="corr-1")

    assert created["to_phone_number"] == PHONE
    record = sim.record(created["id"])
    assert record["metadata"] == {"lead_id": "L-1", CORRELATION_KEY: "corr-1"}
    assert record["agent_id"] == AGENT
    assert record["agent_version_number"] == 2
    assert sim.calls_by_metadata() == {"corr-1": 1}
    # A value the caller chose is looked up first (one empty page proves no call carries it); nothing else.
    assert (posts(sim), lists(sim)) == (1, 1)


def test_metadata_key_wins_over_the_argument_and_a_random_value_is_used_without_either(
    sim: Simulator, hook: DialNexaHook
) -> None:
    hook.create_call(PHONE, AGENT, {CORRELATION_KEY: "mine"}, correlation_id="ignored")
    hook.create_call(PHONE, AGENT)
    counts = sim.calls_by_metadata()
    assert counts.pop("mine") == 1
    [(generated, count)] = counts.items()
    assert count == 1
    assert generated.startswith("hook-")


# -- ambiguous failures: exactly one call per correlation value ---------------------------------------


@pytest.mark.parametrize("times", [1, 2])
@pytest.mark.parametrize("kind", LOST)
def test_a_lost_answer_is_reconciled_not_resent(sim: Simulator, hook: DialNexaHook, kind: str, times: int) -> None:
    # The first POST creates the call and its answer is lost; with times=2 the lookup's first request
    # fails too (a 502 on List Calls) and is retried as a read.
    sim.add_fault(Fault(kind=kind, route="create", count=1))  # type: ignore[arg-type]
    if times == 2:
        sim.add_fault(Fault(kind="502_html", route="list", count=1))

    created = create(hook)

    assert sim.calls_by_metadata() == {"corr-1": 1}
    assert posts(sim) == 1  # found by the lookup: never sent again
    [only] = _list_all(sim)
    assert created["id"] == only["id"]


def _list_all(sim: Simulator) -> list[dict[str, Any]]:
    hook = DialNexaHook(retry_policy=FAST)
    try:
        data = hook._get(hook.settings.calls_url, params={"limit": "200"}, subject="test", call_id=None)
    finally:
        hook.close()
    return list(data)


@pytest.mark.parametrize("kind", REFUSED)
def test_a_refused_post_is_sent_again_only_after_the_lookup_proves_no_call(
    sim: Simulator, hook: DialNexaHook, kind: str
) -> None:
    sim.add_fault(Fault(kind=kind, route="create", count=2))  # type: ignore[arg-type]

    created = create(hook)

    assert sim.calls_by_metadata() == {"corr-1": 1}
    assert posts(sim) == 3
    # Before each re-send, one search proves there is no call (the agent's calls since start_date).
    log = [e.route for e in sim.requests() if e.route in ("create", "list")]
    assert log == ["create", "list", "create", "list", "create"]
    assert created["id"] == _list_all(sim)[0]["id"]


def test_timeout_after_the_call_was_created_is_reconciled(
    sim: Simulator, api_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The answer is held 3 s after the call is created; the client gives up after 1 s.
    _set_conn(monkeypatch, sim.url, api_key, timeout=1, max_retries=3)
    sim.add_fault(Fault(kind="lost_slow", route="create", count=1, delay_s=3))
    hook = DialNexaHook(retry_policy=FAST)
    try:
        created = create(hook)
    finally:
        hook.close()
    # One call: the held POST is the only one (it is logged once its answer goes out, after the test).
    assert sim.calls_by_metadata() == {"corr-1": 1}
    assert sim.record(created["id"])["metadata"][CORRELATION_KEY] == "corr-1"


def test_faults_at_every_step_still_end_with_one_call(sim: Simulator, hook: DialNexaHook) -> None:
    # Refused, then lost after creation, with List Calls failing once in between.
    sim.add_fault(Fault(kind="503", route="create", count=1))
    sim.add_fault(Fault(kind="500", route="list", count=1))
    sim.add_fault(Fault(kind="reset", route="create", count=1))
    sim.add_fault(Fault(kind="reset", route="list", count=1))

    create(hook)

    assert sim.calls_by_metadata() == {"corr-1": 1}
    assert posts(sim) == 2


def test_the_search_pages_through_the_mintlify_envelope(sim: Simulator, hook: DialNexaHook) -> None:
    # {data, meta} envelope capped at 100 per page; 150 other calls of the agent are newer than ours.
    sim.configure(list_style="envelope")
    sim.add_fault(Fault(kind="lost_504", route="create", count=1))
    ours = create(hook)  # found on page 1 (newest first)
    sim.create_calls(150, agent_id=AGENT)
    sim.create_calls(20, agent_id="agent_someone_else")
    sim.add_fault(Fault(kind="lost_504", route="create", count=1))
    sim.add_fault(Fault(kind="no_metadata", route="list"))  # and even without metadata in the list view

    again = create(hook, adopt_existing=True)

    assert again["id"] == ours["id"]
    assert sim.calls_by_metadata() == {"corr-1": 1}
    assert posts(sim) == 1


def test_a_deployment_refusing_start_date_is_searched_without_it(sim: Simulator, hook: DialNexaHook) -> None:
    sim.add_fault(Fault(kind="400", route="list", count=1))
    sim.add_fault(Fault(kind="reset", route="create", count=1))
    create(hook)
    assert sim.calls_by_metadata() == {"corr-1": 1}
    assert [e.status_code for e in sim.requests(route="list")] == [400, 200]


def test_a_list_view_without_metadata_is_checked_through_get_call(sim: Simulator, hook: DialNexaHook) -> None:
    other = sim.create_call(agent_id=AGENT, to_number="+14155550199", metadata={})  # another lead's call
    same_number = sim.create_call(agent_id=AGENT, to_number=PHONE, metadata={CORRELATION_KEY: "someone-else"})
    sim.add_fault(Fault(kind="lost_502", route="create", count=1))
    sim.add_fault(Fault(kind="no_metadata", route="list"))

    created = create(hook)

    assert sim.calls_by_metadata() == {"corr-1": 1, "someone-else": 1}
    assert created["id"] not in (other, same_number)
    gets = {e.call_ids[0] for e in sim.requests(route="get")}
    assert other not in gets  # a different number needs no Get Call
    assert created["id"] in gets


def test_when_no_lookup_can_tell_the_hook_refuses_to_send_again(sim: Simulator, hook: DialNexaHook) -> None:
    sim.add_fault(Fault(kind="lost_504", route="create", count=1))
    sim.configure(list_route="forbidden")

    with pytest.raises(DialNexaUnconfirmedCallError, match="may have reached DialNexa") as info:
        create(hook)

    assert isinstance(info.value, DialNexaServerError)  # retryable: the task retry looks again first
    assert "corr-1" in str(info.value)
    assert PHONE not in str(info.value)
    assert posts(sim) == 1
    assert sim.calls_by_metadata() == {"corr-1": 1}


def test_retries_exhausted_with_every_post_refused_raises_the_server_error(sim: Simulator, hook: DialNexaHook) -> None:
    sim.add_fault(Fault(kind="502_html", route="create"))
    with pytest.raises(DialNexaServerError, match="502") as info:
        create(hook)
    assert not isinstance(info.value, DialNexaUnconfirmedCallError)  # the lookups proved nothing was placed
    assert posts(sim) == 4  # max_retries=3
    assert sim.calls_by_metadata() == {}


# -- 429 and final refusals ------------------------------------------------------------------------------


def test_429_before_acceptance_is_sent_again_after_retry_after_without_a_lookup(
    sim: Simulator, hook: DialNexaHook
) -> None:
    sim.add_fault(Fault(kind="429", route="create", count=1, retry_after="1"))

    create(hook)

    first, second = sim.requests(route="create")
    assert (first.status_code, second.status_code) == (429, 201)
    assert second.t - first.t >= 1.0  # Retry-After honoured (measured by the server's clock)
    assert lists(sim) == 0
    assert sim.calls_by_metadata() == {"corr-1": 1}


def test_429_on_every_try_raises_the_rate_limit_error(sim: Simulator, hook: DialNexaHook) -> None:
    sim.add_fault(Fault(kind="429", route="create", retry_after="0"))
    with pytest.raises(DialNexaRateLimitError):
        create(hook)
    assert posts(sim) == 4
    assert sim.calls_by_metadata() == {}


@pytest.mark.parametrize(
    ("kind", "error", "message", "hint"),
    [
        ("400", DialNexaBadRequestError, "must be a valid E.164", "Check phone_number"),
        ("402", DialNexaBadRequestError, "Insufficient billing wallet balance", "Top up the DialNexa billing wallet"),
        ("403", DialNexaPermissionError, "Destination country or network prefix", "not enabled"),
        ("404", DialNexaNotFoundError, "Agent or phone number not found", "Check agent_id"),
        ("409", DialNexaBadRequestError, "Conflict", "conflicts"),
        ("422", DialNexaBadRequestError, "Unprocessable", "could not process"),
    ],
)
def test_documented_refusals_fail_at_once_with_dialnexas_message(
    sim: Simulator, hook: DialNexaHook, kind: str, error: type[Exception], message: str, hint: str
) -> None:
    sim.add_fault(Fault(kind=kind, route="create", count=1))  # type: ignore[arg-type]
    with pytest.raises(error, match=message) as info:
        create(hook)
    assert hint in str(info.value)
    assert "call id format" not in str(info.value)
    assert (posts(sim), lists(sim)) == (1, 0)
    assert sim.calls_by_metadata() == {}


@pytest.mark.parametrize(
    "number", ["14155550123", "+0415555012", "+1415555", "+1 415 555 0123", "+1415555012345678", "", None, 14155550123]
)
def test_a_number_that_is_not_e164_is_refused_before_any_request(
    sim: Simulator, hook: DialNexaHook, number: Any
) -> None:
    with pytest.raises(InvalidPhoneNumberError, match=r"E\.164") as info:
        hook.create_call(number, AGENT)
    assert isinstance(info.value, ValueError)
    if isinstance(number, str) and len(number) > 7:
        assert number not in str(info.value)  # shown masked
    assert sim.stats()["requests"] == 0


def test_e164_accepts_8_to_15_digits() -> None:
    assert validate_phone_number(" +919876543210 ") == "+919876543210"
    assert validate_phone_number("+12345678") == "+12345678"
    assert validate_phone_number("+123456789012345") == "+123456789012345"


def test_phone_numbers_never_reach_the_logs(sim: Simulator, hook: DialNexaHook, logs: Logs) -> None:
    sim.add_fault(Fault(kind="503", route="create", count=1))
    sim.add_fault(Fault(kind="reset", route="create", count=1))
    create(hook)
    text = logs.text()
    assert MASKED in text
    assert "corr-1" in text
    assert PHONE not in text
    assert "5550123" not in text
    assert "s3cr3t" not in text


# -- task retries: adopt the call an earlier try placed --------------------------------------------------


def test_a_retried_task_adopts_the_call_its_crashed_try_placed(sim: Simulator) -> None:
    first = DialNexaHook(retry_policy=FAST)
    placed = create(first)  # ... and the worker dies before the task could record it
    first.close()

    retry = DialNexaHook(retry_policy=FAST)
    adopted = create(retry, adopt_existing=True)
    retry.close()

    assert adopted["id"] == placed["id"]
    assert posts(sim) == 1
    assert sim.calls_by_metadata() == {"corr-1": 1}


def test_adopt_existing_places_the_call_when_there_is_none(sim: Simulator, hook: DialNexaHook) -> None:
    create(hook, correlation="corr-other")
    created = create(hook, adopt_existing=True)
    assert sim.calls_by_metadata() == {"corr-other": 1, "corr-1": 1}
    assert sim.record(created["id"])["metadata"][CORRELATION_KEY] == "corr-1"


def _context(try_number: int = 1, map_index: int = -1, run_id: str = "manual__1") -> Any:
    ti = SimpleNamespace(
        dag_id="leads", run_id=run_id, task_id="place_call", map_index=map_index, try_number=try_number
    )
    return {"ti": ti}


def test_operator_retry_after_a_worker_crash_adopts_the_call(sim: Simulator) -> None:
    op = DialNexaCreateCallOperator(task_id="place_call", phone_number=PHONE, agent_id=AGENT, metadata={"lead": 7})
    first = op.execute(_context(try_number=1))  # POST returned; pretend the worker died right after
    sim.add_fault(Fault(kind="reset", route="create"))  # a second POST would even be ambiguous: it must not happen

    retried = DialNexaCreateCallOperator(
        task_id="place_call", phone_number=PHONE, agent_id=AGENT, metadata={"lead": 7}
    ).execute(_context(try_number=2))

    assert retried["call_id"] == first["call_id"]
    assert posts(sim) == 1
    correlation = correlation_id_for("leads", "manual__1", "place_call", -1)
    assert sim.calls_by_metadata() == {correlation: 1}
    assert sim.record(first["call_id"])["metadata"] == {"lead": 7, CORRELATION_KEY: correlation}
    assert first == {"call_id": first["call_id"], "status": "initiated"}
    assert retried["status"] is not None  # the adopted call's current status, from List Calls


def test_correlation_values_differ_per_map_index_and_run_and_not_per_try() -> None:
    base = correlation_id_for("d", "r", "t", 0)
    assert base == correlation_id_for("d", "r", "t", 0)
    assert len({base, correlation_id_for("d", "r", "t", 1), correlation_id_for("d", "r2", "t", 0)}) == 3
    assert len(base) <= 64


def test_literal_bad_number_fails_at_parse_time_and_templates_wait() -> None:
    with pytest.raises(InvalidPhoneNumberError):
        DialNexaCreateCallOperator(task_id="t", phone_number="4155550123", agent_id=AGENT)
    DialNexaCreateCallOperator(task_id="t", phone_number="{{ params.phone }}", agent_id=AGENT)


def test_operator_waits_and_returns_the_masked_record(sim: Simulator) -> None:
    from airflow.providers.common.compat.sdk import TaskDeferred

    op = DialNexaCreateCallOperator(
        task_id="place_call", phone_number=PHONE, agent_id=AGENT, wait_for_completion=True, poll_interval=1
    )
    with pytest.raises(TaskDeferred) as info:
        op.execute(_context())
    assert info.value.kwargs is not None
    call_id = info.value.kwargs["call_id"]
    assert info.value.trigger.call_id == call_id
    sim.set_status(call_id, "busy")

    resumed = DialNexaCreateCallOperator(
        task_id="place_call", phone_number=PHONE, agent_id=AGENT, wait_for_completion=True, poll_interval=1
    )
    record = resumed.execute_complete(
        _context(), {"event": "success", "call_id": call_id, "status": "busy"}, call_id=call_id
    )
    assert record["id"] == call_id
    assert record["status"] == "busy"
    assert record["to_number"] == MASKED


# -- the example DAG in a real dag.test() ---------------------------------------------------------------


def run_dag(dags: Path, dag_id: str, conf: dict[str, Any]) -> tuple[str, str, dict[str, dict[int, Any]]]:
    """``dag.test()`` the DAG; return the run's state, its id and its ``return_value`` XComs by task and map index."""
    bag = dag_bag(str(dags))
    assert bag.import_errors == {}
    run = bag.dags[dag_id].test(run_conf=conf)
    xcoms = return_values(run.run_id, dag_id)
    return str(run.state), run.run_id, xcoms


def test_example_dag_places_each_call_once_and_loads_the_outcomes(
    sim: Simulator, airflow_db: Path, tmp_path: Path
) -> None:
    import sqlite3

    sim.configure(queued_s=(0, 0), ring_s=(0, 0), talk_s=(0, 0), mix={"completed": 1, "busy": 1})
    sim.add_fault(Fault(kind="reset", route="create", count=1))  # one answer lost: reconciled, not re-sent
    sim.add_fault(Fault(kind="503", route="create", count=1))  # one refused: re-sent after the lookup
    leads = [
        {"lead_id": "L-1", "phone_number": "+14155550101"},
        {"lead_id": "L-2", "phone_number": "+14155550102"},
        {"lead_id": "L-1", "phone_number": "+14155550101"},  # a duplicate lead is called once
        {"lead_id": "L-3", "phone_number": "+14155550103"},
    ]
    table = tmp_path / "placed.db"

    state, run_id, xcoms = run_dag(airflow_db, "dialnexa_place_and_load", {"leads": leads, "sqlite_path": str(table)})

    assert state == "success"
    assert xcoms["load"] == {-1: 3}
    counts = sim.calls_by_metadata()
    assert sorted(counts.values()) == [1, 1, 1]  # exactly one call per mapped task instance
    assert set(counts) == {correlation_id_for("dialnexa_place_and_load", run_id, "place_call", i) for i in range(3)}
    assert posts(sim) == 4  # the refused one was sent again, the lost one was not
    assert _tries(run_id, "place_call") == [1, 1, 1]  # each task deferred and resumed in its first try
    placed = xcoms["place_call"]
    assert set(placed) == {0, 1, 2}
    for record in placed.values():
        assert "transcript" not in record
        assert record["to_number"].count("*") >= 3
    with sqlite3.connect(table) as db:
        rows = db.execute("SELECT lead_id, status FROM placed_calls ORDER BY lead_id").fetchall()
    assert [lead for lead, _ in rows] == ["L-1", "L-2", "L-3"]
    assert {status for _, status in rows} <= {"completed", "busy"}


def _tries(run_id: str, task_id: str) -> list[int]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        query = select(TaskInstance.try_number).where(TaskInstance.run_id == run_id, TaskInstance.task_id == task_id)
        return sorted(session.scalars(query))


def test_load_scenario_places_every_call_exactly_once(
    sim: Simulator, api_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``benchmarks/create.py`` at small scale: ~10 % ambiguous faults, 5 % crashed tries, 0 duplicates."""
    from benchmarks.create import READ_TIMEOUT, run_scenario

    _set_conn(monkeypatch, sim.url, api_key, timeout=READ_TIMEOUT, max_retries=5)
    result = run_scenario(sim, n=100, seed=3, workers=8, fault_rate=0.10, crash_rate=0.05)

    assert result["duplicates"] == 0
    assert result["calls_in_simulator"] == result["correlation_values"] == 100
    assert result["tasks_without_a_result"] == 0
    assert result["ambiguous_faults"] > 0
    assert result["tasks"]["retries that adopted the earlier call"] == 5


def test_a_rendered_agent_version_string_is_sent_as_a_number(sim: Simulator) -> None:
    op = DialNexaCreateCallOperator(
        task_id="place_call", phone_number=PHONE, agent_id=AGENT, agent_version_number="{{ params.version }}"
    )
    op.agent_version_number = "3"  # what the template renders to
    result = op.execute(_context())
    assert sim.record(result["call_id"])["agent_version_number"] == 3


def test_a_number_dialnexa_echoes_in_its_message_is_masked() -> None:
    from airflow_provider_dialnexa.exceptions import error_for_status
    from airflow_provider_dialnexa.hooks.dialnexa import _hide_number

    body = json.dumps({"statusCode": 400, "message": f"{PHONE} is not reachable", "error": "Bad Request"}).encode()
    error = _hide_number(error_for_status(400, body, subject="Create Call", call_id=None, conn_id="c"), PHONE)
    assert PHONE not in str(error)
    assert MASKED in str(error)
    assert error.api_message == f"{MASKED} is not reachable"


def test_a_task_failing_after_its_post_is_retried_by_airflow_and_adopts_the_call(
    sim: Simulator, airflow_db: Path
) -> None:
    # Try 1 places the call and defers; the trigger's first poll is refused (403 ends a wait at once), so
    # the try fails after its POST returned. Airflow retries at once; try 2 must find and adopt the call.
    sim.configure(queued_s=(0, 0), ring_s=(0, 0), talk_s=(0, 0), mix={"no_answer": 1})
    sim.add_fault(Fault(kind="403", route="get", count=1))

    state, run_id, xcoms = run_dag(airflow_db, "dialnexa_create_retry", {})

    assert state == "success"
    assert _tries(run_id, "place_call") == [2]
    assert posts(sim) == 1
    assert sim.calls_by_metadata() == {correlation_id_for("dialnexa_create_retry", run_id, "place_call", -1): 1}
    record = xcoms["place_call"][-1]
    assert record["status"] == "no_answer"
    assert record["metadata"]["lead_id"] == "L-9"
