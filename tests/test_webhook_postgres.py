"""Exactly once across replicas, where production runs it: two api-servers (Airflow 3) or webservers (2.11)
sharing one PostgreSQL metadata DB receive the same deliveries at the same moment -> one event per call.

PostgreSQL is Debian's ``postgresql`` package (``make postgresql`` installs it when root and missing, as CI
on a fresh machine needs); the test starts a private cluster (initdb in a temporary directory, its own
port and socket) and skips, saying so, where no server binaries exist. SQLite stays the default elsewhere.
Like DialNexa, the client retries a 5xx or a failed connection up to 3 times.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from airflow_provider_dialnexa.webhooks import calls_asset_uri
from benchmarks.webhook_stack import (
    AIRFLOW_3,
    AirflowStack,
    PrivateCluster,
    call_ended,
    connection_env,
    free_port,
    post,
    postgres_bin,
)

pytestmark = [pytest.mark.fullstack, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[1]
CONN_ID = "dialnexa_webhooks_test"
SECRET = "whsec_postgres_0123456789"
CALLS = [f"call_pg_{index:03d}" for index in range(40)]
STATUSES = ("completed", "busy", "no_answer", "failed", "hangup")


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AirflowStack, list[str]]]:
    bin_dir = postgres_bin()
    if bin_dir is None:
        pytest.skip("no PostgreSQL server binaries: run `make postgresql` (installs Debian's postgresql as root)")
    cluster = PrivateCluster(bin_dir).start()
    home = tmp_path_factory.mktemp("webhook_postgres")
    stack = AirflowStack(
        home=home,
        dags=[ROOT / "tests" / "dags" / "dialnexa_webhook_calls.py"],
        db_url=cluster.url,
        extra_env=dict([connection_env(CONN_ID, SECRET)]),
    )
    try:
        stack.airflow("db", "migrate")
        stack.airflow("dags", "reserialize")  # the consumer DAG exists: recording also queues it
        ports = [free_port(), free_port()]
        for index, port in enumerate(ports):
            stack.start_web(f"web{index}", port)
        urls = [f"http://127.0.0.1:{port}" for port in ports]
        for url in urls:
            stack.wait_ready(CONN_ID, SECRET, url=url)
        yield stack, urls
    finally:
        stack.stop()
        cluster.stop()


def deliver(client: httpx.Client, url: str, body: bytes) -> tuple[str, list[int]]:
    """POST like DialNexa: up to 3 retries after a 5xx or a failed connection. (final outcome, statuses)."""
    statuses: list[int] = []
    for attempt in range(4):
        try:
            response = post(client, f"{url}/dialnexa/webhooks/{CONN_ID}", body, SECRET)
        except httpx.HTTPError:
            statuses.append(0)
        else:
            statuses.append(response.status_code)
            if response.status_code < 500:
                return str(response.json().get("status")), statuses
        time.sleep(0.5 * (attempt + 1))  # DialNexa's retry spacing is undocumented; this is the client's pace
    return "gave up", statuses


def test_two_replicas_receiving_the_same_deliveries_at_once_record_one_event_per_call(
    replicas: tuple[AirflowStack, list[str]],
) -> None:
    stack, urls = replicas
    bodies = {call_id: call_ended(call_id, STATUSES[index % len(STATUSES)]) for index, call_id in enumerate(CALLS)}
    barriers = {call_id: threading.Barrier(2, timeout=120) for call_id in CALLS}

    def pair(job: tuple[str, int]) -> tuple[str, str, list[int]]:
        call_id, replica = job
        barriers[call_id].wait()  # both replicas get this call's delivery at the same moment
        outcome, statuses = deliver(client, urls[replica], bodies[call_id])
        return call_id, outcome, statuses

    jobs = [(call_id, replica) for call_id in CALLS for replica in (0, 1)]
    with httpx.Client(timeout=60) as client, ThreadPoolExecutor(16) as pool:
        results = list(pool.map(pair, jobs))
        # and a third copy of every delivery, once the first two are answered (a DialNexa retry or duplicate)
        again = list(pool.map(lambda call_id: deliver(client, urls[1], bodies[call_id])[0], CALLS))

    recorded = Counter(call_id for call_id, outcome, _ in results if outcome == "recorded")
    assert {outcome for _, outcome, _ in results} <= {"recorded", "duplicate"}, results
    assert recorded == Counter(CALLS), "exactly one of the concurrent deliveries of each call recorded it"
    assert set(again) == {"duplicate"}
    receipts = stack.receipts(CONN_ID)
    assert [(call_id, status) for call_id, status, _ in receipts] == sorted(
        (call_id, STATUSES[index % len(STATUSES)]) for index, call_id in enumerate(CALLS)
    )
    events = stack.events(calls_asset_uri(CONN_ID))
    assert sorted(event["call_id"] for event in events) == sorted(CALLS)  # one event per call, none twice
    event_ids = [event_id for _, _, event_id in receipts]
    assert None not in event_ids
    assert len(set(event_ids)) == len(CALLS)  # each receipt names its own event
    queue_table = "asset_dag_run_queue" if AIRFLOW_3 else "dataset_dag_run_queue"
    assert stack.query(f"SELECT target_dag_id FROM {queue_table}") == [("dialnexa_webhook_calls",)]  # noqa: S608
    retried = sum(1 for _, _, statuses in results if len(statuses) > 1)
    print(f"PG replicas: {len(jobs)} concurrent deliveries, {retried} needed a retry after a 5xx")
