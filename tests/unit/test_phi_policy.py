"""PHI is declared once on the columns, and the masking policy covers every declared kind."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Column

from healthdb.context import Role
from healthdb.models.base import Base
from healthdb.phi import POLICY, MaskedValue, PhiKind, Visibility, mask_value, visibility
from healthdb.phi.declaration import PHI_LOOKING, is_declared, phi_fields
from healthdb.phi.masking import may_write


def all_columns() -> list[tuple[str, Any]]:
    tables: list[Any] = [mapper.local_table for mapper in Base.registry.mappers]
    return [(f"{table.name}.{column.key}", column) for table in tables for column in table.columns]


def test_every_phi_looking_column_is_declared_either_way() -> None:
    undeclared = [
        name
        for name, column in all_columns()
        if PHI_LOOKING.search(column.key) and not is_declared(column.info)
    ]
    assert undeclared == [], f"declare with phi(kind) or not_phi(why): {undeclared}"


def test_the_check_catches_an_undeclared_phi_looking_column() -> None:
    # The same predicate as above, on a column a careless model might add.
    careless: Column[str] = Column("home_phone", info={})
    assert PHI_LOOKING.search(careless.key)
    assert not is_declared(careless.info)


def test_the_patient_declares_its_phi() -> None:
    from healthdb.models import Appointment, Patient

    fields = phi_fields(Patient)
    assert fields["ssn"] is PhiKind.SSN
    assert fields["notes"] is PhiKind.CLINICAL_NOTE
    assert fields["date_of_birth"] is PhiKind.DOB
    assert "ssn_index" not in fields
    assert "id" not in fields
    assert phi_fields(Appointment) == {"reason": PhiKind.VISIT_REASON}


def test_the_policy_covers_every_role_and_every_kind() -> None:
    for role in Role:
        assert set(POLICY[role]) == set(PhiKind), role


@pytest.mark.parametrize(
    ("role", "ssn", "note"),
    [
        (Role.CLINIC_ADMIN, Visibility.FULL, Visibility.NONE),
        (Role.DOCTOR, Visibility.FULL, Visibility.FULL),
        (Role.NURSE, Visibility.PARTIAL, Visibility.FULL),
        (Role.RECEPTIONIST, Visibility.PARTIAL, Visibility.NONE),
    ],
)
def test_the_documented_table(role: Role, ssn: Visibility, note: Visibility) -> None:
    assert visibility(role, PhiKind.SSN) is ssn
    assert visibility(role, PhiKind.CLINICAL_NOTE) is note
    assert visibility(role, PhiKind.NAME) is Visibility.FULL


def test_unknown_roles_fall_back_to_the_least_privileged() -> None:
    assert visibility("superuser", PhiKind.SSN) is Visibility.PARTIAL
    assert visibility(None, PhiKind.CLINICAL_NOTE) is Visibility.NONE


def test_partial_masks() -> None:
    masked = mask_value(PhiKind.SSN, "123-45-6789", Visibility.PARTIAL)
    assert masked == "***-**-6789"
    assert isinstance(masked, MaskedValue)
    assert mask_value(PhiKind.SSN, "12", Visibility.PARTIAL) == "***-**-****"
    assert mask_value(PhiKind.PHONE, "+14155550123", Visibility.PARTIAL) == "**********23"
    assert mask_value(PhiKind.EMAIL, "ann@example.org", Visibility.PARTIAL) == "***@example.org"
    assert mask_value(PhiKind.NAME, "Ann", Visibility.PARTIAL) is None
    assert mask_value(PhiKind.CLINICAL_NOTE, "x", Visibility.NONE) is None
    assert mask_value(PhiKind.SSN, None, Visibility.PARTIAL) is None
    assert mask_value(PhiKind.SSN, "123-45-6789", Visibility.FULL) == "123-45-6789"


def test_a_role_writes_what_it_may_at_least_partly_see() -> None:
    assert may_write(Role.RECEPTIONIST, PhiKind.SSN)
    assert not may_write(Role.RECEPTIONIST, PhiKind.CLINICAL_NOTE)
    assert not may_write(Role.CLINIC_ADMIN, PhiKind.CLINICAL_NOTE)
    assert may_write(Role.NURSE, PhiKind.CLINICAL_NOTE)
