"""Account creation gives strangers no signal and no cheap abuse, on SQLite and PostgreSQL:
registration is throttled per address and per e-mail (in process and through Redis), and
the users route, which anyone can reach by registering a clinic, spends the same budget
for every answer that says an address is taken."""

from __future__ import annotations

import uuid
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr, ValidationError

from healthdb_api.app import create_app
from healthdb_api.auth.registration import KEY_PREFIX
from healthdb_api.settings import ApiSettings
from tests.conftest import REDIS_URL
from tests.e2e.conftest import PASSWORD, Account, forget_redis_keys, register

REGISTER = "/api/v1/auth/register"
LIMITS = {"register_max_per_address": 4, "register_max_per_email": 2}


@pytest.fixture
def app(api_settings: ApiSettings) -> FastAPI:
    return create_app(api_settings.model_copy(update=LIMITS))


def _body(email: str | None = None, password: str = PASSWORD) -> dict[str, Any]:
    return {
        "clinic_name": f"Clinic {uuid.uuid4().hex[:6]}",
        "email": email or f"r-{uuid.uuid4().hex[:10]}@clinic.example",
        "password": password,
        "full_name": "Ada Admin",
    }


def _assert_throttled(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    assert response.json()["error"]["code"] == "too_many_attempts"
    assert int(response.headers["retry-after"]) >= 1


async def test_registration_is_throttled_per_client_address(client: httpx.AsyncClient) -> None:
    # A refused password does no account work and is not counted.
    weak = await client.post(REGISTER, json=_body(password="password1234"))
    assert weak.status_code == 422
    for _ in range(4):
        assert (await client.post(REGISTER, json=_body())).status_code == 202
    _assert_throttled(await client.post(REGISTER, json=_body()))


async def test_registration_is_throttled_per_email_whether_taken_or_not(
    client: httpx.AsyncClient,
) -> None:
    email = f"twice-{uuid.uuid4().hex[:10]}@clinic.example"
    first = await client.post(REGISTER, json=_body(email))
    again = await client.post(REGISTER, json=_body(email))  # taken now: the same answer
    assert (first.status_code, first.content) == (again.status_code, again.content)
    _assert_throttled(await client.post(REGISTER, json=_body(email)))


@pytest.mark.redis
async def test_with_redis_every_instance_shares_the_registration_windows(
    api_settings: ApiSettings,
) -> None:
    settings = api_settings.model_copy(update={**LIMITS, "redis_url": SecretStr(REDIS_URL)})
    await forget_redis_keys(KEY_PREFIX)
    async with AsyncExitStack() as stack:
        clients = []
        for app in (create_app(settings), create_app(settings)):
            await stack.enter_async_context(app.router.lifespan_context(app))
            transport = httpx.ASGITransport(app=app)
            clients.append(
                await stack.enter_async_context(
                    httpx.AsyncClient(transport=transport, base_url="http://test")
                )
            )
        statuses = [
            (await clients[i % 2].post(REGISTER, json=_body())).status_code for i in range(5)
        ]
        assert statuses == [202, 202, 202, 202, 429]


# -- the users route ---------------------------------------------------------------------------


async def _create_user(client: httpx.AsyncClient, admin: Account, email: str) -> httpx.Response:
    body = {"email": email, "password": PASSWORD, "full_name": "Sam Staff", "role": "nurse"}
    return await client.post("/api/v1/users", json=body, headers=admin.headers)


async def test_a_taken_address_in_the_users_route_is_audited_and_spends_the_budget(
    client: httpx.AsyncClient,
) -> None:
    other_clinic = await register(client)  # registration 1 from this address
    mallory = await register(client)  # registration 2
    own = await _create_user(client, mallory, f"own-{uuid.uuid4().hex[:8]}@clinic.example")
    assert own.status_code == 201, own.text
    foreign = await _create_user(client, mallory, other_clinic.email)
    same = await _create_user(client, mallory, own.json()["email"])
    # Taken here or in another clinic: one answer, naming neither.
    assert (foreign.status_code, foreign.content) == (same.status_code, same.content)
    assert foreign.status_code == 409
    # Those two conflicts filled this address's window (4): from now on every creation is
    # refused, for a free address exactly like a taken one.
    _assert_throttled(await _create_user(client, mallory, f"new-{uuid.uuid4().hex[:8]}@x.example"))
    _assert_throttled(await _create_user(client, mallory, other_clinic.email))
    _assert_throttled(await client.post(REGISTER, json=_body()))

    events = await client.get(
        "/api/v1/admin/audit", params={"action": "user.create"}, headers=mallory.headers
    )
    outcomes = sorted(e["outcome"] for e in events.json()["items"])
    assert outcomes == ["denied", "denied", "success", "success"]  # + the admin's own
    assert other_clinic.email not in events.text


# -- the login limits ---------------------------------------------------------------------------


def test_the_per_address_login_limit_is_at_least_ten_times_the_per_account_one(
    api_settings: ApiSettings,
) -> None:
    defaults = ApiSettings()
    assert defaults.login_max_failures_per_address >= 10 * defaults.login_max_failures_per_account
    with pytest.raises(ValidationError, match="at least 10 times"):
        ApiSettings(login_max_failures_per_account=5, login_max_failures_per_address=49)
    ApiSettings(login_max_failures_per_account=5, login_max_failures_per_address=50)
