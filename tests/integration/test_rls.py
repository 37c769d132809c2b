"""The database wall on PostgreSQL: forced row-level security, the runtime role, the
start-up check and pool hygiene.

The shared database (``pg_migrated_url``) is used as the runtime role, exactly as the
service connects in production; rows are planted as the owner (``pg_admin_migrated_url``,
a superuser here, which row-level security does not bind). Start-up refusals are staged in
throwaway databases.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import Iterator
from contextlib import AsyncExitStack
from typing import Any

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.pool import NullPool

from healthdb import migrate
from healthdb.errors import ClinicContextRequired, InvalidInput, UnsafeDatabaseRole
from healthdb.internal import connection_wall
from healthdb.internal.rls import CLINIC_POLICY_EXPRESSION, POLICY_EXPRESSION
from healthdb.models import Patient
from healthdb.models.base import tenant_tables
from healthdb.service import DatabaseService
from healthdb.settings import Settings
from tests.conftest import (
    _drop_database,
    _drop_role,
    _dsn,
    new_pg_database,
    provision,
    runtime_url,
)
from tests.integration.conftest import DEFAULTS, assert_pools_idle, patient_fields

pytestmark = pytest.mark.postgres

SET_CLINIC = text("SELECT set_config('app.clinic_id', :c, true)")
RLS_REFUSED = "row-level security"


def _engine(url: str) -> AsyncEngine:
    return create_async_engine(url, poolclass=NullPool)


async def _owner_exec(url: str, *statements: str) -> None:
    conn = await asyncpg.connect(_dsn(url), timeout=5)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture
async def planted(pg_admin_migrated_url: str) -> tuple[uuid.UUID, uuid.UUID]:
    """Two clinics, A and B, with two and three patients, planted as the owner."""
    a, b = uuid.uuid4(), uuid.uuid4()
    engine = _engine(pg_admin_migrated_url)
    try:
        async with engine.begin() as conn:
            for clinic, patients in ((a, 2), (b, 3)):
                await conn.execute(
                    text("INSERT INTO clinics (id, name, active) VALUES (:id, 'RLS', true)"),
                    {"id": clinic},
                )
                for _ in range(patients):
                    await _insert_patient(conn, clinic)
    finally:
        await engine.dispose()
    return a, b


async def _insert_patient(conn: AsyncConnection, clinic: uuid.UUID) -> uuid.UUID:
    fields = patient_fields()
    pid = uuid.uuid4()
    await conn.execute(
        text(
            "INSERT INTO patients (id, mrn, given_name, family_name, date_of_birth, sex, "
            "version, clinic_id) VALUES (:id, :mrn, :g, :f, :dob, :sex, 1, :clinic)"
        ),
        {
            "id": pid,
            "mrn": fields["mrn"],
            "g": fields["given_name"],
            "f": fields["family_name"],
            "dob": fields["date_of_birth"],
            "sex": fields["sex"],
            "clinic": clinic,
        },
    )
    return pid


COUNT = text("SELECT count(*) FROM patients WHERE clinic_id IN (:a, :b)")


# -- fail closed at the database wall ---------------------------------------------------------


async def test_no_clinic_set_reads_zero_rows_and_refuses_writes(
    pg_migrated_url: str, planted: tuple[uuid.UUID, uuid.UUID]
) -> None:
    a, b = planted
    engine = _engine(pg_migrated_url)
    try:
        async with engine.begin() as conn:
            assert (await conn.execute(COUNT, {"a": a, "b": b})).scalar_one() == 0
            assert (await conn.execute(text("SELECT count(*) FROM patients"))).scalar_one() == 0
        async with engine.begin() as conn:
            with pytest.raises(DBAPIError, match=RLS_REFUSED):
                await _insert_patient(conn, a)
        async with engine.begin() as conn:  # an update or delete simply sees nothing
            gone = await conn.execute(text("DELETE FROM patients WHERE clinic_id = :a"), {"a": a})
            assert gone.rowcount == 0
    finally:
        await engine.dispose()


async def test_set_config_scopes_reads_to_one_clinic(
    pg_migrated_url: str, planted: tuple[uuid.UUID, uuid.UUID]
) -> None:
    a, b = planted
    engine = _engine(pg_migrated_url)
    try:
        for clinic, expected in ((a, 2), (b, 3)):
            async with engine.begin() as conn:
                await conn.execute(SET_CLINIC, {"c": str(clinic)})
                rows = (
                    await conn.execute(
                        text("SELECT clinic_id FROM patients WHERE clinic_id IN (:a, :b)"),
                        {"a": a, "b": b},
                    )
                ).scalars()
                assert list(rows) == [clinic] * expected
        # Transaction-local: gone once the transaction ends, on the same connection.
        async with engine.connect() as conn:
            async with conn.begin():
                await conn.execute(SET_CLINIC, {"c": str(a)})
            async with conn.begin():
                assert (await conn.execute(COUNT, {"a": a, "b": b})).scalar_one() == 0
    finally:
        await engine.dispose()


async def test_with_check_refuses_writing_into_another_clinic(
    pg_migrated_url: str, planted: tuple[uuid.UUID, uuid.UUID]
) -> None:
    a, b = planted
    engine = _engine(pg_migrated_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(SET_CLINIC, {"c": str(a)})
            await _insert_patient(conn, a)  # own clinic: allowed
        async with engine.begin() as conn:
            await conn.execute(SET_CLINIC, {"c": str(a)})
            with pytest.raises(DBAPIError, match=RLS_REFUSED):
                await _insert_patient(conn, b)
        async with engine.begin() as conn:
            await conn.execute(SET_CLINIC, {"c": str(a)})
            with pytest.raises(DBAPIError, match=RLS_REFUSED):
                await conn.execute(
                    text("UPDATE patients SET clinic_id = :b WHERE clinic_id = :a"),
                    {"a": a, "b": b},
                )
        async with engine.begin() as conn:  # B's rows are invisible to A's updates
            await conn.execute(SET_CLINIC, {"c": str(a)})
            moved = await conn.execute(
                text("UPDATE patients SET notes = 'x' WHERE clinic_id = :b"), {"b": b}
            )
            assert moved.rowcount == 0
    finally:
        await engine.dispose()


async def test_facade_text_sql_is_walled_by_the_database(
    pg_migrated_url: str, planted: tuple[uuid.UUID, uuid.UUID]
) -> None:
    """SQL on the session's connection bypasses the ORM wall; with the connection wall
    taken away too (it refuses such SQL, see test_core_wall), the database wall alone still
    scopes it."""
    a, b = planted
    settings = Settings(database_url=pg_migrated_url, **DEFAULTS)
    async with DatabaseService.connect(settings) as db:
        connection_wall.remove(db.engines.primary.sync_engine)

        async def count(session: AsyncSession) -> int:
            conn = await session.connection()
            return int((await conn.execute(COUNT, {"a": a, "b": b})).scalar_one())

        assert await db.execute_read(count) == 0  # no clinic: zero rows
        async with db.clinic(a):
            assert await db.execute_read(count) == 2
        async with db.clinic(b):
            assert await db.execute_read(count) == 3

        async def sneak(session: AsyncSession) -> None:
            await _insert_patient(await session.connection(), b)

        with pytest.raises(ClinicContextRequired):  # RLS refusal, translated
            await db.execute_write(sneak)
        async with db.clinic(a):
            with pytest.raises(ClinicContextRequired):
                await db.execute_write(sneak)
        assert_pools_idle(db)


# -- the runtime role -------------------------------------------------------------------------


async def _role_facts(admin_url: str, role: str) -> dict[str, Any]:
    conn = await asyncpg.connect(_dsn(admin_url), timeout=5)
    try:
        attrs = await conn.fetchrow(
            "SELECT rolsuper, rolbypassrls, rolcreatedb, rolcreaterole, rolcanlogin, "
            "rolreplication, oid FROM pg_roles WHERE rolname = $1",
            role,
        )
        owned = await conn.fetchval(
            "SELECT (SELECT count(*) FROM pg_class WHERE relowner = $1)"
            " + (SELECT count(*) FROM pg_namespace WHERE nspowner = $1)"
            " + (SELECT count(*) FROM pg_proc WHERE proowner = $1)"
            " + (SELECT count(*) FROM pg_database WHERE datdba = $1)",
            attrs["oid"],
        )
        grants = await conn.fetch(
            "SELECT table_name, privilege_type FROM information_schema.role_table_grants "
            "WHERE grantee = $1 ORDER BY 1, 2",
            role,
        )
    finally:
        await conn.close()
    privileges: dict[str, set[str]] = {}
    for row in grants:
        privileges.setdefault(row["table_name"], set()).add(row["privilege_type"])
    return {**dict(attrs), "owned": owned, "privileges": privileges}


async def test_provisioned_role_owns_nothing_and_holds_only_what_it_needs(
    pg_admin_migrated_url: str, pg_runtime_role: str
) -> None:
    facts = await _role_facts(pg_admin_migrated_url, pg_runtime_role)
    assert facts["rolcanlogin"]
    assert not facts["rolsuper"]
    assert not facts["rolbypassrls"]
    assert not facts["rolcreatedb"]
    assert not facts["rolcreaterole"]
    assert not facts["rolreplication"]
    assert facts["owned"] == 0
    rw = {"SELECT", "INSERT", "UPDATE", "DELETE"}
    expected = dict.fromkeys(tenant_tables(), rw)
    expected.update(
        clinics=rw,
        audit_events={"SELECT", "INSERT"},
        platform_operators={"SELECT"},
        alembic_version={"SELECT"},
    )
    assert facts["privileges"] == expected


async def test_provisioning_is_idempotent_and_repairs_grants(
    pg_admin_migrated_url: str, pg_runtime_role: str
) -> None:
    before = await _role_facts(pg_admin_migrated_url, pg_runtime_role)
    # Drift: someone granted too much. Re-provisioning puts it back.
    await _owner_exec(
        pg_admin_migrated_url,
        f'GRANT UPDATE, DELETE, TRUNCATE ON audit_events TO "{pg_runtime_role}"',
        f'ALTER ROLE "{pg_runtime_role}" CREATEDB',
    )
    runtime = runtime_url(pg_admin_migrated_url, pg_runtime_role)
    await migrate.provision_runtime_role(pg_admin_migrated_url, runtime)
    await migrate.provision_runtime_role(pg_admin_migrated_url, runtime)
    after = await _role_facts(pg_admin_migrated_url, pg_runtime_role)
    assert after == before


async def test_provisioning_sets_a_password_from_the_url(pg_empty_url: str) -> None:
    role = f"hdb_pw_{uuid.uuid4().hex[:10]}"
    await migrate.upgrade(pg_empty_url)
    try:
        for password in ("first%pass'word", "second $1 'pass'"):
            url = make_url(pg_empty_url).set(username=role, password=password)
            await migrate.provision_runtime_role(
                pg_empty_url, url.render_as_string(hide_password=False)
            )
            conn = await asyncpg.connect(_dsn(pg_empty_url), timeout=5)
            try:
                stored = await conn.fetchval(
                    "SELECT rolpassword FROM pg_authid WHERE rolname = $1", role
                )
            finally:
                await conn.close()
            assert stored
            assert stored.startswith("SCRAM-SHA-256$")
    finally:
        name = make_url(pg_empty_url).database
        assert name
        await _drop_database(name)
        await _drop_role(role)


@pytest.mark.parametrize("user", ["Bad-Name", "1abc", "x" * 64, 'a"; DROP ROLE x; --'])
async def test_provisioning_refuses_unsafe_role_names(
    pg_admin_migrated_url: str, user: str
) -> None:
    url = make_url(pg_admin_migrated_url).set(username=user, password=None)
    with pytest.raises(InvalidInput):
        await migrate.provision_runtime_role(
            pg_admin_migrated_url, url.render_as_string(hide_password=False)
        )


async def test_provisioning_refuses_the_owner_itself(pg_admin_migrated_url: str) -> None:
    with pytest.raises(InvalidInput):
        await migrate.provision_runtime_role(pg_admin_migrated_url, pg_admin_migrated_url)


def test_migrate_provisions_only_for_a_different_postgres_user() -> None:
    owner = "postgresql+asyncpg://postgres@127.0.0.1/db"
    runtime = "postgresql+asyncpg://app@127.0.0.1/db"
    assert migrate.needs_runtime_role(Settings(database_url=runtime, admin_database_url=owner))
    assert not migrate.needs_runtime_role(Settings(database_url=owner))
    assert not migrate.needs_runtime_role(
        Settings(database_url="sqlite+aiosqlite:///x.db", admin_database_url=owner)
    )


async def test_audit_events_are_append_only_for_the_runtime_role(
    pg_migrated_url: str, planted: tuple[uuid.UUID, uuid.UUID]
) -> None:
    a, _ = planted
    engine = _engine(pg_migrated_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(SET_CLINIC, {"c": str(a)})
            await conn.execute(
                text(
                    "INSERT INTO audit_events (id, occurred_at, action, resource_type, "
                    "phi_fields, outcome, clinic_id) "
                    "VALUES (:id, now(), 'read', 'patient', '[]', 'success', :c)"
                ),
                {"id": uuid.uuid4(), "c": a},
            )
        for statement in (
            "UPDATE audit_events SET outcome = 'tampered' WHERE clinic_id = :c",
            "DELETE FROM audit_events WHERE clinic_id = :c",
            "TRUNCATE audit_events",
        ):
            async with engine.begin() as conn:
                await conn.execute(SET_CLINIC, {"c": str(a)})
                with pytest.raises(DBAPIError, match="permission denied"):
                    await conn.execute(text(statement), {"c": a})
    finally:
        await engine.dispose()


# -- the start-up check -----------------------------------------------------------------------


@pytest.fixture
def staged() -> Iterator[tuple[str, str, str]]:
    """A throwaway migrated database with its own runtime role: (owner url, runtime url,
    role). Both are dropped afterwards (database first: it holds the role's grants)."""
    name, owner = new_pg_database()
    role = f"hdb_st_{uuid.uuid4().hex[:10]}"
    try:
        asyncio.run(migrate.upgrade(owner))
        runtime = provision(owner, role)
        yield owner, runtime, role
    finally:
        asyncio.run(_drop_database(name))
        asyncio.run(_drop_role(role))


async def _connect(url: str) -> None:
    async with DatabaseService.connect(Settings(database_url=url, **DEFAULTS)):
        pass


async def test_the_provisioned_role_passes_the_start_up_check(
    staged: tuple[str, str, str],
) -> None:
    _, runtime, _ = staged
    await _connect(runtime)


async def test_start_up_refuses_a_superuser(staged: tuple[str, str, str]) -> None:
    owner, _, _ = staged
    with pytest.raises(UnsafeDatabaseRole, match="SUPERUSER"):
        await _connect(owner)
    # A deliberately privileged tool may opt out, explicitly.
    settings = Settings(database_url=owner, enforce_safe_role=False, **DEFAULTS)
    async with DatabaseService.connect(settings):
        pass


async def test_start_up_refuses_bypassrls(staged: tuple[str, str, str]) -> None:
    owner, runtime, role = staged
    await _owner_exec(owner, f'ALTER ROLE "{role}" BYPASSRLS')
    with pytest.raises(UnsafeDatabaseRole, match="BYPASSRLS"):
        await _connect(runtime)


@pytest.mark.parametrize("how", ["owner", "member_of_owner"])
async def test_start_up_refuses_a_table_owner(staged: tuple[str, str, str], how: str) -> None:
    owner, runtime, role = staged
    if how == "owner":
        await _owner_exec(owner, f'ALTER TABLE appointments OWNER TO "{role}"')
    else:
        boss = f"{role}_boss"
        await _owner_exec(
            owner,
            f'CREATE ROLE "{boss}" NOLOGIN',
            f'ALTER TABLE appointments OWNER TO "{boss}"',
            f'GRANT "{boss}" TO "{role}"',
        )
    try:
        with pytest.raises(UnsafeDatabaseRole, match="owns table 'appointments'"):
            await _connect(runtime)
    finally:
        if how == "member_of_owner":
            await _owner_exec(
                owner, "ALTER TABLE appointments OWNER TO postgres", f'DROP ROLE "{role}_boss"'
            )


WEAK = "or the policy is not exactly"


@pytest.mark.parametrize(
    ("sabotage", "message"),
    [
        ("ALTER TABLE patients DISABLE ROW LEVEL SECURITY", "lacks ENABLE \\+ FORCE"),
        ("ALTER TABLE users NO FORCE ROW LEVEL SECURITY", "lacks ENABLE \\+ FORCE"),
        ("DROP POLICY clinic_isolation ON refresh_tokens", "lacks its 'clinic_isolation'"),
        (
            "CREATE POLICY everyone ON audit_events FOR SELECT USING (true)",
            "other permissive row-level security policies \\(everyone\\)",
        ),
        # The policy is there and names the setting, but no longer walls anything off.
        (f"ALTER POLICY clinic_isolation ON patients USING ({POLICY_EXPRESSION} OR true)", WEAK),
        (f"ALTER POLICY clinic_isolation ON users WITH CHECK ({POLICY_EXPRESSION} OR true)", WEAK),
        (
            "ALTER POLICY clinic_isolation ON appointments USING "
            "(clinic_id::text = current_setting('app.clinic_id', true) OR "
            "current_setting('app.clinic_id', true) IS NULL)",
            WEAK,
        ),
        # Migration 0008: the login routes and the clinics are behind the wall too.
        ("ALTER TABLE user_logins NO FORCE ROW LEVEL SECURITY", "'user_logins' lacks ENABLE"),
        ("DROP POLICY clinic_isolation ON user_logins", "'user_logins' lacks its"),
        ("ALTER TABLE clinics DISABLE ROW LEVEL SECURITY", "'clinics' lacks ENABLE"),
        (
            f"ALTER POLICY clinic_isolation ON clinics USING ({CLINIC_POLICY_EXPRESSION} OR true)",
            WEAK,
        ),
        # Opened up entirely.
        ("ALTER POLICY clinic_isolation ON clinics USING (true) WITH CHECK (true)", WEAK),
        # The directory is for reading only; widened to writes it would undo the wall.
        (
            "DROP POLICY clinic_directory ON clinics;"
            " CREATE POLICY clinic_directory ON clinics FOR ALL USING (true)",
            "other permissive row-level security policies \\(clinic_directory\\)",
        ),
        ("DROP POLICY clinic_directory ON clinics", "lacks its clinic_directory"),
        # The owner's lookup policy opened to everyone is one more permissive policy.
        ("ALTER POLICY login_lookup ON user_logins TO PUBLIC", "\\(login_lookup\\)"),
        # The login lookup must stay the narrow SECURITY DEFINER function of 0008.
        ("ALTER FUNCTION healthdb_login_route(text) SECURITY INVOKER", "login lookup function"),
        ("ALTER FUNCTION healthdb_login_route(text) RESET search_path", "login lookup function"),
        (
            "CREATE OR REPLACE FUNCTION healthdb_login_route(p_email text) "
            "RETURNS TABLE (user_id uuid, clinic_id uuid) LANGUAGE sql STABLE SECURITY DEFINER "
            "SET search_path = pg_catalog, pg_temp AS "
            "$$SELECT l.user_id, l.clinic_id FROM public.user_logins AS l$$",
            "login lookup function",
        ),
        ("DROP FUNCTION healthdb_login_route(text)", "login lookup function"),
    ],
)
async def test_start_up_refuses_a_table_without_its_wall(
    staged: tuple[str, str, str], sabotage: str, message: str
) -> None:
    owner, runtime, _ = staged
    await _owner_exec(owner, sabotage)
    with pytest.raises(UnsafeDatabaseRole, match=message):
        await _connect(runtime)


async def test_start_up_without_temporary_says_why_it_cannot_check(
    staged: tuple[str, str, str],
) -> None:
    """The policy check has the server deparse the expected expression on a temporary
    table; without TEMPORARY the service refuses to start rather than skip the check."""
    owner, runtime, role = staged
    database = make_url(owner).database
    await _owner_exec(
        owner,
        f'REVOKE TEMPORARY ON DATABASE "{database}" FROM PUBLIC',
        f'REVOKE TEMPORARY ON DATABASE "{database}" FROM "{role}"',
    )
    with pytest.raises(UnsafeDatabaseRole, match="needs TEMPORARY"):
        await _connect(runtime)


# -- pool hygiene -----------------------------------------------------------------------------


class Boom(Exception):
    pass


CURRENT = text("SELECT current_setting('app.clinic_id', true)")


async def test_pool_hygiene_after_a_thousand_alternating_calls(
    pg_migrated_url: str, planted: tuple[uuid.UUID, uuid.UUID]
) -> None:
    """1,000 facade calls alternating between two clinics, some raising mid-transaction and
    some cancelled inside the op: afterwards no pooled connection carries ``app.clinic_id``
    or an open transaction, and every call saw only its own clinic."""
    a, b = planted
    expected = {a: 2, b: 3}
    settings = Settings(database_url=pg_migrated_url, **{**DEFAULTS, "pool_size": 4})
    rng = random.Random(4)
    outcomes = {"ok": 0, "raised": 0, "cancelled": 0}

    async with DatabaseService.connect(settings) as db:
        # The ops below count rows with raw SQL on the connection, which the connection wall
        # would refuse: taken away, so that row-level security alone scopes each count.
        connection_wall.remove(db.engines.primary.sync_engine)

        async def one(i: int) -> None:
            clinic = (a, b)[i % 2]
            fate = rng.choice(("ok", "ok", "ok", "raise", "cancel"))
            inside = asyncio.Event()

            async def op(session: AsyncSession) -> tuple[str, int]:
                conn = await session.connection()
                seen = (await conn.execute(CURRENT)).scalar_one()
                count = (await conn.execute(COUNT, {"a": a, "b": b})).scalar_one()
                if fate == "raise":
                    raise Boom
                if fate == "cancel":
                    inside.set()
                    await asyncio.sleep(10)
                return seen, count

            async def call() -> tuple[str, int]:
                async with db.clinic(clinic):
                    if i % 3 == 0:
                        return await db.execute_write(op)
                    return await db.execute_read(op)

            task = asyncio.create_task(call())
            if fate == "cancel":
                await inside.wait()
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                outcomes["cancelled"] += 1
            elif fate == "raise":
                with pytest.raises(Boom):
                    await task
                outcomes["raised"] += 1
            else:
                assert await task == (str(clinic), expected[clinic])
                outcomes["ok"] += 1

        calls = list(range(1000))
        for start in range(0, len(calls), 8):  # 8 at a time: the pool of 4 is contended
            await asyncio.gather(*(one(i) for i in calls[start : start + 8]))
        assert sum(outcomes.values()) == 1000
        assert min(outcomes.values()) > 100, outcomes

        await asyncio.sleep(0.1)  # let cancelled check-ins finish
        assert_pools_idle(db)
        pool = db.engines.primary.pool
        size = pool.size()  # type: ignore[attr-defined]
        assert 1 <= pool.checkedin() <= size  # type: ignore[attr-defined]
        async with AsyncExitStack() as stack:
            seen_ids = set()
            for _ in range(size):
                conn = await stack.enter_async_context(db.engines.primary.connect())
                driver = (await conn.get_raw_connection()).driver_connection
                assert driver is not None
                seen_ids.add(id(driver))
                assert not driver.is_in_transaction()
                assert await driver.fetchval("SELECT current_setting('app.clinic_id', true)") in (
                    "",
                    None,
                )
                assert not driver.is_in_transaction()
            assert len(seen_ids) == size


async def test_scoped_calls_see_their_clinic_setting_only_inside_the_transaction(
    pg_migrated_url: str, planted: tuple[uuid.UUID, uuid.UUID]
) -> None:
    a, _ = planted
    settings = Settings(database_url=pg_migrated_url, **{**DEFAULTS, "pool_size": 1})
    async with DatabaseService.connect(settings) as db:

        async def current(session: AsyncSession) -> str | None:
            value = (await (await session.connection()).execute(CURRENT)).scalar_one()
            return None if value in ("", None) else str(value)

        async with db.clinic(a):
            assert await db.execute_read(current) == str(a)
            assert await db.execute_write(current) == str(a)
        assert await db.execute_read(current) is None  # same (only) connection, no scope
        with contextlib.suppress(Boom):
            async with db.clinic(a):

                async def fail(session: AsyncSession) -> None:
                    await session.get(Patient, uuid.uuid4())
                    raise Boom

                await db.execute_write(fail)
        assert await db.execute_read(current) is None
