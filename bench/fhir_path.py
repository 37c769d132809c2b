"""FHIR bulk import and export rates against the bulk-insert path's own rate, on PostgreSQL.

    .venv/bin/python bench/fhir_path.py [--patients 10000] [--chunk-size 2000]
                                        [--file-size 1000] [--pg-url URL]

One throwaway database, migrated, the service connecting as a provisioned runtime role
(row-level security, SSNs encrypted and indexed, every patient audited). In one run:

1. baseline: ``db.execute_batch(rows, Patient)`` of the synthetic patients' rows (clinic C);
2. import: the same patients as FHIR NDJSON through ``import_ndjson`` (clinic A): parse,
   validate (fhir.resources R4 models + the service's rules), match MRNs, bulk insert;
3. export: ``GET /fhir/Patient/$export`` as A's doctor through the ASGI app, polling until
   the manifest, then downloading every NDJSON file (each patient read through the audited,
   masked view; each file encrypted at rest);
4. round trip: A's export imported into clinic B, B exported, both compared field by field
   (and B's copy checked to hold none of A's ids).

Writes ``bench/results/fhir_path.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from collections.abc import Sequence
from typing import Any

import httpx
from pydantic import SecretStr

from _common import (
    DEFAULT_PG_URL,
    bench_keys,
    machine,
    postgres_version,
    runtime_role,
    throwaway_database,
    timestamp,
    versions,
    write_json,
)
from healthdb import BatchResult, DatabaseService
from healthdb.migrate import upgrade
from healthdb.models import Patient
from healthdb_api.app import create_app
from healthdb_api.fhir import synthetic
from healthdb_api.fhir.importer import import_ndjson
from healthdb_api.fhir.mapping import SSN_SYSTEM, parse_patient
from healthdb_api.fhir.settings import DEFAULT_MRN_SYSTEM, FhirSettings
from healthdb_api.settings import ApiSettings

PASSWORD = "correct horse battery staple 42"
SYSTEM = DEFAULT_MRN_SYSTEM


def api_settings(runtime: str, owner: str) -> ApiSettings:
    return ApiSettings(
        database_url=SecretStr(runtime),
        admin_database_url=SecretStr(owner),
        jwt_secret=SecretStr("bench-secret-" + "x" * 40),
        auto_migrate=False,
        log_json=False,
        pool_size=10,
        slow_query_ms=60_000,
        batch_max_items=1_000_000,
        **bench_keys(),
    )


async def clinic_with_doctor(
    http: httpx.AsyncClient, name: str
) -> tuple[uuid.UUID, dict[str, str]]:
    """Register a clinic (its admin), add a doctor; the clinic id and the doctor's headers."""
    admin_email = f"admin-{uuid.uuid4().hex[:8]}@bench.example"
    body = {"clinic_name": name, "email": admin_email, "password": PASSWORD, "full_name": "Admin"}
    registered = (await http.post("/api/v1/auth/register", json=body)).json()
    admin = await login(http, admin_email)
    doctor_email = f"doctor-{uuid.uuid4().hex[:8]}@bench.example"
    doctor = {"email": doctor_email, "password": PASSWORD, "full_name": "Doctor", "role": "doctor"}
    created = await http.post("/api/v1/users", json=doctor, headers=admin)
    assert created.status_code == 201, created.text
    return uuid.UUID(registered["clinic"]["id"]), await login(http, doctor_email)


async def login(http: httpx.AsyncClient, email: str) -> dict[str, str]:
    tokens = (
        await http.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
    ).json()
    return {"Authorization": f"Bearer {tokens['access_token']}"}


async def export(
    http: httpx.AsyncClient, headers: dict[str, str]
) -> tuple[float, list[dict[str, Any]]]:
    """Kick-off → polling → every file downloaded: (seconds, resources)."""
    started = time.perf_counter()
    kick = await http.get("/fhir/Patient/$export", headers={**headers, "Prefer": "respond-async"})
    status_url = kick.headers["Content-Location"]
    while True:
        status = await http.get(status_url, headers=headers)
        if status.status_code != 202:
            break
        await asyncio.sleep(0.05)
    assert status.status_code == 200, status.text
    resources: list[dict[str, Any]] = []
    for output in status.json()["output"]:
        text = (await http.get(output["url"], headers=headers)).text
        resources.extend(json.loads(line) for line in text.splitlines())
    return time.perf_counter() - started, resources


async def timed_import(db: DatabaseService, clinic: uuid.UUID, text: str, chunk: int) -> float:
    lines = [(n, line.encode()) for n, line in enumerate(text.splitlines(), start=1)]
    started = time.perf_counter()
    report = await import_ndjson(db, lines, clinic_id=clinic, mrn_system=SYSTEM, chunk_size=chunk)
    seconds = time.perf_counter() - started
    if report.failed or report.created != len(lines):
        raise RuntimeError(f"import failed: {report.failures[:3]}")
    return seconds


async def timed_baseline(
    db: DatabaseService, clinic: uuid.UUID, rows: list[dict[str, Any]], chunk: int
) -> float:
    async with db.clinic(clinic, role="clinic_admin", purpose="bench"):
        started = time.perf_counter()
        result: BatchResult[Any] = await db.execute_batch(rows, Patient, chunk_size=chunk)
        seconds = time.perf_counter() - started
    if not result.ok:
        raise RuntimeError(f"bulk insert failed: {result.failures[:3]}")
    return seconds


def essentials(resource: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in resource.items() if k not in ("id", "meta")}


async def measure(args: argparse.Namespace, owner: str, runtime: str) -> dict[str, Any]:
    source = list(synthetic.patients(args.patients, mrn_system=SYSTEM, seed=11))
    text = synthetic.ndjson(iter(source))
    rows = [parse_patient(r, mrn_system=SYSTEM).model_dump(exclude={"notes"}) for r in source]
    app = create_app(api_settings(runtime, owner))
    app.state.fhir_settings = FhirSettings(export_file_size=args.file_size)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as http:
            db: DatabaseService = app.state.db
            clinic_c, _ = await clinic_with_doctor(http, "Baseline clinic")
            clinic_a, doctor_a = await clinic_with_doctor(http, "Source clinic")
            clinic_b, doctor_b = await clinic_with_doctor(http, "Target clinic")
            baseline = await timed_baseline(db, clinic_c, rows, args.chunk_size)
            print(f"  bulk insert: {args.patients / baseline:,.0f} patients/s", flush=True)
            imported = await timed_import(db, clinic_a, text, args.chunk_size)
            print(f"  FHIR import: {args.patients / imported:,.0f} patients/s", flush=True)
            exported, from_a = await export(http, doctor_a)
            print(f"  FHIR export: {args.patients / exported:,.0f} patients/s", flush=True)
            again = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in from_a)
            reimported = await timed_import(db, clinic_b, again, args.chunk_size)
            reexported, from_b = await export(http, doctor_b)
    equal = {mrn(r): essentials(r) for r in from_a} == {mrn(r): essentials(r) for r in from_b}
    disjoint = not {r["id"] for r in from_a} & {r["id"] for r in from_b}
    if not (equal and disjoint and len(from_b) == args.patients):
        raise RuntimeError("round trip mismatch")
    return {
        "baseline": baseline,
        "import": imported,
        "export": exported,
        "reimport": reimported,
        "reexport": reexported,
        "round_trip_equal": equal,
        "ids_disjoint": disjoint,
    }


def mrn(resource: dict[str, Any]) -> str:
    return next(str(i["value"]) for i in resource["identifier"] if i["system"] != SSN_SYSTEM)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    async with throwaway_database(args.pg_url) as owner:
        await upgrade(owner)
        async with runtime_role(owner) as runtime:
            seconds = await measure(args, owner, runtime)
        pg = await postgres_version(owner)
    n = args.patients
    rate = {key: n / value for key, value in seconds.items() if isinstance(value, float)}
    return {
        "benchmark": "fhir_path",
        "timestamp": timestamp(),
        "config": {"patients": n, "chunk_size": args.chunk_size, "file_size": args.file_size},
        "versions": versions(postgresql=pg),
        "machine": machine(),
        "seconds": {k: round(v, 3) for k, v in seconds.items() if isinstance(v, float)},
        "patients_per_s": {k: round(v, 1) for k, v in rate.items()},
        "vs_bulk_insert": {
            k: round(rate[k] / rate["baseline"], 3)
            for k in ("import", "export", "reimport", "reexport")
        },
        "round_trip_equal": seconds["round_trip_equal"],
        "ids_disjoint": seconds["ids_disjoint"],
    }


def render(data: dict[str, Any]) -> str:
    cfg, rate, ratio = data["config"], data["patients_per_s"], data["vs_bulk_insert"]
    labels = {
        "baseline": "db.execute_batch(rows, Patient) (baseline)",
        "import": "healthdb fhir import path (import_ndjson)",
        "export": "GET Patient/$export -> manifest -> files",
        "reimport": "import of that export into a 2nd clinic",
        "reexport": "export of the 2nd clinic",
    }
    lines = [
        f"fhir_path: {cfg['patients']:,} patients, chunk {cfg['chunk_size']}, "
        f"{cfg['file_size']} per export file | PostgreSQL {data['versions']['postgresql']}",
        "",
        f"{'run':<46} {'seconds':>8} {'patients/s':>11} {'vs baseline':>12}",
    ]
    for key, label in labels.items():
        share = "1.00x" if key == "baseline" else f"{ratio[key]:.2f}x"
        lines.append(f"{label:<46} {data['seconds'][key]:>8.2f} {rate[key]:>11,.0f} {share:>12}")
    lines.append(
        f"\nround trip equal field by field: {data['round_trip_equal']}; "
        f"ids disjoint: {data['ids_disjoint']}"
    )
    lines.append(f"load average at the end (1/5/15 min): {data['machine']['loadavg_1_5_15']}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--patients", type=int, default=10_000)
    parser.add_argument("--chunk-size", type=int, default=2000)
    parser.add_argument("--file-size", type=int, default=1000)
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL, help="superuser URL to create DBs")
    parser.add_argument("--output", default="fhir_path.json", help="file name in bench/results")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    data = asyncio.run(run(args))
    print()
    print(render(data))
    print(f"\nwrote {write_json(args.output, data)}")


if __name__ == "__main__":
    main()
