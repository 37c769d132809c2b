"""Shared helpers for the benchmarks: throwaway databases, seed rows, timing, JSON output."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import os
import platform
import random
import sys
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import sqlalchemy
from sqlalchemy.engine import make_url

DEFAULT_PG_URL = os.environ.get(
    "HEALTHDB_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
RESULTS_DIR = Path(__file__).resolve().parent / "results"

_GIVEN = ("Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Tony", "Radia")
_FAMILY = ("Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Hoare")
_SEX = ("female", "male", "other", "unknown")


def asyncpg_dsn(url: str) -> str:
    """A plain ``postgresql://`` DSN for asyncpg from any PostgreSQL URL."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def with_database(url: str, name: str) -> str:
    """``url`` pointed at database ``name``, with the asyncpg SQLAlchemy driver."""
    return (
        make_url(url)
        .set(drivername="postgresql+asyncpg", database=name)
        .render_as_string(hide_password=False)
    )


@asynccontextmanager
async def throwaway_database(admin_url: str, prefix: str = "bench") -> AsyncIterator[str]:
    """Create ``<prefix>_<random>``, yield its URL, and drop it (also on error or Ctrl-C)."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(asyncpg_dsn(admin_url), timeout=5)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield with_database(admin_url, name)
    finally:
        admin = await asyncpg.connect(asyncpg_dsn(admin_url), timeout=5)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()
        print(f"(dropped database {name})", file=sys.stderr)


@asynccontextmanager
async def runtime_role(url: str, prefix: str = "bench_rt") -> AsyncIterator[str]:
    """Provision a runtime role (no SUPERUSER/BYPASSRLS, owns nothing) on the *migrated*
    database at ``url`` (an owner URL), yield its URL, then drop it. The facade refuses to
    start as a superuser, and row-level security only binds such a role."""
    from healthdb.migrate import provision_runtime_role

    role = f"{prefix}_{uuid.uuid4().hex[:12]}"
    runtime = (
        make_url(url)
        .set(drivername="postgresql+asyncpg", username=role, password=None)
        .render_as_string(hide_password=False)
    )
    await provision_runtime_role(url, runtime)
    try:
        yield runtime
    finally:
        admin = await asyncpg.connect(asyncpg_dsn(url), timeout=5)
        try:
            await admin.execute(f'DROP OWNED BY "{role}"')
            await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        finally:
            await admin.close()


def patient_rows(count: int, *, seed: int = 7) -> list[dict[str, Any]]:
    """``count`` synthetic Patient mappings (no PHI), reproducible for a given seed."""
    rng = random.Random(seed)
    epoch = dt.date(1930, 1, 1)
    return [
        {
            "mrn": f"MRN{i:09d}",
            "given_name": rng.choice(_GIVEN),
            "family_name": rng.choice(_FAMILY),
            "date_of_birth": epoch + dt.timedelta(days=rng.randrange(33_000)),
            "sex": rng.choice(_SEX),
            "ssn": f"9{rng.randrange(10**8):08d}",  # 9xx: never a real SSN
        }
        for i in range(count)
    ]


def bench_keys() -> dict[str, Any]:
    """Settings overrides with fresh PHI keys: the bench databases are throwaway."""
    from pydantic import SecretStr

    from healthdb.phi.crypto import generate_key

    return {
        "phi_keys": SecretStr(f"bench={generate_key()}"),
        "phi_index_key": SecretStr(generate_key()),
    }


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (``q`` in 0..1)."""
    if not sorted_values:
        return float("nan")
    rank = min(len(sorted_values) - 1, max(0, round(q * len(sorted_values)) - 1))
    return sorted_values[rank]


async def postgres_version(url: str) -> str:
    conn = await asyncpg.connect(asyncpg_dsn(url), timeout=5)
    try:
        return str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()


def versions(**extra: str) -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "sqlalchemy": sqlalchemy.__version__,
        "asyncpg": asyncpg.__version__,
        "healthdb": importlib.metadata.version("healthdb"),
        **extra,
    }


def machine() -> dict[str, Any]:
    """Platform, CPUs and the load average (other processes skew every figure)."""
    load = [round(x, 2) for x in os.getloadavg()]
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "loadavg_1_5_15": load}


def timestamp() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def write_json(name: str, payload: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / name
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path
