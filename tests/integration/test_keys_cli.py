"""``healthdb keys generate|status|rotate`` on a SQLite file with its key file."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from pathlib import Path

from sqlalchemy import Text, select, type_coerce
from sqlalchemy.ext.asyncio import AsyncSession
from typer.testing import CliRunner

from healthdb.cli import app
from healthdb.clinics import create_clinic
from healthdb.migrate import upgrade
from healthdb.models import Patient
from healthdb.phi.crypto import parse_key
from healthdb.query.options import QueryOptions
from healthdb.repositories.patients import PatientRepository
from healthdb.service import DatabaseService
from healthdb.settings import Settings
from tests.conftest import TEST_INDEX_KEY, TEST_PHI_KEYS

#: The suite's keys are in the environment (tests/conftest.py); unset them so the CLI uses
#: the key file next to the database, as an embedded deployment does.
NO_ENV_KEYS: dict[str, str | None] = {
    "HEALTHDB_PHI_KEYS": None,
    "HEALTHDB_PHI_ACTIVE_KEY": None,
    "HEALTHDB_PHI_INDEX_KEY": None,
}


def file_settings(url: str) -> Settings:
    return Settings(database_url=url, phi_keys=None, phi_active_key=None, phi_index_key=None)


async def seed(url: str, per_clinic: int) -> dict[uuid.UUID, dict[uuid.UUID, str]]:
    """Two clinics of patients with SSNs, encrypted under the key file's first key."""
    await upgrade(url)
    expected: dict[uuid.UUID, dict[uuid.UUID, str]] = {}
    async with DatabaseService.connect(file_settings(url)) as db:
        for c in range(2):
            clinic_id = uuid.uuid4()
            patients = {uuid.uuid4(): f"55{c}-00-{n:04d}" for n in range(per_clinic)}

            await create_clinic(db, "CLI clinic", clinic_id=clinic_id)

            async def add(session: AsyncSession, patients: dict[uuid.UUID, str] = patients) -> None:
                for pid, ssn in patients.items():
                    session.add(
                        Patient(
                            id=pid,
                            mrn=pid.hex[:12],
                            given_name="Cli",
                            family_name="Tester",
                            date_of_birth=dt.date(1970, 1, 1),
                            sex="other",
                            ssn=ssn,
                        )
                    )

            async with db.clinic(clinic_id, role="doctor"):
                await db.execute_write(add)
            expected[clinic_id] = patients
    return expected


async def read_back(url: str, clinics: list[uuid.UUID]) -> tuple[dict[uuid.UUID, str], set[str]]:
    """(patient id → decrypted SSN, the key-id prefixes of the stored tokens)."""
    values: dict[uuid.UUID, str] = {}
    prefixes: set[str] = set()
    async with DatabaseService.connect(file_settings(url)) as db:
        for clinic_id in clinics:

            async def op(session: AsyncSession) -> list[tuple[uuid.UUID, str | None, str]]:
                raw = type_coerce(Patient.ssn, Text).label("token")
                rows = await session.execute(select(Patient.id, Patient.ssn, raw))
                return [(r[0], r[1], r[2]) for r in rows.all()]

            async with db.clinic(clinic_id, role="doctor"):
                for pid, ssn, token in await db.execute_read(op, QueryOptions.for_phi()):
                    assert ssn is not None
                    values[pid] = ssn
                    prefixes.add(token.split(".", 2)[1])
    return values, prefixes


def invoke(url: str, *args: str, **env: str | None) -> tuple[int, str]:
    result = CliRunner().invoke(
        app, ["keys", *args], env={**NO_ENV_KEYS, "HEALTHDB_DATABASE_URL": url, **env}
    )
    return result.exit_code, result.output


def test_keys_generate_prints_a_fresh_key() -> None:
    first = CliRunner().invoke(app, ["keys", "generate"])
    second = CliRunner().invoke(app, ["keys", "generate"])
    assert first.exit_code == second.exit_code == 0
    assert len(parse_key(first.stdout.strip())) == 32
    assert first.stdout != second.stdout


def test_keys_status_and_rotate_with_a_key_file(tmp_path: Path) -> None:
    db_file = tmp_path / "cli.sqlite3"
    url = f"sqlite+aiosqlite:///{db_file}"
    expected = asyncio.run(seed(url, per_clinic=3))
    key_file = Path(f"{db_file}.keys.json")
    assert json.loads(key_file.read_text())["active"] == "k1"

    code, output = invoke(url, "status")
    assert code == 0, output
    assert output.split() == ["6", "k1", "(active)"]

    code, output = invoke(url, "rotate", "--new-key", "k2", "--batch-size", "2")
    assert code == 0, output
    assert "re-encrypted 6 value(s) under key 'k2' in 4 batch(es)" in output
    data = json.loads(key_file.read_text())
    assert (data["active"], sorted(data["keys"])) == ("k2", ["k1", "k2"])

    code, output = invoke(url, "status")
    assert (code, output.split()) == (0, ["0", "k1", "6", "k2", "(active)"])
    all_patients = {pid: ssn for patients in expected.values() for pid, ssn in patients.items()}
    values, prefixes = asyncio.run(read_back(url, list(expected)))
    assert (values, prefixes) == (all_patients, {"k2"})

    # Re-running after an interruption, with the same --new-key, resumes (nothing to do).
    code, output = invoke(url, "rotate", "--new-key", "k2")
    assert code == 0, output
    assert "already active; resuming" in output
    assert "re-encrypted 0 value(s)" in output


def test_keys_rotate_fails_clearly(tmp_path: Path) -> None:
    db_file = tmp_path / "cli.sqlite3"
    url = f"sqlite+aiosqlite:///{db_file}"
    asyncio.run(seed(url, per_clinic=1))
    env_keys = {
        "HEALTHDB_PHI_KEYS": ",".join(f"{k}={v}" for k, v in TEST_PHI_KEYS.items()),
        "HEALTHDB_PHI_INDEX_KEY": TEST_INDEX_KEY,
    }

    code, output = invoke(url, "rotate", "--new-key", "k9", **env_keys)
    assert code == 1
    assert "--new-key needs a key file" in output

    # The environment's keyring lacks the key file's k1: the values cannot be decrypted.
    code, output = invoke(url, "rotate", **env_keys)
    assert code == 1
    assert "no key 'k1' in the keyring" in output
    assert "re-run to resume" in output


async def find_each(url: str, expected: dict[uuid.UUID, dict[uuid.UUID, str]]) -> bool:
    """Whether every patient is found by its SSN through the blind index."""
    async with DatabaseService.connect(file_settings(url)) as db:
        for clinic_id, patients in expected.items():
            for pid, ssn in patients.items():

                async def op(session: AsyncSession, ssn: str = ssn) -> list[uuid.UUID]:
                    return [p.id for p in await PatientRepository(session).find_by_ssn(ssn)]

                async with db.clinic(clinic_id, role="doctor"):
                    if await db.execute_read(op, QueryOptions.for_phi()) != [pid]:
                        return False
    return True


def test_keys_rotate_new_index_key_with_a_key_file(tmp_path: Path) -> None:
    db_file = tmp_path / "cli.sqlite3"
    url = f"sqlite+aiosqlite:///{db_file}"
    expected = asyncio.run(seed(url, per_clinic=2))
    key_file = Path(f"{db_file}.keys.json")
    old_index = json.loads(key_file.read_text())["index_key"]

    code, output = invoke(url, "rotate", "--new-index-key", "--batch-size", "3")
    assert code == 0, output
    assert "made blind-index key" in output
    assert "re-encrypted 4 value(s)" in output
    data = json.loads(key_file.read_text())
    assert data["index_key"] != old_index
    assert data["previous_index_keys"] == [old_index]
    code, output = invoke(url, "status")
    assert (code, output.split()) == (0, ["4", "k1", "(active)"])  # no stale index left

    # Every index is under the new key: dropping the old one loses no lookup.
    del data["previous_index_keys"]
    key_file.write_text(json.dumps(data))
    assert asyncio.run(find_each(url, expected))
    # With the old index key current again nothing is found: the values really moved.
    key_file.write_text(json.dumps({**data, "index_key": old_index}))
    assert not asyncio.run(find_each(url, expected))
