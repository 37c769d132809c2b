"""healthdb: an asyncio database layer for multi-tenant healthcare services.

The public API is exactly ``__all__``; ``healthdb.internal`` and the pipeline machinery in
``healthdb.query`` are implementation details.
"""

from healthdb.context import ClinicScope, Role, as_uuid, current_scope
from healthdb.errors import (
    AuditWriteFailed,
    ClinicContextRequired,
    ConflictError,
    DatabaseError,
    DatabaseUnavailable,
    EncryptionError,
    EncryptionKeyMissing,
    HealthdbError,
    IntegrityViolation,
    InvalidInput,
    NotFound,
    PhiNotCacheable,
    PoolTimeout,
    QueryTimeout,
    RateLimited,
    ServiceClosed,
    TransientError,
    UnsafeDatabaseRole,
    UnsafeStatement,
)
from healthdb.health import HealthReport, PoolStatus
from healthdb.query import keys
from healthdb.query.batch import BatchFailure, BatchResult
from healthdb.query.keys import CacheKey
from healthdb.query.options import IsolationLevel, QueryOptions, TransactionOptions
from healthdb.service import DatabaseService
from healthdb.settings import Settings
from healthdb.view import Read, View

__all__ = [
    "AuditWriteFailed",
    "BatchFailure",
    "BatchResult",
    "CacheKey",
    "ClinicContextRequired",
    "ClinicScope",
    "ConflictError",
    "DatabaseError",
    "DatabaseService",
    "DatabaseUnavailable",
    "EncryptionError",
    "EncryptionKeyMissing",
    "HealthReport",
    "HealthdbError",
    "IntegrityViolation",
    "InvalidInput",
    "IsolationLevel",
    "NotFound",
    "PhiNotCacheable",
    "PoolStatus",
    "PoolTimeout",
    "QueryOptions",
    "QueryTimeout",
    "RateLimited",
    "Read",
    "Role",
    "ServiceClosed",
    "Settings",
    "TransactionOptions",
    "TransientError",
    "UnsafeDatabaseRole",
    "UnsafeStatement",
    "View",
    "as_uuid",
    "current_scope",
    "keys",
]
