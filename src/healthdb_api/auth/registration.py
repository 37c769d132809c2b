"""``POST /api/v1/auth/register``: a new clinic and its first ``clinic_admin``.

Anyone may call it, so it must not tell strangers which e-mail addresses have accounts, nor
let one client create clinics by the hundred:

* **One answer.** A free address and a taken one get the same ``202`` with the same body,
  after the same policy check and the same argon2 hash (the way login answers an unknown
  e-mail and a wrong password alike). The registrant learns the clinic and user ids by
  logging in (``GET /api/v1/auth/me``). A taken address creates nothing and is logged as a
  ``registration_email_taken`` security event (request id and client address only).
* **Throttled.** Every registration that reaches the password hash counts, per client
  address and per e-mail address, in a sliding window shared through Redis when it is
  configured (the login throttle's windows, under their own keys); past either limit the
  answer is 429 with ``Retry-After``.
* **One transaction.** The clinic, its admin, the login route and their audit rows are
  written together inside the new clinic's own scope (row-level security lets a clinic row
  be written only there), so a lost race for the address leaves no orphan clinic.

Residual: someone who registers an address and then logs in with the password they chose
learns whether the address was free (their login fails if it was taken). Closing that needs
proof of the address (a confirmation e-mail), which this service has no channel for.
"""

from __future__ import annotations

import contextlib
import uuid
from typing import Annotated, Literal

import structlog
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession

from healthdb import ConflictError, DatabaseService, QueryOptions, Role
from healthdb.models import Clinic, User
from healthdb_api.auth import audit as auth_audit
from healthdb_api.auth.routes import (
    add_user,
    check_new_password,
    email_taken,
    get_settings,
    hash_new_password,
)
from healthdb_api.auth.schemas import RegisterIn
from healthdb_api.auth.throttle import (
    LoginThrottle,
    MemoryLoginThrottle,
    TooManyAttempts,
    address_key,
)
from healthdb_api.auth.throttle_redis import RedisLoginThrottle
from healthdb_api.deps import Db
from healthdb_api.errors import ApiError
from healthdb_api.settings import ApiSettings

log = structlog.get_logger("healthdb_api.auth")
security = structlog.get_logger("healthdb_api.security")

router = APIRouter(prefix="/api/v1/auth", tags=["auth"])

#: Redis keys of the registration windows (the login throttle's are ``healthdb:login:``).
KEY_PREFIX = "healthdb:register:"
ACCEPTED_MESSAGE = (
    "registration received: if this e-mail address can be used, the clinic and its "
    "administrator exist now; log in with these details"
)


class RegisterAccepted(BaseModel):
    """The one answer to every registration that passes validation and the throttle."""

    status: Literal["accepted"] = "accepted"
    message: str = ACCEPTED_MESSAGE


def memory_throttle(settings: ApiSettings) -> MemoryLoginThrottle:
    """In-process registration windows with the settings' limits."""
    return MemoryLoginThrottle(
        max_per_account=settings.register_max_per_email,
        max_per_address=settings.register_max_per_address,
        window=settings.register_window,
    )


def shared_throttle(settings: ApiSettings, client: Redis) -> RedisLoginThrottle:
    """Registration windows in Redis (in process while Redis is unreachable)."""
    return RedisLoginThrottle(
        client,
        fallback=memory_throttle(settings),
        timeout=settings.redis_timeout,
        prefix=KEY_PREFIX,
    )


async def _throttle(request: Request) -> LoginThrottle:
    throttle: LoginThrottle | None = getattr(request.app.state, "register_throttle", None)
    if throttle is None:
        throttle = request.app.state.register_throttle = memory_throttle(get_settings(request))
    return throttle


RegistrationThrottle = Annotated[LoginThrottle, Depends(_throttle)]


async def refuse_when_over_budget(throttle: LoginThrottle, address: str | None) -> None:
    """429 when ``address`` has used up its window (before anything reveals whether an
    address is taken: the answer is the same for every address)."""
    key = address_key(address)
    if key is not None and await throttle.failures(key) >= throttle.address_limit:
        raise _too_many(1)


async def count_probe(throttle: LoginThrottle, email: str, address: str | None) -> None:
    """Count a lookup that told the caller an address is taken, in the same windows as a
    registration (once over, :func:`refuse_when_over_budget` answers 429)."""
    with contextlib.suppress(TooManyAttempts):  # the 409 is answered either way
        await throttle.begin(email, address)


def _too_many(retry_after: int) -> ApiError:
    return ApiError(
        429,
        "too_many_attempts",
        "too many registrations; try again later",
        headers={"Retry-After": str(retry_after)},
    )


@router.post("/register", status_code=202, response_model=RegisterAccepted)
async def register(
    body: RegisterIn, db: Db, request: Request, throttle: RegistrationThrottle
) -> RegisterAccepted:
    """Create a clinic and its first ``clinic_admin`` (the same 202 whether or not the
    e-mail address was free; log in to use the account)."""
    rid, addr = auth_audit.request_id(request), auth_audit.client_addr(request)
    try:
        attempt = await throttle.begin(body.email, addr)
    except TooManyAttempts as exc:
        raise _too_many(exc.retry_after) from None
    try:
        await check_new_password(
            body.password, email=body.email, user_inputs=(body.full_name, body.clinic_name)
        )
        password_hash = await hash_new_password(body.password)  # taken or not: same work
        created = not await email_taken(db, body.email) and await _create(
            db, body, password_hash, rid, addr
        )
    except BaseException:
        await throttle.abort(attempt)  # refused or failed before any account work counted
        raise
    if not created:
        security.warning("registration_email_taken", request_id=rid, client_addr=addr)
    return RegisterAccepted()


async def _create(
    db: DatabaseService, body: RegisterIn, password_hash: str, rid: str, addr: str | None
) -> bool:
    """Write the clinic and its admin in one transaction; False if the address was taken
    meanwhile (the whole transaction is rolled back: no orphan clinic)."""
    clinic = Clinic(id=uuid.uuid4(), name=body.clinic_name, active=True)

    async def op(session: AsyncSession) -> User:
        session.add(clinic)
        await session.flush()  # the clinic first: the user and audit rows refer to it
        return await add_user(
            session,
            clinic_id=clinic.id,
            email=body.email,
            password_hash=password_hash,
            full_name=body.full_name,
            role=Role.CLINIC_ADMIN,
        )

    try:
        async with db.clinic(
            clinic.id,
            role=Role.CLINIC_ADMIN,
            purpose="registration",
            request_id=rid,
            client_addr=addr,
        ):
            user = await db.execute_write(op, QueryOptions.for_write("auth.register"))
    except ConflictError:
        return False
    log.info("clinic_registered", clinic_id=str(clinic.id), user_id=str(user.id))
    return True
