"""Issue #18, a data engineer's first hour: typos caught when the DAG is parsed, and errors that say how to fix them.

Status filter values, polling modes, literal numbers of mapped tasks, trigger deadlines given as datetimes,
the no-scheme hint, unknown extras, a missing connection, object storage without its provider, the
simulator's command line. Requests go to the simulator over real sockets where a request could happen.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from airflow.providers.common.compat.sdk import DAG, AirflowNotFoundException, task

from airflow_provider_dialnexa._connection import settings_from_connection
from airflow_provider_dialnexa.demo import shown_path
from airflow_provider_dialnexa.exceptions import (
    DialNexaConfigError,
    DialNexaConnectionNotFoundError,
    InvalidPhoneNumberError,
)
from airflow_provider_dialnexa.hooks.dialnexa import DialNexaHook, close_async_clients
from airflow_provider_dialnexa.operators.dialnexa import (
    DialNexaCreateCallOperator,
    DialNexaExportCallsOperator,
    DialNexaGetCallOperator,
)
from airflow_provider_dialnexa.sensors.dialnexa import DialNexaCallSensor
from airflow_provider_dialnexa.simulator import Simulator
from airflow_provider_dialnexa.triggers.dialnexa import DialNexaCallTrigger, DialNexaWindowTrigger

T0 = datetime(2026, 10, 5, 9, 0, tzinfo=UTC)
WINDOW: dict[str, Any] = {"window_start": "2026-10-05T09:00:00Z", "window_end": "2026-10-05T10:00:00Z"}


# -- 4. status filter values: checked like filter names ----------------------------------------------------------


@pytest.mark.parametrize("status", ["complted", ["completed", "no_answr"], "completed,busi"])
def test_a_misspelt_status_filter_fails_at_parse_time_with_a_suggestion(status: Any) -> None:
    with pytest.raises(ValueError, match=r"Task 'export'.*'status'.*did you mean") as info:
        DialNexaExportCallsOperator(task_id="export", destination="calls.jsonl", filters={"status": status})
    assert "no-answer" in str(info.value)  # the message names the hyphenated spellings too


@pytest.mark.parametrize(
    "status", ["completed", "no-answer", "No_Answer", "in-progress", ["busy", "did_not_pick"], "busy,no-answer"]
)
def test_every_documented_status_spelling_is_accepted(status: Any) -> None:
    DialNexaExportCallsOperator(task_id="export", destination="calls.jsonl", filters={"status": status})


@pytest.mark.parametrize(
    ("name", "value"), [("call_direction", "outbond"), ("type", "phnoe"), ("sentiment", "postive")]
)
def test_other_enumerated_filters_are_checked_too(name: str, value: str) -> None:
    with pytest.raises(ValueError, match="did you mean"):
        DialNexaExportCallsOperator(task_id="export", destination="calls.jsonl", filters={name: value})


def test_a_templated_status_is_checked_at_run_time_before_any_request(dialnexa_conn: Simulator, tmp_path: Path) -> None:
    op = DialNexaExportCallsOperator(
        task_id="export", destination=str(tmp_path / "calls.jsonl"), filters={"status": "{{ params.s }}"}, **WINDOW
    )
    op.filters = {"status": "complted"}  # as rendered
    with pytest.raises(ValueError, match=r"Task 'export'.*'complted'; did you mean 'completed'"):
        op.execute({})  # type: ignore[typeddict-item]
    assert dialnexa_conn.stats()["requests"] == 0


def test_the_hook_checks_status_values_before_any_request(dialnexa_conn: Simulator) -> None:
    with pytest.raises(ValueError, match="did you mean 'completed'"):
        next(DialNexaHook().iter_calls(T0, T0 + timedelta(hours=1), status="complted"))
    assert dialnexa_conn.stats()["requests"] == 0


def test_a_hyphenated_status_filter_exports_what_it_names(dialnexa_conn: Simulator, tmp_path: Path) -> None:
    sim = dialnexa_conn
    sim.seed_calls(40, T0.timestamp(), T0.timestamp() + 3600, mix={"completed": 1, "no_answer": 1})
    target = tmp_path / "calls.jsonl"
    op = DialNexaExportCallsOperator(
        task_id="export", destination=str(target), filters={"status": "no-answer"}, wait_for_running=False, **WINDOW
    )
    result = op.execute({})  # type: ignore[typeddict-item]
    assert set(result["statuses"]) == {"no_answer"}
    assert 0 < result["calls"] < 40


# -- 7. polling checked in the constructors, whatever the mode ------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda polling: DialNexaCallSensor(task_id="t", call_id="c", polling=polling, deferrable=False),
        lambda polling: DialNexaCallSensor(task_id="t", call_id="c", polling=polling, deferrable=True),
        lambda polling: DialNexaGetCallOperator(task_id="t", call_id="c", polling=polling),
        lambda polling: DialNexaGetCallOperator(task_id="t", call_id="c", polling=polling, wait_for_completion=True),
    ],
    ids=["sensor-poke", "sensor-deferrable", "get-call", "get-call-waiting"],
)
def test_a_polling_typo_fails_at_parse_time(make: Any) -> None:
    with pytest.raises(ValueError, match=r"Task 't': polling must be one of .*'batch'; did you mean 'batched'"):
        make("batch")
    assert make("per-call").polling == "per_call"  # the connection extra's spellings work here too
    assert make(None).polling is None


# -- 8. literal numbers of mapped tasks: checked when the DAG is parsed -------------------------------------


def test_a_literal_number_in_expand_kwargs_fails_at_parse_time() -> None:
    with (
        DAG("dnx_mapped_numbers", schedule=None, start_date=datetime(2026, 1, 1)),
        pytest.raises(InvalidPhoneNumberError, match=r"Task 'place', expand_kwargs item 1: .*not E\.164") as info,
    ):
        DialNexaCreateCallOperator.partial(task_id="place", agent_id="agent_1").expand_kwargs(
            [{"phone_number": "+14155550101"}, {"phone_number": "4155550102"}]
        )
    assert "4155550102" not in str(info.value)  # masked


def test_a_literal_number_in_expand_fails_at_parse_time() -> None:
    with (
        DAG("dnx_mapped_expand", schedule=None, start_date=datetime(2026, 1, 1)),
        pytest.raises(InvalidPhoneNumberError, match=r"expand\(phone_number=\[\.\.\.\]\) item 0"),
    ):
        DialNexaCreateCallOperator.partial(task_id="place", agent_id="agent_1").expand(phone_number=["+1 415 555 0101"])


def test_mapped_numbers_from_task_output_or_templates_are_left_to_run_time() -> None:
    with DAG("dnx_mapped_output", schedule=None, start_date=datetime(2026, 1, 1)) as dag:

        @task
        def leads() -> list[dict[str, str]]:
            return [{"phone_number": "+14155550101"}]

        DialNexaCreateCallOperator.partial(task_id="from_output", agent_id="agent_1").expand_kwargs(leads())
        DialNexaCreateCallOperator.partial(task_id="templated", agent_id="agent_1").expand_kwargs(
            [{"phone_number": "{{ params.number }}"}, {"phone_number": "+14155550102"}]
        )
        DialNexaCreateCallOperator.partial(task_id="plain", agent_id="agent_1").expand(phone_number=leads())
    assert {"from_output", "templated", "plain"} <= set(dag.task_dict)


# -- 3. datetimes where a time is asked for -------------------------------------------------------------------


def test_triggers_take_a_datetime_deadline_and_serialize_primitives() -> None:
    deadline = datetime(2026, 10, 5, 10, 30, tzinfo=UTC)
    call = DialNexaCallTrigger(call_id="call_1", end_time=deadline)
    window = DialNexaWindowTrigger(window_start=T0, window_end=T0 + timedelta(hours=1), end_time=deadline)
    assert call.serialize()[1]["end_time"] == window.serialize()[1]["end_time"] == deadline.timestamp()
    assert window.serialize()[1]["window_start"] == "2026-10-05T09:00:00.000Z"
    assert DialNexaCallTrigger(call_id="c", end_time=datetime(2026, 10, 5, 10, 30)).end_time == deadline.timestamp()
    assert DialNexaCallTrigger(call_id="c", end_time="2026-10-05T10:30:00Z").end_time == deadline.timestamp()
    assert DialNexaCallTrigger(call_id="c", end_time=1_790_000_000).end_time == 1_790_000_000.0
    for args in (call.serialize()[1], window.serialize()[1]):
        assert all(isinstance(v, str | int | float | dict | list | type(None)) for v in args.values())


@pytest.mark.parametrize("bad", [timedelta(hours=1), True, "in an hour"], ids=["timedelta", "bool", "words"])
def test_a_deadline_that_is_not_a_point_in_time_says_what_to_pass(bad: object) -> None:
    with pytest.raises(ValueError, match=r"end_time must be a point in time: epoch seconds .* a datetime"):
        DialNexaWindowTrigger(window_start=T0, window_end=T0 + timedelta(hours=1), end_time=bad)  # type: ignore[arg-type]


# -- 6. the no-scheme hint ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "port", "hint"),
    [
        ("localhost", 8089, "'http://localhost:8089'"),
        ("127.0.0.1:8089", None, "'http://127.0.0.1:8089'"),
        ("[::1]", 8089, "'http://[::1]:8089'"),
        ("api.dialnexa.com", None, "'https://api.dialnexa.com' (or leave it empty"),
        ("dialnexa.internal", 8443, "'https://dialnexa.internal:8443'"),
    ],
)
def test_the_no_scheme_hint_keeps_the_port_and_says_http_for_loopback(host: str, port: int | None, hint: str) -> None:
    with pytest.raises(DialNexaConfigError, match="has no scheme") as info:
        settings_from_connection("dnx", host=host, password="k:s", port=port)
    assert f"set it to {hint}" in str(info.value)


# -- 9. smaller: unknown extras, a missing connection --------------------------------------------------------


def test_an_unknown_extra_suggests_the_known_one() -> None:
    _, warnings = settings_from_connection("dnx", host=None, password="k:s", extra={"max_retry": 3, "colour": 1})
    assert "ignoring unknown extra 'max_retry'; did you mean 'max_retries'?" in warnings[0]
    assert "ignoring unknown extra 'colour' (known extras: timeout, max_retries" in warnings[1]


def test_a_missing_connection_says_how_to_define_it_sync(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_DIALNEXA_MISSING", raising=False)
    with pytest.raises(DialNexaConnectionNotFoundError) as info:
        DialNexaHook("dialnexa_missing").get_call("call_1")
    message = str(info.value)
    assert 'export AIRFLOW_CONN_DIALNEXA_MISSING=\'{"conn_type": "dialnexa"' in message
    assert isinstance(info.value, AirflowNotFoundException)  # Airflow's own lookup error still matches


async def test_a_missing_connection_says_how_to_define_it_async(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_DIALNEXA_MISSING", raising=False)
    try:
        with pytest.raises(DialNexaConnectionNotFoundError, match="export AIRFLOW_CONN_DIALNEXA_MISSING="):
            await DialNexaHook("dialnexa_missing").aget_call("call_1")
    finally:
        await close_async_clients()


async def test_a_trigger_reports_the_missing_connection_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_DIALNEXA_MISSING", raising=False)
    trigger = DialNexaCallTrigger(call_id="call_1", dialnexa_conn_id="dialnexa_missing", first_poll_delay=0)
    try:
        event = await anext(trigger.run())
    finally:
        await close_async_clients()
    assert event.payload["kind"] == "config"
    assert "AIRFLOW_CONN_DIALNEXA_MISSING" in event.payload["message"]


# -- 5. object storage without its provider -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("destination", "fix"),
    [
        ("s3://warehouse/dialnexa/calls.jsonl.gz", "pip install 'apache-airflow-providers-amazon[s3fs]'"),
        ("gs://warehouse/dialnexa/calls.jsonl.gz", "pip install 'apache-airflow-providers-google'"),
        ("dnxfs://warehouse/calls.jsonl", "install the Airflow provider that registers it"),
    ],
)
def test_object_storage_without_its_provider_says_what_to_install(
    dialnexa_conn: Simulator, destination: str, fix: str
) -> None:
    op = DialNexaExportCallsOperator(task_id="export", destination=destination, wait_for_running=False, **WINDOW)
    with pytest.raises(DialNexaConfigError, match="cannot write next to destination") as info:
        op.execute({})  # type: ignore[typeddict-item]
    assert fix in str(info.value)
    if destination.startswith("s3"):
        assert "s3://<aws_conn_id>@<bucket>/<path>" in str(info.value)
    assert dialnexa_conn.stats()["requests"] == 0


# -- 1, 2, 9: the simulator's command line ----------------------------------------------------------------------


def _simulator(*args: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "airflow_provider_dialnexa.simulator", "--port", "0", *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _banner(proc: subprocess.Popen[str]) -> list[str]:
    assert proc.stdout is not None
    lines: list[str] = []
    while not lines or not lines[-1].startswith("Stop with Ctrl-C"):
        line = proc.stdout.readline()
        assert line, f"the simulator exited early: {proc.communicate(timeout=10)}"
        lines.append(line.rstrip("\n"))
    return lines


def test_the_simulator_prints_the_connection_line_and_its_calls_and_stops_quietly_on_ctrl_c(
    tmp_path: Path,
) -> None:
    proc = _simulator("--calls", "3", "--seed", "120", "--between", "2026-10-05T06:00:00Z", "2026-10-05T08:00:00Z")
    try:
        lines = _banner(proc)
        url = lines[0].removeprefix("DIALNEXA_SIMULATOR_URL=")
        export = next(line for line in lines if line.startswith("export AIRFLOW_CONN_DIALNEXA_DEFAULT="))
        created = next(line for line in lines if line.startswith("Created 3 calls"))
        assert "Seeded 120 ended calls created in [2026-10-05T06:00:00Z, 2026-10-05T08:00:00Z)" in lines
        # the export line works as pasted into a shell: the hook reads the calls it names
        shell = subprocess.run(
            ["bash", "-c", f"{export} && printenv AIRFLOW_CONN_DIALNEXA_DEFAULT"],
            capture_output=True,
            text=True,
            check=True,
        )
        conn = json.loads(shell.stdout)
        assert conn["host"] == url
        headers = {"Authorization": f"Bearer {conn['password']}"}
        ids = [part.split(" (")[0] for part in created.split(": ", 1)[1].split(", ")]
        for call_id in ids:
            assert httpx.get(f"{url}/v1/calls/{call_id}", headers=headers).status_code == 200
        query = {"start_date": "2026-10-05T06:00:00Z", "end_date": "2026-10-05T08:00:00Z", "limit": "200"}
        assert len(httpx.get(f"{url}/v1/calls", params=query, headers=headers).json()) == 120
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0
    assert "Traceback" not in err
    assert "KeyboardInterrupt" not in err
    assert out.strip().endswith("DialNexa simulator stopped.")


def test_the_same_rng_seed_gives_the_same_call_ids() -> None:
    banners = []
    for _ in range(2):
        proc = _simulator("--calls", "2")
        try:
            banners.append(next(line for line in _banner(proc) if line.startswith("Created")))
        finally:
            proc.terminate()
            proc.communicate(timeout=30)
    assert banners[0] == banners[1]


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--between", "2026-10-05T06:00:00Z", "2026-10-05T08:00:00Z"], "add --seed N"),
        (["--seed", "5", "--between", "2026-10-05T08:00Z", "2026-10-05T06:00Z"], "must be after START"),
        (["--seed", "5", "--between", "yesterday", "today"], "not an ISO-8601 time"),
    ],
)
def test_the_simulator_refuses_a_bad_seed_window(args: list[str], error: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "airflow_provider_dialnexa.simulator", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert error in proc.stderr


def test_seed_without_between_fills_the_last_three_whole_hours() -> None:
    def window() -> str:
        end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        return f"[{end - timedelta(hours=3):%Y-%m-%dT%H:%M:%SZ}, {end:%Y-%m-%dT%H:%M:%SZ})"

    before = window()
    proc = _simulator("--seed", "30")
    try:
        seeded = next(line for line in _banner(proc) if line.startswith("Seeded"))
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    assert seeded.removeprefix("Seeded 30 ended calls created in ") in {before, window()}  # an hour may turn


# -- 9. the demo's export table shows where each file is ---------------------------------------------------------


def test_the_demo_shows_export_files_with_their_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert shown_path(str(tmp_path / ".demo" / "exports" / "calls.jsonl.gz")) == os.path.join(
        ".demo", "exports", "calls.jsonl.gz"
    )
    assert shown_path("/elsewhere/calls.jsonl.gz") == "/elsewhere/calls.jsonl.gz"


def test_a_port_in_use_says_what_to_do() -> None:
    import socket

    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "airflow_provider_dialnexa.simulator", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert proc.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port} (Address already in use)" in proc.stderr
    assert "--port 0" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_an_empty_data_interval_says_to_pass_a_window(dialnexa_conn: Simulator, tmp_path: Path) -> None:
    """A manual run of a schedule=None DAG on Airflow 3 has a zero-length interval: the message leads with the fix."""
    op = DialNexaExportCallsOperator(task_id="export", destination=str(tmp_path / "calls.jsonl"))
    now = datetime(2026, 12, 3, 11, 4, 32, tzinfo=UTC)
    with pytest.raises(ValueError, match=r"Task 'export': the run's data interval is empty .* Pass window_start/"):
        op.execute({"data_interval_start": now, "data_interval_end": now})  # type: ignore[typeddict-item]
    assert dialnexa_conn.stats()["requests"] == 0
