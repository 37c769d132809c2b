"""SSN encryption at rest, key rotation and the blind-index lookup, on both backends.

The migrated databases are shared by the session, so every rotation here is limited to the
test's own clinics (``clinic_ids=``); the CLI test rotates a whole SQLite file of its own.
"""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import Text, select, type_coerce
from sqlalchemy.ext.asyncio import AsyncSession

from healthdb.errors import EncryptionKeyMissing
from healthdb.key_rotation import STALE_INDEX, rotate, status
from healthdb.models import AuditEvent, Patient
from healthdb.phi.crypto import generate_key
from healthdb.query.options import QueryOptions
from healthdb.repositories.patients import PatientRepository
from healthdb.service import DatabaseService
from tests.conftest import TEST_INDEX_KEY, TEST_PHI_KEYS
from tests.integration.conftest import MakeClinic, MakeDb, MakePatient

SSNS = [f"900-{n // 100:02d}-{n % 10_000:04d}" for n in range(7)]


class Stop(Exception):
    """Injected after the first committed batch."""


async def stored_tokens(db: DatabaseService, clinic_id: uuid.UUID) -> dict[uuid.UUID, str]:
    """The SSN column exactly as stored (type_coerce skips the column's decryption)."""

    async def op(session: AsyncSession) -> dict[uuid.UUID, str]:
        stmt = select(Patient.id, type_coerce(Patient.ssn, Text)).where(Patient.ssn.is_not(None))
        return {row[0]: row[1] for row in (await session.execute(stmt)).all()}

    async with db.clinic(clinic_id, role="doctor"):
        return await db.execute_read(op)


async def versions(
    db: DatabaseService, clinic_id: uuid.UUID
) -> dict[uuid.UUID, tuple[int, object]]:
    """(version, updated_at) per patient: no PHI column is read."""

    async def op(session: AsyncSession) -> dict[uuid.UUID, tuple[int, object]]:
        stmt = select(Patient.id, Patient.version, Patient.updated_at)
        return {row[0]: (row[1], row[2]) for row in (await session.execute(stmt)).all()}

    async with db.clinic(clinic_id, role="doctor"):
        return await db.execute_read(op)


async def decrypted(db: DatabaseService, clinic_id: uuid.UUID) -> dict[uuid.UUID, str]:
    """Every SSN of the clinic, decrypted by the column type as the application reads it."""

    async def op(session: AsyncSession) -> dict[uuid.UUID, str]:
        patients = (await session.scalars(select(Patient))).all()
        return {p.id: p.ssn for p in patients if p.ssn is not None}

    async with db.clinic(clinic_id, role="doctor"):
        return await db.execute_read(op, QueryOptions.for_phi())


async def populate(
    make_clinic: MakeClinic, make_patient: MakePatient
) -> tuple[uuid.UUID, dict[uuid.UUID, str]]:
    """A new clinic with one patient per SSN (under t1) and one without: (clinic, id → SSN)."""
    clinic = await make_clinic()
    expected = {}
    for ssn in SSNS:
        expected[await make_patient(clinic, ssn=ssn)] = ssn
    await make_patient(clinic)  # no SSN: stays NULL, never counted
    return clinic, expected


async def test_ssn_is_stored_encrypted_under_the_active_key(
    db: DatabaseService, make_clinic: MakeClinic, make_patient: MakePatient
) -> None:
    clinic, expected = await populate(make_clinic, make_patient)
    tokens = await stored_tokens(db, clinic)
    assert set(tokens) == set(expected)
    for patient_id, token in tokens.items():
        assert token.startswith("v1.t1.")
        assert expected[patient_id] not in token
        assert expected[patient_id].replace("-", "") not in token
    assert await status(db, clinic_ids=[clinic]) == {"t1": len(SSNS), "t2": 0}
    # Every clinic, as the CLI counts (clinics is a shared table; each count is scoped).
    everywhere = await status(db)
    assert everywhere["t1"] >= len(SSNS)


async def test_rotation_moves_every_value_to_the_new_key(
    db: DatabaseService, make_db: MakeDb, make_clinic: MakeClinic, make_patient: MakePatient
) -> None:
    clinic, expected = await populate(make_clinic, make_patient)
    other, other_expected = await populate(make_clinic, make_patient)
    before = await stored_tokens(db, clinic)
    stamps = await versions(db, clinic)
    rotated_db = await make_db(phi_active_key="t2")
    seen: list[tuple[int, int]] = []

    report = await rotate(
        rotated_db, batch_size=3, on_progress=lambda d, t: seen.append((d, t)), clinic_ids=[clinic]
    )

    assert report.rotated == len(SSNS)
    assert report.total == len(SSNS)
    assert report.batches == 3  # 3 + 3 + 1
    assert seen == [(0, 7), (3, 7), (6, 7), (7, 7)]
    after = await stored_tokens(rotated_db, clinic)
    assert set(after) == set(before)
    assert all(token.startswith("v1.t2.") for token in after.values())
    # Same values, so no spurious optimistic-lock conflict for anyone editing them.
    assert await versions(rotated_db, clinic) == stamps
    assert await decrypted(rotated_db, clinic) == expected
    assert await status(rotated_db, clinic_ids=[clinic]) == {"t1": 0, "t2": len(SSNS)}
    # Only the named clinic moved.
    assert await status(rotated_db, clinic_ids=[other]) == {"t1": len(other_expected), "t2": 0}
    # The old service still reads the new values (t2 is in its keyring too).
    assert await decrypted(db, clinic) == expected
    # A second run finds nothing left to do.
    again = await rotate(rotated_db, clinic_ids=[clinic])
    assert (again.rotated, again.batches, again.total) == (0, 0, 0)


async def test_interrupted_rotation_resumes_and_loses_nothing(
    make_db: MakeDb, make_clinic: MakeClinic, make_patient: MakePatient
) -> None:
    clinic, expected = await populate(make_clinic, make_patient)
    rotated_db = await make_db(phi_active_key="t2")

    def fail_after_first_batch(done: int, _total: int) -> None:
        if done > 0:
            raise Stop

    with pytest.raises(Stop):
        await rotate(
            rotated_db, batch_size=2, on_progress=fail_after_first_batch, clinic_ids=[clinic]
        )
    assert await status(rotated_db, clinic_ids=[clinic]) == {"t1": 5, "t2": 2}

    report = await rotate(rotated_db, batch_size=2, clinic_ids=[clinic])

    assert report.rotated == 5
    assert report.before == {"t1": 5, "t2": 2}
    assert await status(rotated_db, clinic_ids=[clinic]) == {"t1": 0, "t2": len(SSNS)}
    assert await decrypted(rotated_db, clinic) == expected


async def test_rotation_is_audited_under_its_purpose(
    make_db: MakeDb, make_clinic: MakeClinic, make_patient: MakePatient
) -> None:
    clinic, _expected = await populate(make_clinic, make_patient)
    rotated_db = await make_db(phi_active_key="t2")
    await rotate(rotated_db, batch_size=100, clinic_ids=[clinic])

    async def op(session: AsyncSession) -> list[tuple[str, list[str]]]:
        stmt = select(AuditEvent.action, AuditEvent.phi_fields).where(
            AuditEvent.purpose == "key_rotation"
        )
        return [(a, list(f)) for a, f in (await session.execute(stmt)).all()]

    async with rotated_db.clinic(clinic, role="clinic_admin"):
        events = await rotated_db.execute_read(op)
    assert ("phi.read", ["ssn"]) in events
    assert any(action == "phi.update" for action, _ in events)


async def test_rotation_without_the_old_key_fails_clearly(
    make_db: MakeDb, make_clinic: MakeClinic, make_patient: MakePatient
) -> None:
    clinic, _expected = await populate(make_clinic, make_patient)

    only_t2 = await make_db(phi_keys=f"t2={TEST_PHI_KEYS['t2']}", phi_active_key="t2")
    assert await status(only_t2, clinic_ids=[clinic]) == {"t2": 0, "?": len(SSNS)}
    with pytest.raises(EncryptionKeyMissing, match="t1"):
        await rotate(only_t2, clinic_ids=[clinic])


async def test_find_by_ssn_uses_the_blind_index_within_the_clinic(
    db: DatabaseService, make_clinic: MakeClinic, make_patient: MakePatient
) -> None:
    clinic = await make_clinic()
    other = await make_clinic()
    digits = f"{uuid.uuid4().int % 10**8:08d}"
    ssn, neighbour = (
        f"1{digits[:2]}-{digits[2:4]}-{digits[4:]}",
        f"2{digits[:2]}-{digits[2:4]}-{digits[4:]}",
    )
    mine = await make_patient(clinic, ssn=ssn)
    await make_patient(clinic, ssn=neighbour)
    theirs = await make_patient(other, ssn=ssn)
    gone = await make_patient(clinic, ssn=ssn)
    async with db.clinic(clinic, role="doctor"):
        await db.execute_write(lambda s: PatientRepository(s).soft_delete(gone))

    async def find(value: str) -> list[uuid.UUID]:
        async def op(session: AsyncSession) -> list[uuid.UUID]:
            return [p.id for p in await PatientRepository(session).find_by_ssn(value)]

        return await db.execute_read(op, QueryOptions.for_phi())

    async with db.clinic(clinic, role="doctor"):
        assert await find(ssn) == [mine]
        assert await find(ssn.replace("-", " ")) == [mine]
        assert await find(neighbour) != [mine]
        assert await find("3" + ssn[1:]) == []
    async with db.clinic(other, role="doctor"):
        assert await find(ssn) == [theirs]


async def test_rotation_re_encrypts_notes_too(
    db: DatabaseService, make_db: MakeDb, make_clinic: MakeClinic, make_patient: MakePatient
) -> None:
    """Every encrypted column rotates: a patient with both an SSN and a note has both
    values counted and moved, and both still read back."""
    clinic = await make_clinic()
    note = "assessment: stable\nplan: review in 6 weeks"
    pid = await make_patient(clinic, ssn="900-00-0042", notes=note)
    assert await status(db, clinic_ids=[clinic]) == {"t1": 2, "t2": 0}
    rotated_db = await make_db(phi_active_key="t2")

    report = await rotate(rotated_db, clinic_ids=[clinic])

    assert (report.total, report.rotated) == (2, 2)
    assert await status(rotated_db, clinic_ids=[clinic]) == {"t1": 0, "t2": 2}

    async def raw_note(session: AsyncSession) -> str:
        stmt = select(type_coerce(Patient.notes, Text)).where(Patient.id == pid)
        return str((await session.execute(stmt)).scalar_one())

    async def read(session: AsyncSession) -> tuple[str | None, str | None]:
        patient = await session.get(Patient, pid)
        assert patient is not None
        return patient.ssn, patient.notes

    async with rotated_db.clinic(clinic, role="doctor"):
        assert (await rotated_db.execute_read(raw_note)).startswith("v1.t2.")
        assert await rotated_db.execute_read(read, QueryOptions.for_phi()) == ("900-00-0042", note)


async def stored_indexes(db: DatabaseService, clinic_id: uuid.UUID) -> dict[uuid.UUID, str]:
    async def op(session: AsyncSession) -> dict[uuid.UUID, str]:
        stmt = select(Patient.id, Patient.ssn_index).where(Patient.ssn_index.is_not(None))
        return {row[0]: row[1] for row in (await session.execute(stmt)).all()}

    async with db.clinic(clinic_id, role="doctor"):
        return await db.execute_read(op)


async def found_by_ssn(db: DatabaseService, clinic_id: uuid.UUID, ssn: str) -> list[uuid.UUID]:
    async def op(session: AsyncSession) -> list[uuid.UUID]:
        return [p.id for p in await PatientRepository(session).find_by_ssn(ssn)]

    async with db.clinic(clinic_id, role="doctor"):
        return await db.execute_read(op, QueryOptions.for_phi())


async def test_the_blind_index_key_rotates_without_losing_a_lookup(
    db: DatabaseService, make_db: MakeDb, make_clinic: MakeClinic, make_patient: MakePatient
) -> None:
    """A new index key with the old one kept as previous: lookups work before, during and
    after the rotation, which recomputes every index value under the new key (and leaves
    the ciphertexts' key alone); afterwards the old index key can be dropped."""
    clinic, expected = await populate(make_clinic, make_patient)
    pid, ssn = next(iter(expected.items()))
    new_index = generate_key()
    old_id = db.keyring.index_id
    assert {v.split(".")[0] for v in (await stored_indexes(db, clinic)).values()} == {old_id}
    without_old = await make_db(phi_index_key=new_index)
    assert await found_by_ssn(without_old, clinic, ssn) == []  # why the old key must stay
    rotating = await make_db(phi_index_key=new_index, phi_previous_index_keys=TEST_INDEX_KEY)
    assert await found_by_ssn(rotating, clinic, ssn) == [pid]
    assert await status(rotating, clinic_ids=[clinic]) == {
        "t1": len(SSNS),
        "t2": 0,
        STALE_INDEX: len(SSNS),
    }

    report = await rotate(rotating, batch_size=3, clinic_ids=[clinic])

    assert (report.total, report.rotated) == (len(SSNS), len(SSNS))
    assert await status(rotating, clinic_ids=[clinic]) == {"t1": len(SSNS), "t2": 0}
    indexes = await stored_indexes(rotating, clinic)
    assert {v.split(".")[0] for v in indexes.values()} == {rotating.keyring.index_id}
    assert await found_by_ssn(without_old, clinic, ssn) == [pid]
    assert await decrypted(without_old, clinic) == expected
    assert (await rotate(rotating, clinic_ids=[clinic])).rotated == 0
