"""An embedded DialNexa API simulator: a real HTTP server on loopback for the demo, the tests and the benchmarks.

It serves ``GET /v1/calls/{id}``, ``GET /v1/calls`` and ``POST /v1/calls`` the way DialNexa documents them
(in all their documented spellings) and ``/v1/user-webhooks`` with signed deliveries (``webhooks.py``),
walks each call through a seeded lifecycle computed from the clock, injects faults on demand and counts
every request. ``/_sim/...`` is its control API.
"""

from __future__ import annotations

from airflow_provider_dialnexa.simulator.app import SimulatorApp
from airflow_provider_dialnexa.simulator.server import Simulator, SimulatorControls, SimulatorError, SimulatorProcess
from airflow_provider_dialnexa.simulator.state import (
    DEFAULT_API_KEY,
    DEFAULT_MIX,
    FAULT_KINDS,
    OUTCOMES,
    CallPlan,
    CallSpec,
    Fault,
    LogEntry,
    SimConfig,
    SimState,
)
from airflow_provider_dialnexa.simulator.webhooks import Delivery, WebhookConfig, sign

__all__ = [
    "DEFAULT_API_KEY",
    "DEFAULT_MIX",
    "FAULT_KINDS",
    "OUTCOMES",
    "CallPlan",
    "CallSpec",
    "Delivery",
    "Fault",
    "LogEntry",
    "SimConfig",
    "SimState",
    "Simulator",
    "SimulatorApp",
    "SimulatorControls",
    "SimulatorError",
    "SimulatorProcess",
    "WebhookConfig",
    "sign",
]
