"""Masking by role: who sees which kind of PHI in full, partially, or not at all.

The policy (documented in the README and in ``docs/phi.md``):

=============  ============  ======  =====  ============
kind           clinic_admin  doctor  nurse  receptionist
=============  ============  ======  =====  ============
name           full          full    full   full
mrn            full          full    full   full
dob            full          full    full   full
demographic    full          full    full   full
visit_reason   full          full    full   full
phone          full          full    full   full
email          full          full    full   full
address        full          full    full   full
ssn            full          full    partial partial
clinical_note  none          full    full   none
bulk_export    full          full    none   none
=============  ============  ======  =====  ============

*partial* keeps just enough to confirm identity at a desk (the last four SSN digits:
``***-**-1234``); *none* shows ``None``. A role may write a field it sees partially (a
receptionist types the SSN from the intake form) but not one it may not see at all. A bulk
export file was masked for its requester's role when it was written; only the roles that
may export see one at all.
Unknown roles fall back to the receptionist row (:meth:`Role.parse` fails closed).

Masked values are :class:`MaskedValue` strings; the library refuses to write one back, so a
masked record handed to an update can never overwrite the real value.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from healthdb.context import Role
from healthdb.phi.declaration import PhiKind

__all__ = ["POLICY", "MaskedValue", "Visibility", "mask_value", "may_write", "visibility"]


class Visibility(enum.StrEnum):
    FULL = "full"
    PARTIAL = "partial"
    NONE = "none"


class MaskedValue(str):
    """A partially masked PHI value: a ``str`` the library refuses to store."""

    __slots__ = ()


_FULL, _PARTIAL, _NONE = Visibility.FULL, Visibility.PARTIAL, Visibility.NONE
_EVERYONE_FULL = frozenset(
    {
        PhiKind.NAME,
        PhiKind.MRN,
        PhiKind.DOB,
        PhiKind.DEMOGRAPHIC,
        PhiKind.PHONE,
        PhiKind.EMAIL,
        PhiKind.ADDRESS,
        PhiKind.VISIT_REASON,
    }
)


def _row(ssn: Visibility, note: Visibility, export: Visibility) -> Mapping[PhiKind, Visibility]:
    row = dict.fromkeys(_EVERYONE_FULL, _FULL)
    row[PhiKind.SSN] = ssn
    row[PhiKind.CLINICAL_NOTE] = note
    row[PhiKind.BULK_EXPORT] = export
    return MappingProxyType(row)


#: The policy table: ``POLICY[role][kind]``.
POLICY: Mapping[Role, Mapping[PhiKind, Visibility]] = MappingProxyType(
    {
        Role.CLINIC_ADMIN: _row(ssn=_FULL, note=_NONE, export=_FULL),
        Role.DOCTOR: _row(ssn=_FULL, note=_FULL, export=_FULL),
        Role.NURSE: _row(ssn=_PARTIAL, note=_FULL, export=_NONE),
        Role.RECEPTIONIST: _row(ssn=_PARTIAL, note=_NONE, export=_NONE),
    }
)


def visibility(role: Role | str | None, kind: PhiKind) -> Visibility:
    """How ``role`` sees ``kind``; anything unlisted is hidden."""
    return POLICY[Role.parse(role)].get(kind, _NONE)


def may_write(role: Role | str | None, kind: PhiKind) -> bool:
    """A role may write what it may at least partly see."""
    return visibility(role, kind) is not _NONE


def _partial(kind: PhiKind, value: Any) -> MaskedValue | None:
    text = str(value)
    if kind is PhiKind.SSN:
        digits = [ch for ch in text if ch.isdigit()]
        return MaskedValue("***-**-" + "".join(digits[-4:]) if len(digits) >= 4 else "***-**-****")
    if kind is PhiKind.PHONE:
        return MaskedValue("*" * max(len(text) - 2, 0) + text[-2:])
    if kind is PhiKind.EMAIL and "@" in text:
        return MaskedValue("***@" + text.rsplit("@", 1)[1])
    # No meaningful partial form (a name, a note): hide it.
    return None


def mask_value(kind: PhiKind, value: Any, seen: Visibility) -> Any:
    """``value`` as a role with visibility ``seen`` may see it (``None`` stays ``None``)."""
    if value is None or seen is _FULL:
        return value
    if seen is _PARTIAL:
        return _partial(kind, value)
    return None
