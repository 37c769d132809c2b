"""``import_ndjson`` and ``healthdb fhir import`` on both backends: bad lines reported by
number and reason, good ones landed, re-runs without duplicates, one clinic at a time."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from typer.testing import CliRunner

from healthdb import DatabaseService, QueryOptions
from healthdb.clinics import create_clinic
from healthdb.migrate import upgrade
from healthdb.models import Patient
from healthdb.repositories import PatientRepository
from healthdb_api.cli import app as cli
from healthdb_api.fhir import synthetic
from healthdb_api.fhir.importer import ImportReport, import_ndjson, read_lines
from healthdb_api.fhir.settings import DEFAULT_MRN_SYSTEM
from tests.canary import canary, found_in
from tests.integration.conftest import MakeClinic, MakePatient

SYSTEM = DEFAULT_MRN_SYSTEM


def resources(count: int, prefix: str) -> list[dict[str, Any]]:
    return list(synthetic.patients(count, mrn_system=SYSTEM, prefix=prefix))


def numbered(lines: list[str]) -> list[tuple[int, bytes]]:
    return [(n, line.encode()) for n, line in enumerate(lines, start=1) if line.strip()]


async def run(
    db: DatabaseService, clinic: uuid.UUID, lines: list[tuple[int, bytes]]
) -> ImportReport:
    return await import_ndjson(db, lines, clinic_id=clinic, mrn_system=SYSTEM, chunk_size=50)


async def count(db: DatabaseService, clinic: uuid.UUID) -> int:
    async def op(session: AsyncSession) -> int:
        return int((await session.execute(select(func.count()).select_from(Patient))).scalar_one())

    async with db.clinic(clinic, role="doctor"):
        return await db.execute_read(op, QueryOptions.for_read("test.count"))


async def test_bad_lines_are_reported_and_good_ones_land(
    db: DatabaseService, make_clinic: MakeClinic
) -> None:
    clinic = await make_clinic()
    prefix = uuid.uuid4().hex[:8]
    good = [json.dumps(r) for r in resources(120, prefix)]
    masked = resources(1, prefix + "m")[0]
    masked["identifier"] = [
        masked["identifier"][0],
        {"system": "http://hl7.org/fhir/sid/us-ssn", "value": "***-**-1234"},
    ]
    lines = [
        good[0],
        "{not json",
        json.dumps({"resourceType": "Observation"}),
        "",  # blank lines are not counted
        json.dumps({**json.loads(good[1]), "birthDate": "1980"}),
        good[2],
        good[0],  # the same MRN again
        json.dumps(masked),
        *good[3:],
    ]
    numbered_lines = numbered(lines)
    numbered_lines.append((len(lines) + 1, b"\xff\xfe not utf-8\n"))
    report = await run(db, clinic, numbered_lines)
    failed = {f.line: f.reason for f in report.failures}
    assert sorted(failed) == [2, 3, 5, 7, 8, 126]
    assert failed[2].startswith("not valid JSON")
    assert "Patient.resource_type" in failed[3]
    assert "Patient.birthDate" in failed[5]
    assert failed[7] == "the medical record number repeats line 1"
    assert "masked" in failed[8]
    assert failed[126] == "not UTF-8"
    assert report.lines == 125
    assert (report.created, report.existing) == (119, 0)
    assert report.succeeded + report.failed == report.lines
    assert await count(db, clinic) == 119


async def test_rerunning_a_file_creates_no_duplicates(
    db: DatabaseService, make_clinic: MakeClinic, make_patient: MakePatient
) -> None:
    clinic, other = await make_clinic(), await make_clinic()
    prefix = uuid.uuid4().hex[:8]
    lines = numbered([json.dumps(r) for r in resources(60, prefix)])
    first = await run(db, clinic, lines)
    assert (first.created, first.existing, first.failed) == (60, 0, 0)
    again = await run(db, clinic, lines)
    assert (again.created, again.existing, again.failed) == (0, 60, 0)
    assert await count(db, clinic) == 60
    # MRNs are unique per clinic: the other clinic takes the same file, as new patients.
    assert (await run(db, other, lines)).created == 60
    assert await count(db, other) == 60
    # A deleted patient keeps its MRN: that line fails instead of reviving or duplicating it.
    mrn = f"{prefix}-0000001"
    third = await make_clinic()
    pid = await make_patient(third, mrn=mrn)

    async def remove(session: AsyncSession) -> None:
        await PatientRepository(session).soft_delete(pid)

    async with db.clinic(third, role="doctor"):
        await db.execute_write(remove, QueryOptions.for_phi("test.delete"))
    report = await run(db, third, lines[:3])
    assert [f.line for f in report.failures] == [1]
    assert "deleted patient" in report.failures[0].reason
    assert report.created == 2


async def test_reasons_never_quote_values(db: DatabaseService, make_clinic: MakeClinic) -> None:
    clinic = await make_clinic()
    base = resources(1, uuid.uuid4().hex[:8])[0]
    bad = [
        {**base, "birthDate": canary("dob")},
        {**base, "gender": canary("gender")},
        {**base, "telecom": [{"system": "phone", "value": canary("phone")}]},
        {**base, "telecom": [{"system": "email", "value": canary("email") + "@"}]},
        {**base, "name": [{"family": canary("family") + "\u0000", "given": ["A"]}]},
    ]
    report = await run(db, clinic, numbered([json.dumps(r) for r in bad]))
    assert report.failed == len(bad)
    assert not found_in(" ".join(f.reason for f in report.failures))


def test_the_command_line(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'cli.sqlite3'}"
    asyncio.run(upgrade(url))
    clinic = uuid.uuid4()

    async def add_clinic() -> None:
        async with DatabaseService.connect(_settings(url)) as db:
            await create_clinic(db, "CLI import", clinic_id=clinic)

    asyncio.run(add_clinic())
    source = tmp_path / "patients.ndjson"
    lines = [json.dumps(r) for r in resources(5, "CLI")]
    source.write_text("\n".join([*lines[:4], "{broken", lines[4]]) + "\n")
    failures = tmp_path / "failures.jsonl"
    env = {"HEALTHDB_DATABASE_URL": url}
    runner = CliRunner()
    args = ["fhir", "import", str(source), "--clinic-id", str(clinic)]
    result = runner.invoke(cli, [*args, "--failures", str(failures)], env=env)
    assert result.exit_code == 1, result.output
    assert "6 line(s): 5 created, 0 already present, 1 failed" in result.output
    assert "line 5: not valid JSON" in result.output
    assert [json.loads(line)["line"] for line in failures.read_text().splitlines()] == [5]
    rerun = runner.invoke(cli, args, env=env)
    assert "0 created, 5 already present, 1 failed" in rerun.output
    missing = runner.invoke(
        cli, ["fhir", "import", str(source), "--clinic-id", str(uuid.uuid4())], env=env
    )
    assert missing.exit_code == 2
    assert list(read_lines(source))[4][0] == 5


def _settings(url: str) -> Any:
    from healthdb import Settings

    return Settings(database_url=url)
