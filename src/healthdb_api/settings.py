"""Service settings: the library's settings plus HTTP, token and login policy."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Self

import structlog
from pydantic import Field, SecretStr, model_validator

from healthdb import Settings

log = structlog.get_logger("healthdb_api")


class ApiSettings(Settings):
    """Read from ``HEALTHDB_*`` environment variables."""

    data_dir: Path = Path(".healthdb")
    jwt_secret: SecretStr | None = None
    jwt_issuer: str = "healthdb"
    jwt_audience: str = "healthdb-api"
    access_token_ttl: int = Field(900, ge=60, le=3600, description="seconds")
    refresh_token_ttl: int = Field(14 * 24 * 3600, ge=3600, description="seconds")
    login_max_failures_per_account: int = Field(
        5, ge=1, le=1000, description="failed logins per e-mail in the window before 429"
    )
    login_max_failures_per_address: int = Field(
        50,
        ge=1,
        le=1_000_000,
        description="failed logins per client address in the window; at least 10x the "
        "per-account limit, since every client behind one NAT shares it",
    )
    login_failure_window: int = Field(
        900, ge=1, le=86_400, description="seconds: the brute-force sliding window"
    )
    register_max_per_address: int = Field(
        10, ge=1, le=1_000_000, description="registrations per client address in the window"
    )
    register_max_per_email: int = Field(
        3, ge=1, le=1000, description="registrations per e-mail address in the window"
    )
    register_window: int = Field(3600, ge=1, le=86_400, description="seconds")
    auto_migrate: bool = Field(True, description="migrate an embedded SQLite database at start")
    max_body_bytes: int = Field(1_048_576, ge=1024)
    max_json_depth: int = Field(
        32, ge=2, le=256, description="JSON bodies nested deeper are refused with 400"
    )
    log_level: str = "INFO"
    log_json: bool = True

    @model_validator(mode="after")
    def _address_limit_covers_a_nat(self) -> Self:
        # One client address is often a whole clinic behind NAT: a limit near the per-account
        # one would let one attacker lock every colleague out by failing on one account.
        if self.login_max_failures_per_address < 10 * self.login_max_failures_per_account:
            raise ValueError(
                "HEALTHDB_LOGIN_MAX_FAILURES_PER_ADDRESS must be at least 10 times "
                "HEALTHDB_LOGIN_MAX_FAILURES_PER_ACCOUNT (every client behind one NAT shares it)"
            )
        return self

    def resolved_jwt_secret(self) -> str:
        """The configured secret, else one generated once per install and kept on disk."""
        if self.jwt_secret is not None:
            value = self.jwt_secret.get_secret_value()
            if len(value) < 32:
                raise ValueError("HEALTHDB_JWT_SECRET must be at least 32 characters")
            return value
        path = self.data_dir / "jwt_secret"
        if path.exists():
            return path.read_text().strip()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        value = secrets.token_urlsafe(48)
        path.touch(mode=0o600)
        path.write_text(value)
        log.warning("jwt_secret_generated", path=str(path), hint="set HEALTHDB_JWT_SECRET")
        return value
