"""Repositories against real databases: every test runs on SQLite and on PostgreSQL.

The migrated databases are shared by the whole session, so each test creates its own
clinics (random UUIDs) and scopes its assertions to them.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import ORMExecuteState, with_loader_criteria

from healthdb.engine import create_engine, session_factory
from healthdb.errors import ConflictError, IntegrityViolation, InvalidInput, NotFound
from healthdb.models import Appointment, Clinic, Patient, Tenant, User
from healthdb.phi.crypto import Keyring, using_keyring
from healthdb.phi.keys import keyring_for
from healthdb.repositories import (
    AppointmentRepository,
    ClinicRepository,
    Page,
    PatientRepository,
    UserRepository,
)
from healthdb.settings import Settings

T0 = dt.datetime(2030, 1, 6, 9, 0, tzinfo=dt.UTC)


@pytest.fixture(autouse=True)
def keyring() -> Iterator[Keyring]:
    """Below the facade nothing installs the keyring that encrypted columns (the SSN and
    the notes) need; these tests install the suite's own, as DatabaseService would."""
    with using_keyring(keyring_for(Settings())) as installed:
        yield installed


@pytest.fixture
async def engine(owner_migrated_url: str) -> AsyncIterator[AsyncEngine]:
    # Repositories sit below the facade: these tests span clinics in one plain session with
    # no clinic set, so on PostgreSQL they connect as the owner (row-level security is the
    # facade's wall, proven in test_rls.py).
    engine = create_engine(owner_migrated_url, Settings(), pool_size=2, max_overflow=2)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
async def session(engine: AsyncEngine) -> AsyncIterator[AsyncSession]:
    # Never committed unless a test says so: closing rolls the test's rows back.
    async with session_factory(engine)() as session:
        yield session


async def new_clinic(session: AsyncSession, name: str = "Clinic") -> Clinic:
    return await ClinicRepository(session).add(Clinic(id=uuid.uuid4(), name=name))


async def new_patient(session: AsyncSession, clinic: Clinic, **fields: Any) -> Patient:
    values: dict[str, Any] = {
        "clinic_id": clinic.id,
        "mrn": f"MRN-{uuid.uuid4().hex[:10]}",
        "given_name": "Ada",
        "family_name": "Lovelace",
        "date_of_birth": dt.date(1990, 12, 10),
        "sex": "female",
    }
    values.update(fields)
    return await PatientRepository(session).add(Patient(**values))


async def new_user(session: AsyncSession, clinic: Clinic, **fields: Any) -> User:
    values: dict[str, Any] = {
        "email": f"{uuid.uuid4().hex[:10]}@example.org",
        "password_hash": "x",
        "full_name": "Dr Who",
        "role": "doctor",
    }
    values.update(fields)
    return await UserRepository(session).add(User(clinic_id=clinic.id, **values))


async def walk(fetch: Callable[[str | None], Any]) -> list[list[Any]]:
    """Follow next_cursor to the end; return the pages."""
    pages: list[list[Any]] = []
    cursor: str | None = None
    while True:
        page: Page[Any] = await fetch(cursor)
        pages.append(page.items)
        if page.next_cursor is None:
            return pages
        cursor = page.next_cursor
        assert len(pages) < 100, "pagination does not terminate"


# -- basics ----------------------------------------------------------------------------


async def test_add_populates_defaults_and_get_reads_back(session: AsyncSession) -> None:
    clinic = await new_clinic(session)
    patient = await new_patient(session, clinic)
    assert patient.id is not None
    assert patient.version == 1
    assert patient.created_at.tzinfo is not None

    repo = PatientRepository(session)
    assert await repo.get(patient.id) is patient
    assert await repo.get(str(patient.id)) is patient
    assert await repo.get(uuid.uuid4()) is None
    with pytest.raises(InvalidInput):
        await repo.get("1 OR 1=1")
    assert await ClinicRepository(session).get(clinic.id) is clinic


async def test_soft_deleted_rows_are_invisible(session: AsyncSession) -> None:
    clinic = await new_clinic(session)
    gone, kept = await new_patient(session, clinic), await new_patient(session, clinic)
    repo = PatientRepository(session)
    mine = [Patient.clinic_id == clinic.id]

    await repo.soft_delete(gone.id, expected_version=1)

    assert gone.deleted_at is not None
    assert await repo.get(gone.id) is None
    assert await repo.by_mrn(gone.mrn) is None
    assert await repo.get_many([gone.id, kept.id]) == [kept]
    assert [p.id for p in (await repo.list(where=mine)).items] == [kept.id]
    assert await repo.count(mine) == 1
    with pytest.raises(NotFound):
        await repo.soft_delete(gone.id)
    with pytest.raises(NotFound):
        await repo.update(gone.id, expected_version=None, notes="x")


async def test_get_many_keeps_order_and_skips_missing(session: AsyncSession) -> None:
    clinic = await new_clinic(session)
    a, b = await new_patient(session, clinic), await new_patient(session, clinic)
    repo = PatientRepository(session)
    assert await repo.get_many([b.id, uuid.uuid4(), a.id, b.id]) == [b, a]
    assert await repo.get_many([]) == []


async def test_count(session: AsyncSession) -> None:
    clinic, other = await new_clinic(session), await new_clinic(session)
    for _ in range(3):
        await new_patient(session, clinic, family_name="Count")
    await new_patient(session, clinic, family_name="Other")
    await new_patient(session, other, family_name="Count")
    repo = PatientRepository(session)
    assert await repo.count([Patient.clinic_id == clinic.id]) == 4
    assert await repo.count([Patient.clinic_id == clinic.id, Patient.family_name == "Count"]) == 3


# -- pagination ------------------------------------------------------------------------


@pytest.mark.parametrize("descending", [False, True])
@pytest.mark.parametrize("sort", ["created_at", "family_name", "date_of_birth"])
async def test_pagination_visits_every_row_once_despite_ties(
    session: AsyncSession, sort: str, descending: bool
) -> None:
    clinic = await new_clinic(session)
    families = ["adams", "baker", "clark"]
    expected = set()
    for i in range(23):
        # Three distinct values per sort column, so most rows tie with several others.
        patient = await new_patient(
            session,
            clinic,
            family_name=families[i % 3],
            date_of_birth=dt.date(1980 + i % 3, 1, 1),
            created_at=T0 + dt.timedelta(seconds=i % 3),
        )
        expected.add(patient.id)
    repo = PatientRepository(session)

    pages = await walk(
        lambda cursor: repo.list(
            cursor=cursor,
            limit=4,
            sort=sort,
            descending=descending,
            where=[Patient.clinic_id == clinic.id],
        )
    )

    rows = [p for page in pages for p in page]
    assert [len(page) for page in pages] == [4, 4, 4, 4, 4, 3]
    assert len(rows) == len(expected)
    assert {p.id for p in rows} == expected
    keys = [(getattr(p, sort), p.id.int) for p in rows]
    assert keys == sorted(keys, reverse=descending)


async def test_last_full_page_has_no_cursor(session: AsyncSession) -> None:
    clinic = await new_clinic(session)
    for _ in range(4):
        await new_patient(session, clinic)
    page = await PatientRepository(session).list(limit=4, where=[Patient.clinic_id == clinic.id])
    assert len(page.items) == 4
    assert page.next_cursor is None


async def test_unknown_sort_field_names_the_allowed_ones(session: AsyncSession) -> None:
    repo = PatientRepository(session)
    with pytest.raises(InvalidInput, match="allowed: created_at, date_of_birth, family_name"):
        await repo.list(sort="ssn; DROP TABLE patients")
    with pytest.raises(InvalidInput):
        await repo.list(sort="notes")  # a real column, but not on the allow-list


@pytest.mark.parametrize("limit", [0, 201])
async def test_limit_is_bounded(session: AsyncSession, limit: int) -> None:
    with pytest.raises(InvalidInput):
        await PatientRepository(session).list(limit=limit)


async def test_cursor_is_bound_to_its_sort(session: AsyncSession) -> None:
    clinic = await new_clinic(session)
    for _ in range(3):
        await new_patient(session, clinic)
    repo = PatientRepository(session)
    page = await repo.list(limit=1, sort="family_name", where=[Patient.clinic_id == clinic.id])
    assert page.next_cursor is not None
    with pytest.raises(InvalidInput):
        await repo.list(cursor=page.next_cursor, sort="created_at")
    with pytest.raises(InvalidInput, match="invalid cursor"):
        await repo.list(cursor="garbage", sort="family_name")


# -- patients --------------------------------------------------------------------------


async def test_search_by_name_mrn_and_date_of_birth(session: AsyncSession) -> None:
    clinic = await new_clinic(session)
    ada = await new_patient(session, clinic, given_name="Ada", family_name="Lovelace")
    alan = await new_patient(
        session, clinic, given_name="Alan", family_name="Turing", date_of_birth=dt.date(1912, 6, 23)
    )
    grace = await new_patient(session, clinic, given_name="Grace", family_name="Hopper")
    # Other tests share this database: scope the search so their rows cannot crowd the page.
    install_test_wall(session, clinic.id)
    repo = PatientRepository(session)

    async def ids(**criteria: Any) -> set[uuid.UUID]:
        page = await repo.search(**criteria)
        assert all(p.clinic_id == clinic.id for p in page.items)
        return {p.id for p in page.items}

    assert await ids(name="a") == {ada.id, alan.id}  # given-name prefix
    assert await ids(name="LOVE") == {ada.id}  # family-name prefix, case-insensitive
    assert await ids(name="hop") == {grace.id}
    assert await ids(name="ace") == set()  # prefix, not substring
    assert await ids(mrn=alan.mrn) == {alan.id}
    assert await ids(date_of_birth=dt.date(1912, 6, 23)) == {alan.id}
    assert await ids(name="al", date_of_birth=dt.date(1990, 12, 10)) == set()
    assert await repo.by_mrn(grace.mrn) is grace
    assert await repo.by_mrn("nope") is None


async def test_search_treats_like_wildcards_literally(session: AsyncSession) -> None:
    clinic = await new_clinic(session)
    percent = await new_patient(session, clinic, family_name="50%off")
    await new_patient(session, clinic, family_name="50xoff")
    under = await new_patient(session, clinic, family_name="a_b")
    await new_patient(session, clinic, family_name="axb")
    slash = await new_patient(session, clinic, family_name="back\\slash")
    await new_patient(session, clinic, family_name="backslash")
    repo = PatientRepository(session)

    async def ids(name: str) -> set[uuid.UUID]:
        page = await repo.search(name=name)
        return {p.id for p in page.items if p.clinic_id == clinic.id}

    assert await ids("50%") == {percent.id}
    assert await ids("a_") == {under.id}
    assert await ids("back\\") == {slash.id}
    assert await ids("%") == set()
    assert await ids("_") == set()


async def test_search_paginates(session: AsyncSession) -> None:
    clinic = await new_clinic(session)
    family = f"Zq{uuid.uuid4().hex[:8]}"
    for _ in range(5):
        await new_patient(session, clinic, family_name=family)
    repo = PatientRepository(session)
    pages = await walk(lambda cursor: repo.search(name=family, cursor=cursor, limit=2))
    assert [len(p) for p in pages] == [2, 2, 1]


async def test_hostile_strings_round_trip_verbatim(
    engine: AsyncEngine, session: AsyncSession
) -> None:
    clinic = await new_clinic(session)
    names = ["O'Brien", "Robert'); DROP TABLE patients;--", 'quote " back \\ tab \t é 漢字']
    created = [await new_patient(session, clinic, family_name=n, notes=n) for n in names]
    await session.commit()

    async with session_factory(engine)() as fresh:
        repo = PatientRepository(fresh)
        for name, patient in zip(names, created, strict=True):
            loaded = await repo.get(patient.id)
            assert loaded is not None
            assert (loaded.family_name, loaded.notes) == (name, name)
            found = await repo.search(name=name)
            assert patient.id in {p.id for p in found.items}
        assert await repo.count([Patient.clinic_id == clinic.id]) == len(names)


async def test_update_checks_version_and_fields(session: AsyncSession) -> None:
    clinic = await new_clinic(session)
    patient = await new_patient(session, clinic)
    repo = PatientRepository(session)

    updated = await repo.update(patient.id, expected_version=1, phone="+15555550100")
    assert updated.phone == "+15555550100"
    assert updated.version == 2

    with pytest.raises(ConflictError):
        await repo.update(patient.id, expected_version=1, phone="+15555550199")
    with pytest.raises(InvalidInput, match="unknown field"):
        await repo.update(patient.id, expected_version=2, favourite_colour="red")
    with pytest.raises(InvalidInput, match="cannot be changed"):
        await repo.update(patient.id, expected_version=2, clinic_id=uuid.uuid4())
    with pytest.raises(NotFound):
        await repo.update(uuid.uuid4(), expected_version=None, phone="x")
    with pytest.raises(ConflictError):
        await repo.soft_delete(patient.id, expected_version=1)

    assert (await repo.update(patient.id, expected_version=None, sex="other")).version == 3
    assert (await repo.get(patient.id)) is not None
    assert updated.phone == "+15555550100"


async def test_duplicate_mrn_conflicts_only_within_a_clinic(session: AsyncSession) -> None:
    clinic, other = await new_clinic(session), await new_clinic(session)
    await new_patient(session, clinic, mrn="MRN-1")

    with pytest.raises(ConflictError) as info:
        await new_patient(session, clinic, mrn="MRN-1")
    assert "MRN-1" not in str(info.value)

    # The savepoint kept the transaction usable: the other clinic may reuse the MRN.
    twin = await new_patient(session, other, mrn="MRN-1")
    assert twin.clinic_id == other.id
    both = [Patient.mrn == "MRN-1", Patient.clinic_id.in_([clinic.id, other.id])]
    assert await PatientRepository(session).count(both) == 2


async def test_update_to_duplicate_mrn_conflicts(session: AsyncSession) -> None:
    clinic = await new_clinic(session)
    await new_patient(session, clinic, mrn="TAKEN")
    patient = await new_patient(session, clinic)
    with pytest.raises(ConflictError):
        await PatientRepository(session).update(patient.id, expected_version=1, mrn="TAKEN")


# -- users and clinics -----------------------------------------------------------------


async def test_user_email_is_case_insensitive(session: AsyncSession) -> None:
    clinic = await new_clinic(session)
    local = uuid.uuid4().hex[:8]
    user = await new_user(session, clinic, email=f"  Dr.{local}@Example.ORG ")
    assert user.email == f"dr.{local}@example.org"
    repo = UserRepository(session)
    assert await repo.by_email(f"DR.{local}@EXAMPLE.org") is user
    assert await repo.by_email("nobody@example.org") is None
    with pytest.raises(ConflictError):
        await new_user(session, clinic, email=f"dr.{local}@EXAMPLE.org")
    with pytest.raises(InvalidInput):
        await repo.update(user.id, expected_version=1, full_name="x")  # users have no version
    renamed = await repo.update(user.id, expected_version=None, email=f"New.{local}@x.org")
    assert renamed.email == f"new.{local}@x.org"


async def test_list_by_role(session: AsyncSession) -> None:
    clinic = await new_clinic(session)
    doctors = {(await new_user(session, clinic, role="doctor")).id for _ in range(3)}
    await new_user(session, clinic, role="nurse")
    repo = UserRepository(session)
    pages = await walk(lambda cursor: repo.list_by_role("doctor", cursor=cursor, limit=2))
    found = {u.id for page in pages for u in page if u.clinic_id == clinic.id}
    assert found == doctors
    with pytest.raises(InvalidInput):
        await repo.list_by_role("superuser")


async def test_clinics_add_get_list(session: AsyncSession) -> None:
    repo = ClinicRepository(session)
    tag = uuid.uuid4().hex
    made = [await repo.add(Clinic(name=f"{tag}-{i}")) for i in range(3)]
    assert all(c.id is not None and c.active for c in made)
    page = await repo.list(sort="name", descending=True, where=[Clinic.name.like(f"{tag}%")])
    assert [c.name for c in page.items] == [f"{tag}-2", f"{tag}-1", f"{tag}-0"]
    await repo.soft_delete(made[0].id)  # no deleted_at column: a real delete
    assert await repo.get(made[0].id) is None


# -- appointments ----------------------------------------------------------------------


async def book(
    session: AsyncSession,
    patient: Patient,
    clinician: User,
    start: dt.datetime,
    minutes: int = 30,
    status: str = "booked",
) -> Appointment:
    return await AppointmentRepository(session).add(
        Appointment(
            clinic_id=patient.clinic_id,
            patient_id=patient.id,
            clinician_id=clinician.id,
            start_at=start,
            end_at=start + dt.timedelta(minutes=minutes),
            status=status,
        )
    )


async def test_appointment_queries(session: AsyncSession) -> None:
    clinic = await new_clinic(session)
    patient, other_patient = await new_patient(session, clinic), await new_patient(session, clinic)
    doctor, nurse = await new_user(session, clinic), await new_user(session, clinic, role="nurse")
    nine = await book(session, patient, doctor, T0)
    ten = await book(session, other_patient, doctor, T0 + dt.timedelta(hours=1))
    eleven = await book(session, patient, doctor, T0 + dt.timedelta(hours=2), status="cancelled")
    await book(session, patient, nurse, T0)
    repo = AppointmentRepository(session)

    pages = await walk(lambda cursor: repo.for_patient(patient.id, cursor=cursor, limit=2))
    assert [[a.start_at for a in page] for page in pages] == [[T0, T0], [eleven.start_at]]

    window = await repo.for_clinician(doctor.id, T0 + dt.timedelta(minutes=15), eleven.start_at)
    assert [a.id for a in window.items] == [nine.id, ten.id]  # 9:00 runs into the window

    assert await repo.overlapping(doctor.id, T0 + dt.timedelta(minutes=29), ten.start_at) == [nine]
    # Half-open: touching at the boundary is not an overlap; cancelled rows never overlap.
    assert await repo.overlapping(doctor.id, nine.end_at, ten.start_at) == []
    assert await repo.overlapping(doctor.id, eleven.start_at, eleven.end_at) == []
    with pytest.raises(InvalidInput):
        await repo.overlapping(doctor.id, ten.start_at, nine.start_at)
    with pytest.raises(InvalidInput):
        await repo.overlapping(doctor.id, dt.datetime(2030, 1, 1), dt.datetime(2030, 1, 2))


async def test_cancel_appointment(session: AsyncSession) -> None:
    clinic = await new_clinic(session)
    patient, doctor = await new_patient(session, clinic), await new_user(session, clinic)
    appointment = await book(session, patient, doctor, T0)
    repo = AppointmentRepository(session)

    with pytest.raises(ConflictError):
        await repo.cancel(appointment.id, expected_version=7)
    cancelled = await repo.cancel(appointment.id, expected_version=1)
    assert (cancelled.status, cancelled.version) == ("cancelled", 2)
    assert (await repo.cancel(appointment.id, expected_version=2)).version == 2  # idempotent
    assert await repo.overlapping(doctor.id, T0, T0 + dt.timedelta(hours=1)) == []
    with pytest.raises(NotFound):
        await repo.cancel(uuid.uuid4(), expected_version=None)


# -- the walls stay effective -----------------------------------------------------------


def install_test_wall(session: AsyncSession, clinic_id: uuid.UUID) -> None:
    """A stand-in for the real isolation walls: scope every ORM read to one clinic."""

    @event.listens_for(session.sync_session, "do_orm_execute")
    def _scope(state: ORMExecuteState) -> None:
        if state.is_select:
            state.statement = state.statement.options(
                with_loader_criteria(
                    Tenant,
                    lambda cls: cls.clinic_id == clinic_id,
                    include_aliases=True,
                    track_closure_variables=False,
                )
            )


async def test_repository_reads_respect_session_level_walls(
    engine: AsyncEngine, session: AsyncSession
) -> None:
    mine, theirs = await new_clinic(session), await new_clinic(session)
    family = f"Wall{uuid.uuid4().hex[:8]}"
    own = await new_patient(session, mine, family_name=family)
    foreign = await new_patient(session, theirs, family_name=family, mrn=own.mrn)
    await session.commit()

    async with session_factory(engine)() as walled:
        install_test_wall(walled, mine.id)
        repo = PatientRepository(walled)
        assert await repo.get(foreign.id) is None
        assert [p.id for p in await repo.get_many([own.id, foreign.id])] == [own.id]
        assert [p.id for p in (await repo.search(name=family)).items] == [own.id]
        assert (await repo.by_mrn(own.mrn)) is not None
        assert await repo.count([Patient.family_name == family]) == 1
        with pytest.raises(NotFound):
            await repo.update(foreign.id, expected_version=None, notes="x")
        with pytest.raises(NotFound):
            await repo.soft_delete(foreign.id)


async def test_foreign_key_violation_is_not_a_conflict(session: AsyncSession) -> None:
    clinic = await new_clinic(session)
    with pytest.raises(IntegrityViolation) as info:
        await new_patient(session, clinic, clinic_id=uuid.uuid4())
    assert not isinstance(info.value, ConflictError)


@pytest.mark.postgres
async def test_writer_losing_a_race_gets_conflict(pg_admin_migrated_url: str) -> None:
    # Between update()'s read and its flush another transaction bumps the version; the
    # version-guarded UPDATE then matches no row. (On SQLite the same race surfaces as a
    # busy snapshot error instead, since a stale reader cannot upgrade to writer in WAL.)
    engine = create_engine(pg_admin_migrated_url, Settings(), pool_size=2, max_overflow=0)
    try:
        factory = session_factory(engine)
        async with factory() as setup:
            patient = await new_patient(setup, await new_clinic(setup))
            await setup.commit()

        async with factory() as slow:
            repo = PatientRepository(slow)
            load = repo._load_for_write

            async def load_then_race(id: Any, expected_version: int | None) -> Patient:
                obj = await load(id, expected_version)
                async with factory() as fast:
                    await PatientRepository(fast).update(
                        patient.id, expected_version=None, notes="fast"
                    )
                    await fast.commit()
                return obj

            repo._load_for_write = load_then_race  # type: ignore[method-assign]
            with pytest.raises(ConflictError):
                await repo.update(patient.id, expected_version=None, notes="slow")
    finally:
        await engine.dispose()
