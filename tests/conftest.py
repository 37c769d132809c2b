"""Shared fixtures: real SQLite files and throwaway PostgreSQL databases.

PostgreSQL tests never skip: when the server is unreachable they fail with a clear message.
Set HEALTHDB_TEST_PG_URL to point the suite at another server (an owner/superuser URL).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

PG_ADMIN_URL = os.environ.get(
    "HEALTHDB_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("HEALTHDB_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")

# Test-only PHI keys (never used outside this suite). Two keys, so rotation has somewhere to
# go; t1 encrypts unless a test says otherwise.
TEST_PHI_KEYS = {
    "t1": "NEuxdWFKnuDT9cS8ysDubfZnnOC8FnzZu0CZrmXq_kM",
    "t2": "gl6bDUsjhV7GZ89dbYSBe-HszXVt5gcCP5mwCpBrOUQ",
}
TEST_INDEX_KEY = "W3y1vJm0xq8c0mY2Qn1o9a7oX8tC5pQv0b6rT2sL4dE"
os.environ.setdefault("HEALTHDB_PHI_KEYS", ",".join(f"{k}={v}" for k, v in TEST_PHI_KEYS.items()))
os.environ.setdefault("HEALTHDB_PHI_ACTIVE_KEY", "t1")
os.environ.setdefault("HEALTHDB_PHI_INDEX_KEY", TEST_INDEX_KEY)


def _dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def _create_database(name: str) -> None:
    try:
        conn = await asyncpg.connect(_dsn(PG_ADMIN_URL), timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(f"PostgreSQL unreachable at {make_url(PG_ADMIN_URL)!r}: {exc}", pytrace=False)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def _drop_database(name: str) -> None:
    conn = await asyncpg.connect(_dsn(PG_ADMIN_URL), timeout=5)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def new_pg_database() -> tuple[str, str]:
    """Create an empty database; return (name, owner url)."""
    name = f"hdb_{uuid.uuid4().hex[:12]}"
    asyncio.run(_create_database(name))
    return name, make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)


@pytest.fixture
def pg_empty_url() -> Iterator[str]:
    """A brand-new, empty PostgreSQL database, dropped afterwards."""
    name, url = new_pg_database()
    yield url
    asyncio.run(_drop_database(name))


@pytest.fixture
def sqlite_empty_url(tmp_path: Path) -> str:
    """A brand-new SQLite file."""
    return f"sqlite+aiosqlite:///{tmp_path / 'healthdb.sqlite3'}"


def _migrate(url: str) -> None:
    from healthdb.migrate import upgrade

    asyncio.run(upgrade(url))


async def _drop_role(role: str) -> None:
    conn = await asyncpg.connect(_dsn(PG_ADMIN_URL), timeout=5)
    try:
        await conn.execute(f'DROP ROLE IF EXISTS "{role}"')
    finally:
        await conn.close()


def runtime_url(owner_url: str, role: str) -> str:
    """``owner_url`` with the runtime role as its user (trust auth: no password)."""
    return (
        make_url(owner_url).set(username=role, password=None).render_as_string(hide_password=False)
    )


def provision(owner_url: str, role: str) -> str:
    """Create/update ``role`` as the runtime role of the database; return its URL."""
    from healthdb.migrate import provision_runtime_role

    url = runtime_url(owner_url, role)
    asyncio.run(provision_runtime_role(owner_url, url))
    return url


@pytest.fixture(scope="session")
def pg_runtime_role() -> Iterator[str]:
    """The session's runtime role (LOGIN, no SUPERUSER/BYPASSRLS, owns nothing), dropped at
    the end, after the databases that granted it privileges (fixture teardown order)."""
    role = f"hdb_rt_{uuid.uuid4().hex[:12]}"
    yield role
    asyncio.run(_drop_role(role))


@pytest.fixture(scope="session")
def _pg_migrated(pg_runtime_role: str) -> Iterator[tuple[str, str]]:
    """One migrated PostgreSQL database shared by the session: (owner url, runtime url)."""
    name, owner = new_pg_database()
    _migrate(owner)
    runtime = provision(owner, pg_runtime_role)
    yield owner, runtime
    asyncio.run(_drop_database(name))


@pytest.fixture(scope="session")
def pg_migrated_url(_pg_migrated: tuple[str, str]) -> str:
    """The shared database as the runtime role, as production connects: row-level security
    binds every test that uses it (tests isolate by clinic)."""
    return _pg_migrated[1]


@pytest.fixture(scope="session")
def pg_admin_migrated_url(_pg_migrated: tuple[str, str]) -> str:
    """The shared database as its owner (a superuser here): for deliberately privileged
    set-up and for tests below the facade that span clinics without a scope."""
    return _pg_migrated[0]


@pytest.fixture(scope="session")
def sqlite_migrated_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('sqlite') / 'healthdb.sqlite3'}"
    _migrate(url)
    return url


@pytest.fixture(params=["sqlite", "postgres"])
def migrated_url(request: pytest.FixtureRequest) -> str:
    """Run the test once per backend against a migrated database."""
    fixture = "sqlite_migrated_url" if request.param == "sqlite" else "pg_migrated_url"
    return str(request.getfixturevalue(fixture))


@pytest.fixture(params=["sqlite", "postgres"])
def owner_migrated_url(request: pytest.FixtureRequest) -> str:
    """Like ``migrated_url``, but on PostgreSQL as the owner (row-level security bypassed):
    for repository tests that work below the facade, across clinics, with no clinic set."""
    fixture = "sqlite_migrated_url" if request.param == "sqlite" else "pg_admin_migrated_url"
    return str(request.getfixturevalue(fixture))


# -- canaries: no registered canary value (tests/canary.py) may reach a log line -----------


@pytest.fixture(scope="session", autouse=True)
def _canary_log_capture() -> Iterator[None]:
    """The whole run logs at DEBUG through the production (redacting) pipeline into memory;
    whatever is logged outside any test (session fixtures) is checked at the very end."""
    from tests.canary import LOGS

    LOGS.install()
    yield
    LOGS.check("the session (session-scoped fixtures)")


@pytest.fixture(autouse=True)
def _no_canary_in_logs(_canary_log_capture: None) -> Iterator[None]:
    """Fail the test when a log line captured during it holds a canary value."""
    from tests.canary import LOGS

    LOGS.ensure_installed()
    yield
    LOGS.check("this test")
