"""Configuration, read from the environment with the ``HEALTHDB_`` prefix."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./healthdb.sqlite3"


class Settings(BaseSettings):
    """Every tunable of the library; nothing is read from the environment elsewhere."""

    model_config = SettingsConfigDict(env_prefix="HEALTHDB_", extra="ignore", frozen=True)

    database_url: SecretStr = SecretStr(DEFAULT_DATABASE_URL)
    admin_database_url: SecretStr | None = None
    redis_url: SecretStr | None = None
    redis_timeout: float = Field(0.25, gt=0, le=10, description="seconds per Redis call")
    rate_limit_per_minute: int = Field(
        600, ge=1, le=10_000_000, description="clinic requests per minute (per-clinic override)"
    )
    rate_limit_burst: int = Field(
        120, ge=1, le=10_000_000, description="requests a clinic may send at the same instant"
    )

    pool_size: int = Field(10, ge=1, le=500)
    # Overflow connections are closed when they come back: under steady load past
    # pool_size every request would pay a new connection. Queue (bounded) instead.
    max_overflow: int = Field(0, ge=0, le=500)
    # PostgreSQL: connections of the driver pool (view reads, audit group commit).
    read_pool_size: int = Field(10, ge=1, le=500)
    pool_timeout: float = Field(5.0, gt=0, le=120, description="seconds to wait for a connection")
    pool_recycle: int = Field(1800, ge=-1)
    # Off by default: with asyncpg a ping costs three round trips per checkout; dead
    # connections are invalidated on first use and reads re-run on a fresh one.
    pool_pre_ping: bool = False
    critical_pool_size: int = Field(
        2, ge=1, le=50, description="connections reserved for break-glass"
    )
    statement_timeout_ms: int = Field(5000, ge=0)
    lock_timeout_ms: int = Field(2000, ge=0)
    sqlite_busy_timeout_ms: int = Field(10000, ge=0)

    cache_ttl: float = Field(30.0, gt=0)
    cache_max_entries: int = Field(10_000, ge=1)

    retry_attempts: int = Field(5, ge=1, le=20)
    retry_max_wait: float = Field(1.0, gt=0)
    optimistic_retries: int = Field(3, ge=0, le=20)

    batch_max_items: int = Field(1_000_000, ge=1)
    batch_chunk_size: int = Field(1000, ge=1, le=100_000)
    batch_statement_timeout_ms: int = Field(120_000, ge=0)
    shutdown_timeout: float = Field(10.0, gt=0, description="seconds to drain in-flight calls")

    slow_query_ms: float = Field(200.0, ge=0)
    explain_slow_queries: bool = False
    slow_query_log_size: int = Field(100, ge=1)

    echo_sql: bool = False

    # Encryption at rest (healthdb.phi.crypto). ``phi_keys``: "id=base64key,id2=base64key";
    # the active (encrypting) key is ``phi_active_key`` or the first listed. Without keys, a
    # SQLite file database keeps a generated keyring in ``phi_key_file`` (default: next to
    # the database, mode 0600); PostgreSQL refuses to start without configured keys.
    phi_keys: SecretStr | None = None
    phi_active_key: str | None = None
    phi_index_key: SecretStr | None = None
    # Blind-index keys being rotated out ("base64key,base64key"): lookups still match index
    # values under them until ``healthdb keys rotate`` has recomputed every one.
    phi_previous_index_keys: SecretStr | None = None
    phi_key_file: str | None = None
    # Independent audit chains per clinic (PostgreSQL): PHI accesses of one clinic audit
    # concurrently up to this many at a time instead of queueing on one chain lock. Keep it
    # above the connections that write at once across every process (pool_size +
    # read_pool_size per worker): a transaction that finds every lane busy queues on one and
    # pays three more statements.
    audit_lanes: int = Field(32, ge=1, le=64)
    # PostgreSQL: refuse to start unless the runtime role is subject to row-level security
    # (not SUPERUSER, no BYPASSRLS, owns no tenant table) and every tenant table has forced
    # RLS and its clinic policy. Only a deliberately privileged tool turns this off.
    enforce_safe_role: bool = True

    @field_validator("database_url", "admin_database_url")
    @classmethod
    def _async_driver(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        url = value.get_secret_value()
        if url.startswith(("postgresql://", "postgres://")):
            url = "postgresql+asyncpg://" + url.split("://", 1)[1]
        elif url.startswith("sqlite:///"):
            url = "sqlite+aiosqlite:///" + url.split(":///", 1)[1]
        if not url.startswith(("postgresql+asyncpg://", "sqlite+aiosqlite://")):
            raise ValueError(
                "database URL must be postgresql(+asyncpg):// or sqlite(+aiosqlite)://"
            )
        return SecretStr(url)

    @property
    def url(self) -> str:
        """The runtime database URL (secret; never log it)."""
        return self.database_url.get_secret_value()

    @property
    def admin_url(self) -> str:
        """The owner URL used by migrations; defaults to the runtime URL."""
        admin = self.admin_database_url or self.database_url
        return admin.get_secret_value()

    @property
    def is_postgres(self) -> bool:
        return self.url.startswith("postgresql")
