"""Parse-time checks of literal values given to ``.partial()``, ``.expand()`` and ``.expand_kwargs()``.

Airflow builds a mapped task's operators only when each task instance runs, so a typo in a literal list of
leads would otherwise surface hours later, one failed map index at a time. ``CheckedPartial`` wraps Airflow's
``OperatorPartial`` and runs a check on every literal value of the named arguments before handing on; task
output (``XComArg``) and templates are left to the operator, which checks them once rendered.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from airflow_provider_dialnexa._validation import arrives_at_run_time

Check = Callable[[object], object]


class CheckedPartial:
    """Airflow's ``OperatorPartial`` with ``checks`` (argument name -> check) applied to literal mapped values."""

    def __init__(self, partial: Any, checks: Mapping[str, Check]) -> None:
        self._partial = partial
        self._checks = dict(checks)

    def _check(self, where: str, name: str, value: object) -> None:
        check = self._checks.get(name)
        if check is None or arrives_at_run_time(value):
            return
        try:
            check(value)
        except ValueError as exc:
            self._partial._expand_called = True  # the DAG fails here: no "was never mapped" warning on top
            task_id = getattr(self._partial, "kwargs", {}).get("task_id")
            raise type(exc)(f"Task {task_id!r}, {where}: {exc}") from None

    def expand(self, **mapped_kwargs: Any) -> Any:
        """Check each literal value of a literal list, then ``OperatorPartial.expand``."""
        for name, values in mapped_kwargs.items():
            if isinstance(values, Sequence) and not isinstance(values, str):
                for index, value in enumerate(values):
                    self._check(f"expand({name}=[...]) item {index}", name, value)
        return self._partial.expand(**mapped_kwargs)

    def expand_kwargs(self, kwargs: Any, *, strict: bool = True) -> Any:
        """Check each literal value of each literal dict, then ``OperatorPartial.expand_kwargs``."""
        if isinstance(kwargs, Sequence):
            for index, item in enumerate(kwargs):
                if isinstance(item, Mapping):
                    for name, value in item.items():
                        self._check(f"expand_kwargs item {index}", name, value)
        return self._partial.expand_kwargs(kwargs, strict=strict)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._partial, name)

    def __repr__(self) -> str:
        return repr(self._partial)
