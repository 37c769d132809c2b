"""Library errors map to HTTP statuses in one place."""

from __future__ import annotations

import pytest

from healthdb import (
    AuditWriteFailed,
    ConflictError,
    HealthdbError,
    InvalidInput,
    NotFound,
    PhiNotCacheable,
)
from healthdb_api.errors import _status_for


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (InvalidInput("x"), 422),
        (NotFound("x"), 404),
        (ConflictError("x"), 409),
        # The read or write was rolled back with its audit row: retry later, nothing leaked.
        (AuditWriteFailed("x"), 503),
        # A programming error in the caller (caching PHI), not the client's fault.
        (PhiNotCacheable("x"), 500),
    ],
)
def test_status_of_library_errors(error: HealthdbError, status: int) -> None:
    assert _status_for(error) == status
