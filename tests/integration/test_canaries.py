"""Canary patients through the library, on both backends, with logging at DEBUG: no canary
reaches a log line, an error message, the metrics or a slow-statement record.

Every PHI field of the seeded patient holds a registered canary (``tests/canary.py``); the
suite-wide capture also fails this test if a canary is logged, but the assertions here say
which channel leaked.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from typing import Any

import pytest
import structlog
from prometheus_client import generate_latest
from sqlalchemy.ext.asyncio import AsyncSession

from healthdb import ConflictError, HealthdbError, InvalidInput, QueryOptions
from healthdb.models import Patient
from healthdb.phi import phi_fields
from healthdb.phi.redaction import REDACTED
from healthdb.repositories import PatientRepository
from healthdb.service import DatabaseService
from tests.canary import LOGS, canary, canary_email, canary_phone, found_in
from tests.integration.conftest import MakeClinic, MakeDb

PHI = QueryOptions.for_phi


def canary_patient() -> dict[str, Any]:
    """Constructor arguments with a canary in every PHI field that can hold a string."""
    return {
        "mrn": canary("mrn"),
        "given_name": canary("given"),
        "family_name": canary("family"),
        "date_of_birth": dt.date(1971, 2, 3),
        "sex": "other",
        "phone": canary_phone(),
        "email": canary_email(),
        "address": canary("address"),
        "ssn": canary("ssn"),
        "notes": canary("notes") + "\nsecond line",
    }


def leaked(value: object) -> set[str]:
    return found_in(repr(value))


@pytest.fixture
async def canary_db(make_db: MakeDb) -> DatabaseService:
    # Every statement is "slow", and PostgreSQL plans are captured: the worst case for PHI.
    return await make_db(slow_query_ms=0, explain_slow_queries=True)


def test_every_free_text_phi_field_holds_a_canary() -> None:
    fields = canary_patient()
    constrained = {"date_of_birth", "sex"}  # a date and a fixed vocabulary: no free text
    for name in set(phi_fields(Patient)) - constrained:
        assert found_in(str(fields[name])), f"PHI field {name} carries no canary"


async def test_library_round_trip_never_logs_canaries(
    canary_db: DatabaseService, make_clinic: MakeClinic, backend: str
) -> None:
    db = canary_db
    clinic = await make_clinic()
    fields = canary_patient()
    errors: list[HealthdbError] = []

    async def create(session: AsyncSession) -> uuid.UUID:
        return (await PatientRepository(session).add(Patient(**fields))).id

    async with db.clinic(clinic, role="doctor", purpose="canary"):
        patient_id = await db.execute_write(create, PHI("canary.create"))

        async def read(session: AsyncSession) -> dict[str, Any]:
            repo = PatientRepository(session)
            got = await repo.get(patient_id)
            assert got is not None
            by_prefix = await repo.search(name=fields["family_name"][:12])
            by_mrn = await repo.by_mrn(fields["mrn"])
            by_ssn = await repo.find_by_ssn(fields["ssn"])
            assert [p.id for p in by_prefix.items] == [patient_id]
            assert by_mrn is not None
            assert [p.id for p in by_ssn] == [patient_id]
            return {name: getattr(got, name) for name in fields}

        # An authorised read returns the values exactly: the canaries are really stored.
        assert await db.execute_read(read, PHI("canary.read")) == fields

        new_address = canary("address")

        async def update(session: AsyncSession) -> None:
            await PatientRepository(session).update(
                patient_id, expected_version=1, address=new_address, notes=canary("notes")
            )

        await db.execute_write(update, PHI("canary.update"))

        # Errors: a duplicate MRN (through the repository, and raw, keeping the driver's
        # error as the cause), a stale version, and invalid input that carries a canary.
        async def duplicate(session: AsyncSession) -> None:
            await PatientRepository(session).add(Patient(**{**fields, "ssn": None}))

        async def duplicate_raw(session: AsyncSession) -> None:
            session.add(Patient(**{**fields, "ssn": None}))
            await session.flush()

        async def stale(session: AsyncSession) -> None:
            await PatientRepository(session).update(
                patient_id, expected_version=1, address=canary("address")
            )

        async def bad_search(session: AsyncSession) -> None:
            await PatientRepository(session).search(name=canary("search") * 20)

        async def bad_ssn(session: AsyncSession) -> None:
            await PatientRepository(session).find_by_ssn(canary("ssn") * 10)

        for op, expected in [
            (duplicate, ConflictError),
            (duplicate_raw, HealthdbError),
            (stale, ConflictError),
            (bad_search, InvalidInput),
            (bad_ssn, InvalidInput),
        ]:
            with pytest.raises(expected) as raised:
                await db.execute_write(op, PHI(f"canary.{op.__name__}"))
            errors.append(raised.value)
            # A careless handler logs the whole exception, cause chain and all.
            logging.getLogger("healthdb.test").error("write failed", exc_info=raised.value)
            structlog.get_logger("healthdb.test").exception("write failed", exc_info=raised.value)

        async def delete(session: AsyncSession) -> None:
            await PatientRepository(session).soft_delete(patient_id)

        await db.execute_write(delete, PHI("canary.delete"))

    # A careless developer logs a patient's fields by name: the key-based net catches it.
    structlog.get_logger("healthdb.test").info("patient_loaded", patient=fields, **fields)

    for error in errors:
        assert not leaked(str(error)), f"{type(error).__name__} message carries a canary"
    summary = db.metrics_summary()
    assert summary["slow_statements"], "slow_query_ms=0 must record statements"
    assert not leaked(summary), "metrics summary or slow-statement records carry a canary"
    if backend == "postgresql":
        assert any(s.plan for s in summary["slow_statements"]), "plans must be captured"
    assert not leaked(generate_latest(db.metrics.registry).decode())

    captured = LOGS.text()
    assert "patient_loaded" in captured, "the suite-wide log capture is not installed"
    assert REDACTED in captured
    assert captured.count('"exception": "Traceback') >= 2 * len(errors), "tracebacks missing"
    assert not found_in(captured), "a canary reached the logs"
