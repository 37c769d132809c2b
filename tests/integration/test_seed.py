"""``healthdb_api.seed``: synthetic demo data through the bulk path, on both backends."""

from __future__ import annotations

import datetime as dt
import uuid
from collections import Counter
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from healthdb import DatabaseService, Settings
from healthdb.models import Appointment, Patient, User
from healthdb.models.user import UserLogin
from healthdb_api.seed import SeedPlan, seed_demo

TODAY = dt.date(2025, 3, 14)
PLAN = SeedPlan(clinics=2, patients=200, seed=7, today=TODAY, chunk_size=64)


async def _count(session: AsyncSession, model: Any) -> int:
    return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def _patients(session: AsyncSession) -> list[tuple[str, str, str, dt.date, str]]:
    rows = await session.execute(
        select(
            Patient.mrn, Patient.given_name, Patient.family_name, Patient.date_of_birth, Patient.sex
        ).order_by(Patient.mrn)
    )
    return [tuple(r) for r in rows.all()]  # type: ignore[misc]


async def test_seed_counts_per_clinic(migrated_url: str, db: DatabaseService) -> None:
    progress: Counter[str] = Counter()

    def on_progress(table: str, rows: int) -> None:
        progress[table] += rows

    report = await seed_demo(
        Settings(database_url=migrated_url), PLAN, on_progress=on_progress, migrate=True
    )

    assert report.ok, report.failures
    assert len(report.clinics) == 2
    assert dict(progress) == PLAN.totals()
    assert PLAN.appointments_per_clinic == 40
    for clinic in report.clinics:
        assert (clinic.staff, clinic.patients, clinic.appointments) == (PLAN.staff, 200, 40)
        async with db.clinic(clinic.clinic_id, role="clinic_admin"):
            counts = await db.execute_read(_counts)
            assert counts == {"patients": 200, "staff": PLAN.staff, "appointments": 40}
            details = await db.execute_read(_appointment_details)
        # Appointments point at this clinic's patients and clinicians and never overlap.
        assert details["orphans"] == 0
        assert details["double_booked"] == 0
        assert details["clinician_roles"] <= {"doctor", "nurse"}
        # Seeded staff cannot log in: unusable hash and no login route.
        assert details["hashes"] == {"!"}
        async with db.clinic(clinic.clinic_id, role="clinic_admin"):
            logins = await db.execute_read(
                lambda s, ids=details["user_ids"]: s.scalar(
                    select(func.count()).select_from(UserLogin).where(UserLogin.user_id.in_(ids))
                )
            )
        assert logins == 0


async def _counts(session: AsyncSession) -> dict[str, int]:
    return {
        "patients": await _count(session, Patient),
        "staff": await _count(session, User),
        "appointments": await _count(session, Appointment),
    }


async def _appointment_details(session: AsyncSession) -> dict[str, Any]:
    patients = set((await session.scalars(select(Patient.id))).all())
    users = {u.id: u for u in (await session.scalars(select(User))).all()}
    appointments = (await session.scalars(select(Appointment))).all()
    slots = Counter((a.clinician_id, a.start_at) for a in appointments)
    return {
        "orphans": sum(
            1 for a in appointments if a.patient_id not in patients or a.clinician_id not in users
        ),
        "double_booked": sum(1 for n in slots.values() if n > 1),
        "clinician_roles": {users[a.clinician_id].role for a in appointments},
        "hashes": {u.password_hash for u in users.values()},
        "user_ids": list(users),
    }


async def test_seed_is_reproducible_and_isolated(migrated_url: str, db: DatabaseService) -> None:
    settings = Settings(database_url=migrated_url)
    plan = SeedPlan(clinics=1, patients=50, appointments=5, seed=11, today=TODAY)
    first = await seed_demo(settings, plan, migrate=False)
    second = await seed_demo(settings, plan, migrate=False)  # same seed, same database
    assert first.ok
    assert second.ok, second.failures
    ids = [first.clinics[0].clinic_id, second.clinics[0].clinic_id]
    assert ids[0] != ids[1]  # new clinics, no id collisions
    seen: list[list[tuple[str, str, str, dt.date, str]]] = []
    for clinic_id in ids:
        async with db.clinic(clinic_id, role="doctor"):
            seen.append(await db.execute_read(_patients))
    assert len(seen[0]) == 50
    assert seen[0] == seen[1]  # identical synthetic content
    async with db.clinic(uuid.uuid4(), role="doctor"):  # another clinic sees none of it
        assert await db.execute_read(lambda s: _count(s, Patient)) == 0
