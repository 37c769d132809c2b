"""The library's exception hierarchy.

Every failure a caller can act on has a type here; driver and SQLAlchemy errors are mapped
in one place (:func:`healthdb.internal.retry.translate`) so callers never import them.
Messages never contain PHI, SQL parameters or connection secrets.
"""

from __future__ import annotations


class HealthdbError(Exception):
    """Base class for every error raised by healthdb."""

    code = "healthdb_error"


class InvalidInput(HealthdbError, ValueError):
    """An argument has the wrong type, shape or size."""

    code = "invalid_input"


class ClinicContextRequired(HealthdbError):
    """A tenant table was touched outside a clinic scope (fail closed)."""

    code = "clinic_context_required"


class UnsafeDatabaseRole(HealthdbError):
    """The service refuses to run on PostgreSQL: its role could bypass row-level security
    (superuser, BYPASSRLS, owner of a tenant table), or a tenant table lacks forced RLS or
    its clinic policy. The message names the failed check; it never contains secrets."""

    code = "unsafe_database_role"


class UnsafeStatement(HealthdbError):
    """A statement was refused before reaching the database: Core SQL or ``text()`` on a
    tenant table outside the ORM wall, or raw SQL (``execute_raw``) that fails the SQL guard
    (several statements, comments, inline literals, DDL, writes in a read-only call). The
    message names the rule; it never echoes the SQL or its parameters."""

    code = "unsafe_statement"


class ServiceClosed(HealthdbError):
    """The DatabaseService was closed, or is draining for shutdown."""

    code = "service_closed"


class NotFound(HealthdbError):
    """The row does not exist, or exists in another clinic (indistinguishable by design)."""

    code = "not_found"


class ConflictError(HealthdbError):
    """Optimistic-lock conflict that outlived its retries, or a uniqueness violation."""

    code = "conflict"


class DatabaseUnavailable(HealthdbError):
    """The database could not be reached or refused work; safe to retry later."""

    code = "database_unavailable"

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PoolTimeout(DatabaseUnavailable):
    """No pooled connection became free within ``pool_timeout``."""

    code = "pool_timeout"


class QueryTimeout(DatabaseUnavailable):
    """A statement or lock wait exceeded its configured bound."""

    code = "query_timeout"


class TransientError(DatabaseUnavailable):
    """Serialization failure or deadlock that outlived its retries."""

    code = "transient_error"


class IntegrityViolation(HealthdbError):
    """A constraint (foreign key, check, not-null) rejected the write."""

    code = "integrity_violation"


class DatabaseError(HealthdbError):
    """Any other database failure; details stay in the logs, redacted."""

    code = "database_error"


class RateLimited(HealthdbError):
    """The clinic's request budget is exhausted; retry after ``retry_after`` seconds."""

    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class EncryptionError(HealthdbError):
    """Encrypted PHI could not be sealed or opened: a bad key, a malformed or tampered value,
    or an attempt to store a masked value. Never carries the value."""

    code = "encryption_error"


class EncryptionKeyMissing(EncryptionError):
    """No keyring is configured for this call, or a stored value names a key it lacks."""

    code = "encryption_key_missing"


class AuditWriteFailed(HealthdbError):
    """The audit row of a PHI access could not be written, so the access is refused: the
    transaction is rolled back and a read returns nothing."""

    code = "audit_write_failed"


class PhiNotCacheable(HealthdbError):
    """A cached read loaded PHI. Every PHI read is audited, so PHI never enters the cache."""

    code = "phi_not_cacheable"
