"""A worker process for ``test_two_processes``: reads and writes one clinic's PHI through
its own DatabaseService (its own pools, its own audit writer and lane), then prints what it
did as JSON: the accesses it made, by audit action."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from healthdb import ConflictError, DatabaseService, QueryOptions, Settings
from healthdb.repositories import PatientRepository, patient_views


async def main(url: str, clinic: uuid.UUID, patients: list[uuid.UUID], rounds: int) -> None:
    counts = {"phi.read": 0, "phi.update": 0}
    conflicts = [0]
    settings = Settings(database_url=url, pool_size=4, read_pool_size=4, audit_lanes=4)
    async with DatabaseService.connect(settings) as db:

        async def read(pid: uuid.UUID) -> None:
            async with db.clinic(clinic, role="doctor", purpose="two-process"):
                record = await db.execute_read(patient_views.by_id(pid), QueryOptions.for_phi())
            assert record is not None
            counts["phi.read"] += 1

        async def write(pid: uuid.UUID, n: int) -> None:
            async def op(session: AsyncSession) -> None:
                # A value no other write uses: an update that changes nothing writes nothing.
                note = f"{uuid.uuid4().hex}-{n}"
                await PatientRepository(session).update(pid, expected_version=None, notes=note)

            try:
                async with db.clinic(clinic, role="doctor", purpose="two-process"):
                    await db.execute_write(op, QueryOptions.for_phi())
            except ConflictError:
                # The other process changed the row first: this unit rolled back, audit
                # rows included (a write's rows commit with it or not at all).
                conflicts[0] += 1
                return
            counts["phi.read"] += 1  # the row the update loaded
            counts["phi.update"] += 1

        for n in range(rounds):
            batch = [read(pid) for pid in patients]
            batch.append(write(patients[n % len(patients)], n))
            await asyncio.gather(*batch)
    print(json.dumps({"accesses": counts, "conflicts": conflicts[0]}), flush=True)


if __name__ == "__main__":
    url, clinic, ids, rounds = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
    asyncio.run(main(url, uuid.UUID(clinic), [uuid.UUID(i) for i in ids.split(",")], int(rounds)))
