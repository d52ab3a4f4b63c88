"""Airflow 2.11 smoke check: the provider imports, its classes construct, the hook reads a connection.

Run by ``make compat`` in a separate virtualenv with Airflow 2.11 (the primary target, 3.3, is what the
test suite runs on). No network: the connection points at a closed loopback port and is never called.
"""

from __future__ import annotations

import os
import tempfile

os.environ["AIRFLOW_CONN_DIALNEXA_DEFAULT"] = (
    '{"conn_type": "dialnexa", "host": "http://127.0.0.1:9/v1/", "password": "key_id:secret"}'
)

import airflow
from airflow.providers.common.compat.sdk import ObjectStoragePath

from airflow_provider_dialnexa import get_provider_info
from airflow_provider_dialnexa.hooks.dialnexa import DialNexaHook
from airflow_provider_dialnexa.operators.dialnexa import (
    DialNexaCreateCallOperator,
    DialNexaExportCallsOperator,
    DialNexaGetCallOperator,
)
from airflow_provider_dialnexa.sensors.dialnexa import DialNexaCallSensor
from airflow_provider_dialnexa.triggers.dialnexa import DialNexaCallTrigger, DialNexaWindowTrigger

assert airflow.__version__.startswith("2.11"), airflow.__version__
assert get_provider_info()["package-name"] == "airflow-provider-dialnexa"
assert DialNexaHook().settings.base_url == "http://127.0.0.1:9"
assert DialNexaHook.get_ui_field_behaviour()["relabeling"]["password"] == "API Key"
sensor = DialNexaCallSensor(task_id="wait", call_id="call_x9y3zp4mq7r1", deferrable=True)
DialNexaGetCallOperator(task_id="fetch", call_id="call_x9y3zp4mq7r1")
DialNexaCreateCallOperator(task_id="place", phone_number="+14155550101", agent_id="agent_2g7Xy3tY53gRlp")
classpath, kwargs = DialNexaCallTrigger(call_id="call_x9y3zp4mq7r1", end_time=1.0).serialize()
assert DialNexaCallTrigger(**kwargs).serialize() == (classpath, kwargs)
folder = tempfile.mkdtemp()
export = DialNexaExportCallsOperator(task_id="export", destination=f"{folder}/calls.jsonl.gz")
assert [type(outlet).__name__ for outlet in export.outlets] == ["Dataset"], export.outlets  # Asset on Airflow 3
temp, final = ObjectStoragePath(f"file://{folder}/.calls.tmp"), ObjectStoragePath(f"file://{folder}/calls.jsonl")
with temp.open("wb") as file:  # the operator's write-then-move, on Airflow 2's object storage
    file.write(b'{"id": "call_x9y3zp4mq7r1"}\n')
temp.rename(final)
assert final.read_bytes() == b'{"id": "call_x9y3zp4mq7r1"}\n'
assert not temp.exists()
window = {"window_start": "2026-10-05T09:00:00.000Z", "window_end": "2026-10-05T10:00:00.000Z"}
classpath, kwargs = DialNexaWindowTrigger(**window, filters={"agent_id": ["a", "b"]}, end_time=1.0).serialize()
assert DialNexaWindowTrigger(**kwargs).serialize() == (classpath, kwargs)
print(f"Airflow {airflow.__version__}: airflow-provider-dialnexa imports and constructs: ok")
