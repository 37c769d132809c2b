"""Auth end to end: register, login, refresh rotation and reuse, logout, /me, brute force."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest
from argon2 import PasswordHasher
from fastapi import FastAPI
from pydantic import SecretStr
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession
from structlog.testing import capture_logs

from healthdb import DatabaseService
from healthdb.models import Clinic, RefreshToken, User, UserLogin
from healthdb_api.app import create_app
from healthdb_api.auth.registration import ACCEPTED_MESSAGE
from healthdb_api.auth.sessions import hash_token
from healthdb_api.auth.throttle import MemoryLoginThrottle
from healthdb_api.auth.throttle_redis import RedisLoginThrottle
from healthdb_api.settings import ApiSettings
from tests.conftest import REDIS_URL
from tests.e2e.conftest import PASSWORD, Account, forget_login_attempts, login, register

AUTH = "/api/v1/auth"


def _new_email(prefix: str = "user") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}@clinic.example"


async def _refresh(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.post(f"{AUTH}/refresh", json={"refresh_token": token})


async def _login_raw(client: httpx.AsyncClient, email: str, password: str) -> httpx.Response:
    return await client.post(f"{AUTH}/login", json={"email": email, "password": password})


def _db(app: FastAPI) -> DatabaseService:
    db: DatabaseService = app.state.db
    return db


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- register -------------------------------------------------------------------------------


async def test_register_answers_202_and_the_new_admin_logs_in(client: httpx.AsyncClient) -> None:
    email = _new_email("Admin")
    body = {
        "clinic_name": "  Riverside Family Practice  ",
        "email": f"  {email.upper()} ",
        "password": PASSWORD,
        "full_name": " Ada Admin ",
    }
    response = await client.post(f"{AUTH}/register", json=body)
    assert response.status_code == 202, response.text
    assert response.json() == {"status": "accepted", "message": ACCEPTED_MESSAGE}
    assert PASSWORD not in response.text
    tokens = await login(client, email, PASSWORD)  # stored trimmed and lowercased
    me = await client.get(
        f"{AUTH}/me", headers={"Authorization": f"Bearer {tokens['access_token']}"}
    )
    user = me.json()
    assert set(user) == {"id", "email", "full_name", "role", "clinic_id", "active", "created_at"}
    assert user["email"] == email.lower()
    assert user["full_name"] == "Ada Admin"
    assert user["role"] == "clinic_admin"
    assert user["active"] is True
    uuid.UUID(user["clinic_id"])
    dt.datetime.fromisoformat(user["created_at"])


async def test_register_writes_user_and_login_in_the_new_clinic(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    account = await register(client)
    clinic_id = uuid.UUID(account.clinic["id"])
    db = _db(app)

    async def load_login(session: AsyncSession) -> UserLogin | None:
        return await session.scalar(select(UserLogin).where(UserLogin.email == account.email))

    async def load_clinic(session: AsyncSession) -> Clinic | None:
        return await session.get(Clinic, clinic_id)

    async with db.clinic(clinic_id):
        entry = await db.execute_read(load_login)
        clinic = await db.execute_read(load_clinic)
    assert entry is not None
    assert str(entry.user_id) == account.user["id"]
    assert clinic is not None
    assert clinic.name == account.clinic["name"]

    async def load_user(session: AsyncSession) -> User | None:
        return await session.get(User, entry.user_id)

    async with db.clinic(clinic_id):
        user = await db.execute_read(load_user)
    assert user is not None
    assert user.password_hash.startswith("$argon2id$")
    assert PASSWORD not in user.password_hash


async def test_a_taken_email_gets_exactly_the_answer_of_a_free_one(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    """Registration must not tell a stranger which addresses have accounts: same status,
    byte-identical body; the taken address's account is untouched and nothing is created."""
    account = await register(client)
    name = f"Orphan check {uuid.uuid4().hex}"
    other = "another horse battery staple 77"
    taken = await client.post(
        f"{AUTH}/register",
        json={
            "clinic_name": name,
            "email": account.email.upper(),
            "password": other,
            "full_name": "Someone Else",
        },
    )
    free = await client.post(
        f"{AUTH}/register",
        json={"clinic_name": "Free", "email": _new_email(), "password": other, "full_name": "S E"},
    )
    assert (taken.status_code, taken.content) == (free.status_code, free.content)
    assert taken.status_code == 202
    assert account.email not in taken.text
    # The account keeps its password; the would-be registrant's password opens nothing.
    await login(client, account.email, PASSWORD)
    assert (await _login_raw(client, account.email, other)).status_code == 401

    async def count(session: AsyncSession) -> int:
        return len((await session.scalars(select(Clinic).where(Clinic.name == name))).all())

    assert await _db(app).execute_read(count) == 0  # no orphan clinic


@pytest.mark.parametrize(
    "body",
    [
        {"clinic_name": "C", "email": "not-an-email", "password": PASSWORD, "full_name": "A"},
        {"clinic_name": "", "email": _new_email(), "password": PASSWORD, "full_name": "A"},
        {"clinic_name": "C", "email": _new_email(), "password": PASSWORD, "full_name": " "},
        {"clinic_name": "C" * 201, "email": _new_email(), "password": PASSWORD, "full_name": "A"},
        {"clinic_name": "C", "email": _new_email(), "password": PASSWORD, "full_name": "A\x00B"},
        {"clinic_name": "C", "email": _new_email(), "password": PASSWORD},
        {
            "clinic_name": "C",
            "email": _new_email(),
            "password": PASSWORD,
            "full_name": "A",
            "role": "clinic_admin",
        },
    ],
)
async def test_register_rejects_malformed_bodies(
    client: httpx.AsyncClient, body: dict[str, Any]
) -> None:
    response = await client.post(f"{AUTH}/register", json=body)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "validation_error"
    assert PASSWORD not in response.text


@pytest.mark.parametrize(
    ("password", "fragment"),
    [
        ("Sh0rt!pw", "at least 12"),
        ("xK9#mQ2$vL8@nR4!" * 8 + "z", "at most 128"),
        ("password1234", "too easy to guess"),
        ("qwertyuiop123", "too easy to guess"),
        ("aaaaaaaaaaaaaaaa", "too easy to guess"),
        ("{local} galaxy turnip 93", "e-mail"),
    ],
)
async def test_weak_passwords_are_refused_with_a_helpful_422(
    client: httpx.AsyncClient, password: str, fragment: str
) -> None:
    email = _new_email("zebra")
    password = password.replace("{local}", email.split("@")[0])
    body = {"clinic_name": "C", "email": email, "password": password, "full_name": "Zed"}
    response = await client.post(f"{AUTH}/register", json=body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "weak_password"
    assert fragment in error["message"]
    assert password not in response.text
    # Nothing was created: the e-mail is still free.
    body["password"] = PASSWORD
    assert (await client.post(f"{AUTH}/register", json=body)).status_code == 202
    await login(client, email, PASSWORD)


# -- login ----------------------------------------------------------------------------------


async def test_login_returns_tokens(client: httpx.AsyncClient) -> None:
    account = await register(client)
    response = await _login_raw(client, f" {account.email.upper()} ", PASSWORD)
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"access_token", "refresh_token", "token_type", "expires_in"}
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 900
    clinic_prefix, secret = body["refresh_token"].split(".")
    assert clinic_prefix == account.clinic["id"]
    assert len(secret) >= 43


async def test_wrong_password_and_unknown_email_are_indistinguishable(
    client: httpx.AsyncClient,
) -> None:
    account = await register(client)
    wrong = await _login_raw(client, account.email, PASSWORD + "x")
    unknown = await _login_raw(client, _new_email("nobody"), PASSWORD)
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.content == unknown.content
    assert wrong.json() == {
        "error": {
            "code": "invalid_credentials",
            "message": "invalid email or password",
            "details": None,
        }
    }
    assert set(wrong.headers) - {"x-request-id"} == set(unknown.headers) - {"x-request-id"}


async def test_login_rehashes_a_hash_made_with_weaker_parameters(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    account = await register(client)
    clinic_id = uuid.UUID(account.clinic["id"])
    user_id = uuid.UUID(account.user["id"])
    weak = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1).hash(PASSWORD)
    db = _db(app)

    async def set_hash(session: AsyncSession) -> None:
        await session.execute(update(User).where(User.id == user_id).values(password_hash=weak))

    async def get_hash(session: AsyncSession) -> str:
        user = await session.get(User, user_id)
        assert user is not None
        return user.password_hash

    async with db.clinic(clinic_id):
        await db.execute_write(set_hash)
        assert await db.execute_read(get_hash) == weak
    await login(client, account.email, PASSWORD)
    async with db.clinic(clinic_id):
        stored = await db.execute_read(get_hash)
    assert stored != weak
    assert "m=19456,t=2,p=1" in stored
    await login(client, account.email, PASSWORD)  # the new hash verifies


# -- /me and access tokens ------------------------------------------------------------------


async def test_me_returns_the_current_user(client: httpx.AsyncClient) -> None:
    account = await register(client)
    response = await client.get(f"{AUTH}/me", headers=account.headers)
    assert response.status_code == 200
    me = response.json()
    assert me == {**me, **account.user}  # what the token named, and the rest of the user
    assert (me["full_name"], me["active"]) == ("Ada Admin", True)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer not-a-jwt"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
    ],
)
async def test_me_without_a_valid_access_token_is_401(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    response = await client.get(f"{AUTH}/me", headers=headers)
    assert response.status_code == 401


async def test_refresh_token_is_not_an_access_token(client: httpx.AsyncClient) -> None:
    account = await register(client)
    response = await client.get(
        f"{AUTH}/me", headers={"Authorization": f"Bearer {account.refresh_token}"}
    )
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"


# -- refresh --------------------------------------------------------------------------------


async def test_refresh_rotates_the_token(client: httpx.AsyncClient) -> None:
    account = await register(client)
    first = await _refresh(client, account.refresh_token)
    assert first.status_code == 200, first.text
    body = first.json()
    assert set(body) == {"access_token", "refresh_token", "token_type", "expires_in"}
    assert body["refresh_token"] != account.refresh_token
    me = await client.get(f"{AUTH}/me", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert me.status_code == 200
    assert me.json()["id"] == account.user["id"]
    second = await _refresh(client, body["refresh_token"])
    assert second.status_code == 200


async def test_rotation_keeps_the_family_and_spends_the_old_token(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    account = await register(client)
    new_token = (await _refresh(client, account.refresh_token)).json()["refresh_token"]
    db = _db(app)

    async def rows(session: AsyncSession) -> list[RefreshToken]:
        hashes = [hash_token(account.refresh_token), hash_token(new_token)]
        stmt = select(RefreshToken).where(RefreshToken.token_hash.in_(hashes))
        return list((await session.scalars(stmt)).all())

    async with db.clinic(account.clinic["id"]):
        found = {row.token_hash: row for row in await db.execute_read(rows)}
    old, new = found[hash_token(account.refresh_token)], found[hash_token(new_token)]
    assert old.family_id == new.family_id
    assert old.used_at is not None
    assert new.used_at is None
    assert old.revoked_at is None
    assert new.revoked_at is None
    assert new.expires_at > dt.datetime.now(dt.UTC) + dt.timedelta(days=13)


async def test_reusing_a_spent_token_revokes_the_family(client: httpx.AsyncClient) -> None:
    account = await register(client)
    rotated = await _refresh(client, account.refresh_token)
    assert rotated.status_code == 200
    successor = rotated.json()["refresh_token"]
    with capture_logs() as logs:
        replay = await _refresh(client, account.refresh_token)
    assert replay.status_code == 401
    assert replay.json()["error"]["code"] == "invalid_token"
    # The thief's replay also kills the legitimate successor.
    assert (await _refresh(client, successor)).status_code == 401
    events = [e for e in logs if e["event"] == "refresh_token_reuse"]
    assert len(events) == 1
    event = events[0]
    assert event["log_level"] == "warning"
    assert event["clinic_id"] == account.clinic["id"]
    assert event["user_id"] == account.user["id"]
    uuid.UUID(event["family_id"])
    flat = repr(logs)
    assert account.refresh_token not in flat
    assert account.refresh_token.split(".")[1] not in flat
    assert successor.split(".")[1] not in flat


async def test_other_sessions_survive_a_revoked_family(client: httpx.AsyncClient) -> None:
    account = await register(client)
    other = await login(client, account.email, PASSWORD)
    await _refresh(client, account.refresh_token)
    await _refresh(client, account.refresh_token)  # reuse: that family is gone
    assert (await _refresh(client, other["refresh_token"])).status_code == 200


async def test_concurrent_refreshes_of_one_token_succeed_at_most_once(
    client: httpx.AsyncClient,
) -> None:
    account = await register(client)
    responses = await asyncio.gather(
        _refresh(client, account.refresh_token), _refresh(client, account.refresh_token)
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 401]


async def test_a_burst_of_refreshes_of_one_token_has_one_winner(
    client: httpx.AsyncClient,
) -> None:
    account = await register(client)
    responses = await asyncio.gather(*(_refresh(client, account.refresh_token) for _ in range(6)))
    winners = [r for r in responses if r.status_code == 200]
    assert len(winners) == 1
    assert all(r.status_code in (200, 401) for r in responses)
    # Every extra presentation is a reuse: the family, winner's successor included, is revoked.
    for winner in winners:
        successor = winner.json()["refresh_token"]
        assert (await _refresh(client, successor)).status_code == 401


@pytest.mark.parametrize(
    "token",
    [
        "",
        "garbage",
        "a.b.c",
        f"{uuid.uuid4()}.short",
        f"{uuid.uuid4()}.{'A' * 43}",
        f"{str(uuid.uuid4()).upper()}.{'A' * 43}",
        f"not-a-uuid.{'A' * 43}",
        "x" * 300,
    ],
)
async def test_garbage_refresh_tokens_are_401_or_422(client: httpx.AsyncClient, token: str) -> None:
    response = await _refresh(client, token)
    assert response.status_code in (401, 422)
    if token and len(token) <= 256:
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_token"


async def test_a_token_cannot_be_replayed_in_another_clinic(client: httpx.AsyncClient) -> None:
    victim = await register(client)
    attacker = await register(client)
    forged = f"{attacker.clinic['id']}.{victim.refresh_token.split('.')[1]}"
    assert (await _refresh(client, forged)).status_code == 401
    assert (await _refresh(client, victim.refresh_token)).status_code == 200


async def test_expired_refresh_token_is_401(client: httpx.AsyncClient, app: FastAPI) -> None:
    account = await register(client)
    db = _db(app)
    past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)

    async def expire(session: AsyncSession) -> None:
        await session.execute(
            update(RefreshToken)
            .where(RefreshToken.token_hash == hash_token(account.refresh_token))
            .values(expires_at=past)
        )

    async with db.clinic(account.clinic["id"]):
        await db.execute_write(expire)
    assert (await _refresh(client, account.refresh_token)).status_code == 401


# -- logout ---------------------------------------------------------------------------------


async def test_logout_revokes_the_family(client: httpx.AsyncClient) -> None:
    account = await register(client)
    successor = (await _refresh(client, account.refresh_token)).json()["refresh_token"]
    response = await client.post(f"{AUTH}/logout", json={"refresh_token": successor})
    assert response.status_code == 204
    assert response.content == b""
    assert (await _refresh(client, successor)).status_code == 401


@pytest.mark.parametrize("token", ["garbage", f"{uuid.uuid4()}.{'B' * 43}"])
async def test_logout_of_an_unknown_token_is_still_204(
    client: httpx.AsyncClient, token: str
) -> None:
    response = await client.post(f"{AUTH}/logout", json={"refresh_token": token})
    assert response.status_code == 204


# -- brute force ----------------------------------------------------------------------------


async def test_five_failures_lock_the_account_even_for_the_right_password(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    clock = FakeClock()
    account = await register(client)
    app.state.login_throttle = MemoryLoginThrottle(
        max_per_account=5, max_per_address=20, window=900, clock=clock
    )
    for _ in range(5):
        assert (await _login_raw(client, account.email, "wrong password 1")).status_code == 401
    locked = await _login_raw(client, account.email, PASSWORD)
    assert locked.status_code == 429
    assert locked.json()["error"]["code"] == "too_many_attempts"
    retry_after = int(locked.headers["Retry-After"])
    assert 1 <= retry_after <= 900
    clock.now += 899
    assert (await _login_raw(client, account.email, PASSWORD)).status_code == 429
    clock.now += 1
    await login(client, account.email, PASSWORD)


async def test_unknown_email_is_throttled_like_a_real_one(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    account = await register(client)
    app.state.login_throttle = MemoryLoginThrottle(max_per_account=3, max_per_address=100)
    unknown = _new_email("ghost")
    for email in (account.email, unknown):
        for _ in range(3):
            assert (await _login_raw(client, email, "wrong password 1")).status_code == 401
    real = await _login_raw(client, account.email, PASSWORD)
    ghost = await _login_raw(client, unknown, PASSWORD)
    assert real.status_code == ghost.status_code == 429
    assert real.content == ghost.content


async def test_success_resets_the_account_counter(client: httpx.AsyncClient) -> None:
    account = await register(client)
    for _ in range(2):
        for _ in range(4):
            assert (await _login_raw(client, account.email, "wrong password 1")).status_code == 401
        await login(client, account.email, PASSWORD)


async def test_per_address_limit_spans_accounts(client: httpx.AsyncClient, app: FastAPI) -> None:
    account = await register(client)
    app.state.login_throttle = MemoryLoginThrottle(max_per_account=5, max_per_address=3)
    for _ in range(3):
        assert (await _login_raw(client, _new_email(), "wrong password 1")).status_code == 401
    response = await _login_raw(client, account.email, PASSWORD)
    assert response.status_code == 429
    assert "Retry-After" in response.headers


async def test_inactive_clinic_or_user_cannot_log_in(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    account: Account = await register(client)
    db = _db(app)

    async def deactivate(session: AsyncSession) -> None:
        await session.execute(
            update(Clinic).where(Clinic.id == uuid.UUID(account.clinic["id"])).values(active=False)
        )

    async with db.clinic(account.clinic["id"]):  # a clinic's row is written only there
        await db.execute_write(deactivate)
    refused = await _login_raw(client, account.email, PASSWORD)
    unknown = await _login_raw(client, _new_email(), PASSWORD)
    assert refused.status_code == 401
    assert refused.content == unknown.content
    assert (await _refresh(client, account.refresh_token)).status_code == 401


@pytest.mark.redis
async def test_with_redis_every_instance_enforces_one_login_limit(
    api_settings: ApiSettings,
) -> None:
    """Two service instances on one Redis: failures on either count for both, so a second
    instance is not a fresh budget of guesses."""
    settings = api_settings.model_copy(update={"redis_url": SecretStr(REDIS_URL)})
    await forget_login_attempts()
    first, second = create_app(settings), create_app(settings)
    async with AsyncExitStack() as stack:
        clients = []
        for app in (first, second):
            await stack.enter_async_context(app.router.lifespan_context(app))
            transport = httpx.ASGITransport(app=app)
            clients.append(
                await stack.enter_async_context(
                    httpx.AsyncClient(transport=transport, base_url="http://test")
                )
            )
            assert isinstance(app.state.login_throttle, RedisLoginThrottle)
        account = await register(clients[0])
        for i in range(5):
            wrong = await _login_raw(clients[i % 2], account.email, "wrong password 1")
            assert wrong.status_code == 401
        for client in clients:
            assert (await _login_raw(client, account.email, PASSWORD)).status_code == 429
