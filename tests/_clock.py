"""A fake clock for the trigger's schedule: deadlines and poll intervals exact, whatever the machine's load.

``drive_time(monkeypatch, start)`` swaps the ``time`` and ``asyncio`` modules that the triggers' poll loop
(``triggers._loop``, ``triggers.dialnexa``) and ``_poller`` see for shims: ``time.time()`` reads the fake clock,
``asyncio.sleep(d)`` records ``d``, moves the clock ``d`` ahead and only yields to the loop. Everything else
(HTTP to the simulator, ``asyncio.gather``, futures, ``wait_for``) stays real, so each poll is still a real
request; only waiting is simulated.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pytest

from airflow_provider_dialnexa import _poller
from airflow_provider_dialnexa.triggers import _loop as loop_module
from airflow_provider_dialnexa.triggers import dialnexa as trigger_module


@dataclass
class FakeClock:
    now: float
    #: Every ``asyncio.sleep`` the trigger asked for, in order (the poller's window sleeps are in ``windows``).
    sleeps: list[float] = field(default_factory=list)
    windows: list[float] = field(default_factory=list)
    #: Called with the window's number (1-based) as each batch window starts, before its List Calls.
    on_window: Callable[[int], object] | None = None
    #: A sleep that would end after this time never ends (the clock stays where it was): the waiting task is
    #: parked mid-wait, e.g. for a test to cancel it there. None: no limit.
    park_after: float | None = None
    parked: int = 0

    def time(self) -> float:
        return self.now

    async def sleep(self, delay: float, into: list[float]) -> None:
        if self.park_after is not None and self.now + delay > self.park_after:
            self.parked += 1
            try:
                await asyncio.Event().wait()  # until cancelled
            finally:
                self.parked -= 1
        into.append(delay)
        self.now += max(0.0, delay)
        await asyncio.sleep(0)


class _Shim:
    """A module's view of ``time`` or ``asyncio`` with a few names replaced."""

    def __init__(self, real: ModuleType, **replaced: Any) -> None:
        self._real = real
        self.__dict__.update(replaced)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def drive_time(monkeypatch: pytest.MonkeyPatch, start: float | None = None, *, poller: bool = True) -> FakeClock:
    """Run the trigger (and, if ``poller``, the batch poller's window) on a fake clock starting at ``start``."""
    clock = FakeClock(time.time() if start is None else start)

    async def trigger_sleep(delay: float) -> None:
        await clock.sleep(delay, clock.sleeps)

    async def window_sleep(delay: float) -> None:
        if clock.on_window is not None:
            clock.on_window(len(clock.windows) + 1)
        await clock.sleep(delay, clock.windows)

    for module in (loop_module, trigger_module):
        if hasattr(module, "time"):
            monkeypatch.setattr(module, "time", _Shim(time, time=clock.time))
        monkeypatch.setattr(module, "asyncio", _Shim(asyncio, sleep=trigger_sleep))
    if poller:
        monkeypatch.setattr(_poller, "asyncio", _Shim(asyncio, sleep=window_sleep))
    return clock
