"""Runtime dependencies are what the provider itself uses; the simulator's uvicorn is an extra (issue #12)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

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
