"""`healthdb create-user`'s Python path: same policy and write path as the HTTP routes."""

from __future__ import annotations

import uuid

import httpx
import pytest

from healthdb import Role
from healthdb_api.accounts import AccountError, create_account
from healthdb_api.settings import ApiSettings
from tests.e2e.conftest import PASSWORD, login


def _email() -> str:
    return f"cli-{uuid.uuid4().hex[:10]}@clinic.example"


async def test_a_created_admin_can_log_in_and_add_staff_to_the_new_clinic(
    client: httpx.AsyncClient, api_settings: ApiSettings
) -> None:
    email = _email()
    user_id, clinic_id = await create_account(
        api_settings,
        email=email,
        password=PASSWORD,
        full_name="Cli Admin",
        role=Role.CLINIC_ADMIN,
        clinic_name="Cli Clinic",
    )
    tokens = await login(client, email.upper(), PASSWORD)
    me = await client.get(
        "/api/v1/auth/me", headers={"Authorization": f"Bearer {tokens['access_token']}"}
    )
    assert me.status_code == 200
    assert me.json()["id"] == str(user_id)
    assert me.json()["clinic_id"] == str(clinic_id)

    nurse_id, same_clinic = await create_account(
        api_settings,
        email=_email(),
        password=PASSWORD,
        full_name="Cli Nurse",
        role=Role.NURSE,
        clinic_id=str(clinic_id),
    )
    assert same_clinic == clinic_id
    assert nurse_id != user_id


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"password": "password1234"}, "guess"),
        ({"email": "not-an-email"}, "email"),
        ({"clinic_id": str(uuid.uuid4()), "clinic_name": None}, "no such clinic"),
        ({"clinic_id": "garbage", "clinic_name": None}, "UUID"),
        # The command line stores names under the same rule as the HTTP routes.
        ({"full_name": "Mallory\u202eyrollaM"}, "full name must not contain bidirectional"),
        ({"clinic_name": "Clinic\x00"}, "clinic name must not contain control"),
        ({"full_name": "   "}, "full name"),
    ],
)
async def test_bad_input_is_refused_with_a_reason(
    client: httpx.AsyncClient,
    api_settings: ApiSettings,
    overrides: dict[str, str | None],
    message: str,
) -> None:
    args: dict[str, object] = {
        "email": _email(),
        "password": PASSWORD,
        "full_name": "X Y",
        "role": Role.DOCTOR,
        "clinic_id": None,
        "clinic_name": "C",
    }
    args.update(overrides)
    with pytest.raises(AccountError, match=message):
        await create_account(api_settings, **args)  # type: ignore[arg-type]


async def test_a_duplicate_email_is_refused(
    client: httpx.AsyncClient, api_settings: ApiSettings
) -> None:
    email = _email()
    await create_account(
        api_settings,
        email=email,
        password=PASSWORD,
        full_name="A B",
        role=Role.DOCTOR,
        clinic_name="One",
    )
    with pytest.raises(AccountError, match="already exists"):
        await create_account(
            api_settings,
            email=email,
            password=PASSWORD,
            full_name="A B",
            role=Role.DOCTOR,
            clinic_name="Two",
        )
