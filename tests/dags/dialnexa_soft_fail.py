"""Test DAG for ``tests/test_defects_review.py``: four ``soft_fail`` sensors, each wait ending another way.

Not an example. ``soft_fail`` may skip only a timeout (``timed_out``) or a ``failure_statuses`` match
(``declared_failure``); a trigger that failed (``trigger_failed``) and an Airflow error raised on resume that is
not DialNexa's (``resume_raises``) must fail their task. ``dag.test()`` runs triggers inline and has no triggerer
to fail one, so ``trigger_failed`` defers the way Airflow resumes a task whose trigger failed: ``next_method``
``__fail__`` with the ``error``/``traceback`` kwargs the triggerer writes (``Trigger.submit_failure``), to
Airflow's own ``FailureTrigger`` (the test's inline runner then delivers no event, as the triggerer does).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.providers.common.compat.sdk import DAG, AirflowException
from airflow.triggers.testing import FailureTrigger

from airflow_provider_dialnexa.sensors.dialnexa import DialNexaCallSensor

try:
    from airflow.sdk.bases.operator import TriggerFailureReason

    TRIGGER_FAILURE: Any = TriggerFailureReason.TRIGGER_FAILURE
except ImportError:  # Airflow 2.11 writes a plain string
    TRIGGER_FAILURE = "Trigger failure"


class TriggerFailedSensor(DialNexaCallSensor):
    """Pokes once like the real sensor; its deferral then ends the way a failed trigger's does."""

    def execute(self, context: Any) -> Any:
        first = self.poke(context)
        if first.is_done:
            return first.xcom_value
        traceback = ["Traceback (most recent call last):\n", "ValueError: Deliberate trigger failure\n"]
        self.defer(
            trigger=FailureTrigger(),
            method_name="__fail__",
            kwargs={"error": TRIGGER_FAILURE, "traceback": traceback},
        )


class ResumeRaisesSensor(DialNexaCallSensor):
    """A subclass whose own check on resume raises an Airflow error that is not a DialNexa error."""

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> dict[str, str]:
        super().execute_complete(context, event)
        raise AirflowException("the subclass could not check the outcome")


with DAG(
    dag_id="dialnexa_soft_fail",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    params={"running": "call_unset", "failing": "call_unset", "ending": "call_unset"},
) as dag:
    common: dict[str, Any] = {"deferrable": True, "soft_fail": True, "poke_interval": 1, "polling": "per_call"}
    TriggerFailedSensor(task_id="trigger_failed", call_id="{{ params.running }}", timeout=60, **common)
    ResumeRaisesSensor(task_id="resume_raises", call_id="{{ params.ending }}", timeout=60, **common)
    DialNexaCallSensor(
        task_id="declared_failure",
        call_id="{{ params.failing }}",
        failure_statuses=["failed"],
        timeout=60,
        **common,
    )
    DialNexaCallSensor(task_id="timed_out", call_id="{{ params.running }}", timeout=2, **common)
