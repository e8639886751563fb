"""Registration: the provider-info dict, its connection form, and discovery by Airflow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import resources

import jsonschema
import pytest

from airflow_provider_instructure.get_provider_info import get_provider_info
from airflow_provider_instructure.hooks.instructure import InstructureHook


def _schema(name: str) -> dict:
    return json.loads(resources.files("airflow").joinpath(name).read_text())


def test_provider_info_passes_the_runtime_schema() -> None:
    jsonschema.validate(get_provider_info(), _schema("provider_info.schema.json"))


def test_provider_info_names_the_package_version_first() -> None:
    from airflow_provider_instructure import __version__

    assert get_provider_info()["versions"][0] == __version__


def test_connection_types_pass_the_strict_dev_schema() -> None:
    schema = _schema("provider.yaml.schema.json")
    validator = jsonschema.Draft7Validator(schema["properties"]["connection-types"])
    errors = [e.message for e in validator.iter_errors(get_provider_info()["connection-types"])]
    assert errors == []


def test_connection_form_declares_the_documented_fields() -> None:
    (conn_type,) = get_provider_info()["connection-types"]
    assert conn_type["connection-type"] == InstructureHook.conn_type == "instructure"
    assert conn_type["hook-class-name"] == "airflow_provider_instructure.hooks.instructure.InstructureHook"
    assert set(conn_type["conn-fields"]) == {"namespace", "timeout", "retry_limit", "scope"}
    behaviour = conn_type["ui-field-behaviour"]
    assert behaviour["relabeling"] == {
        "login": "Client ID",
        "password": "Client Secret",
        "host": "API URL",
        "port": "Port (443 for Instructure)",
    }
    assert behaviour["placeholders"]["host"] == "https://api-gateway.instructure.com"
    # Port is shown so that stored and posted ports agree on the 3.3.2 Test button (issue 8, finding 2)
    assert behaviour["hidden-fields"] == ["schema"]
    # the legacy classmethod (Airflow 2 / 3.0-3.1 form) says the same thing
    legacy = InstructureHook.get_ui_field_behaviour()
    assert legacy["hidden_fields"] == behaviour["hidden-fields"]
    assert legacy["relabeling"] == behaviour["relabeling"]


def test_module_paths_in_provider_info_import() -> None:
    import importlib

    info = get_provider_info()
    for section in ("hooks", "operators", "sensors", "triggers"):
        for entry in info[section]:
            for module in entry["python-modules"]:
                importlib.import_module(module)


def test_task_runtime_discovers_the_hook() -> None:
    from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime

    hook_info = ProvidersManagerTaskRuntime().hooks["instructure"]
    assert hook_info is not None
    assert hook_info.hook_class_name.endswith("InstructureHook")
    assert hook_info.connection_id_attribute_name == "instructure_conn_id"


def test_airflow_providers_list_shows_the_provider() -> None:
    airflow = os.path.join(os.path.dirname(sys.executable), "airflow")
    if not os.path.exists(airflow):
        pytest.skip("the airflow CLI is not installed next to this interpreter")
    result = subprocess.run(
        [airflow, "providers", "list", "-o", "json"], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    packages = {p["package_name"]: p for p in json.loads(result.stdout[result.stdout.index("[") :])}
    assert "airflow-provider-instructure" in packages
