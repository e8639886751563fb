"""ListCD2TablesOperator and GetCD2TableSchemaOperator against the emulator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from airflow_provider_instructure.emulator.server import EmulatorServer
from airflow_provider_instructure.exceptions import InstructureConfigError
from airflow_provider_instructure.operators.cd2 import GetCD2TableSchemaOperator, ListCD2TablesOperator


def test_list_tables_returns_sorted_names(instructure_conn: EmulatorServer) -> None:
    result = ListCD2TablesOperator(task_id="t").execute({})
    served = sorted(instructure_conn.emulator.dataset.tables["canvas"])
    assert result == served
    json.dumps(result)  # XCom-ready: a plain list of strings, usable by .expand(table=...)


@pytest.mark.parametrize(
    ("include", "exclude", "expected"),
    [
        # The plugin's emulator serves the full catalog (90 canvas tables).
        (["course*"], None, ["course_account_associations", "course_sections", "courses"]),
        ("user*", None, ["user_account_associations", "user_notes", "users"]),
        (None, ["*s"], None),
        (
            ["assign*", "users"],
            ["assignment_groups", "assignment_over*"],
            ["assignments", "users"],
        ),
    ],
)
def test_include_exclude_globs(instructure_conn: EmulatorServer, include, exclude, expected) -> None:
    result = ListCD2TablesOperator(task_id="t", include=include, exclude=exclude).execute({})
    if expected is None:  # computed from what the emulator serves rather than pasted
        served = sorted(instructure_conn.emulator.dataset.tables["canvas"])
        expected = [t for t in served if not t.endswith("s")]
    assert result == expected


def test_other_namespace(instructure_conn: EmulatorServer) -> None:
    assert ListCD2TablesOperator(task_id="t", namespace="canvas_logs").execute({}) == ["web_logs"]


def test_bad_patterns_are_rejected_before_any_call(instructure_conn: EmulatorServer) -> None:
    with pytest.raises(InstructureConfigError, match="glob"):
        ListCD2TablesOperator(task_id="t", include=[1, 2]).execute({})
    assert instructure_conn.emulator.stats.count("login") == 0


def test_template_fields() -> None:
    assert set(ListCD2TablesOperator.template_fields) == {"namespace", "include", "exclude"}
    assert set(GetCD2TableSchemaOperator.template_fields) == {"table", "namespace", "output_path"}


def test_schema_operator_returns_and_writes_schema(instructure_conn: EmulatorServer, tmp_path: Path) -> None:
    result = GetCD2TableSchemaOperator(task_id="s", table="users", output_path=str(tmp_path)).execute({})
    served = instructure_conn.emulator.dataset.table("canvas", "users").versioned_schema
    assert result == {"schema": served["schema"], "version": served["version"]}
    written = tmp_path / f"users_schema_version_{served['version']}.json"
    assert json.loads(written.read_text()) == result
    assert [p.name for p in tmp_path.iterdir()] == [written.name]  # no temporary file left behind


def test_schema_operator_to_explicit_file(instructure_conn: EmulatorServer, tmp_path: Path) -> None:
    target = tmp_path / "nested" / "web_logs.json"
    GetCD2TableSchemaOperator(task_id="s", table="web_logs", namespace="canvas_logs", output_path=target).execute({})
    assert json.loads(target.read_text())["schema"]["properties"]["key"]["properties"]["id"]["format"] == "uuid"
