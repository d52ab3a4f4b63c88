"""Package metadata: provider info, Airflow's discovery of the provider and its connection type, py.typed."""

from __future__ import annotations

import fnmatch
import importlib
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import tomllib
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
import pytest

import airflow_provider_dialnexa
from airflow_provider_dialnexa import CONN_FIELDS, DISTRIBUTION_NAME, UI_FIELD_BEHAVIOUR, get_provider_info
from airflow_provider_dialnexa._connection import settings_from_connection
from airflow_provider_dialnexa.exceptions import DialNexaConfigError
from airflow_provider_dialnexa.hooks.dialnexa import DialNexaHook

ROOT = Path(__file__).resolve().parents[1]
AIRFLOW_BIN = Path(sys.executable).with_name("airflow")


def _airflow_schema(name: str) -> dict[str, Any]:
    return json.loads((files("airflow") / name).read_text())  # type: ignore[no-any-return]


def _kebab(behaviour: dict[str, Any]) -> dict[str, Any]:
    return {key.replace("_", "-"): value for key, value in behaviour.items()}


def _connection_type() -> dict[str, Any]:
    (conn_type,) = get_provider_info()["connection-types"]
    return conn_type  # type: ignore[no-any-return]


# -- provider info -------------------------------------------------------------------------------------


def test_provider_info_validates_against_airflows_runtime_schema() -> None:
    schema = _airflow_schema("provider_info.schema.json")
    validator_cls = jsonschema.validators.validator_for(schema)
    errors = [error.message for error in validator_cls(schema).iter_errors(get_provider_info())]
    assert errors == []


def test_provider_info_only_uses_keys_airflow_knows() -> None:
    """The runtime schema allows unknown top-level keys, so a typo would pass validation silently."""
    known = set(_airflow_schema("provider_info.schema.json")["properties"])
    known |= set(_airflow_schema("provider.yaml.schema.json")["properties"])  # e.g. "versions"
    known |= {"asset-uris", "dataset-uris"}  # the URI scheme: Airflow 3 reads the first, 2.11 the second
    assert set(get_provider_info()) <= known
    known_conn_keys = {"connection-type", "hook-class-name", "hook-name", "ui-field-behaviour", "conn-fields"}
    assert set(_connection_type()) <= known_conn_keys


def test_package_name_is_the_distribution_name() -> None:
    info = get_provider_info()
    dist = importlib.metadata.distribution(info["package-name"])
    assert dist.metadata["Name"] == DISTRIBUTION_NAME == "airflow-provider-dialnexa"
    assert info["versions"] == [dist.version] == [airflow_provider_dialnexa.__version__]
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["name"] == info["package-name"]


def test_entry_point_serves_get_provider_info() -> None:
    dist = importlib.metadata.distribution(DISTRIBUTION_NAME)
    (entry_point,) = [ep for ep in dist.entry_points if ep.group == "apache_airflow_provider"]
    assert entry_point.load() is get_provider_info


def test_every_listed_module_and_hook_class_imports() -> None:
    info = get_provider_info()
    modules = [
        module
        for section in ("hooks", "sensors", "operators", "triggers")
        for entry in info.get(section, [])
        for module in entry["python-modules"]
    ]
    assert modules
    missing = []
    for module in modules:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            missing.append(f"{module}: {exc}")
    assert missing == [], "provider info lists modules that do not exist"
    module_name, _, class_name = _connection_type()["hook-class-name"].rpartition(".")
    assert getattr(importlib.import_module(module_name), class_name) is DialNexaHook


def test_connection_type_matches_the_hook() -> None:
    conn_type = _connection_type()
    assert conn_type["connection-type"] == DialNexaHook.conn_type == "dialnexa"
    assert conn_type["hook-name"] == DialNexaHook.hook_name
    assert DialNexaHook.default_conn_name == "dialnexa_default"
    assert DialNexaHook.conn_name_attr == "dialnexa_conn_id"


def test_ui_field_behaviour_is_the_same_both_ways() -> None:
    from_hook = DialNexaHook.get_ui_field_behaviour()
    assert _kebab(from_hook) == _connection_type()["ui-field-behaviour"]
    assert set(from_hook) == {"hidden_fields", "relabeling", "placeholders"}
    # Must pass the validator Airflow applies to both sources of field behaviour.
    schema = _airflow_schema("customized_form_field_behaviours.schema.json")
    jsonschema.validators.validator_for(schema)(schema).validate(from_hook)


def test_ui_placeholder_extra_is_a_valid_extra() -> None:
    """The placeholder users copy into the extra field must be accepted by the hook without warnings."""
    extra = json.loads(UI_FIELD_BEHAVIOUR["placeholders"]["extra"])
    settings, warnings = settings_from_connection("c", host=None, password="k:s", extra=extra)
    assert warnings == []
    assert settings.timeout == extra["timeout"]
    assert settings.max_retries == extra["max_retries"]


def test_conn_fields_are_valid_json_schemas_that_accept_the_defaults() -> None:
    settings, _ = settings_from_connection("c", host=None, password="k:s")
    for name, field in CONN_FIELDS.items():
        jsonschema.Draft7Validator.check_schema(field["schema"])
        validator = jsonschema.Draft7Validator(field["schema"])
        assert validator.is_valid(getattr(settings, name)), f"default of {name!r} violates its form schema"
        assert validator.is_valid(None)
        assert field["label"]
        assert field["description"]


def _form_accepts(name: str, value: Any) -> bool:
    return bool(jsonschema.Draft7Validator(CONN_FIELDS[name]["schema"]).is_valid(value))


def _hook_accepts(name: str, value: Any) -> bool:
    try:
        settings_from_connection("c", host=None, password="k:s", extra={name: value})
    except DialNexaConfigError:
        return False
    return True


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("timeout", 0.5),
        ("timeout", 1),
        ("timeout", 300),
        ("timeout", 301),
        ("max_retries", -1),
        ("max_retries", 0),
        ("max_retries", 20),
        ("max_retries", 21),
        ("rate_limit_per_minute", 0),
        ("rate_limit_per_minute", 1),
        ("rate_limit_per_minute", 100_000),
        ("rate_limit_per_minute", 100_001),
        ("polling", "batched"),
        ("polling", "per_call"),
        ("polling", "sometimes"),
    ],
)
def test_form_schema_and_hook_validation_agree(name: str, value: Any) -> None:
    """What the connection form allows, the hook accepts, and the other way round."""
    assert _form_accepts(name, value) == _hook_accepts(name, value)


# -- py.typed ----------------------------------------------------------------------------------------------


def test_py_typed_marker_ships() -> None:
    marker = files("airflow_provider_dialnexa") / "py.typed"
    assert marker.is_file()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "airflow_provider_dialnexa" in pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    assert "Typing :: Typed" in pyproject["project"]["classifiers"]
    # Hatch leaves out whatever .gitignore matches; py.typed must not be one of those.
    patterns = [
        line.strip()
        for line in (ROOT / ".gitignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert not [p for p in patterns if fnmatch.fnmatch("py.typed", p.strip("/"))]


# -- Airflow's own discovery (subprocesses with a throwaway AIRFLOW_HOME) ------------------------------------

#: One interpreter runs ``airflow providers list`` and ``airflow providers hooks`` through the ``airflow``
#: console script's own entry point (``airflow.__main__:main``), then probes the providers manager: one
#: Airflow import instead of three keeps this under ~5 s of CPU.
_DISCOVERY_SCRIPT = """
import json, sys
from airflow.__main__ import main
for command in ("list", "hooks"):
    sys.argv = ["airflow", "providers", command, "-o", "json"]
    print(f"<<<{command}>>>", flush=True)
    main()
    sys.stdout.flush()
from airflow.providers_manager import ProvidersManager
pm = ProvidersManager()
print("<<<manager>>>", flush=True)
print(json.dumps({
    "field_behaviours": pm.field_behaviours.get("dialnexa"),
    "widgets": sorted(k for k in pm.connection_form_widgets if k.startswith("extra__dialnexa__")),
}))
"""


@pytest.fixture(scope="module")
def airflow_discovery(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """What Airflow's CLI and providers manager see, from a subprocess with a throwaway AIRFLOW_HOME."""
    home = tmp_path_factory.mktemp("airflow_home")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update({"AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"})
    assert AIRFLOW_BIN.is_file(), "the venv's airflow console script is missing"
    proc = subprocess.run(
        [sys.executable, "-c", _DISCOVERY_SCRIPT],
        env=env,
        cwd=home,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, f"airflow discovery failed:\n{proc.stderr[-3000:]}"
    sections = re.split(r"^<<<(\w+)>>>$", proc.stdout, flags=re.MULTILINE)
    results: dict[str, Any] = {
        name: json.loads(body) for name, body in zip(sections[1::2], sections[2::2], strict=True)
    }
    results["stderr"] = proc.stderr
    return results


def test_airflow_providers_list_shows_the_provider(airflow_discovery: dict[str, Any]) -> None:
    ours = [p for p in airflow_discovery["list"] if p["package_name"] == DISTRIBUTION_NAME]
    assert len(ours) == 1
    assert ours[0]["version"] == airflow_provider_dialnexa.__version__


def test_airflow_providers_hooks_shows_the_connection_type(airflow_discovery: dict[str, Any]) -> None:
    ours = [h for h in airflow_discovery["hooks"] if h["connection_type"] == "dialnexa"]
    assert len(ours) == 1
    assert ours[0]["class"] == "airflow_provider_dialnexa.hooks.dialnexa.DialNexaHook"
    assert ours[0]["package_name"] == DISTRIBUTION_NAME
    assert ours[0]["conn_id_attribute_name"] == "dialnexa_conn_id"
    assert ours[0]["hook_name"] == "DialNexa"


def test_discovery_logs_no_problem_with_the_provider(airflow_discovery: dict[str, Any]) -> None:
    lines = [line for line in airflow_discovery["stderr"].splitlines() if "dialnexa" in line.lower()]
    assert lines == [], f"airflow complained about the provider: {lines}"


def test_providers_manager_loads_the_connection_form(airflow_discovery: dict[str, Any]) -> None:
    manager = airflow_discovery["manager"]
    assert manager["field_behaviours"] is not None, "Airflow did not load the dialnexa field behaviour"
    assert manager["field_behaviours"]["hidden_fields"] == UI_FIELD_BEHAVIOUR["hidden_fields"]
    assert manager["field_behaviours"]["relabeling"] == UI_FIELD_BEHAVIOUR["relabeling"]
    assert manager["widgets"] == sorted(f"extra__dialnexa__{name}" for name in CONN_FIELDS)
