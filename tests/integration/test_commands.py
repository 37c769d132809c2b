"""Commands: the ORM-free versioned update (``healthdb.command``, ``patient_commands``).

The same rules as the repository's update (immutable columns, masked values, encryption,
blind index, version), audited in the write's own transaction, scoped to the clinic (on
PostgreSQL by the command's own filter and by row-level security; on SQLite it runs the ORM
fallback, behind the ORM wall).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from healthdb import (
    ClinicContextRequired,
    ConflictError,
    DatabaseService,
    InvalidInput,
    NotFound,
    QueryOptions,
    Settings,
)
from healthdb.internal import audit_verify
from healthdb.models import AuditEvent
from healthdb.phi import MaskedValue
from healthdb.repositories import PatientRecord, PatientRepository, patient_commands
from tests.integration.conftest import DEFAULTS, MakeClinic, MakePatient

PHI = QueryOptions.for_phi("test.command")


async def audit_actions(db: DatabaseService, clinic: uuid.UUID) -> list[tuple[str, list[str]]]:
    async def rows(session: AsyncSession) -> list[tuple[str, list[str]]]:
        stmt = (
            select(AuditEvent.action, AuditEvent.phi_fields)
            .where(AuditEvent.clinic_id == clinic)
            .order_by(AuditEvent.occurred_at, AuditEvent.id)
        )
        return [(a, list(f)) for a, f in (await session.execute(stmt)).all()]

    async with db.clinic(clinic, role="clinic_admin"):
        return await db.execute_read(rows)


async def test_an_update_changes_the_row_and_audits_it(
    db: DatabaseService, make_clinic: MakeClinic, make_patient: MakePatient
) -> None:
    clinic = await make_clinic()
    pid = await make_patient(clinic, ssn="123-45-6789")
    before = len(await audit_actions(db, clinic))
    async with db.clinic(clinic, role="nurse"):
        record = await db.execute_write(
            patient_commands.update(
                pid, expected_version=1, phone="+14155552671", ssn="987-65-4321"
            ),
            PHI,
        )
        entity = await db.execute_read(lambda s: PatientRepository(s).get(pid), PHI)
    assert isinstance(record, PatientRecord)
    assert record.version == 2
    assert record.phone == "+14155552671"
    assert record.ssn == "***-**-4321"  # the nurse's mask, on the way out
    assert entity is not None
    assert entity.version == 2
    assert entity.phone == "+14155552671"
    async with db.clinic(clinic, role="doctor"):
        found = await db.execute_read(lambda s: PatientRepository(s).find_by_ssn("987654321"))
    assert [p.id for p in found] == [pid]  # the blind index moved with the SSN
    new = (await audit_actions(db, clinic))[before:]
    assert ("phi.update", ["phone", "ssn"]) in new
    assert any(action == "phi.read_masked" for action, _ in new)

    async def check(session: AsyncSession) -> audit_verify.VerifyResult:
        return await audit_verify.verify(session, clinic)

    async with db.clinic(clinic, role="clinic_admin"):
        assert (await db.execute_read(check)).ok


@pytest.mark.parametrize("migrated_url", ["postgres"], indirect=True)
async def test_the_command_stores_the_ssn_encrypted(
    db: DatabaseService, make_clinic: MakeClinic, make_patient: MakePatient
) -> None:
    clinic = await make_clinic()
    pid = await make_patient(clinic)
    async with db.clinic(clinic, role="doctor"):
        await db.execute_write(
            patient_commands.update(pid, expected_version=None, ssn="111-22-3333"), PHI
        )
        stored = await db.execute_raw(
            "SELECT ssn FROM patients WHERE id = :id", {"id": pid}, reason="test: stored form"
        )
    assert str(stored[0]["ssn"]).startswith("v1.")
    assert "111" not in str(stored[0]["ssn"])


async def test_stale_missing_foreign_and_deleted_rows(
    db: DatabaseService, make_clinic: MakeClinic, make_patient: MakePatient
) -> None:
    mine, theirs = await make_clinic(), await make_clinic()
    pid = await make_patient(mine)
    foreign = await make_patient(theirs)
    async with db.clinic(mine, role="doctor"):
        with pytest.raises(ConflictError):
            await db.execute_write(
                patient_commands.update(pid, expected_version=7, sex="male"), PHI
            )
        for other in (foreign, uuid.uuid4()):
            with pytest.raises(NotFound):
                await db.execute_write(
                    patient_commands.update(other, expected_version=None, sex="male"), PHI
                )
        await db.execute_write(lambda s: PatientRepository(s).soft_delete(pid), PHI)
        with pytest.raises(NotFound):
            await db.execute_write(
                patient_commands.update(pid, expected_version=None, sex="male"), PHI
            )
    async with db.clinic(theirs, role="doctor"):
        untouched = await db.execute_read(lambda s: PatientRepository(s).get(foreign), PHI)
    assert untouched is not None
    assert untouched.sex == "female"
    assert untouched.version == 1


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"clinic_id": uuid.uuid4()}, "cannot be changed"),
        ({"version": 9}, "cannot be changed"),
        ({"no_such_column": 1}, "unknown"),
        ({"ssn": MaskedValue("***-**-1234")}, "masked"),
    ],
)
async def test_refused_changes(
    db: DatabaseService, make_clinic: MakeClinic, changes: dict[str, Any], message: str
) -> None:
    clinic = await make_clinic()
    async with db.clinic(clinic, role="doctor"):
        with pytest.raises(InvalidInput, match=message):
            await db.execute_write(
                patient_commands.update(uuid.uuid4(), expected_version=None, **changes), PHI
            )


async def test_a_command_needs_a_scope_and_is_a_write(db: DatabaseService) -> None:
    change = patient_commands.update(uuid.uuid4(), expected_version=None, sex="male")
    with pytest.raises(ClinicContextRequired):
        await db.execute_write(change, PHI)
    with pytest.raises(InvalidInput, match="execute_write"):
        await db.execute_read(change, PHI)  # type: ignore[arg-type]


# -- the mutation: without the command's clinic filter --------------------------------------


@contextmanager
def clinic_filter_off() -> Iterator[None]:
    """Prepare the command's statements without ``clinic_id = :clinic`` (the mutation): the
    ``update()`` the command module builds on drops any criterion naming ``clinic_id``."""
    import healthdb.command as command

    original = command.update
    prepared = patient_commands._UPDATE._prepared
    prepared.clear()
    command.update = lambda table: _Unfiltered(original(table))  # type: ignore[assignment]
    try:
        yield
    finally:
        command.update = original  # type: ignore[assignment]
        prepared.clear()


class _Unfiltered:
    """An UPDATE statement whose ``where`` ignores ``clinic_id`` criteria."""

    def __init__(self, statement: Any) -> None:
        self.statement = statement

    def where(self, *criteria: Any) -> _Unfiltered:
        kept = [c for c in criteria if "clinic_id" not in str(c)]
        return _Unfiltered(self.statement.where(*kept))

    def values(self, *args: Any, **kwargs: Any) -> _Unfiltered:
        return _Unfiltered(self.statement.values(*args, **kwargs))

    def returning(self, *columns: Any) -> Any:
        return self.statement.returning(*columns)


@pytest.mark.parametrize("migrated_url", ["postgres"], indirect=True)
async def test_the_clinic_filter_is_load_bearing_without_row_level_security(
    pg_admin_migrated_url: str, make_clinic: MakeClinic, make_patient: MakePatient
) -> None:
    """As the table owner (a superuser: no row-level security) the command's own filter is
    all that keeps another clinic's row out of reach; with it removed, the row changes."""
    settings = Settings(database_url=pg_admin_migrated_url, enforce_safe_role=False, **DEFAULTS)
    mine, theirs = await make_clinic(), await make_clinic()
    foreign = await make_patient(theirs)
    async with DatabaseService.connect(settings) as owner_db, owner_db.clinic(mine, role="doctor"):
        with pytest.raises(NotFound):
            await owner_db.execute_write(
                patient_commands.update(foreign, expected_version=None, sex="male"), PHI
            )
        with clinic_filter_off():
            leaked = await owner_db.execute_write(
                patient_commands.update(foreign, expected_version=None, sex="male"), PHI
            )
    assert leaked.id == foreign
    assert leaked.sex == "male"
