"""The clinic scope: who is acting, for which clinic, and why — carried in a ContextVar."""

from __future__ import annotations

import enum
import uuid
from contextvars import ContextVar, Token
from dataclasses import dataclass, field

from healthdb.errors import ClinicContextRequired, InvalidInput


class Role(enum.StrEnum):
    """Staff roles, most privileged first. Unknown roles map to the least privileged."""

    CLINIC_ADMIN = "clinic_admin"
    DOCTOR = "doctor"
    NURSE = "nurse"
    RECEPTIONIST = "receptionist"

    @classmethod
    def parse(cls, value: str | Role | None) -> Role:
        """Fail closed: anything unrecognised becomes :attr:`RECEPTIONIST`."""
        if isinstance(value, Role):
            return value
        try:
            return cls(str(value))
        except ValueError:
            return cls.RECEPTIONIST


@dataclass(frozen=True, slots=True)
class ClinicScope:
    """The tenant and actor of the current unit of work."""

    clinic_id: uuid.UUID
    actor: uuid.UUID | None = None
    role: Role = Role.RECEPTIONIST
    purpose: str = "operations"
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    client_addr: str | None = None


_scope: ContextVar[ClinicScope | None] = ContextVar("healthdb_clinic_scope", default=None)


def as_uuid(value: object, what: str = "id") -> uuid.UUID:
    """Validate an id from user input; raise :class:`InvalidInput` instead of guessing."""
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, str):
        try:
            return uuid.UUID(value)
        except ValueError:
            pass
    raise InvalidInput(f"{what} must be a UUID")


def current_scope() -> ClinicScope | None:
    """The active scope, or ``None`` outside any ``clinic(...)`` block."""
    return _scope.get()


def require_scope() -> ClinicScope:
    """The active scope; raises :class:`ClinicContextRequired` when there is none."""
    scope = _scope.get()
    if scope is None:
        raise ClinicContextRequired("this operation needs a clinic scope: use db.clinic(...)")
    return scope


class clinic_scope:
    """Enter a clinic scope for the enclosed block (nested scopes replace, then restore).

    A class rather than a generator-based context manager: it is entered more than once per
    request, and this way entering costs an object, not a generator and a wrapper."""

    __slots__ = ("_token", "scope")

    def __init__(
        self,
        clinic_id: uuid.UUID | str,
        *,
        actor: uuid.UUID | str | None = None,
        role: Role | str | None = None,
        purpose: str = "operations",
        request_id: str | None = None,
        client_addr: str | None = None,
    ) -> None:
        self.scope = ClinicScope(
            clinic_id=as_uuid(clinic_id, "clinic_id"),
            actor=None if actor is None else as_uuid(actor, "actor"),
            role=Role.parse(role),
            purpose=purpose,
            request_id=request_id or uuid.uuid4().hex,
            client_addr=None if client_addr is None else client_addr[:64],
        )
        self._token: Token[ClinicScope | None] | None = None

    def __enter__(self) -> ClinicScope:
        self._token = _scope.set(self.scope)
        return self.scope

    def __exit__(self, *_exc: object) -> None:
        if self._token is not None:
            _scope.reset(self._token)
            self._token = None

    async def __aenter__(self) -> ClinicScope:
        return self.__enter__()

    async def __aexit__(self, *_exc: object) -> None:
        self.__exit__()
