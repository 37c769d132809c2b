"""Auth routes (``/api/v1/auth``): login, refresh, logout, me (registration:
:mod:`healthdb_api.auth.registration`).

Login never tells whether an e-mail exists: an unknown address costs the same argon2 work as
a wrong password and gets the same status and byte-identical body. Password hashing and the
password policy run in worker threads, off the event loop, and never while a database
connection is held.

Auth events are audited into the clinic's chain: see :mod:`healthdb_api.auth.audit`.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Annotated

import structlog
from fastapi import APIRouter, Depends, Request, Response
from sqlalchemy.ext.asyncio import AsyncSession

from healthdb import DatabaseService, QueryOptions, Role, audit_log
from healthdb.models import Clinic, User, UserLogin
from healthdb.repositories import LoginRoute, UserRepository, find_login
from healthdb_api.auth import audit as auth_audit
from healthdb_api.auth import sessions
from healthdb_api.auth.passwords import (
    WeakPassword,
    check_password_policy,
    dummy_verify,
    hash_password,
    verify_password,
)
from healthdb_api.auth.schemas import (
    LoginIn,
    RefreshIn,
    TokenOut,
    UserOut,
)
from healthdb_api.auth.throttle import (
    Attempt,
    LoginThrottle,
    MemoryLoginThrottle,
    TooManyAttempts,
)
from healthdb_api.auth.tokens import Claims, TokenConfig, issue_access
from healthdb_api.deps import CurrentPrincipal, Db, scope, token_config
from healthdb_api.errors import ApiError
from healthdb_api.settings import ApiSettings

log = structlog.get_logger("healthdb_api.auth")

router = APIRouter(prefix="/api/v1/auth", tags=["auth"])

INVALID_CREDENTIALS = "invalid email or password"
DUPLICATE_MESSAGE = "an account cannot be created with these details"


# -- dependencies ---------------------------------------------------------------------------


def get_settings(request: Request) -> ApiSettings:
    settings: ApiSettings = request.app.state.settings
    return settings


def memory_throttle(settings: ApiSettings) -> MemoryLoginThrottle:
    """An in-process throttle with the settings' limits."""
    return MemoryLoginThrottle(
        max_per_account=settings.login_max_failures_per_account,
        max_per_address=settings.login_max_failures_per_address,
        window=settings.login_failure_window,
    )


def get_throttle(request: Request) -> LoginThrottle:
    """The app's login throttle: shared through Redis when the app started one (see
    :func:`healthdb_api.app.create_app`), else created in process on first use."""
    throttle: LoginThrottle | None = getattr(request.app.state, "login_throttle", None)
    if throttle is None:
        throttle = request.app.state.login_throttle = memory_throttle(get_settings(request))
    return throttle


async def _settings_dependency(request: Request) -> ApiSettings:
    return get_settings(request)  # async: FastAPI runs a plain def in a worker thread


async def _throttle_dependency(request: Request) -> LoginThrottle:
    return get_throttle(request)


SettingsDep = Annotated[ApiSettings, Depends(_settings_dependency)]
Throttle = Annotated[LoginThrottle, Depends(_throttle_dependency)]
Tokens = Annotated[TokenConfig, Depends(token_config)]


# -- shared with the users routes -----------------------------------------------------------


async def check_new_password(
    password: str, *, email: str, user_inputs: tuple[str, ...] = ()
) -> None:
    """Apply the password policy off the event loop; 422 with a helpful message."""
    try:
        await asyncio.to_thread(
            check_password_policy, password, email=email, user_inputs=user_inputs
        )
    except WeakPassword as exc:
        raise ApiError(422, "weak_password", str(exc)) from None


async def hash_new_password(password: str) -> str:
    return await asyncio.to_thread(hash_password, password)


def duplicate_account() -> ApiError:
    return ApiError(409, "conflict", DUPLICATE_MESSAGE)


async def login_route(db: DatabaseService, email: str) -> LoginRoute | None:
    """Where ``email`` logs in, if anywhere: the one lookup that runs before a clinic is
    known (:func:`healthdb.repositories.find_login`: one exact address, never a list)."""

    async def op(session: AsyncSession) -> LoginRoute | None:
        return await find_login(session, email)

    return await db.execute_read(op, QueryOptions.for_read("auth.login_lookup"))


async def email_taken(db: DatabaseService, email: str) -> bool:
    """Whether a login already uses ``email``, in any clinic."""
    return await login_route(db, email) is not None


async def add_user(
    session: AsyncSession,
    *,
    clinic_id: uuid.UUID,
    email: str,
    password_hash: str,
    full_name: str,
    role: Role,
) -> User:
    """Insert a user and its login row (call inside the clinic's scope and one write). The
    library audits the insert as ``user.create`` in the same transaction."""
    user = User(
        id=uuid.uuid4(),
        clinic_id=clinic_id,
        email=email,
        password_hash=password_hash,
        full_name=full_name,
        role=role.value,
        active=True,
    )
    await UserRepository(session).add(user)
    session.add(UserLogin(email=user.email, user_id=user.id, clinic_id=clinic_id))
    await session.flush()
    return user


def _issue_access(config: TokenConfig, user: User) -> str:
    return issue_access(config, Claims(user.id, user.clinic_id, Role.parse(user.role)))


# -- routes ---------------------------------------------------------------------------------


@router.post("/login", response_model=TokenOut)
async def login(
    body: LoginIn,
    db: Db,
    request: Request,
    throttle: Throttle,
    settings: SettingsDep,
    config: Tokens,
) -> TokenOut:
    """Exchange e-mail and password for an access token and a refresh token."""
    try:
        attempt = await throttle.begin(body.email, auth_audit.client_addr(request))
    except TooManyAttempts as exc:
        raise ApiError(
            429,
            "too_many_attempts",
            "too many failed login attempts; try again later",
            headers={"Retry-After": str(exc.retry_after)},
        ) from None
    try:
        tokens = await _login(db, body, request, settings, config, attempt, throttle)
    except BaseException:
        await throttle.abort(attempt)
        raise
    if tokens is None:
        raise ApiError(401, "invalid_credentials", INVALID_CREDENTIALS)
    return tokens


async def _login(
    db: DatabaseService,
    body: LoginIn,
    request: Request,
    settings: ApiSettings,
    config: TokenConfig,
    attempt: Attempt,
    throttle: LoginThrottle,
) -> TokenOut | None:
    """The tokens, or ``None`` for a failed attempt (already counted by the throttle)."""

    entry = await login_route(db, body.email)
    if entry is None:
        await asyncio.to_thread(dummy_verify, body.password)
        auth_audit.unknown_account(auth_audit.request_id(request), auth_audit.client_addr(request))
        return None

    async with db.clinic(
        entry.clinic_id,
        actor=entry.user_id,
        purpose=sessions.PURPOSE,
        request_id=auth_audit.request_id(request),
        client_addr=auth_audit.client_addr(request),
    ):

        async def load(session: AsyncSession) -> tuple[User | None, bool]:
            user = await UserRepository(session).get(entry.user_id)
            clinic = await session.get(Clinic, entry.clinic_id)
            return user, clinic is not None and clinic.active

        user, clinic_active = await db.execute_read(load, QueryOptions.for_read("auth.login_user"))
        if user is None or not clinic_active:
            await asyncio.to_thread(dummy_verify, body.password)
            await auth_audit.login_failed(
                db, entry.user_id, user, "clinic inactive or account missing"
            )
            return None
        verified = await asyncio.to_thread(verify_password, user.password_hash, body.password)
        if not verified.ok or not user.active:
            why = "wrong password" if not verified.ok else "account inactive"
            await auth_audit.login_failed(db, user.id, user, why)
            return None
        new_hash = await hash_new_password(body.password) if verified.needs_rehash else None

        async def start_session(session: AsyncSession) -> str:
            if new_hash is not None:
                await UserRepository(session).update(
                    user.id, expected_version=None, password_hash=new_hash
                )
            token = await sessions.add_refresh_token(
                session,
                user_id=user.id,
                clinic_id=user.clinic_id,
                ttl_seconds=settings.refresh_token_ttl,
            )
            await audit_log.record(session, "auth.login", "users", user.id, actor_role=user.role)
            return token

        refresh_token = await db.execute_write(start_session, QueryOptions.for_write("auth.login"))
    await throttle.succeeded(attempt)
    log.info(
        "login_succeeded",
        user_id=str(user.id),
        clinic_id=str(user.clinic_id),
        rehashed=new_hash is not None,
    )
    return TokenOut(
        access_token=_issue_access(config, user),
        refresh_token=refresh_token,
        expires_in=config.access_ttl,
    )


@router.post("/refresh", response_model=TokenOut)
async def refresh(
    body: RefreshIn, db: Db, request: Request, settings: SettingsDep, config: Tokens
) -> TokenOut:
    """Rotate a refresh token: the presented one is spent, a new one of its family issued."""
    rotation = await sessions.rotate(
        db,
        body.refresh_token,
        ttl_seconds=settings.refresh_token_ttl,
        request_id=auth_audit.request_id(request),
        client_addr=auth_audit.client_addr(request),
    )
    if rotation.outcome is not sessions.Outcome.OK or rotation.user is None:
        raise ApiError(
            401,
            "invalid_token",
            "invalid or expired refresh token",
            headers={"WWW-Authenticate": "Bearer"},
        )
    assert rotation.refresh_token is not None
    return TokenOut(
        access_token=_issue_access(config, rotation.user),
        refresh_token=rotation.refresh_token,
        expires_in=config.access_ttl,
    )


@router.post("/logout", status_code=204, response_class=Response)
async def logout(body: RefreshIn, db: Db, request: Request) -> Response:
    """Revoke the refresh token's whole family.

    Always 204, like OAuth token revocation (RFC 7009): an unknown token reveals nothing.
    """
    await sessions.revoke(db, body.refresh_token, request_id=auth_audit.request_id(request))
    return Response(status_code=204)


@router.get("/me", response_model=UserOut)
async def me(principal: CurrentPrincipal, db: Db) -> UserOut:
    """The authenticated user (401 when the account is gone or deactivated)."""

    async def load(session: AsyncSession) -> User | None:
        return await UserRepository(session).get(principal.user_id)

    async with scope(db, principal, purpose=sessions.PURPOSE):
        user = await db.execute_read(load, QueryOptions.for_read("auth.me"))
    if user is None or not user.active:
        raise ApiError(
            401, "unauthorized", "invalid or expired token", headers={"WWW-Authenticate": "Bearer"}
        )
    return UserOut.of(user)
