"""Clinical notes at rest: encrypted by the column type from migration 0006 on, and every
note stored before 0006 encrypted by the migration, on both backends."""

from __future__ import annotations

import datetime as dt
import uuid

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from healthdb import DatabaseService, QueryOptions, migrate
from healthdb.models import Patient
from healthdb.phi.keys import keyring_for
from healthdb.settings import Settings
from tests.integration.conftest import MakeClinic
from tests.integration.test_ssn_migration import empty_url, patient, upgrade_seeded

__all__ = ["empty_url"]  # the fixture, re-exported for pytest

NOTES = sa.table("patients", sa.column("id", sa.Uuid()), sa.column("notes"))
# A plaintext note may look like a token: the migration must encrypt it all the same.
LOOKS_LIKE_A_TOKEN = "v1.t1.not-a-token: BP 120/80, follow up in 2 weeks"


async def test_upgrade_encrypts_every_plaintext_note(empty_url: str) -> None:
    await migrate.upgrade(empty_url, "0005")
    clinics = [uuid.uuid4(), uuid.uuid4()]
    notes = {
        uuid.uuid4(): (clinics[0], "allergy: penicillin\nline two"),
        uuid.uuid4(): (clinics[0], None),
        uuid.uuid4(): (clinics[0], LOOKS_LIKE_A_TOKEN),
        uuid.uuid4(): (clinics[1], "é" * 5000),
    }
    rows = []
    for pid, (clinic, _) in notes.items():
        row = patient(clinic, None)
        row["id"] = pid
        row["mrn"] = pid.hex[:12]
        rows.append(row)
    set_notes = [
        sa.update(NOTES).where(NOTES.c.id == pid).values(notes=note)
        for pid, (_, note) in notes.items()
    ]
    read = "SELECT id, notes FROM patients"
    seeded = await upgrade_seeded(empty_url, clinics, rows, read, *set_notes)
    stored = {pid: note for pid, (note,) in seeded.items()}

    keyring = keyring_for(Settings())  # the suite's environment keys: t1 active
    assert set(stored) == set(notes)
    for pid, (_, note) in notes.items():
        token = stored[pid]
        if note is None:
            assert token is None
            continue
        assert token.startswith("v1.t1.")
        assert note not in token
        assert keyring.decrypt(token, aad="patients.notes") == note


async def test_a_note_written_through_the_facade_is_stored_encrypted(
    db: DatabaseService, make_clinic: MakeClinic
) -> None:
    clinic = await make_clinic()
    note = f"canary note {uuid.uuid4().hex}"

    async def write(session: AsyncSession) -> uuid.UUID:
        p = Patient(
            mrn=uuid.uuid4().hex[:10],
            given_name="Enc",
            family_name="Rypted",
            date_of_birth=dt.date(1980, 1, 1),
            sex="other",
            notes=note,
        )
        session.add(p)
        await session.flush()
        return p.id

    async def raw(session: AsyncSession) -> str:
        statement = sa.select(sa.type_coerce(Patient.notes, sa.Text)).where(Patient.id == pid)
        return str((await session.execute(statement)).scalar_one())

    async def read(session: AsyncSession) -> str | None:
        found = await session.get(Patient, pid)
        return None if found is None else found.notes

    async with db.clinic(clinic, role="doctor"):
        pid = await db.execute_write(write)
        token = await db.execute_read(raw)
        assert await db.execute_read(read, QueryOptions.for_phi("notes")) == note
    assert token.startswith("v1.")
    assert note not in token
    assert db.keyring.decrypt(token, aad="patients.notes") == note
