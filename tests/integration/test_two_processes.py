"""Two service processes read and write one clinic's PHI at the same time (each with its
own audit group-commit writer): afterwards every chain verifies and the audit trail holds
exactly one row per access, no more, no fewer."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections import Counter

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from healthdb import DatabaseService
from healthdb.internal import audit_verify
from healthdb.models import AuditEvent
from tests.integration.conftest import MakeClinic, MakePatient

ROUNDS = 15

# Two OS processes on one database: PostgreSQL (run there, rather than skip on SQLite).
pytestmark = pytest.mark.parametrize("migrated_url", ["postgres"], indirect=True)


def _start(url: str, clinic: str, patients: list[str]) -> subprocess.Popen[str]:
    args = [sys.executable, "-m", "tests.integration.two_process_worker"]
    return subprocess.Popen(
        [*args, url, clinic, ",".join(patients), str(ROUNDS)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def test_two_processes_audit_every_access_exactly_once(
    migrated_url: str, db: DatabaseService, make_clinic: MakeClinic, make_patient: MakePatient
) -> None:
    clinic = await make_clinic()
    patients = [str(await make_patient(clinic, notes="start")) for _ in range(6)]

    async def by_action(session: AsyncSession) -> Counter[str]:
        stmt = (
            select(AuditEvent.action, func.count())
            .where(AuditEvent.clinic_id == clinic)
            .group_by(AuditEvent.action)
        )
        rows = (await session.execute(stmt)).all()
        return Counter({str(action): int(count) for action, count in rows})

    async with db.clinic(clinic, role="clinic_admin"):
        before = await db.execute_read(by_action)
    workers = [_start(migrated_url, str(clinic), patients) for _ in range(2)]
    outputs = await asyncio.gather(
        *(asyncio.to_thread(w.communicate, timeout=120) for w in workers)
    )
    for worker, (_out, err) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, err[-2000:]
    done: Counter[str] = Counter()
    conflicts = 0
    for out, _ in outputs:
        report = json.loads(out.strip().splitlines()[-1])
        done.update(report["accesses"])
        conflicts += report["conflicts"]
    writes = 2 * ROUNDS - conflicts
    assert writes > 0
    assert done == Counter({"phi.read": 2 * ROUNDS * len(patients) + writes, "phi.update": writes})

    async def check(session: AsyncSession) -> audit_verify.VerifyResult:
        return await audit_verify.verify(session, clinic)

    async with db.clinic(clinic, role="clinic_admin"):
        after = await db.execute_read(by_action)
        verified = await db.execute_read(check)
    assert verified.ok, verified.first_bad
    assert after - before == done
