"""Airflow 2.11 smoke check: the provider imports, its classes construct, the hook reads a connection.

Run by ``make compat`` in a separate virtualenv with Airflow 2.11 (the primary target, 3.3, is what the
test suite runs on). No network: the connection points at a closed loopback port and is never called.
"""

from __future__ import annotations

import os

os.environ["AIRFLOW_CONN_DIALNEXA_DEFAULT"] = (
    '{"conn_type": "dialnexa", "host": "http://127.0.0.1:9/v1/", "password": "key_id:secret"}'
)

import airflow

from airflow_provider_dialnexa import get_provider_info
from airflow_provider_dialnexa.hooks.dialnexa import DialNexaHook
from airflow_provider_dialnexa.operators.dialnexa import DialNexaCreateCallOperator, DialNexaGetCallOperator
from airflow_provider_dialnexa.sensors.dialnexa import DialNexaCallSensor
from airflow_provider_dialnexa.triggers.dialnexa import DialNexaCallTrigger

assert airflow.__version__.startswith("2.11"), airflow.__version__
assert get_provider_info()["package-name"] == "airflow-provider-dialnexa"
assert DialNexaHook().settings.base_url == "http://127.0.0.1:9"
assert DialNexaHook.get_ui_field_behaviour()["relabeling"]["password"] == "API Key"
sensor = DialNexaCallSensor(task_id="wait", call_id="call_x9y3zp4mq7r1", deferrable=True)
DialNexaGetCallOperator(task_id="fetch", call_id="call_x9y3zp4mq7r1")
DialNexaCreateCallOperator(task_id="place", phone_number="+14155550101", agent_id="agent_2g7Xy3tY53gRlp")
classpath, kwargs = DialNexaCallTrigger(call_id="call_x9y3zp4mq7r1", end_time=1.0).serialize()
assert DialNexaCallTrigger(**kwargs).serialize() == (classpath, kwargs)
print(f"Airflow {airflow.__version__}: airflow-provider-dialnexa imports and constructs: ok")
