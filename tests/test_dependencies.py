"""Runtime dependencies are what the provider itself uses; the simulator's uvicorn is an extra (issue #12), and so
is the OpenLineage provider, which only the lineage tests need (issue #21)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from datetime import UTC, datetime
from pathlib import Path

from airflow_provider_dialnexa.simulator import Simulator

ROOT = Path(__file__).resolve().parents[1]

#: Import every provider module with uvicorn made unimportable; the simulator says what to install.
_WITHOUT_UVICORN = """
import sys
sys.modules["uvicorn"] = None  # as if not installed
import airflow_provider_dialnexa.hooks.dialnexa
import airflow_provider_dialnexa.operators.dialnexa
import airflow_provider_dialnexa.sensors.dialnexa
import airflow_provider_dialnexa.triggers.dialnexa
from airflow_provider_dialnexa.simulator import Simulator
try:
    Simulator().start()
except ImportError as exc:
    print("SIMULATOR:", exc)
"""


def test_runtime_dependencies_are_the_providers_own() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = sorted(dep.split(">")[0].split("=")[0].split("[")[0].strip() for dep in project["dependencies"])
    assert names == [
        "apache-airflow",
        "apache-airflow-providers-common-compat",
        "httpx",
        "requests",
        "tenacity",
    ]
    extras = project["optional-dependencies"]
    assert any(dep.startswith("uvicorn") for dep in extras["simulator"])
    assert any("simulator" in dep for dep in extras["test"])
    assert any("test" in dep and "simulator" in dep for dep in extras["dev"])
    assert any(dep.startswith("apache-airflow-providers-openlineage") for dep in extras["test"])


def test_the_provider_imports_without_uvicorn() -> None:
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", _WITHOUT_UVICORN],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "SIMULATOR: the DialNexa simulator needs uvicorn" in done.stdout
    assert "[simulator]" in done.stdout


#: With the OpenLineage packages made unimportable: import every provider module, parse a DAG with a templated
#: export, run the export against the simulator and record its asset event, then print what was written.
_WITHOUT_OPENLINEAGE = """
import importlib, sys
def _no_openlineage(distributions):
    def visible(*args, **kwargs):
        return [d for d in distributions(*args, **kwargs) if "openlineage" not in (d.metadata["Name"] or "").lower()]
    return visible
for module_name in ("importlib.metadata", "importlib_metadata"):  # Airflow finds providers and plugins here
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        continue
    module.distributions = _no_openlineage(module.distributions)
for name in ("openlineage", "airflow.providers.openlineage"):
    sys.modules[name] = None  # and their modules cannot be imported: as if not installed
import airflow_provider_dialnexa.hooks.dialnexa
import airflow_provider_dialnexa.sensors.dialnexa
import airflow_provider_dialnexa.triggers.dialnexa
from datetime import datetime
from airflow.providers.common.compat.sdk import DAG
from airflow_provider_dialnexa.operators.dialnexa import DialNexaExportCallsOperator, export_alias
with DAG("no_lineage", schedule=None, start_date=datetime(2026, 1, 1)):
    op = DialNexaExportCallsOperator(
        task_id="export", destination="{{ params.path }}",
        window_start="2026-10-05T09:00:00Z", window_end="2026-10-05T10:00:00Z",
    )
assert op.asset_alias == export_alias("no_lineage", "export")
op.destination = sys.argv[1]  # as rendered
try:
    from airflow.sdk.execution_time.context import OutletEventAccessors
except ImportError:
    from airflow.utils.context import OutletEventAccessors
events = OutletEventAccessors()
if not hasattr(events[op.asset_alias], "asset_alias_events"):  # Airflow 2.11 would create the alias row in a DB
    import airflow_provider_dialnexa._export_assets as assets
    assets._ensure_alias_row = lambda name: None
print("SUMMARY:", op.execute({"outlet_events": events})["calls"])
print("LOADED:", sorted(m for m in sys.modules if "openlineage" in m and sys.modules[m] is not None))
"""

#: With the OpenLineage provider installed, importing the provider and building operators imports none of it
#: (Airflow's own provider discovery reads its metadata module, ``get_provider_info``: that is not ours).
_LAZY_OPENLINEAGE = """
import sys
import airflow_provider_dialnexa.operators.dialnexa as ops
ops.DialNexaExportCallsOperator(task_id="export", destination="/tmp/x_{{ ds }}.jsonl")
ops.DialNexaCreateCallOperator(task_id="create", phone_number="+14155550101", agent_id="agent_1")
discovery = ("airflow.providers.openlineage", "airflow.providers.openlineage.get_provider_info")
print("LOADED:", sorted(m for m in sys.modules if "openlineage" in m and m not in discovery))
"""


def _python(code: str, *args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_the_provider_imports_and_exports_without_openlineage(
    simulator: Simulator, api_key: str, tmp_path: Path
) -> None:
    simulator.reset()
    start = datetime(2026, 10, 5, 9, tzinfo=UTC).timestamp()
    simulator.seed_calls(9, start, start + 3600)
    conn = {"conn_type": "dialnexa", "host": simulator.url, "password": api_key}
    env = {**os.environ, "AIRFLOW_CONN_DIALNEXA_DEFAULT": json.dumps(conn)}
    target = tmp_path / "calls.jsonl"
    out = _python(_WITHOUT_OPENLINEAGE, str(target), env=env)
    assert "SUMMARY: 9" in out
    assert "LOADED: []" in out
    assert len(target.read_text().splitlines()) == 9


def test_the_provider_imports_openlineage_only_when_its_listener_asks() -> None:
    assert "LOADED: []" in _python(_LAZY_OPENLINEAGE)
