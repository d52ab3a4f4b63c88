"""Signed deliveries through a real api-server (Airflow 3) or webserver (2.11), with the scheduler, start the
asset-scheduled test DAG (``tests/dags/dialnexa_webhook_calls.py``), which loads exactly the calls delivered.

One stack, one test (SQLite metadata DB; one test so pytest-xdist never starts a second stack), many checks:

* forged, unsigned, replayed-with-another-body, oversized (declared and chunked) and wrong-connection
  requests get 401/413 and record nothing;
* a burst of authentic deliveries, each sent twice at once, with a dotted re-spelling and a late
  ``call_initiated``, records one event per call, and every call reaches a DAG run with no later delivery
  (the sweeper queues the tail Airflow leaves behind); the DAG loads each call exactly once;
* the web server restarts between a delivery and its retry: the retry is a duplicate, a new call still
  flows.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from airflow_provider_dialnexa.webhooks import calls_asset_uri
from airflow_provider_dialnexa.webhooks.receiver import MAX_BODY_BYTES, UNAUTHORIZED
from airflow_provider_dialnexa.webhooks.signature import sign
from benchmarks.webhook_stack import AIRFLOW_3, AirflowStack, call_ended, connection_env, post

pytestmark = [pytest.mark.fullstack, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[1]
CONN_ID = "dialnexa_webhooks_test"
OTHER_CONN_ID = "dialnexa_webhooks_other"
NO_SECRET_CONN_ID = "dialnexa_webhooks_nosecret"
SECRET = "whsec_fullstack_0123456789"
OTHER_SECRET = "whsec_other_9876543210"
DAG_ID = "dialnexa_webhook_calls"
BURST = {
    "call_fs_1": "completed",
    "call_fs_2": "busy",
    "call_fs_3": "no_answer",
    "call_fs_4": "failed",
    "call_fs_5": "hangup",
    "call_fs_6": "completed",
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowStack]:
    home = tmp_path_factory.mktemp("webhook_fullstack")
    env = dict(
        [
            connection_env(CONN_ID, SECRET),
            connection_env(OTHER_CONN_ID, OTHER_SECRET),
            connection_env(NO_SECRET_CONN_ID, None),
        ]
    )
    env["DIALNEXA_WEBHOOK_TEST_DB"] = str(home / "loaded.db")
    stack = AirflowStack(home=home, dags=[ROOT / "tests" / "dags" / "dialnexa_webhook_calls.py"], extra_env=env)
    try:
        stack.start_all()
        stack.wait_ready(CONN_ID, SECRET)
        ref_table = "dag_schedule_asset_reference" if AIRFLOW_3 else "dag_schedule_dataset_reference"
        stack.wait_for(
            "the DAG to be scheduled on the calls asset",
            lambda: stack.query(f"SELECT 1 FROM {ref_table} WHERE dag_id = :d", d=DAG_ID) or None,  # noqa: S608
        )
        yield stack
    finally:
        stack.stop()


def loaded(stack: AirflowStack) -> list[tuple[str, str, str]]:
    """(call id, status, run id) rows the test DAG wrote."""
    path = Path(stack.env["DIALNEXA_WEBHOOK_TEST_DB"])
    if not path.exists():
        return []
    with sqlite3.connect(path, timeout=60) as db:
        try:
            return sorted(db.execute("SELECT call_id, status, run_id FROM loaded").fetchall())
        except sqlite3.OperationalError:  # table not created yet
            return []


def route(stack: AirflowStack, conn_id: str = CONN_ID) -> str:
    return f"{stack.url}/dialnexa/webhooks/{conn_id}"


def wait_loaded(stack: AirflowStack, call_ids: set[str]) -> list[tuple[str, str, str]]:
    def probe() -> list[tuple[str, str, str]] | None:
        failed = stack.query("SELECT run_id FROM dag_run WHERE dag_id = :d AND state = 'failed'", d=DAG_ID)
        if failed:
            logs = [path.read_text()[-3000:] for path in (stack.home / "logs").glob(f"dag_id={DAG_ID}/**/*.log")]
            raise AssertionError(f"DAG runs failed: {failed}\n" + "\n".join(logs))
        rows = loaded(stack)
        return rows if call_ids <= {row[0] for row in rows} else None

    return stack.wait_for(f"the DAG to load {sorted(call_ids)}", probe, timeout=600, every=1.0)


def test_signed_deliveries_start_the_dag_which_loads_exactly_the_calls_delivered(stack: AirflowStack) -> None:
    uri = calls_asset_uri(CONN_ID)
    with httpx.Client(timeout=60) as client:
        # -- what must record nothing ------------------------------------------------------------------
        authentic = call_ended("call_fs_1", "completed")
        forged_body = call_ended("call_forged_3", "completed")
        padded = authentic[:-1] + b' , "padding": "' + b"x" * MAX_BODY_BYTES + b'"}'
        rejected = {
            "unsigned": post(client, route(stack), call_ended("call_forged_1"), None),
            "forged": post(client, route(stack), call_ended("call_forged_2"), "guessed-secret"),
            "replayed with another body": client.post(
                route(stack), content=forged_body, headers={"x-nexa-signature": sign(authentic, SECRET)}
            ),
            "signed for another connection": post(client, route(stack), call_ended("call_forged_4"), OTHER_SECRET),
            "sent to another connection": post(
                client, route(stack, OTHER_CONN_ID), call_ended("call_forged_5"), SECRET
            ),
            "unknown connection": post(client, route(stack, "dialnexa_nope"), call_ended("call_forged_6"), SECRET),
            "connection without a secret": post(
                client, route(stack, NO_SECRET_CONN_ID), call_ended("call_forged_7"), SECRET
            ),
        }
        assert {name: r.status_code for name, r in rejected.items()} == dict.fromkeys(rejected, 401)
        assert {r.content for r in rejected.values()} == {rejected["unsigned"].content}
        assert rejected["unsigned"].json() == UNAUTHORIZED
        oversized = post(client, route(stack), padded, SECRET)  # authentic, but over 1 MiB
        chunked = client.post(
            route(stack),
            content=iter([padded[i : i + 65536] for i in range(0, len(padded), 65536)]),  # no Content-Length
            headers={"x-nexa-signature": sign(padded, SECRET)},
        )
        assert (oversized.status_code, chunked.status_code) == (413, 413)

        # -- one burst, no later delivery ----------------------------------------------------------------
        bodies: list[tuple[bytes, str]] = []
        for index, (call_id, status) in enumerate(BURST.items()):
            header = "x-nexa-signature" if index % 2 else "x-dialnexa-signature"
            body = call_ended(call_id, status, duration=index, to_number="12137771234", transcript="hello")
            bodies += [(body, header), (body, header)]  # DialNexa's duplicate: the same body twice, at once
        bodies.append((call_ended("call_fs_1", "completed", event="call.completed"), "x-nexa-signature"))
        with ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(lambda item: post(client, route(stack), item[0], SECRET, item[1]), bodies))
        late = post(client, route(stack), call_ended("call_fs_2", "initiated", event="call_initiated"), SECRET)
    assert [r.status_code for r in replies] == [200] * len(bodies)
    outcomes = sorted(r.json()["status"] for r in replies)
    assert outcomes == ["duplicate"] * (len(bodies) - len(BURST)) + ["recorded"] * len(BURST)
    assert late.json() == {"status": "ignored", "event": "call_initiated"}

    rows = wait_loaded(stack, set(BURST))
    # Exactly the calls delivered, each loaded once (by whichever run), with its normalised status.
    assert sorted((call_id, status) for call_id, status, _ in rows) == sorted(BURST.items())
    events = stack.events(uri)
    assert sorted(event["call_id"] for event in events) == sorted(BURST)
    assert all(event["source"] == "dialnexa_webhook" and "to_number" not in event["call"] for event in events)
    assert all("transcript" not in json.dumps(event) for event in events)
    assert [(call_id, status) for call_id, status, _ in stack.receipts(CONN_ID)] == sorted(BURST.items())
    assert not [event for event in events if "forged" in event["call_id"]]  # no rejected request left a trace
    assert stack.receipts(OTHER_CONN_ID) == []

    # -- the web server restarts between a delivery and its retry --------------------------------------
    stack.stop("web")
    stack.start_web()
    stack.wait_ready(CONN_ID, SECRET)
    with httpx.Client(timeout=60) as client:
        retry = post(client, route(stack), call_ended("call_fs_3", BURST["call_fs_3"]), SECRET)
        new = post(client, route(stack), call_ended("call_fs_7", "completed"), SECRET)
    assert retry.json()["status"] == "duplicate"
    assert new.json()["status"] == "recorded"
    rows = wait_loaded(stack, {"call_fs_7"})
    assert sorted(call_id for call_id, _, _ in rows) == sorted([*BURST, "call_fs_7"])  # each call once
    assert sorted(event["call_id"] for event in stack.events(calls_asset_uri(CONN_ID))) == sorted([*BURST, "call_fs_7"])
