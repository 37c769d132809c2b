"""Property-based proof of the tenancy walls through the facade, on SQLite and PostgreSQL.

Three clinics get patients (some of them namesakes, sharing a family name, MRN and date of
birth across clinics), clinicians and appointments, built once per backend. Hypothesis then
picks (acting clinic, target row of any clinic, operation) triples and runs each attempt as a
full facade call. Invariants:

* every row any read returns belongs to the acting clinic;
* a foreign id behaves exactly like a random uuid (same result, same error and message);
* a write aimed at a foreign row changes nothing (re-read as the owning clinic afterwards);
* the same operation on an own row *does* find it (so the attacks are not vacuous; own
  writes are rolled back with a sentinel so the data stays fixed for the module).

The final test of each backend asserts the number of attempts made.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import pytest_asyncio
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, exists, func, inspect, select, true, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import (
    DeclarativeBase,
    aliased,
    foreign,
    joinedload,
    relationship,
    remote,
    selectinload,
)

from healthdb import keys
from healthdb.clinics import create_clinic
from healthdb.errors import HealthdbError
from healthdb.models import Appointment, Clinic, Patient, Tenant, User
from healthdb.query.options import QueryOptions
from healthdb.repositories import AppointmentRepository, PatientRepository, UserRepository
from healthdb.service import DatabaseService
from healthdb.settings import Settings
from tests.integration.conftest import DEFAULTS, assert_pools_idle

pytestmark = pytest.mark.asyncio(loop_scope="module")

CLINICS = 3
PATIENTS = 4  # per clinic; patients 0 and 1 are namesakes across clinics
CLINICIANS = 2
APPOINTMENTS = 6
ATTEMPTS_PER_EXAMPLE = 20
EXAMPLES = 90
TARGET_PER_BACKEND = 3000  # 6,000+ across both backends

#: backend -> attempts made (cross-clinic and own-clinic controls)
ATTEMPTS: collections.Counter[str] = collections.Counter()
FOREIGN: collections.Counter[str] = collections.Counter()


# -- a deliberately careless relationship, to prove the wall scopes relationship loads ------


class _AttackBase(DeclarativeBase):
    """A separate registry: the production models and metadata are untouched."""


class LoosePatient(Tenant, _AttackBase):
    """The patients table with a relationship that ignores clinic_id: namesakes of *any*
    clinic. Only the ORM wall stands between it and the other clinics' rows."""

    __table__ = Patient.__table__
    clinic_id = Patient.__table__.c.clinic_id  # type: ignore[assignment]

    namesakes = relationship(
        "LoosePatient",
        primaryjoin=lambda: (
            remote(foreign(Patient.__table__.c.family_name)) == Patient.__table__.c.family_name
        ),
        viewonly=True,
    )


# -- the world ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Row:
    kind: str  # patient | appointment | user
    id: uuid.UUID
    clinic: uuid.UUID
    attrs: dict[str, Any]


@dataclasses.dataclass
class World:
    backend: str
    db: DatabaseService
    token: str
    clinics: list[uuid.UUID]
    rows: dict[str, list[Row]]
    snapshots: dict[uuid.UUID, dict[str, Any]]

    def own(self, kind: str, clinic: uuid.UUID) -> list[Row]:
        return [r for r in self.rows[kind] if r.clinic == clinic]


MODELS: dict[str, type[Any]] = {"patient": Patient, "appointment": Appointment, "user": User}


def snapshot(obj: Any) -> dict[str, Any]:
    return {a.key: getattr(obj, a.key) for a in inspect(type(obj)).column_attrs}


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def backend_url(request: pytest.FixtureRequest) -> str:
    fixture = "sqlite_migrated_url" if request.param == "sqlite" else "pg_migrated_url"
    return str(request.getfixturevalue(fixture))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(backend_url: str) -> AsyncIterator[World]:
    db = await DatabaseService.connect(Settings(database_url=backend_url, **DEFAULTS))
    token = uuid.uuid4().hex[:8]
    backend = "postgres" if backend_url.startswith("postgresql") else "sqlite"
    clinics = [uuid.uuid4() for _ in range(CLINICS)]
    rows: dict[str, list[Row]] = {"patient": [], "appointment": [], "user": []}
    try:
        for i, clinic_id in enumerate(clinics):
            await create_clinic(db, f"Proof {token} {i}", clinic_id=clinic_id)
        base = dt.datetime(2030, 1, 7, 9, tzinfo=dt.UTC)
        for c, clinic in enumerate(clinics):
            patients = [
                Patient(
                    id=uuid.uuid4(),
                    mrn=f"MRN-{token}-{j}" if j < 2 else f"MRN-{token}-{c}-{j}",
                    given_name=f"Giv{token}c{c}p{j}",
                    family_name=f"Fam{token}shared{j}" if j < 2 else f"Fam{token}c{c}p{j}",
                    date_of_birth=dt.date(1960 + j, 1, 1) if j < 2 else dt.date(1990, c + 1, j),
                    sex="female",
                    notes=f"note {c}/{j}",
                )
                for j in range(PATIENTS)
            ]
            users = [
                User(
                    id=uuid.uuid4(),
                    email=f"proof-{token}-{c}-{k}-{uuid.uuid4().hex[:6]}@example.org",
                    password_hash="x",
                    full_name=f"Dr {token} {c}{k}",
                    role="doctor",
                )
                for k in range(CLINICIANS)
            ]
            appointments = [
                Appointment(
                    id=uuid.uuid4(),
                    patient_id=patients[k % PATIENTS].id,
                    clinician_id=users[k % CLINICIANS].id,
                    start_at=base + dt.timedelta(hours=k, minutes=c),
                    end_at=base + dt.timedelta(hours=k, minutes=c + 30),
                    reason=f"visit {c}/{k}",
                )
                for k in range(APPOINTMENTS)
            ]

            async def add_rows(
                s: AsyncSession,
                p: list[Patient] = patients,
                u: list[User] = users,
                a: list[Appointment] = appointments,
            ) -> None:
                s.add_all([*p, *u])
                await s.flush()
                s.add_all(a)

            async with db.clinic(clinic, role="clinic_admin"):
                await db.execute_write(add_rows)
            for kind, objs in (
                ("patient", patients),
                ("user", users),
                ("appointment", appointments),
            ):
                for obj in objs:
                    rows[kind].append(Row(kind, obj.id, clinic, snapshot(obj)))
        w = World(backend, db, token, clinics, rows, {})
        for clinic in clinics:
            w.snapshots.update(await owner_snapshots(w, clinic))
        yield w
        assert_pools_idle(db)
    finally:
        await db.close()


async def owner_snapshots(w: World, clinic: uuid.UUID) -> dict[uuid.UUID, dict[str, Any]]:
    """Every row of ``clinic``, read inside that clinic's own scope."""

    async def op(s: AsyncSession) -> dict[uuid.UUID, dict[str, Any]]:
        out: dict[uuid.UUID, dict[str, Any]] = {}
        for kind, model in MODELS.items():
            ids = [r.id for r in w.own(kind, clinic)]
            for obj in (await s.scalars(select(model).where(model.id.in_(ids)))).all():
                out[obj.id] = snapshot(obj)
        return out

    async with w.db.clinic(clinic, role="clinic_admin"):
        return await w.db.execute_read(op)


# -- attempts ----------------------------------------------------------------------------


class Rollback(Exception):
    """Raised by own-clinic writes so the fixed world stays fixed."""


@dataclasses.dataclass
class Outcome:
    rows: list[Any]  # every tenant object or clinic_id the operation returned
    value: Any  # comparable summary (ids, counts, booleans, error type and message)


Op = Callable[[AsyncSession, Row, World, uuid.UUID], Awaitable[Outcome]]


def ids(objs: Any) -> list[uuid.UUID]:
    return [o.id for o in objs]


def scalar_rows(objs: Any) -> Outcome:
    objs = list(objs)
    return Outcome(objs, ids(objs))


# reads by id -----------------------------------------------------------------------------


async def op_get(s: AsyncSession, t: Row, w: World, acting: uuid.UUID) -> Outcome:
    obj = await s.get(MODELS[t.kind], t.id)
    return scalar_rows([] if obj is None else [obj])


async def op_select_id(s: AsyncSession, t: Row, w: World, acting: uuid.UUID) -> Outcome:
    model = MODELS[t.kind]
    return scalar_rows((await s.scalars(select(model).where(model.id == t.id))).all())


async def op_repo_get(s: AsyncSession, t: Row, w: World, acting: uuid.UUID) -> Outcome:
    repo: Any = {"patient": PatientRepository, "appointment": AppointmentRepository}.get(
        t.kind, UserRepository
    )(s)
    obj = await repo.get(t.id)
    return scalar_rows([] if obj is None else [obj])


async def op_get_many(s: AsyncSession, t: Row, w: World, acting: uuid.UUID) -> Outcome:
    own = next(r.id for r in w.own(t.kind, acting) if r.id != t.id)
    repo: Any = {"patient": PatientRepository, "appointment": AppointmentRepository}.get(
        t.kind, UserRepository
    )(s)
    return scalar_rows(await repo.get_many([t.id, own]))


async def op_count(s: AsyncSession, t: Row, w: World, acting: uuid.UUID) -> Outcome:
    model = MODELS[t.kind]
    n = (await s.execute(select(func.count()).select_from(model).where(model.id == t.id))).scalar()
    return Outcome([], n)


async def op_exists(s: AsyncSession, t: Row, w: World, acting: uuid.UUID) -> Outcome:
    model = MODELS[t.kind]
    found = (await s.execute(select(exists().where(model.id == t.id)))).scalar()
    return Outcome([], bool(found))


async def op_exists_under_clinic(s: AsyncSession, t: Row, w: World, acting: uuid.UUID) -> Outcome:
    """The tenant table appears only inside EXISTS under a non-tenant entity."""
    model = MODELS[t.kind]
    stmt = select(Clinic.id).where(Clinic.id == t.clinic, exists().where(model.id == t.id))
    return Outcome([], list((await s.scalars(stmt)).all()))


async def op_scalar_subquery(s: AsyncSession, t: Row, w: World, acting: uuid.UUID) -> Outcome:
    """A tenant column as a scalar subquery next to a non-tenant entity."""
    model = MODELS[t.kind]
    sub = select(model.clinic_id).where(model.id == t.id).scalar_subquery()
    stmt = select(Clinic.id, sub).where(Clinic.id == t.clinic)
    found = [r[1] for r in (await s.execute(stmt)).all() if r[1] is not None]
    return Outcome([{"clinic_id": c} for c in found], found)


# bulk and unit-of-work writes ----------------------------------------------------------

WRITE_VALUES = {"patient": {"notes": "pwned"}, "appointment": {"reason": "pwned"}, "user": {}}


async def op_repo_update(s: AsyncSession, t: Row, w: World, acting: uuid.UUID) -> Outcome:
    if t.kind == "patient":
        obj: Any = await PatientRepository(s).update(t.id, expected_version=None, notes="pwned")
    elif t.kind == "appointment":
        obj = await AppointmentRepository(s).update(t.id, expected_version=None, reason="pwned")
    else:
        obj = await UserRepository(s).update(t.id, expected_version=None, full_name="pwned")
    return scalar_rows([obj])


async def op_soft_delete(s: AsyncSession, t: Row, w: World, acting: uuid.UUID) -> Outcome:
    if t.kind == "patient":
        await PatientRepository(s).soft_delete(t.id)
    elif t.kind == "appointment":
        await AppointmentRepository(s).cancel(t.id, None)
    else:
        await UserRepository(s).update(t.id, expected_version=None, active=False)
    return Outcome([], "done")


async def op_bulk_update(s: AsyncSession, t: Row, w: World, acting: uuid.UUID) -> Outcome:
    model = MODELS[t.kind]
    column = {"patient": "notes", "appointment": "reason", "user": "full_name"}[t.kind]
    stmt = update(model).where(model.id == t.id).values({column: "pwned"})
    result: Any = await s.execute(stmt.execution_options(synchronize_session=False))
    return Outcome([], result.rowcount)


async def op_bulk_delete(s: AsyncSession, t: Row, w: World, acting: uuid.UUID) -> Outcome:
    # Appointments only: nothing references them, so an own delete is a clean success.
    column = {
        "appointment": Appointment.id,
        "patient": Appointment.patient_id,
        "user": Appointment.clinician_id,
    }[t.kind]
    stmt = delete(Appointment).where(column == t.id)
    result: Any = await s.execute(stmt.execution_options(synchronize_session=False))
    return Outcome([], result.rowcount)


# relationship loads, joins, has()/any() ------------------------------------------------


def related(objs: list[Any]) -> list[Any]:
    """Every object reachable through the loaded relationships (no lazy loads issued)."""
    out: list[Any] = []
    for obj in objs:
        state = inspect(obj)
        for key in ("patient", "clinician", "appointments"):
            if key in state.dict:
                value = state.dict[key]
                out.extend(value if isinstance(value, list) else [value] if value else [])
    return out


async def op_eager(s: AsyncSession, t: Row, w: World, acting: uuid.UUID, how: Any) -> Outcome:
    if t.kind == "patient":
        stmt: Any = (
            select(Patient)
            .where(Patient.id == t.id)
            .options(how(Patient.appointments).options(how(Appointment.clinician)))
        )
    elif t.kind == "appointment":
        stmt = (
            select(Appointment)
            .where(Appointment.id == t.id)
            .options(how(Appointment.patient), how(Appointment.clinician))
        )
    else:
        stmt = select(User).where(User.id == t.id).options(how(User.appointments))
    objs = list((await s.scalars(stmt)).unique().all())
    rel = related(objs) + [x for o in related(objs) for x in related([o])]
    return Outcome(objs + rel, (ids(objs), sorted(map(str, ids(rel)))))


async def op_selectin(s: AsyncSession, t: Row, w: World, acting: uuid.UUID) -> Outcome:
    return await op_eager(s, t, w, acting, selectinload)


async def op_joined(s: AsyncSession, t: Row, w: World, acting: uuid.UUID) -> Outcome:
    return await op_eager(s, t, w, acting, joinedload)


async def op_lazy(s: AsyncSession, t: Row, w: World, acting: uuid.UUID) -> Outcome:
    """Load the target (scoped), then walk its relationships with lazy loads."""
    model = MODELS[t.kind]
    objs = list((await s.scalars(select(model).where(model.id == t.id))).all())

    def walk(_sync: Any) -> list[Any]:
        out: list[Any] = []
        for obj in objs:
            if isinstance(obj, Appointment):
                out += [obj.patient, obj.clinician]
                out += obj.patient.appointments
            else:
                out += obj.appointments
                out += [a.patient for a in obj.appointments]
        return out

    rel = await s.run_sync(walk)
    return Outcome(objs + rel, (ids(objs), sorted(map(str, ids(rel)))))


async def op_join(s: AsyncSession, t: Row, w: World, acting: uuid.UUID) -> Outcome:
    """Appointment -> Patient -> User joins filtered on the target's id."""
    cond = {
        "patient": Patient.id == t.id,
        "appointment": Appointment.id == t.id,
        "user": User.id == t.id,
    }[t.kind]
    stmt = (
        select(Appointment, Patient, User)
        .join(Patient, Appointment.patient_id == Patient.id)
        .join(User, Appointment.clinician_id == User.id)
        .where(cond)
    )
    found = [obj for row in (await s.execute(stmt)).all() for obj in row]
    return Outcome(found, sorted(map(str, ids(found))))


async def op_cross_join(s: AsyncSession, t: Row, w: World, acting: uuid.UUID) -> Outcome:
    """A join with ON true: only the wall decides which rows of either side come back."""
    model = MODELS[t.kind]
    other = aliased(Patient)  # an alias: the wall must cover aliases too
    stmt = (
        select(model.clinic_id, other.clinic_id)
        .select_from(model)
        .join(other, true())
        .where(model.id == t.id)
    )
    found = (await s.execute(stmt)).all()
    flat = [{"clinic_id": c} for row in found for c in row]
    return Outcome(flat, len(found))


async def op_has_any(s: AsyncSession, t: Row, w: World, acting: uuid.UUID) -> Outcome:
    if t.kind == "patient":
        stmt: Any = select(Appointment).where(Appointment.patient.has(Patient.id == t.id))
    elif t.kind == "appointment":
        stmt = select(Patient).where(Patient.appointments.any(Appointment.id == t.id))
    else:
        stmt = select(Appointment).where(Appointment.clinician.has(User.id == t.id))
    return scalar_rows((await s.scalars(stmt)).all())


async def op_in_subquery(s: AsyncSession, t: Row, w: World, acting: uuid.UUID) -> Outcome:
    """The target's clinic's rows via IN (subquery on the target)."""
    model = MODELS[t.kind]
    sub = select(model.clinic_id).where(model.id == t.id)
    stmt = select(Patient).where(Patient.clinic_id.in_(sub))
    return scalar_rows((await s.scalars(stmt)).all())


async def op_namesakes(s: AsyncSession, t: Row, w: World, acting: uuid.UUID) -> Outcome:
    """LoosePatient.namesakes joins on family_name only: every clinic has namesakes."""
    family = t.attrs.get("family_name") if t.kind == "patient" else None
    if family is None:
        family = f"Fam{w.token}shared0"
    stmt = (
        select(LoosePatient)
        .where(LoosePatient.family_name == family)  # type: ignore[attr-defined]
        .options(selectinload(LoosePatient.namesakes))
    )
    loaded = list((await s.scalars(stmt)).all())
    s.sync_session.expunge_all()
    joined_stmt = (
        select(LoosePatient)
        .where(LoosePatient.family_name == family)  # type: ignore[attr-defined]
        .options(joinedload(LoosePatient.namesakes))
    )
    joined = list((await s.scalars(joined_stmt)).unique().all())

    def lazy(_sync: Any) -> list[Any]:
        s.sync_session.expire_all()
        return [n for p in joined for n in p.namesakes]

    rel = [n for p in loaded + joined for n in p.namesakes] + await s.run_sync(lazy)
    return Outcome(loaded + rel, sorted(map(str, ids(loaded))))


# list and search -------------------------------------------------------------------------


async def op_list(s: AsyncSession, t: Row, w: World, acting: uuid.UUID) -> Outcome:
    if t.kind == "patient":
        page: Any = await PatientRepository(s).list(limit=200)
    elif t.kind == "appointment":
        page = await AppointmentRepository(s).for_patient(t.attrs["patient_id"], limit=200)
    else:
        start = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
        page = await AppointmentRepository(s).for_clinician(
            t.id, start, start + dt.timedelta(days=365 * 50), limit=200
        )
    return scalar_rows(page.items)


async def op_search(s: AsyncSession, t: Row, w: World, acting: uuid.UUID) -> Outcome:
    repo = PatientRepository(s)
    a = t.attrs if t.kind == "patient" else w.rows["patient"][0].attrs
    found: list[Any] = []
    for kwargs in (
        {"name": a["family_name"]},
        {"name": a["given_name"][: len(w.token) + 5]},
        {"mrn": a["mrn"]},
        {"date_of_birth": a["date_of_birth"]},
    ):
        found += (await repo.search(limit=200, **kwargs)).items  # type: ignore[arg-type]
    by_mrn = await repo.by_mrn(a["mrn"])
    found += [] if by_mrn is None else [by_mrn]
    return scalar_rows(found)


async def op_cached(s: AsyncSession, t: Row, w: World, acting: uuid.UUID) -> Outcome:
    # Marker only: dispatched specially (it needs its own facade call).
    raise AssertionError("unreachable")


async def op_critical(s: AsyncSession, t: Row, w: World, acting: uuid.UUID) -> Outcome:
    raise AssertionError("unreachable")


ID_READS: dict[str, Op] = {
    "get": op_get,
    "select_id": op_select_id,
    "repo_get": op_repo_get,
    "get_many": op_get_many,
    "count": op_count,
    "exists": op_exists,
    "exists_under_clinic": op_exists_under_clinic,
    "scalar_subquery": op_scalar_subquery,
    "selectinload": op_selectin,
    "joinedload": op_joined,
    "lazy": op_lazy,
    "join": op_join,
    "cross_join": op_cross_join,
    "has_any": op_has_any,
    "in_subquery": op_in_subquery,
}
SEARCHES: dict[str, Op] = {"list": op_list, "search": op_search, "namesakes": op_namesakes}
WRITES: dict[str, Op] = {
    "repo_update": op_repo_update,
    "soft_delete": op_soft_delete,
    "bulk_update": op_bulk_update,
    "bulk_delete": op_bulk_delete,
}
SPECIAL = ("critical_get", "critical_search", "cached_get", "raw_select", "raw_update")
TABLES = {"patient": "patients", "appointment": "appointments", "user": "users"}
RAW_COLUMN = {"patient": "notes", "appointment": "reason", "user": "full_name"}
OPERATIONS = [*ID_READS, *SEARCHES, *WRITES, *SPECIAL]


def expected_search(w: World, t: Row, acting: uuid.UUID) -> list[uuid.UUID]:
    a = t.attrs if t.kind == "patient" else w.rows["patient"][0].attrs
    own = [r.attrs for r in w.own("patient", acting)]
    prefix = a["given_name"][: len(w.token) + 5].lower()
    hits = [p for p in own if p["family_name"].lower().startswith(a["family_name"].lower())]
    hits = sorted(hits, key=lambda p: (p["family_name"], p["id"]))
    out = [p["id"] for p in hits]
    gh = [p for p in own if p["given_name"].lower().startswith(prefix)]
    out += [p["id"] for p in sorted(gh, key=lambda p: (p["family_name"], p["id"]))]
    for field in ("mrn", "date_of_birth"):
        m = [p for p in own if p[field] == a[field]]
        out += [p["id"] for p in sorted(m, key=lambda p: (p["family_name"], p["id"]))]
    out += [p["id"] for p in own if p["mrn"] == a["mrn"]]
    return out


def clinic_of(obj: Any) -> uuid.UUID:
    return obj["clinic_id"] if isinstance(obj, dict) else obj.clinic_id


def random_twin(t: Row) -> Row:
    return Row(t.kind, uuid.uuid4(), t.clinic, t.attrs)


def outcome_of_error(exc: BaseException) -> Outcome:
    return Outcome([], (type(exc).__name__, str(exc)))


async def attempt(
    w: World, acting: uuid.UUID, t: Row, name: str, session: AsyncSession | None = None
) -> None:
    """One attempt. Reads run in ``session`` when given (a batch sharing one facade call),
    else in a facade call of their own; writes and special lanes always get their own."""
    db = w.db
    foreign = t.clinic != acting
    ATTEMPTS[w.backend] += 1
    FOREIGN[w.backend] += foreign
    ctx = f"{w.backend}: acting={acting} target={t.kind}:{t.id}@{t.clinic} op={name}"

    def check_rows(out: Outcome) -> None:
        bad = [o for o in out.rows if clinic_of(o) != acting]
        assert not bad, f"LEAK {ctx}: {len(bad)} row(s) of another clinic: {bad[:3]!r}"

    async with db.clinic(acting, role="clinic_admin", purpose="proof"):
        if name in ID_READS or name in SEARCHES:
            fn = ID_READS.get(name) or SEARCHES[name]

            async def read(s: AsyncSession) -> tuple[Outcome, Outcome]:
                return await fn(s, t, w, acting), await fn(s, random_twin(t), w, acting)

            if session is not None:
                got, baseline = await read(session)
            else:
                got, baseline = await db.execute_read(read, QueryOptions.for_phi("proof"))
            check_rows(got)
            check_rows(baseline)
            if name == "search":
                assert sorted(got.value) == sorted(expected_search(w, t, acting)), ctx
            elif name == "list":
                if t.kind == "patient":
                    assert set(got.value) == {r.id for r in w.own("patient", acting)}, ctx
                elif foreign:
                    assert got.value == [], ctx
                else:
                    assert got.value, ctx
            elif name == "namesakes":
                family = t.attrs["family_name"] if t.kind == "patient" else f"Fam{w.token}shared0"
                want = [r.id for r in w.own("patient", acting) if r.attrs["family_name"] == family]
                assert got.value == sorted(map(str, want)), ctx
            elif foreign:
                assert got.value == baseline.value, f"{ctx}: {got.value!r} != {baseline.value!r}"
            else:
                assert got.value != baseline.value, f"{ctx}: own row not found ({got.value!r})"
        elif name in WRITES:
            fn = WRITES[name]

            async def write(s: AsyncSession, row: Row) -> Outcome:
                out = await fn(s, row, w, acting)
                if not foreign:
                    raise Rollback(out)
                return out

            results: list[Outcome] = []
            for row in (t, random_twin(t)):
                try:
                    results.append(await db.execute_write(lambda s, r=row: write(s, r)))
                except Rollback as done:
                    results.append(done.args[0])
                except HealthdbError as exc:
                    results.append(outcome_of_error(exc))
            got, baseline = results
            check_rows(got)
            if foreign:
                assert got.value == baseline.value, f"{ctx}: {got.value!r} != {baseline.value!r}"
            else:
                assert got.value != baseline.value, f"{ctx}: own write found nothing"
        elif name in ("critical_get", "critical_search"):
            fn = op_get if name == "critical_get" else op_search

            async def crit(s: AsyncSession) -> tuple[Outcome, Outcome]:
                return await fn(s, t, w, acting), await fn(s, random_twin(t), w, acting)

            got, baseline = await db.execute_critical(crit, reason="proof: break-glass")
            check_rows(got)
            if name == "critical_search":
                assert sorted(got.value) == sorted(expected_search(w, t, acting)), ctx
            elif foreign:
                assert got.value == baseline.value == [], ctx
            else:
                assert got.value == [t.id], ctx
        elif name in ("raw_select", "raw_update"):
            # The escape hatch: RLS on PostgreSQL; refused outright on SQLite (no db wall).
            table = TABLES[t.kind]
            if name == "raw_select":
                sql = f"SELECT id, clinic_id FROM {table} WHERE id = :id"
                read_only = True
            else:
                sql = f"UPDATE {table} SET {RAW_COLUMN[t.kind]} = :v WHERE id = :id"
                read_only = False
            raw_results: list[Outcome] = []
            # Own rows are never written (the raw lane commits): a random id stands in.
            first = t if (foreign or read_only) else random_twin(t)
            for row in (first, random_twin(t)):
                params: dict[str, object] = (
                    {"id": row.id} if read_only else {"id": row.id, "v": "x"}
                )
                try:
                    found = await db.execute_raw(
                        sql, params, reason="isolation proof", read_only=read_only
                    )
                    raw_results.append(Outcome(found, [uuid.UUID(str(r["id"])) for r in found]))
                except HealthdbError as exc:
                    raw_results.append(outcome_of_error(exc))
            got, baseline = raw_results
            check_rows(got)
            if foreign or not read_only or w.backend == "sqlite":
                assert got.value == baseline.value, f"{ctx}: {got.value!r} != {baseline.value!r}"
            else:
                assert got.value == [t.id], f"{ctx}: own row not found ({got.value!r})"
        else:  # cached_get: the owner's cached entry must not answer another clinic
            model = MODELS[t.kind]
            key = keys.custom(t.clinic, f"proof-{t.kind}", t.id, tables=[model.__tablename__])

            async def get(s: AsyncSession) -> Outcome:
                # Ids only: a cached read that loads PHI is refused (PHI is never cached).
                ids = (await s.scalars(select(model.id).where(model.id == t.id))).all()
                return Outcome([], list(ids))

            async with db.clinic(t.clinic, role="clinic_admin"):
                warm = await db.execute_read(get, QueryOptions.for_read().cached(key, ttl=60))
            assert warm.value == [t.id], ctx
            got = await db.execute_read(get, QueryOptions.for_read().cached(key, ttl=60))
            check_rows(got)
            assert got.value == ([] if foreign else [t.id]), ctx


async def verify_unchanged(w: World) -> None:
    for clinic in w.clinics:
        now = await owner_snapshots(w, clinic)
        for ident, before in now.items():
            assert before == w.snapshots[ident], f"{w.backend}: foreign write changed {ident}"
        assert set(now) == {r.id for kind in MODELS for r in w.own(kind, clinic)}


# -- the properties ----------------------------------------------------------------------

READS = frozenset({*ID_READS, *SEARCHES})

attempt_batches = st.tuples(
    st.integers(0, CLINICS - 1),
    st.lists(
        st.tuples(
            st.sampled_from(["patient", "appointment", "user"]),
            st.integers(0, 10_000),
            st.sampled_from(OPERATIONS),
        ),
        min_size=ATTEMPTS_PER_EXAMPLE,
        max_size=ATTEMPTS_PER_EXAMPLE,
    ),
)


async def run_batch(w: World, acting: uuid.UUID, attempts: list[tuple[Row, str]]) -> None:
    """Reads share one facade call (one session, one transaction); the rest go one by one."""
    reads = [(row, name) for row, name in attempts if name in READS]

    async def op(s: AsyncSession) -> None:
        for row, name in reads:
            await attempt(w, acting, row, name, session=s)

    async with w.db.clinic(acting, role="clinic_admin", purpose="proof"):
        await w.db.execute_read(op, QueryOptions.for_phi("proof"))
    for row, name in attempts:
        if name not in READS:
            await attempt(w, acting, row, name)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    # No shrinking: every database round trip is slow to shrink over, and each assertion
    # already names the acting clinic, the target row and the operation.
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batch=attempt_batches)
async def test_no_cross_clinic_row_ever(
    world: World, batch: tuple[int, list[tuple[str, int, str]]]
) -> None:
    acting, specs = batch
    rows = [(world.rows[kind][i % len(world.rows[kind])], name) for kind, i, name in specs]
    await run_batch(world, world.clinics[acting], rows)
    await verify_unchanged(world)


async def test_every_operation_against_every_foreign_row(world: World) -> None:
    """Exhaustive sweep (no sampling): every operation against two rows of each kind of
    every clinic, from every clinic (the owner included: each operation finds its own row)."""
    for acting in world.clinics:
        targets = [
            (row, name)
            for name in OPERATIONS
            for kind in MODELS
            for clinic in world.clinics
            for row in world.own(kind, clinic)[:2]
        ]
        await run_batch(world, acting, targets)
    await verify_unchanged(world)


async def test_emergency_lane_stays_in_the_callers_clinic(world: World) -> None:
    """Break-glass widens *what* a clinician sees in their clinic, never *which clinic*."""
    a, b = world.clinics[0], world.clinics[1]
    mine = world.own("patient", a)
    theirs = world.own("patient", b)
    unique_theirs = next(p for p in theirs if "shared" not in p.attrs["family_name"])

    async def op(s: AsyncSession) -> tuple[list[Any], list[Any], list[Any], list[Any]]:
        own = [await s.get(Patient, p.id) for p in mine]
        foreign = [await s.get(Patient, p.id) for p in theirs]
        by_name = (
            await s.scalars(
                select(Patient).where(Patient.family_name == unique_theirs.attrs["family_name"])
            )
        ).all()
        listed = (
            await s.scalars(select(Patient).where(Patient.family_name.like(f"Fam{world.token}%")))
        ).all()
        return own, foreign, list(by_name), list(listed)

    async with world.db.clinic(a, role="doctor", purpose="emergency"):
        own, foreign, by_name, listed = await world.db.execute_critical(
            op, reason="cardiac arrest, chart needed"
        )
    assert [p.id for p in own if p is not None] == [p.id for p in mine]
    assert foreign == [None] * len(theirs)
    assert by_name == []
    assert {p.id for p in listed} == {p.id for p in mine}
    assert all(p.clinic_id == a for p in listed)


async def test_attempt_count(world: World) -> None:
    """Runs last for its backend: the property tests above made enough attempts."""
    made, foreign = ATTEMPTS[world.backend], FOREIGN[world.backend]
    print(f"\n[isolation proof] {world.backend}: {made} facade attempts, {foreign} cross-clinic")
    assert made >= TARGET_PER_BACKEND, f"{world.backend}: only {made} attempts"


@pytest.fixture(scope="module", autouse=True)
def _summary() -> Iterator[None]:
    yield
    total = sum(ATTEMPTS.values())
    print(f"\n[isolation proof] facade attempts per backend: {dict(ATTEMPTS)}; total {total}")
