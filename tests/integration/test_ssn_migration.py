"""Migration 0004 encrypts SSNs stored in plaintext before it, on both backends."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest
import sqlalchemy as sa

from healthdb import migrate
from healthdb.engine import create_engine
from healthdb.phi.keys import keyring_for
from healthdb.settings import Settings

BACKENDS = [
    pytest.param("sqlite_empty_url", id="sqlite"),
    pytest.param("pg_empty_url", id="postgres", marks=pytest.mark.postgres),
]

# Frozen pre-0004 shapes (only the columns this test writes), not the models.
CLINICS = sa.table("clinics", sa.column("id", sa.Uuid()), sa.column("name"), sa.column("active"))
PATIENTS = sa.table(
    "patients",
    *(sa.column(name, sa.Uuid()) for name in ("id", "clinic_id")),
    *(sa.column(name) for name in ("mrn", "given_name", "family_name", "sex", "ssn", "version")),
    sa.column("date_of_birth", sa.Date()),
)


@pytest.fixture(params=BACKENDS)
def empty_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(request.param))


def patient(clinic_id: uuid.UUID, ssn: str | None) -> dict[str, object]:
    pid = uuid.uuid4()
    return {
        "id": pid,
        "clinic_id": clinic_id,
        "mrn": pid.hex[:12],
        "given_name": "Mig",
        "family_name": "Ration",
        "sex": "other",
        "ssn": ssn,
        "version": 1,
        "date_of_birth": dt.date(1960, 5, 5),
    }


async def upgrade_seeded(
    url: str,
    clinics: list[uuid.UUID],
    rows: list[dict[str, object]],
    read: str,
    *then: sa.Executable,
) -> dict[uuid.UUID, tuple[Any, ...]]:
    """Insert ``clinics`` and ``rows`` (then run ``then``) at the database's current
    revision, upgrade it to head, and return ``read``'s rows as ``{id: the other columns}``."""
    settings = Settings(database_url=url)
    engine = create_engine(settings.url, settings, pool_size=1, max_overflow=0)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                sa.insert(CLINICS), [{"id": c, "name": "c", "active": True} for c in clinics]
            )
            await conn.execute(sa.insert(PATIENTS), rows)
            for statement in then:
                await conn.execute(statement)

        await migrate.upgrade(url)

        async with engine.connect() as conn:
            result = await conn.execute(sa.text(read))
            return {uuid.UUID(str(r[0])): tuple(r[1:]) for r in result.all()}
    finally:
        await engine.dispose()


async def test_upgrade_encrypts_plaintext_ssns(empty_url: str) -> None:
    await migrate.upgrade(empty_url, "0003")
    clinics = [uuid.uuid4(), uuid.uuid4()]
    rows = [
        patient(clinics[0], "123-45-6789"),
        patient(clinics[0], None),
        patient(clinics[1], "987-65-4321"),
    ]
    stored = await upgrade_seeded(
        empty_url, clinics, rows, "SELECT id, ssn, ssn_index FROM patients"
    )

    keyring = keyring_for(Settings())  # the suite's environment keys: t1 active
    assert len(stored) == 3
    for row in rows:
        token, index = stored[row["id"]]  # type: ignore[index]
        ssn = row["ssn"]
        if ssn is None:
            assert (token, index) == (None, None)
            continue
        assert token.startswith("v1.t1.")
        assert str(ssn) not in token
        assert keyring.decrypt(token, aad="patients.ssn") == ssn
        assert index == keyring.blind_index(str(ssn))
