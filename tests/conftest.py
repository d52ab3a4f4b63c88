"""Shared fixtures: one embedded DialNexa simulator per test session, reset before every test that uses it."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_dialnexa import policy
from airflow_provider_dialnexa.hooks.dialnexa import close_async_clients
from airflow_provider_dialnexa.simulator import Simulator
from airflow_provider_dialnexa.triggers.dialnexa import DialNexaCallTrigger

SIM_API_KEY = "dnx_test_key:s3cr3t-SIM-KEY"
SIM_SEED = 1234
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def _simulator_server() -> Iterator[Simulator]:
    """The session's simulator (a uvicorn thread on an ephemeral loopback port)."""
    with Simulator(api_key=SIM_API_KEY, seed=SIM_SEED) as sim:
        yield sim


@pytest.fixture(autouse=True)
def _fresh_rate_budgets() -> Iterator[None]:
    """Each test starts with full per-key rate budgets (they are process-wide, like in a triggerer)."""
    policy._budgets.clear()
    yield
    policy._budgets.clear()


@pytest.fixture
def api_key() -> str:
    """The API key the simulator accepts."""
    return SIM_API_KEY


@pytest.fixture
def simulator(_simulator_server: Simulator) -> Simulator:
    """The session simulator with no calls, faults, counters or config changes left by earlier tests."""
    _simulator_server.reset()
    return _simulator_server


@pytest.fixture
def dialnexa_conn(simulator: Simulator, api_key: str, monkeypatch: pytest.MonkeyPatch) -> Simulator:
    """Point Airflow's ``dialnexa_default`` connection at the simulator (env-var connection); returns the simulator."""
    conn = {
        "conn_type": "dialnexa",
        "host": simulator.url,
        "password": api_key,
        "extra": {"timeout": 5, "max_retries": 3},
    }
    monkeypatch.setenv("AIRFLOW_CONN_DIALNEXA_DEFAULT", json.dumps(conn))
    return simulator


@contextmanager
def logging_config_kept() -> Iterator[None]:
    """Undo what running Airflow's migrations does to this process's logging.

    Airflow 2.11's ``migrations/env.py`` calls ``logging.config.fileConfig(alembic.ini)`` on every migration run
    (3.3 only when the root logger has no handler): the root logger drops Airflow's handlers for a stderr one
    and goes to WARNING. Left like that, every later test in the worker loses the INFO records of loggers
    that inherit the root's level, such as a trigger's (its triggerer captures them on the root logger).
    """
    root = logging.getLogger()
    touched = [logging.getLogger(name) for name in ("sqlalchemy.engine", "alembic")]
    saved = [(lg, lg.level, list(lg.handlers), lg.propagate, lg.disabled) for lg in (root, *touched)]
    try:
        yield
    finally:
        for logger, level, handlers, propagate, disabled in saved:
            logger.setLevel(level)
            logger.handlers[:] = handlers
            logger.propagate, logger.disabled = propagate, disabled


@pytest.fixture(scope="module")
def airflow_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A migrated throwaway metadata DB (one per test module) whose DAGs folder holds ``dags/`` and ``tests/dags/``.

    ``dag.test()`` needs a DB and finds the DAG in the configured DAGs folder. Airflow read its config when
    it was first imported, so the ORM is re-pointed here and restored afterwards.
    """
    from airflow import settings
    from airflow.utils import db

    home = tmp_path_factory.mktemp("airflow_home")
    dags = home / "dags"
    dags.mkdir()
    for source in [*sorted((ROOT / "dags").glob("*.py")), *sorted((ROOT / "tests" / "dags").glob("*.py"))]:
        (dags / source.name).symlink_to(source)
    env = pytest.MonkeyPatch()
    env.setenv("AIRFLOW_HOME", str(home))
    env.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{home / 'airflow.db'}")
    env.setenv("AIRFLOW__CORE__DAGS_FOLDER", str(dags))
    env.setenv("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    env.setenv("AIRFLOW__LOGGING__BASE_LOG_FOLDER", str(home / "logs"))
    settings.configure_vars()
    settings.reconfigure_orm()
    with logging_config_kept():
        db.initdb()
    try:
        yield dags
    finally:
        env.undo()
        settings.configure_vars()
        settings.reconfigure_orm()


class FakeClock:
    """Stands in for the ``time`` module inside ``policy``: ``monotonic`` and ``time`` move only when told,
    so rate budgets and header parsing are tested without sleeping (the start is a plausible Unix time).
    """

    def __init__(self, now: float = 1_790_000_000.0) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """``policy``'s clock, faked (see ``FakeClock``)."""
    fake = FakeClock()
    monkeypatch.setattr(policy, "time", fake)
    return fake


@pytest.fixture
async def close_shared_clients() -> AsyncIterator[None]:
    """Close the event loop's shared httpx clients after the test (use with ``pytest.mark.usefixtures``)."""
    yield
    await close_async_clients()


async def only_event(trigger: DialNexaCallTrigger, timeout: float = 30) -> dict[str, Any]:
    """The trigger's one event payload; asserts the generator ends right after it and names the call."""
    gen = trigger.run()
    event = await asyncio.wait_for(gen.__anext__(), timeout)
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(gen.__anext__(), 5)
    payload = event.payload
    assert isinstance(payload, dict)
    assert payload["call_id"] == trigger.call_id
    return payload


def child_env(home: Path) -> dict[str, str]:
    """This process's environment without Airflow settings, plus a throwaway AIRFLOW_HOME (for child DAG runs)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(home / "dags"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__UNIT_TEST_MODE="False",
        PYTHONUNBUFFERED="1",
    )
    return env
