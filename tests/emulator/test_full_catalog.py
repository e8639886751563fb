"""The full DAP catalog over HTTP: every exposed table listed, described and served with valid rows.

The expected table list is pasted from dap-api.md section 12.2 (the 90 ``canvas`` tables of the
OpenAPI 0.9.0 document), not computed from the emulator's bundled schemas, so a wrong extraction
rule shows here. Rows are checked against the served JSON Schema itself, with the integer and
timestamp formats enforced (jsonschema only annotates formats unless told how to check them).
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import jsonschema
import pytest

from airflow_provider_instructure.dap_schema import parse_table_schema
from airflow_provider_instructure.emulator.config import EmulatorConfig
from airflow_provider_instructure.emulator.core import Emulator
from airflow_provider_instructure.emulator.dataset import CORE_TABLES, EXTRA_TABLE_ROWS, Dataset
from airflow_provider_instructure.emulator.encoders import format_timestamp
from airflow_provider_instructure.emulator.server import EmulatorServer, quiet_uvicorn_errors
from tests.emulator.conftest import CLOCK
from tests.emulator.dap_wire import DapApi

#: dap-api.md section 12.2: "the 90 of OAS v0.9.0".
CANVAS_TABLES = """
access_tokens account_users accounts assessment_question_banks assessment_questions assignment_groups
assignment_override_students assignment_overrides assignments attachment_associations attachments calendar_events
canvadocs_annotation_contexts comment_bank_items communication_channels content_migrations content_participation_counts
content_participations content_shares content_tags context_external_tools context_module_progressions context_modules
conversation_message_participants conversation_messages conversation_participants conversations
course_account_associations course_sections courses custom_gradebook_column_data custom_gradebook_columns
developer_key_account_bindings developer_keys discussion_entries discussion_entry_participants
discussion_topic_participants discussion_topics enrollment_dates_overrides enrollment_states enrollment_terms
enrollments favorites folders grading_period_groups grading_periods grading_standards group_categories
group_memberships groups late_policies learning_outcome_groups learning_outcome_question_results
learning_outcome_results learning_outcomes lti_line_items lti_resource_links lti_results
master_courses_child_content_tags master_courses_child_subscriptions master_courses_master_content_tags
master_courses_master_migrations master_courses_master_templates master_courses_migration_results
originality_reports outcome_proficiencies outcome_proficiency_ratings post_policies pseudonyms quiz_groups
quiz_questions quiz_submissions quizzes role_overrides roles rubric_assessments rubric_associations rubrics
score_statistics scores submission_comments submission_versions submissions user_account_associations user_notes
users web_conference_participants web_conferences wiki_pages wikis
""".split()  # noqa: SIM905 - pasted verbatim from the doc, easy to compare

ROWS = 12
_TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z$")
_INT_RANGE = {"int16": 15, "int32": 31, "int64": 63}


def _checker() -> jsonschema.FormatChecker:
    checker = jsonschema.FormatChecker()
    for fmt, bits in _INT_RANGE.items():
        checker.checks(fmt)(lambda v, b=bits: not isinstance(v, int) or -(2**b) <= v < 2**b)
    checker.checks("date-time")(lambda v: not isinstance(v, str) or bool(_TS.match(v)))
    return checker


CHECKER = _checker()


def validator(schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    """A validator of one wrapped table schema.

    The oversized placeholder is declared as ``oneOf [const placeholder, string]``: the
    placeholder matches both branches, so strict ``oneOf`` rejects exactly the value DAP sends.
    Upstream means "either", which is ``anyOf``. Numbers are read as Decimal so ``multipleOf
    0.01`` is exact.
    """
    text = json.dumps(schema).replace('"oneOf"', '"anyOf"')
    return jsonschema.Draft202012Validator(json.loads(text, parse_float=Decimal), format_checker=CHECKER)


def records(api: DapApi, namespace: str, table: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
    job = api.run_job(namespace, table, {"format": "jsonl", **body})
    assert job["status"] == "complete", job
    for part in api.download_objects(job):
        for line in gzip.decompress(part).decode().splitlines():
            yield json.loads(line, parse_float=Decimal)


@pytest.fixture(scope="module")
def full() -> Iterator[tuple[EmulatorServer, DapApi]]:
    quiet_uvicorn_errors()
    emulator = Emulator(EmulatorConfig(parts=1), seed=5, rows=ROWS, clock_start=CLOCK, extra_rows=None)
    server = EmulatorServer(emulator).start()
    try:
        yield server, DapApi(server.url)
    finally:
        server.stop()


def every_table() -> list[tuple[str, str]]:
    return [("canvas", t) for t in CANVAS_TABLES] + [("canvas_logs", "web_logs")]


def test_listing_is_the_full_catalog(full: tuple[EmulatorServer, DapApi]) -> None:
    _, api = full
    assert api.get("/dap/query/canvas/table").json() == {"tables": sorted(CANVAS_TABLES)}
    # user_agents is described by the document but not served by DAP yet (extract_dap_schemas.py).
    assert api.get("/dap/query/canvas_logs/table").json() == {"tables": ["web_logs"]}


def test_every_schema_answers_and_parses(full: tuple[EmulatorServer, DapApi]) -> None:
    _, api = full
    for namespace, table in every_table():
        response = api.get(f"/dap/query/{namespace}/table/{table}/schema")
        assert response.status_code == 200, (table, response.text)
        versioned = response.json()
        assert set(versioned) == {"schema", "version"}
        parsed = parse_table_schema(versioned)
        assert len(parsed.key_columns) == 1 and parsed.value_columns, table
        # No vendor keywords or nullable type arrays: the official client rejects them.
        assert '"x-' not in response.text and '"null"' not in response.text, table
    keys = parse_table_schema(api.get("/dap/query/canvas/table/enrollment_states/schema").json()).key_columns
    assert [c.name for c in keys] == ["enrollment_id"]


def test_validator_is_not_vacuous() -> None:
    """The checks the next test relies on reject what they must."""
    schema = {
        "type": "object",
        "properties": {
            "a": {"type": "integer", "format": "int16"},
            "t": {"type": "string", "format": "date-time"},
            "u": {"type": "string", "format": "uuid"},
            "s": {"oneOf": [{"type": "string", "const": "__dap_oversized_truncated__"}, {"type": "string"}]},
        },
        "additionalProperties": False,
    }
    check = validator(schema)
    assert check.is_valid({"a": 2**15 - 1, "t": "2024-05-01T00:00:00.5Z", "s": "__dap_oversized_truncated__"})
    assert not check.is_valid({"a": 2**15})
    assert not check.is_valid({"t": "2024-05-01 00:00:00"})
    assert not check.is_valid({"u": "not-a-uuid"})
    assert not check.is_valid({"extra": 1})


def test_snapshot_and_incremental_rows_match_their_schema(full: tuple[EmulatorServer, DapApi]) -> None:
    server, api = full
    until = server.emulator.advance(updates=3, inserts=2, deletes=2)
    since = format_timestamp(CLOCK)
    for namespace, table in every_table():
        check = validator(api.get(f"/dap/query/{namespace}/table/{table}/schema").json()["schema"])
        snapshot = list(records(api, namespace, table, {}))
        assert len(snapshot) == server.emulator.dataset.table(namespace, table).snapshot(until)[0], table
        assert len(snapshot) == ROWS + 2 - 2, table
        changes = list(records(api, namespace, table, {"since": since}))
        deletes = [r for r in changes if r["meta"]["action"] == "D"]
        assert len(deletes) == 2 and all(set(r) == {"meta", "key"} for r in deletes), table
        for record in snapshot + [r for r in changes if r["meta"]["action"] == "U"]:
            record["meta"].setdefault("action", "U")  # snapshot lines carry meta.ts only
            errors = [f"{list(e.absolute_path)}: {e.message}" for e in check.iter_errors(record)]
            assert not errors, (table, record["key"], errors[:3])


def test_row_defaults_and_catalogs() -> None:
    full = Dataset(rows=200, clock_start=CLOCK)
    assert sum(len(t) for t in full.tables.values()) == 91
    assert full.table("canvas", "users").initial_rows == 200
    assert full.table("canvas", "wikis").initial_rows == EXTRA_TABLE_ROWS
    assert Dataset(rows=3, clock_start=CLOCK).table("canvas", "wikis").initial_rows == 3
    named = Dataset(rows={"wikis": 70, "*": 40}, clock_start=CLOCK)
    assert named.table("canvas", "wikis").initial_rows == 70
    assert named.table("canvas", "roles").initial_rows == EXTRA_TABLE_ROWS
    assert named.table("canvas", "users").initial_rows == 40
    assert Dataset(rows=200, clock_start=CLOCK, extra_rows=None).table("canvas", "wikis").initial_rows == 200
    core = Dataset(rows=5, clock_start=CLOCK, catalog="core")
    assert {f"{ns}.{t}" for ns, tables in core.tables.items() for t in tables} == CORE_TABLES
    with pytest.raises(ValueError, match="catalog"):
        Dataset(catalog="everything")


def test_same_seed_same_rows_in_every_table() -> None:
    def rows_of(seed: int) -> dict[str, list[Any]]:
        dataset = Dataset(seed=seed, rows=6, clock_start=CLOCK)
        dataset.advance(updates=2, inserts=1, deletes=1)
        out = {}
        for namespace, tables in dataset.tables.items():
            for name, table in tables.items():
                _, states = table.snapshot(table.latest_ts)
                out[f"{namespace}.{name}"] = [
                    (table.factory.key(s.k), table.factory.value(s.k, s.version, s.ts)) for s in states
                ]
        return out

    first, second, other = rows_of(9), rows_of(9), rows_of(10)
    assert len(first) == 91 and first == second
    # Another seed changes every table that has a value column to draw.
    assert all(first[t] != other[t] for t in first), [t for t in first if first[t] == other[t]]


def test_core_tables_keep_their_rows_in_the_full_catalog() -> None:
    """Adding 76 tables moved no value of the original 15 (tests and demos compare with them)."""

    def rows_of(catalog: str) -> dict[str, list[Any]]:
        dataset = Dataset(seed=4, rows=20, clock_start=CLOCK, catalog=catalog)
        dataset.advance(updates=3, inserts=2, deletes=1)
        out = {}
        for name in sorted(CORE_TABLES):
            namespace, _, table_name = name.partition(".")
            table = dataset.table(namespace, table_name)
            _, states = table.snapshot(table.latest_ts)
            out[name] = [(table.factory.key(s.k), table.factory.value(s.k, s.version, s.ts)) for s in states]
        return out

    core, full = rows_of("core"), rows_of("full")
    assert len(core) == 15 and all(len(rows) == 21 for rows in core.values())
    assert core == full
