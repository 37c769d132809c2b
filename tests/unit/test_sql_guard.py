"""The SQL guard of ``execute_raw``: which raw statements pass, and why the others do not."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from healthdb import UnsafeStatement
from healthdb.internal.sql_guard import check

DIALECTS = ["postgresql", "sqlite"]

ACCEPTED_READS = [
    "SELECT 1",
    "SELECT 1;",
    "SELECT id, name FROM clinics WHERE id = :id",
    "select id from clinics where name = :name and created_at > :since",
    "SELECT * FROM patients WHERE family_name = :n ORDER BY 1 LIMIT 10 OFFSET 5",
    "WITH p AS (SELECT id FROM patients WHERE clinic_id = :c) SELECT count(*) FROM p",
    "SELECT 1 UNION SELECT 2",
    "SELECT count(1) FROM patients GROUP BY sex",
    "SELECT * FROM patients WHERE deleted_at IS NULL AND active = TRUE",
    "SELECT * FROM clinics WHERE id IN (SELECT id FROM clinics LIMIT 1)",
    'SELECT "p"."id" FROM "patients" AS "p" WHERE "p"."mrn" = :mrn',
    "SELECT * FROM clinics c JOIN patients p ON p.clinic_id = c.id WHERE p.id = :id",
]
ACCEPTED_WRITES = [
    "INSERT INTO clinics (id, name) VALUES (:id, :name)",
    "UPDATE clinics SET name = :name WHERE id = :id",
    "DELETE FROM clinics WHERE id = :id",
    "UPDATE patients SET notes = :notes WHERE id = :id AND version = :version",
]

# (statement, words the refusal message must contain)
REFUSED = [
    ("", "empty"),
    ("   ", "empty"),
    ("SELECT 1; SELECT 2", "one statement"),
    ("SELECT 1; DROP TABLE patients", "one statement"),
    ("SELECT * FROM patients WHERE id = :id; DELETE FROM patients", "one statement"),
    ("SELECT 1 -- trailing", "comments"),
    ("SELECT /* hidden */ 1", "comments"),
    ("SELECT * FROM patients WHERE mrn = :m --", "comments"),
    ("SELECT * FROM patients WHERE family_name = 'x'", "string literals"),
    ("SELECT * FROM patients WHERE family_name = 'O''Brien'", "string literals"),
    ("SELECT 'a'", "string literals"),
    ("SELECT * FROM patients WHERE id = 1", "number literals"),
    ("SELECT * FROM patients WHERE id = 1 OR 1=1", "number literals"),
    ("SELECT * FROM clinics c JOIN patients p ON p.clinic_id = c.id AND p.id > 5", "number"),
    ("SELECT count(*) FROM patients GROUP BY sex HAVING count(*) > 3", "number literals"),
    ("SELECT * FROM clinics LIMIT 'x'", "string literals"),
    ("DROP TABLE patients", "DDL"),
    ("CREATE TABLE x (id int)", "DDL"),
    ("ALTER TABLE patients ADD COLUMN x int", "DDL"),
    ("TRUNCATE patients", "DDL"),
    ("GRANT ALL ON patients TO mallory", "DDL"),
    ("SELECT * INTO stolen FROM clinics", "INTO"),
    ("SET ROLE postgres", "only SELECT"),
    ("PRAGMA table_info(patients)", "refused"),
    ("COPY patients TO STDOUT", "refused"),
    ("EXPLAIN SELECT 1", "refused"),
    ("BEGIN", "refused"),
    ("COMMIT", "refused"),
    ("CALL p()", "refused"),
    ("SELECT set_config(:k, :v, false)", "set_config"),
    ("SELECT pg_sleep(:s)", "pg_sleep"),
    ("SELECT current_setting(:k)", "current_setting"),
    ("SELECT query_to_xml(:q, true, true, :ns)", "query_to_xml"),
    ("SELECT load_extension(:path)", "load_extension"),
    ("SELECT * FROM clinics WHERE id = ?", "refused"),
    ("SELECT * FROM clinics WHERE id = $1", "placeholders"),
    ("SELECT * FROM clinics WHERE id = %s", "refused"),
    ("select ((", "parsed"),
]
READ_ONLY_REFUSED = [
    *ACCEPTED_WRITES,
    "WITH d AS (DELETE FROM patients RETURNING *) SELECT * FROM d",
]
WRITE_REFUSED = [
    ("UPDATE patients SET version = version + 1 WHERE id = :id", "number literals"),
    ("INSERT INTO clinics (id, name) VALUES (:id, 'x')", "string literals"),
    ("WITH d AS (DELETE FROM patients RETURNING *) SELECT * FROM d", "nested"),
    ("DROP TABLE patients", "DDL"),
]


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("sql", ACCEPTED_READS)
def test_accepted_reads(sql: str, dialect: str) -> None:
    checked = check(sql, dialect=dialect, read_only=True)
    assert checked.kind == "select"
    assert len(checked.fingerprint) == 64


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("sql", ACCEPTED_WRITES)
def test_accepted_writes(sql: str, dialect: str) -> None:
    checked = check(sql, dialect=dialect, read_only=False)
    assert checked.kind in {"insert", "update", "delete"}


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize(("sql", "why"), REFUSED)
def test_refused(sql: str, why: str, dialect: str) -> None:
    for read_only in (True, False):
        with pytest.raises(UnsafeStatement, match=why) as info:
            check(sql, dialect=dialect, read_only=read_only)
        assert info.value.code == "unsafe_statement"
        # The message names the rule, never the statement's text.
        if len(sql.strip()) > 8:
            assert sql not in str(info.value)


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("sql", READ_ONLY_REFUSED)
def test_read_only_allows_only_select(sql: str, dialect: str) -> None:
    with pytest.raises(UnsafeStatement, match="read-only"):
        check(sql, dialect=dialect, read_only=True)


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize(("sql", "why"), WRITE_REFUSED)
def test_write_rules(sql: str, why: str, dialect: str) -> None:
    with pytest.raises(UnsafeStatement, match=why):
        check(sql, dialect=dialect, read_only=False)


def test_reports_tables_and_parameters() -> None:
    checked = check(
        "SELECT p.id FROM patients p JOIN clinics c ON c.id = p.clinic_id WHERE p.mrn = :mrn",
        dialect="postgresql",
    )
    assert checked.tables == {"patients", "clinics"}
    assert checked.parameters == {"mrn"}


def test_fingerprint_is_normalised_and_never_depends_on_parameters() -> None:
    a = check("SELECT id FROM clinics WHERE id = :id", dialect="postgresql")
    b = check("select   id\nfrom clinics\twhere id = :id", dialect="postgresql")
    c = check("SELECT name FROM clinics WHERE id = :id", dialect="postgresql")
    assert a.fingerprint == b.fingerprint
    assert a.fingerprint != c.fingerprint


def test_injection_shaped_text_is_refused() -> None:
    # What string concatenation would produce from ``Robert'); DROP TABLE patients;--``.
    sql = "SELECT * FROM patients WHERE family_name = 'Robert'); DROP TABLE patients;--'"
    with pytest.raises(UnsafeStatement):
        check(sql, dialect="postgresql")


@pytest.mark.parametrize("value", [None, 42, b"SELECT 1", ["SELECT 1"]])
def test_non_strings_refused(value: object) -> None:
    with pytest.raises(UnsafeStatement, match="string"):
        check(value, dialect="sqlite")


def test_oversized_refused() -> None:
    with pytest.raises(UnsafeStatement, match="longer"):
        check("SELECT " + "a, " * 10_000 + "b FROM clinics", dialect="sqlite")


SQLISH = st.lists(
    st.sampled_from(
        [
            "SELECT",
            "FROM",
            "WHERE",
            "patients",
            "clinics",
            "(",
            ")",
            ";",
            "--",
            "/*",
            "*/",
            "'",
            '"',
            "1",
            ":id",
            "$1",
            "?",
            "=",
            "OR",
            "UNION",
            "DROP",
            "TABLE",
            "WITH",
            "AS",
            "$$",
            "E'",
            "\\",
            "*",
            ",",
            "INSERT",
            "INTO",
            "VALUES",
            "SET",
            "UPDATE",
            "\x00",
        ]
    ),
    max_size=25,
).map(" ".join)


@settings(max_examples=300, deadline=None)
@given(sql=st.one_of(st.text(max_size=300), SQLISH), dialect=st.sampled_from(DIALECTS))
def test_random_text_never_crashes_the_guard(sql: str, dialect: str) -> None:
    """Whatever the input, the guard returns a verdict or raises UnsafeStatement."""
    for read_only in (True, False):
        try:
            checked = check(sql, dialect=dialect, read_only=read_only)
        except UnsafeStatement:
            continue
        assert checked.kind in {"select", "insert", "update", "delete"}
        assert "--" not in sql
        assert "/*" not in sql
