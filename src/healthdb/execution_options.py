"""The library's private execution options, understood by both clinic walls.

They live below ``internal/`` so that the walls (:mod:`healthdb.internal.isolation`,
:mod:`healthdb.internal.connection_wall`) and the library's own statement builders (the
audit chain, bulk insert, the raw-SQL escape hatch) share them without importing each other.
Not part of the public API: callers must never set them.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

TRUSTED_OPTION = "healthdb_trusted"
#: ``execute(stmt, execution_options=TRUSTED)`` or ``stmt.execution_options(**TRUSTED)``: a
#: statement of the library's own, checked where it was built. It is exempt from the walls'
#: Core/text check, never from the ORM criteria nor from row-level security.
TRUSTED: Mapping[str, Any] = MappingProxyType({TRUSTED_OPTION: True})

#: Set by the ORM wall on every statement it scoped: the connection wall lets those pass.
WALLED_OPTION = "healthdb_walled"


def is_trusted(options: Mapping[str, Any]) -> bool:
    """Whether a statement's execution options carry :data:`TRUSTED`."""
    return bool(options.get(TRUSTED_OPTION))
