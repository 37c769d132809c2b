"""The raw-SQL escape hatch's preparation: guard, tenancy rule, parameter check, and the
operation that runs it (the facade adds scope, reason, logging and the chain)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import TextClause, text
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncSession

from healthdb.cache import table_tag
from healthdb.errors import InvalidInput, UnsafeStatement
from healthdb.execution_options import TRUSTED
from healthdb.internal import query_cache, sql_guard
from healthdb.models.base import Base, tenant_tables
from healthdb.phi.crypto import BLIND_INDEX_OF, EncryptedText
from healthdb.query.pipeline import Operation


@dataclass(frozen=True, slots=True)
class RawStatement:
    """A guarded statement, its bound values, and the cache tags a write invalidates."""

    statement: TextClause
    values: dict[str, object]
    written: frozenset[str]
    fingerprint: str
    kind: str


def prepare(
    sql: str,
    params: Mapping[str, object] | None,
    *,
    dialect: str,
    read_only: bool,
    clinic_id: uuid.UUID,
) -> RawStatement:
    """Refuse what the guard refuses; on SQLite (no database wall) refuse tenant tables."""
    values = _values(params)
    checked = sql_guard.check(sql, dialect=dialect, read_only=read_only)
    if checked.kind != "select":
        _refuse_sealed_writes(checked)
    tenant = set(tenant_tables())
    if dialect != "postgresql" and checked.tables & tenant:
        raise UnsafeStatement("raw SQL on tenant tables needs the PostgreSQL database wall")
    statement = text(sql)
    names = set(statement._bindparams)
    missing, extra = sorted(names - set(values)), sorted(set(values) - names)
    if missing or extra:
        raise InvalidInput(
            "raw SQL parameters do not match its :name placeholders "
            f"(missing: {', '.join(missing) or '-'}; unexpected: {', '.join(extra) or '-'})"
        )
    written = frozenset(
        table_tag(t, clinic_id if t in tenant else None)
        for t in (checked.tables if checked.kind != "select" else ())
    )
    return RawStatement(statement, values, written, checked.fingerprint, checked.kind)


def _sealed_columns(tables: frozenset[str]) -> frozenset[str]:
    """Encrypted columns and blind indexes of ``tables``: only the ORM column types can
    write them (raw SQL would store plaintext, or an index that finds nothing)."""
    found: set[str] = set()
    for mapper in Base.registry.mappers:
        table = mapper.local_table
        if str(getattr(table, "name", "")).lower() not in tables:
            continue
        for column in table.columns:
            if isinstance(column.type, EncryptedText) or BLIND_INDEX_OF in column.info:
                found.add(column.name.lower())
    return frozenset(found)


def _refuse_sealed_writes(checked: sql_guard.CheckedSql) -> None:
    sealed = _sealed_columns(checked.tables)
    hit = sorted(checked.columns & sealed)
    if hit or (sealed and checked.whole_rows):
        name = hit[0] if hit else "every column (no column list)"
        raise UnsafeStatement(
            f"raw SQL refused: a write naming encrypted column {name!r} could store "
            "plaintext; write encrypted columns through the ORM"
        )


def operation(raw: RawStatement) -> Operation[list[dict[str, object]]]:
    """The unit of work: run the trusted statement, return rows as dicts."""

    async def op(session: AsyncSession) -> list[dict[str, object]]:
        if raw.written:
            query_cache.written_tags(session.sync_session).update(raw.written)
        result = await session.execute(raw.statement, raw.values, execution_options=TRUSTED)
        if not isinstance(result, CursorResult) or not result.returns_rows:
            return []
        return [dict(row) for row in result.mappings()]

    return op


def _values(params: Mapping[str, object] | None) -> dict[str, object]:
    if params is None:
        return {}
    if not isinstance(params, Mapping) or not all(isinstance(k, str) for k in params):
        raise InvalidInput("raw SQL parameters must be a mapping of names to values")
    return dict(params)
