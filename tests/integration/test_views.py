"""Views: the ORM-free read path (``healthdb.view``, ``repositories.patient_views``).

The same rows as the repository, masked the same way, audited exactly once per row handed
out (the page's look-ahead row never), scoped by the view wall on both backends and by
row-level security on PostgreSQL; and the view wall's own refusals.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

import pytest
from sqlalchemy import Table, bindparam, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from healthdb import (
    ClinicContextRequired,
    DatabaseService,
    InvalidInput,
    PhiNotCacheable,
    QueryOptions,
    UnsafeStatement,
    View,
    keys,
)
from healthdb.models import AuditEvent, Patient
from healthdb.repositories import PatientRecord, PatientRepository, patient_views
from healthdb.repositories.pagination import Page
from tests.integration.conftest import MakeClinic, MakePatient

PATIENTS = cast(Table, Patient.__table__)
PHI = QueryOptions.for_phi("test.view")


async def audit_rows(db: DatabaseService, clinic: uuid.UUID) -> list[AuditEvent]:
    async def rows(session: AsyncSession) -> list[AuditEvent]:
        stmt = (
            select(AuditEvent)
            .where(AuditEvent.clinic_id == clinic)
            .order_by(AuditEvent.occurred_at, AuditEvent.id)
        )
        return list((await session.scalars(stmt)).all())

    async with db.clinic(clinic, role="clinic_admin"):
        return await db.execute_read(rows)


def reads(rows: list[AuditEvent]) -> list[AuditEvent]:
    return [r for r in rows if r.action.startswith("phi.read")]


async def test_by_id_returns_what_the_repository_returns(
    db: DatabaseService, make_clinic: MakeClinic, make_patient: MakePatient
) -> None:
    clinic = await make_clinic()
    pid = await make_patient(clinic, ssn="123-45-6789", notes="line one\nline two", phone=None)
    async with db.clinic(clinic, role="doctor"):
        record = await db.execute_read(patient_views.by_id(pid), PHI)
        entity = await db.execute_read(lambda s: PatientRepository(s).get(pid), PHI)
    assert isinstance(record, PatientRecord)
    assert entity is not None
    for field in dataclasses.fields(PatientRecord):
        assert getattr(record, field.name) == getattr(entity, field.name), field.name
    assert record.ssn == "123-45-6789"  # decrypted on the way out


@pytest.mark.parametrize(
    ("role", "ssn", "notes", "action"),
    [
        ("doctor", "123-45-6789", "chart", "phi.read"),
        ("nurse", "***-**-6789", "chart", "phi.read_masked"),
        ("receptionist", "***-**-6789", None, "phi.read_masked"),
        ("clinic_admin", "123-45-6789", None, "phi.read_masked"),
    ],
)
async def test_records_are_masked_and_audited_for_the_role(
    db: DatabaseService,
    make_clinic: MakeClinic,
    make_patient: MakePatient,
    role: str,
    ssn: str,
    notes: str | None,
    action: str,
) -> None:
    clinic = await make_clinic()
    pid = await make_patient(clinic, ssn="123-45-6789", notes="chart")
    before = len(await audit_rows(db, clinic))
    actor = uuid.uuid4()
    async with db.clinic(clinic, role=role, actor=actor, purpose="care", request_id="req-1"):
        record = await db.execute_read(patient_views.by_id(pid), PHI)
    assert record is not None
    assert (record.ssn, record.notes) == (ssn, notes)
    new = (await audit_rows(db, clinic))[before:]
    assert [(r.action, r.resource_type, r.resource_id) for r in new] == [
        (action, "patients", str(pid))
    ]
    row = new[0]
    assert (row.actor_id, row.actor_role, row.purpose, row.request_id) == (
        actor,
        role,
        "care",
        "req-1",
    )
    assert row.phi_fields == sorted(row.phi_fields)
    assert {"ssn", "notes", "given_name"} <= set(row.phi_fields)


async def test_a_page_audits_exactly_the_rows_it_hands_out(
    db: DatabaseService, make_clinic: MakeClinic, make_patient: MakePatient
) -> None:
    clinic = await make_clinic()
    for n in range(5):
        await make_patient(clinic, family_name=f"Pagewright{n}")
    before = len(await audit_rows(db, clinic))
    async with db.clinic(clinic, role="doctor"):
        first = await db.execute_read(patient_views.search(limit=2, sort="family_name"), PHI)
        second = await db.execute_read(
            patient_views.search(limit=2, sort="family_name", cursor=first.next_cursor), PHI
        )
        rest = await db.execute_read(
            patient_views.search(limit=2, sort="family_name", cursor=second.next_cursor), PHI
        )
        via_repository: Page[Patient] = await db.execute_read(
            lambda s: PatientRepository(s).search(limit=5, sort="family_name"), PHI
        )
    handed = [*first.items, *second.items, *rest.items]
    assert rest.next_cursor is None
    assert [p.id for p in handed] == [p.id for p in via_repository.items]
    audited = reads((await audit_rows(db, clinic))[before:])
    # Three pages (2 + 2 + 1) and the repository's page of 5; no look-ahead row audited.
    assert len(audited) == 10
    assert sorted(r.resource_id for r in audited[:5]) == sorted(str(p.id) for p in handed)


async def test_search_filters_match_the_repository(
    db: DatabaseService, make_clinic: MakeClinic, make_patient: MakePatient
) -> None:
    clinic = await make_clinic()
    await make_patient(clinic, given_name="Ana%", family_name="Under_score", mrn="MRN-A1")
    await make_patient(clinic, given_name="Anabel", family_name="Other", mrn="MRN-A2")
    async with db.clinic(clinic, role="doctor"):
        for criteria in ({"name": "ana%"}, {"name": "under_"}, {"name": "ANA"}, {"mrn": "MRN-A2"}):
            view = await db.execute_read(patient_views.search(**criteria), PHI)  # type: ignore[arg-type]
            orm = await db.execute_read(
                lambda s, c=criteria: PatientRepository(s).search(**c),  # type: ignore[misc]
                PHI,
            )
            assert [p.id for p in view.items] == [p.id for p in orm.items], criteria


async def test_another_clinics_patient_is_invisible(
    db: DatabaseService, make_clinic: MakeClinic, make_patient: MakePatient
) -> None:
    mine, theirs = await make_clinic(), await make_clinic()
    foreign = await make_patient(theirs, family_name="Foreignson")
    async with db.clinic(mine, role="doctor"):
        assert await db.execute_read(patient_views.by_id(foreign), PHI) is None
        page = await db.execute_read(patient_views.search(name="Foreignson"), PHI)
    assert page.items == []


async def test_a_view_needs_a_clinic_scope(db: DatabaseService) -> None:
    with pytest.raises(ClinicContextRequired):
        await db.execute_read(patient_views.by_id(uuid.uuid4()), PHI)
    with pytest.raises(ClinicContextRequired):  # PHI columns: needs a scope under any options
        await db.execute_read(patient_views.by_id(uuid.uuid4()))


async def test_a_phi_view_is_never_cached(db: DatabaseService, make_clinic: MakeClinic) -> None:
    clinic = await make_clinic()
    pid = uuid.uuid4()
    options = QueryOptions.for_read().cached(keys.for_patient(clinic, pid))
    async with db.clinic(clinic, role="doctor"):
        with pytest.raises(PhiNotCacheable):
            await db.execute_read(patient_views.by_id(pid), options)


async def test_views_are_reads_only(db: DatabaseService, make_clinic: MakeClinic) -> None:
    clinic = await make_clinic()
    async with db.clinic(clinic, role="doctor"):
        with pytest.raises(InvalidInput, match="execute_read"):
            await db.execute_write(patient_views.by_id(uuid.uuid4()))  # type: ignore[arg-type]


@dataclasses.dataclass(frozen=True)
class Named:
    id: uuid.UUID
    given_name: str


@pytest.mark.parametrize(
    "statement",
    [
        # A subquery, an alias and SQL text could all reach a tenant table unfiltered.
        select(PATIENTS.c.id, PATIENTS.c.given_name).where(
            PATIENTS.c.id.in_(select(PATIENTS.c.id))
        ),
        select(PATIENTS.alias().c.id, PATIENTS.alias().c.given_name),
        select(PATIENTS.c.id, PATIENTS.c.given_name).where(text("1 = 1")),
    ],
)
def test_the_view_wall_refuses_what_it_cannot_scope(statement: Any) -> None:
    with pytest.raises(UnsafeStatement):
        View(statement, Named, name="test.refused")


def test_a_view_of_phi_must_select_the_rows_key() -> None:
    @dataclasses.dataclass(frozen=True)
    class NameOnly:
        given_name: str

    with pytest.raises(UnsafeStatement, match="primary key"):
        View(select(PATIENTS.c.given_name), NameOnly, name="test.keyless")


def test_a_views_record_must_match_its_columns() -> None:
    with pytest.raises(TypeError):
        View(select(PATIENTS.c.given_name, PATIENTS.c.id), Named, name="test.order")


# -- the mutation: the view wall off -------------------------------------------------------


@contextmanager
def view_wall_off(view: View[Any]) -> Iterator[None]:
    """Run ``view`` without the clinic filter the view wall added (the mutation)."""
    scoped, compiled = view.statement, dict(view._compiled)
    view.statement = view.source
    view._compiled.clear()
    try:
        yield
    finally:
        view.statement = scoped
        view._compiled.clear()
        view._compiled.update(compiled)


async def test_without_the_view_wall_sqlite_leaks_and_postgres_holds(
    db: DatabaseService, backend: str, make_clinic: MakeClinic, make_patient: MakePatient
) -> None:
    mine, theirs = await make_clinic(), await make_clinic()
    foreign = await make_patient(theirs, family_name="Wallbreaker")
    by_id = View(
        select(PATIENTS.c.id, PATIENTS.c.given_name).where(PATIENTS.c.id == bindparam("id")),
        Named,
        name="test.mutation",
    )
    async with db.clinic(mine, role="doctor"):
        assert await db.execute_read(by_id.one(id=foreign), PHI) is None
        with view_wall_off(by_id):
            leaked = await db.execute_read(by_id.one(id=foreign), PHI)
    if backend == "sqlite":
        # No database wall there: the view wall was all that held.
        assert leaked is not None
        assert leaked.id == foreign
    else:
        # Row-level security alone still hides the other clinic's row.
        assert leaked is None
