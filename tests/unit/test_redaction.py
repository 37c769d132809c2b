"""Log redaction: by key (secrets, PHI, model-declared PHI), by value pattern, nested, and
through the configured pipeline for structlog events, stdlib records and tracebacks."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from healthdb.logging import configure, model_phi_names, redactor
from healthdb.models import Appointment, Patient
from healthdb.phi import phi_fields
from healthdb.phi.redaction import REDACTED, Redactor, redact_text
from healthdb_api.errors import _safe_msg
from healthdb_api.suspicious import detect, scan, scan_query
from tests.canary import LOGS, LogCapture, canary


def run(event: dict[str, Any], processor: Redactor | None = None) -> dict[str, Any]:
    result = (processor or Redactor())(None, "info", dict(event))
    return dict(result)


@pytest.mark.parametrize(
    "key",
    [
        "password",
        "new_password",
        "password_hash",
        "access_token",
        "refresh-token",
        "jwt_secret",
        "Authorization",
        "cookie",
        "set_cookie",
        "api_key",
        "X-Api-Key",
        "ssn",
        "given_name",
        "family_name",
        "date_of_birth",
        "phone",
        "email",
        "address",
        "notes",
        "reason",
    ],
)
def test_sensitive_keys_are_redacted(key: str) -> None:
    secret = canary("key")
    assert run({"event": "e", key: secret})[key] == REDACTED


def test_innocent_keys_and_structure_survive() -> None:
    out = run({"event": "login_succeeded", "user_id": "u-1", "count": 3, "ok": True, "n": None})
    assert out == {"event": "login_succeeded", "user_id": "u-1", "count": 3, "ok": True, "n": None}


def test_nested_dicts_and_lists_are_redacted() -> None:
    name, ssn, token = canary("name"), canary("ssn"), canary("token")
    out = run(
        {
            "event": "e",
            "patient": {"given_name": name, "ids": [{"ssn": ssn}], "version": 2},
            "headers": [("authorization", token), (b"cookie", token)],
            "body": {"auth": {"refresh_token": token}},
        }
    )
    text = repr(out)
    assert not [value for value in (name, ssn, token) if value in text]
    assert out["patient"]["version"] == 2
    assert out["patient"]["ids"] == [{"ssn": REDACTED}]


def test_model_declared_phi_names_are_redacted_lazily() -> None:
    calls: list[int] = []

    def names() -> list[str]:
        calls.append(1)
        return ["blood_group"]

    processor = Redactor(names)
    assert calls == [], "names must not be resolved before the first event"
    assert run({"event": "e", "blood_group": "AB-"}, processor)["blood_group"] == REDACTED
    run({"event": "e"}, processor)
    assert calls == [1]


def test_every_declared_phi_attribute_is_a_redacted_key() -> None:
    declared = set(phi_fields(Patient)) | set(phi_fields(Appointment))
    assert declared <= model_phi_names()
    assert declared <= redactor().keys


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("ssn 123-45-6789 given", "ssn " + REDACTED + " given"),
        ("ssn 123456789.", "ssn " + REDACTED + "."),
        ("Authorization: Bearer abcdef123456.xyz", "Authorization: Bearer " + REDACTED),
        (
            "postgresql+asyncpg://app:s3cr3t@db:5432/h",
            "postgresql+asyncpg://app:[REDACTED]@db:5432/h",
        ),
        (
            "GET /api/v1/patients?name=Smi&limit=5",
            "GET /api/v1/patients?name=[REDACTED]&limit=[REDACTED]",
        ),
        (
            "DETAIL:  Key (clinic_id, mrn)=(c1, MRN-77) already exists.",
            "DETAIL:  Key (clinic_id, mrn)=([REDACTED]) already exists.",
        ),
        (
            "DETAIL:  Failing row contains (a, Smith, b).",
            "DETAIL:  Failing row contains ([REDACTED]).",
        ),
    ],
)
def test_value_patterns(text: str, kept: str) -> None:
    assert redact_text(text) == kept


def test_jwts_are_redacted_anywhere() -> None:
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjMifQ.c2lnbmF0dXJlLXBhcnQ"
    assert jwt not in redact_text(f"token={jwt} rejected")
    assert REDACTED in redact_text(jwt)


@pytest.mark.parametrize(
    "text",
    [
        "2024-05-01T10:11:12.123456Z",
        "3f2b6c1e-1234-4d5e-8f90-123456789012",
        "duration 1234.5 ms, 12 rows",
        "phone +12125550123 is not an ssn",
    ],
)
def test_ordinary_values_are_left_alone(text: str) -> None:
    assert redact_text(text) == text


@pytest.fixture
def pipeline() -> Iterator[io.StringIO]:
    """The production configuration rendering into a buffer; restored to the suite's capture."""
    stream = io.StringIO()
    configure(level="DEBUG", json=True, stream=stream)
    structlog.configure(cache_logger_on_first_use=False)
    try:
        yield stream
    finally:
        LOGS.install()


def test_pipeline_redacts_structlog_stdlib_and_tracebacks(pipeline: io.StringIO) -> None:
    name, ssn, password = canary("name"), "987-65-4321", canary("password")
    structlog.get_logger("t").info("seen", given_name=name, detail={"password": password})
    logging.getLogger("uvicorn.error").warning("login for %s with ssn %s", "x", ssn)
    try:
        raise ValueError(f"DETAIL:  Key (clinic_id, mrn)=(c, {name}) already exists.")
    except ValueError:
        logging.getLogger("sqlalchemy.x").exception("failed")
        structlog.get_logger("t").exception("failed too")
    lines = [json.loads(line) for line in pipeline.getvalue().splitlines()]
    assert len(lines) == 4
    text = pipeline.getvalue()
    for secret in (name, ssn, password):
        assert secret not in text
    assert lines[0]["given_name"] == REDACTED
    assert "Traceback" in lines[2]["exception"]
    assert REDACTED in lines[2]["exception"]
    assert REDACTED in lines[3]["exception"]


def test_driver_debug_output_is_never_enabled(pipeline: io.StringIO) -> None:
    # SQLAlchemy logs result rows and aiosqlite bound parameters at DEBUG.
    for name in ("sqlalchemy.engine", "aiosqlite"):
        assert not logging.getLogger(name).isEnabledFor(logging.DEBUG)
    assert logging.getLogger("healthdb").isEnabledFor(logging.DEBUG)


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("Robert'); DROP TABLE patients;--", "stacked_statement"),
        ("Robert'); DROP TABLE patients;--", "comment_tail"),
        ("x' UNION SELECT password FROM users", "union_select"),
        ("' or 1=1", "tautology"),
        ("a' OR 'a'='a", "tautology"),
        ("<script>alert(1)</script>", "script_tag"),
        ("1; SELECT pg_sleep(10)", "sql_sleep"),
    ],
)
def test_detector_names_the_rule(text: str, rule: str) -> None:
    assert rule in detect(text)


@pytest.mark.parametrize(
    "text", ["O'Brien", "D'Angelo-Smith", "Anne-Marie", "Notes: union members; select committee"]
)
def test_detector_leaves_ordinary_names_alone(text: str) -> None:
    assert detect(text) == ()


def test_scan_reports_locations_never_values() -> None:
    payload = "Robert'); DROP TABLE patients;--"
    body = {
        "family_name": payload,
        "items": [{"note": "fine"}, {"note": payload}],
        "PHI here": payload,
    }
    findings = list(scan(body))
    assert [f.location for f in findings] == ["body.family_name", "body.items[1].note", "body.?"]
    assert payload not in repr(findings)
    assert [f.location for f in scan_query(b"name=%27+or+1%3D1&limit=5")] == ["query.name"]


def test_validation_messages_that_quote_the_input_are_replaced() -> None:
    value = canary("email")
    quoting = {"msg": f"value is not valid: {value}@ has no domain", "input": f"{value}@"}
    assert _safe_msg(quoting) == "invalid value"
    whole_body = {"msg": f"bad {value}", "input": {"given_name": value, "sex": "x"}}
    assert _safe_msg(whole_body) == "invalid value"
    # A message naming the rule, or what it expects, is kept even when the input matches it.
    literal = {
        "msg": "Input should be 'female', 'male', 'other' or 'unknown'",
        "input": "other things",
        "ctx": {"expected": "'female', 'male', 'other' or 'unknown'"},
    }
    assert _safe_msg(literal) == literal["msg"]
    assert _safe_msg({"msg": "String should have at most 5 characters", "input": "abcdefg"}) == (
        "String should have at most 5 characters"
    )
    assert _safe_msg({"msg": "ssn 123-45-6789 rejected", "input": 5}) == f"ssn {REDACTED} rejected"


def test_the_canary_check_fails_a_test_whose_logs_hold_a_canary() -> None:
    capture = LogCapture()
    capture.write('{"event": "ok"}\n')
    capture.check("a clean run")  # nothing to report
    capture.write(f'{{"event": "seen", "name": "{canary("name").lower()}"}}\n')
    with pytest.raises(pytest.fail.Exception, match="contain canary values"):
        capture.check("a leaky run")
    assert capture.lines == []
