"""The clinic scope: role parsing fails closed, scopes nest and restore, ids are validated."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from healthdb.context import (
    ClinicScope,
    Role,
    as_uuid,
    clinic_scope,
    current_scope,
    require_scope,
)
from healthdb.errors import ClinicContextRequired, InvalidInput

A = uuid.UUID("00000000-0000-4000-8000-00000000000a")
B = uuid.UUID("00000000-0000-4000-8000-00000000000b")


@pytest.mark.parametrize("value", ["superuser", "", None, "DOCTOR", "admin", "root"])
def test_unknown_roles_fail_closed(value: str | None) -> None:
    assert Role.parse(value) is Role.RECEPTIONIST


def test_known_roles_parse() -> None:
    assert Role.parse("doctor") is Role.DOCTOR
    assert Role.parse("clinic_admin") is Role.CLINIC_ADMIN
    assert Role.parse(Role.NURSE) is Role.NURSE


def test_no_scope_by_default() -> None:
    assert current_scope() is None
    with pytest.raises(ClinicContextRequired):
        require_scope()


def test_clinic_scope_nesting_restores_the_outer_scope() -> None:
    with clinic_scope(A, role="doctor", actor=str(B)) as outer:
        assert current_scope() is outer
        assert outer.clinic_id == A
        assert outer.role is Role.DOCTOR
        assert outer.actor == B
        with clinic_scope(str(B), role="nurse") as inner:
            assert current_scope() is inner
            assert inner.clinic_id == B
            assert inner.role is Role.NURSE
        assert current_scope() is outer
        assert require_scope() is outer
    assert current_scope() is None


def test_clinic_scope_restores_after_an_exception() -> None:
    with pytest.raises(RuntimeError), clinic_scope(A):
        raise RuntimeError("boom")
    assert current_scope() is None


def test_scope_defaults_and_request_ids() -> None:
    with clinic_scope(A) as one:
        assert one.role is Role.RECEPTIONIST
        assert one.actor is None
        assert one.purpose == "operations"
        assert one.request_id
    with clinic_scope(A, request_id="req-1") as two:
        assert two.request_id == "req-1"
    assert isinstance(one, ClinicScope)


async def test_scopes_are_per_task() -> None:
    seen: dict[str, uuid.UUID | None] = {}
    gate = asyncio.Event()

    async def worker(name: str, clinic: uuid.UUID) -> None:
        with clinic_scope(clinic):
            await gate.wait()
            scope = current_scope()
            seen[name] = scope.clinic_id if scope else None

    tasks = [asyncio.create_task(worker("a", A)), asyncio.create_task(worker("b", B))]
    await asyncio.sleep(0)
    gate.set()
    await asyncio.gather(*tasks)
    assert seen == {"a": A, "b": B}
    assert current_scope() is None


@pytest.mark.parametrize("value", ["not-a-uuid", "1 OR 1=1", "", 42, None, b"\x00" * 16])
def test_as_uuid_rejects_garbage(value: object) -> None:
    with pytest.raises(InvalidInput):
        as_uuid(value, "clinic_id")


def test_as_uuid_accepts_uuids_and_strings() -> None:
    assert as_uuid(A) is A
    assert as_uuid(str(A)) == A


def test_clinic_scope_rejects_bad_ids() -> None:
    with pytest.raises(InvalidInput), clinic_scope("nope"):
        pass
    with pytest.raises(InvalidInput), clinic_scope(A, actor="nope"):
        pass
    assert current_scope() is None
