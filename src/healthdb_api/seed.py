"""Synthetic demo data: ``healthdb seed-demo``.

Creates clinics, a few staff members per clinic, patients through the bulk path
(``db.execute_batch(rows, Patient, ...)``) and appointments. All names, addresses and dates
are synthetic and reproducible: Faker fills small pools once (seeded), then a seeded
:class:`random.Random` per clinic combines them, which is orders of magnitude faster than
calling Faker per row. Ids are random (not seeded), so seeding the same database twice adds
a second, identical-looking set of clinics instead of colliding.

Seeded staff cannot log in: their password hash is the unusable ``"!"`` and no login route
(``user_logins`` row) is created for them.

Every failed row is reported in :attr:`SeedReport.failures`; nothing is dropped silently.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import re
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from faker import Faker
from sqlalchemy.orm import DeclarativeBase

from healthdb import BatchResult, DatabaseService, Role, Settings
from healthdb.clinics import create_clinic
from healthdb.migrate import upgrade_with_role
from healthdb.models import Appointment, Patient, User

__all__ = [
    "ClinicSeeded",
    "OnProgress",
    "SeedFailure",
    "SeedPlan",
    "SeedReport",
    "seed_demo",
    "seed_into",
]

CHUNK_SIZE = 5000
UNUSABLE_PASSWORD_HASH = "!"  # noqa: S105 - not a hash: matches no password, ever
SLOT_MINUTES = 30
SLOTS_PER_DAY = 16  # 09:00-17:00 UTC
DAYS_BACK = 90
DAYS_AHEAD = 45

# (table, rows just written) -> None; tables: "clinics", "staff", "patients", "appointments"
OnProgress = Callable[[str, int], None]

_CLINIC_KINDS = (
    "Family Practice",
    "Medical Center",
    "Community Health Clinic",
    "Internal Medicine",
    "Pediatrics",
    "Health Partners",
)
_REASONS = (
    "Annual physical",
    "Follow-up visit",
    "Blood pressure check",
    "Vaccination",
    "Lab results review",
    "Medication review",
    "Back pain",
    "Cough and fever",
    "Skin rash",
    "Diabetes management",
    "Prenatal visit",
    "Well-child visit",
    "Headache",
    "Allergy consultation",
    "Post-operative check",
)
_EMAIL_DOMAINS = ("example.com", "example.net", "example.org")
# Real area codes with the 555-01XX exchange reserved for fiction: valid, never dialable.
_AREA_CODES = ("212", "312", "415", "617", "206", "303", "512", "404", "305", "702", "503", "919")


@dataclass(frozen=True, slots=True)
class SeedPlan:
    """How much to create. ``appointments`` is per clinic (default: a fifth of patients)."""

    clinics: int
    patients: int
    appointments: int | None = None
    seed: int = 42
    chunk_size: int = CHUNK_SIZE
    today: dt.date | None = None  # anchor for birth dates and appointment slots

    def __post_init__(self) -> None:
        if self.clinics < 1:
            raise ValueError("clinics must be >= 1")
        if self.patients < 0:
            raise ValueError("patients must be >= 0")
        if self.appointments is not None and self.appointments < 0:
            raise ValueError("appointments must be >= 0")
        if not 1 <= self.chunk_size <= 100_000:
            raise ValueError("chunk_size must be in 1..100000")

    @property
    def doctors(self) -> int:
        return max(2, min(40, self.patients // 2500))

    @property
    def nurses(self) -> int:
        return max(1, self.doctors // 2)

    @property
    def receptionists(self) -> int:
        return max(1, self.doctors // 4)

    @property
    def staff(self) -> int:
        """Staff per clinic: one clinic admin, doctors, nurses and receptionists."""
        return 1 + self.doctors + self.nurses + self.receptionists

    @property
    def appointments_per_clinic(self) -> int:
        wanted = self.patients // 5 if self.appointments is None else self.appointments
        if self.patients == 0:
            return 0
        return min(wanted, self.slot_capacity)

    @property
    def slot_capacity(self) -> int:
        """Distinct (clinician, weekday, half hour) slots: appointments never overlap."""
        days = DAYS_BACK + DAYS_AHEAD + 1
        weekdays = days * 5 // 7
        return (self.doctors + self.nurses) * weekdays * SLOTS_PER_DAY

    def totals(self) -> dict[str, int]:
        """Rows each table will receive across all clinics (for progress bars)."""
        return {
            "clinics": self.clinics,
            "staff": self.clinics * self.staff,
            "patients": self.clinics * self.patients,
            "appointments": self.clinics * self.appointments_per_clinic,
        }


@dataclass(frozen=True, slots=True)
class SeedFailure:
    """One row that was not written, with the library's PHI-free reason."""

    clinic_id: uuid.UUID
    table: str
    index: int
    code: str
    message: str


@dataclass(slots=True)
class ClinicSeeded:
    clinic_id: uuid.UUID
    name: str
    staff: int = 0
    patients: int = 0
    appointments: int = 0


@dataclass(slots=True)
class SeedReport:
    clinics: list[ClinicSeeded] = field(default_factory=list)
    failures: list[SeedFailure] = field(default_factory=list)
    seconds: float = 0.0
    patient_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def patients(self) -> int:
        return sum(c.patients for c in self.clinics)

    @property
    def appointments(self) -> int:
        return sum(c.appointments for c in self.clinics)

    @property
    def staff(self) -> int:
        return sum(c.staff for c in self.clinics)


async def seed_demo(
    settings: Settings,
    plan: SeedPlan,
    *,
    on_progress: OnProgress | None = None,
    migrate: bool = True,
) -> SeedReport:
    """Migrate (unless ``migrate=False``) and load ``plan`` into ``settings``' database."""
    if migrate:
        await upgrade_with_role(settings)  # and provision the runtime role on PostgreSQL
    async with DatabaseService.connect(settings) as db:
        return await seed_into(db, plan, on_progress=on_progress)


async def seed_into(
    db: DatabaseService, plan: SeedPlan, *, on_progress: OnProgress | None = None
) -> SeedReport:
    """Load ``plan`` through an already connected service (the schema must be at head)."""
    progress = on_progress or _no_progress
    started = time.perf_counter()
    pools = _Pools(plan.seed)
    today = plan.today or dt.datetime.now(dt.UTC).date()
    report = SeedReport()
    clinic_rng = random.Random(f"{plan.seed}:clinics")
    for _ in range(plan.clinics):
        name = f"{clinic_rng.choice(pools.towns)} {clinic_rng.choice(_CLINIC_KINDS)}"
        report.clinics.append(ClinicSeeded(clinic_id=uuid.uuid4(), name=name))
    for clinic in report.clinics:  # each in its own scope: a clinic row is written only there
        await create_clinic(db, clinic.name, clinic_id=clinic.clinic_id, purpose="seed")
    progress("clinics", len(report.clinics))

    loader = _Loader(
        db=db,
        chunk_size=plan.chunk_size,
        lanes=db.settings.pool_size if db.engines.is_postgres else 1,  # SQLite: one writer
        progress=progress,
        report=report,
    )
    for number, clinic in enumerate(report.clinics):
        rng = random.Random(f"{plan.seed}:clinic:{number}")
        async with db.clinic(clinic.clinic_id, role=Role.CLINIC_ADMIN, purpose="seed"):
            staff_rows = _staff_rows(pools, rng, plan, clinic.clinic_id)
            clinic.staff, staff_failed = await loader.load(clinic, User, "staff", staff_rows)
            patient_rows = _patient_rows(pools, rng, plan.patients, today)
            t0 = time.perf_counter()
            clinic.patients, patients_failed = await loader.load(
                clinic, Patient, "patients", patient_rows
            )
            report.patient_seconds += time.perf_counter() - t0
            clinicians = [
                row["id"]
                for i, row in enumerate(staff_rows)
                if row["role"] in (Role.DOCTOR, Role.NURSE) and i not in staff_failed
            ]
            patients = [r["id"] for i, r in enumerate(patient_rows) if i not in patients_failed]
            appointment_rows = _appointment_rows(
                rng, plan.appointments_per_clinic, patients, clinicians, today
            )
            clinic.appointments, _ = await loader.load(
                clinic, Appointment, "appointments", appointment_rows
            )
    report.failures.sort(key=lambda f: (str(f.clinic_id), f.table, f.index))
    report.seconds = time.perf_counter() - started
    return report


# -- writing ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Loader:
    db: DatabaseService
    chunk_size: int
    lanes: int
    progress: OnProgress
    report: SeedReport

    async def load(
        self,
        clinic: ClinicSeeded,
        model: type[DeclarativeBase],
        table: str,
        rows: list[dict[str, Any]],
    ) -> tuple[int, set[int]]:
        """Bulk-insert ``rows`` (inside the clinic's scope) one chunk per ``execute_batch``
        call, ``lanes`` calls at a time, so progress advances chunk by chunk. Failed rows go
        to the report; returns (rows written, indexes of the failed rows)."""
        size = self.chunk_size
        gate = asyncio.Semaphore(self.lanes)
        failed: set[int] = set()

        def advance(rows_done: int) -> None:
            self.progress(table, rows_done)

        async def insert(start: int) -> int:
            async with gate:
                result: BatchResult[Any] = await self.db.execute_batch(
                    rows[start : start + size],
                    model,
                    chunk_size=size,
                    name=f"seed.{table}",
                    on_progress=advance,
                )
            for f in result.failures:
                failed.add(start + f.index)
                self.report.failures.append(
                    SeedFailure(clinic.clinic_id, table, start + f.index, f.code, f.message)
                )
            return result.succeeded

        written = await asyncio.gather(*(insert(start) for start in range(0, len(rows), size)))
        return sum(written), failed


def _no_progress(table: str, n: int) -> None:
    return None


# -- generating ------------------------------------------------------------------------------


class _Pools:
    """Small Faker-made pools (seeded) that rows combine at random."""

    def __init__(self, seed: int) -> None:
        fake = Faker("en_US")
        fake.seed_instance(seed)
        self.female = _unique(fake.first_name_female for _ in range(400))
        self.male = _unique(fake.first_name_male for _ in range(400))
        self.family = _unique(fake.last_name for _ in range(800))
        self.streets = _unique(fake.street_address for _ in range(3000))
        self.places = _unique(
            lambda: f"{fake.city()}, {fake.state_abbr()} {fake.zipcode()}" for _ in range(400)
        )
        self.towns = _unique(fake.city for _ in range(200))
        self.slug = {name: _slug(name) for name in (*self.female, *self.male, *self.family)}


def _unique(makers: Any) -> list[str]:
    seen: dict[str, None] = {}
    for make in makers:
        seen.setdefault(make(), None)
    return list(seen)


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower()) or "x"


def _staff_rows(
    pools: _Pools, rng: random.Random, plan: SeedPlan, clinic_id: uuid.UUID
) -> list[dict[str, Any]]:
    roles = (
        [Role.CLINIC_ADMIN]
        + [Role.DOCTOR] * plan.doctors
        + [Role.NURSE] * plan.nurses
        + [Role.RECEPTIONIST] * plan.receptionists
    )
    domain = f"c{clinic_id.hex[:12]}.demo.example"  # users.email is unique across clinics
    rows = []
    for number, role in enumerate(roles):
        given = rng.choice(pools.female if rng.random() < 0.5 else pools.male)
        family = rng.choice(pools.family)
        title = "Dr " if role is Role.DOCTOR else ""
        rows.append(
            {
                "id": uuid.uuid4(),
                "email": f"{pools.slug[given]}.{pools.slug[family]}.{number}@{domain}",
                "password_hash": UNUSABLE_PASSWORD_HASH,
                "full_name": f"{title}{given} {family}",
                "role": role.value,
            }
        )
    return rows


def _patient_rows(
    pools: _Pools, rng: random.Random, count: int, today: dt.date
) -> list[dict[str, Any]]:
    rand = rng.random
    choice = rng.choice
    randrange = rng.randrange
    female, male, family, slug = pools.female, pools.male, pools.family, pools.slug
    streets, places = pools.streets, pools.places
    newest = today.toordinal()
    oldest_days = 95 * 365
    rows: list[dict[str, Any]] = []
    append = rows.append
    for i in range(count):
        r = rand()
        sex = "female" if r < 0.49 else "male" if r < 0.98 else "other"
        given = choice(female if r < 0.49 or 0.98 <= r < 0.99 else male)
        surname = choice(family)
        email = None
        if rand() < 0.7:
            email = f"{slug[given]}.{slug[surname]}{randrange(1000)}@{choice(_EMAIL_DOMAINS)}"
        append(
            {
                "id": uuid.uuid4(),
                "mrn": f"MRN-{i + 1:07d}",
                "given_name": given,
                "family_name": surname,
                "date_of_birth": dt.date.fromordinal(newest - randrange(oldest_days)),
                "sex": sex,
                "phone": f"+1{choice(_AREA_CODES)}55501{randrange(100):02d}"
                if rand() < 0.85
                else None,
                "email": email,
                "address": f"{choice(streets)}, {choice(places)}" if rand() < 0.9 else None,
            }
        )
    return rows


def _appointment_rows(
    rng: random.Random,
    count: int,
    patients: Sequence[uuid.UUID],
    clinicians: Sequence[uuid.UUID],
    today: dt.date,
) -> list[dict[str, Any]]:
    if not patients or not clinicians or count == 0:
        return []
    first = today - dt.timedelta(days=DAYS_BACK)
    days = [
        first + dt.timedelta(days=d)
        for d in range(DAYS_BACK + DAYS_AHEAD + 1)
        if (first + dt.timedelta(days=d)).weekday() < 5
    ]
    per_clinician = len(days) * SLOTS_PER_DAY
    capacity = per_clinician * len(clinicians)
    slots = rng.sample(range(capacity), min(count, capacity))  # distinct: no double booking
    length = dt.timedelta(minutes=SLOT_MINUTES)
    rows: list[dict[str, Any]] = []
    for slot in slots:
        clinician, rest = divmod(slot, per_clinician)
        day, half_hour = divmod(rest, SLOTS_PER_DAY)
        start = dt.datetime.combine(days[day], dt.time(9), tzinfo=dt.UTC) + half_hour * length
        past = days[day] < today
        r = rng.random()
        if past:
            status = "completed" if r < 0.85 else "cancelled" if r < 0.95 else "no_show"
        else:
            status = "booked" if r < 0.93 else "cancelled"
        rows.append(
            {
                "id": uuid.uuid4(),
                "patient_id": rng.choice(patients),
                "clinician_id": clinicians[clinician],
                "start_at": start,
                "end_at": start + length,
                "status": status,
                "reason": rng.choice(_REASONS),
            }
        )
    return rows
