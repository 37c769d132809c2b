"""The generic :class:`Repository`: typed CRUD and keyset pagination over one model.

Repositories never add clinic filters: the isolation walls (session events installed by
the service) do that to every ORM statement. In return, repositories only ever issue ORM
``select(Model)`` statements and unit-of-work flushes, which the walls can see and scope.
"""

from __future__ import annotations

import builtins
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

from sqlalchemy import ColumnElement, Select, TypeDecorator, and_, func, inspect, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import ColumnProperty, InstrumentedAttribute, QueryableAttribute
from sqlalchemy.orm.exc import StaleDataError
from sqlalchemy.types import TypeEngine

from healthdb.context import as_uuid
from healthdb.errors import ConflictError, IntegrityViolation, InvalidInput, NotFound
from healthdb.internal import phi_access
from healthdb.models import Base
from healthdb.repositories.pagination import (
    DEFAULT_LIMIT,
    Cursor,
    Page,
    check_limit,
    decode_cursor,
    encode_cursor,
)

M = TypeVar("M", bound=Base)

#: ``get_many`` refuses more ids than this: bounded work per call, and far below the
#: bind-parameter limits of SQLite and asyncpg.
MAX_IDS = 1000

# SQLite extended result codes for UNIQUE and PRIMARY KEY constraint failures.
_SQLITE_UNIQUE_CODES = frozenset({2067, 1555})
_PG_UNIQUE_VIOLATION = "23505"


@dataclass(frozen=True, slots=True)
class _ModelInfo:
    """What a repository needs to know about its model, derived once from the mapper.

    Kept in one object rather than as class attributes because mapped attributes are
    descriptors: on a repository class they would try to bind to the repository instance.
    """

    id: QueryableAttribute[Any]
    deleted_at: QueryableAttribute[Any] | None
    version_key: str | None
    columns: frozenset[str]
    sort_types: Mapping[str, type[Any]]

    @classmethod
    def of(cls, model: type[Base], sort_types: Mapping[str, type[Any]]) -> _ModelInfo:
        mapper = inspect(model)
        if len(mapper.primary_key) != 1:
            raise TypeError(f"{model.__name__}: only single-column primary keys are supported")
        deleted = mapper.column_attrs.get("deleted_at")
        version_col = mapper.version_id_col
        return cls(
            id=mapper.get_property_by_column(mapper.primary_key[0]).class_attribute,
            deleted_at=None if deleted is None else deleted.class_attribute,
            version_key=(
                None if version_col is None else mapper.get_property_by_column(version_col).key
            ),
            columns=frozenset(p.key for p in mapper.column_attrs),
            sort_types=sort_types,
        )


class Repository(Generic[M]):
    """Data access for one mapped class.

    Subclasses set ``model`` and ``sortable`` (the allow-list of sort fields; user input
    is looked up there and never reaches SQL as an identifier).
    """

    model: type[M]
    sortable: ClassVar[Mapping[str, InstrumentedAttribute[Any]]] = {}
    #: Columns ``update`` refuses to touch: identity, tenancy and bookkeeping.
    immutable: ClassVar[frozenset[str]] = frozenset(
        {"id", "clinic_id", "version", "created_at", "updated_at", "deleted_at"}
    )

    _info: ClassVar[_ModelInfo]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "model" not in cls.__dict__:
            return  # an intermediate base without a model
        sort_types: dict[str, type[Any]] = {}
        for name, attr in cls.sortable.items():
            prop = attr.property
            if not isinstance(prop, ColumnProperty) or attr.class_ is not cls.model:
                raise TypeError(f"{cls.__name__}.sortable[{name!r}] is not a column of the model")
            column = prop.columns[0]
            # Keyset comparisons cannot step over NULLs; only NOT NULL columns may sort.
            if getattr(column, "nullable", True):
                raise TypeError(f"{cls.__name__}.sortable[{name!r}] must be NOT NULL")
            sort_types[name] = _python_type(column.type)
        cls._info = _ModelInfo.of(cls.model, sort_types)

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    @classmethod
    def sort_type(cls, sort: str) -> type[Any]:
        """The Python type of a sortable field's values (what its cursors carry)."""
        if sort not in cls._info.sort_types:
            raise InvalidInput(f"unknown sort field: {sort}")
        return cls._info.sort_types[sort]

    # -- reads ---------------------------------------------------------------------------

    async def get(self, id: uuid.UUID | str) -> M | None:
        """The row with this id, or ``None`` (also for soft-deleted rows)."""
        stmt = self._select().where(self._info.id == as_uuid(id))
        return (await self.session.scalars(stmt)).one_or_none()

    async def get_many(self, ids: Iterable[uuid.UUID | str]) -> builtins.list[M]:
        """The visible rows among ``ids``, in the order given; missing ids are skipped."""
        wanted = list(dict.fromkeys(as_uuid(i) for i in ids))
        if len(wanted) > MAX_IDS:
            raise InvalidInput(f"at most {MAX_IDS} ids per call")
        if not wanted:
            return []
        rows = (await self.session.scalars(self._select().where(self._info.id.in_(wanted)))).all()
        by_id = {self._key_of(row): row for row in rows}
        return [by_id[i] for i in wanted if i in by_id]

    async def list(
        self,
        *,
        cursor: str | None = None,
        limit: int = DEFAULT_LIMIT,
        sort: str = "created_at",
        descending: bool = False,
        where: Sequence[ColumnElement[bool]] = (),
    ) -> Page[M]:
        """One page ordered by (``sort``, id); ``where`` adds caller-built ORM criteria."""
        limit = check_limit(limit)
        column = self._sort_column(sort)
        stmt = self._select().where(*where)
        if cursor is not None:
            position = decode_cursor(
                cursor, sort=sort, descending=descending, key_type=self._info.sort_types[sort]
            )
            stmt = stmt.where(self._after(column, position))
        if descending:
            stmt = stmt.order_by(column.desc(), self._info.id.desc())
        else:
            stmt = stmt.order_by(column.asc(), self._info.id.asc())
        # One extra row tells whether another page exists, without a COUNT.
        recorded = phi_access.mark(self.session.sync_session)
        rows = list((await self.session.scalars(stmt.limit(limit + 1))).all())
        if len(rows) <= limit:
            return Page(items=rows, next_cursor=None)
        # The look-ahead row is never returned: it was not disclosed, so it is not audited.
        phi_access.forget_since(self.session.sync_session, recorded, rows[limit:])
        rows = rows[:limit]
        last = rows[-1]
        token = encode_cursor(
            Cursor(sort, descending, getattr(last, column.key), self._key_of(last))
        )
        return Page(items=rows, next_cursor=token)

    async def count(self, where: Sequence[ColumnElement[bool]] = ()) -> int:
        """How many visible rows match ``where``."""
        stmt = select(func.count()).select_from(self.model).where(*self._visible(), *where)
        return int((await self.session.execute(stmt)).scalar_one())

    # -- writes --------------------------------------------------------------------------

    async def add(self, obj: M) -> M:
        """Insert ``obj`` and flush, so defaults and the primary key are populated.

        A uniqueness violation raises :class:`ConflictError`; the session stays usable.
        """
        if not isinstance(obj, self.model):
            raise InvalidInput(f"expected a {self.model.__name__}")
        async with self._guarded():
            self.session.add(obj)
        return obj

    async def update(
        self, id: uuid.UUID | str, /, *, expected_version: int | None, **changes: Any
    ) -> M:
        """Apply ``changes`` (column name → value) to the row and flush.

        ``expected_version`` is the version the caller last read (``None`` skips the check);
        a mismatch raises :class:`ConflictError`, as does losing a race to a concurrent
        writer at flush time (the version column guards the UPDATE itself).
        """
        self._check_changes(changes)
        obj = await self._load_for_write(id, expected_version)
        await self._apply(obj, changes)
        return obj

    async def soft_delete(
        self, id: uuid.UUID | str, *, expected_version: int | None = None
    ) -> None:
        """Hide the row (set ``deleted_at``); models without ``deleted_at`` are deleted."""
        obj = await self._load_for_write(id, expected_version)
        async with self._guarded():
            if self._info.deleted_at is not None:
                setattr(obj, self._info.deleted_at.key, dt.datetime.now(dt.UTC))
            else:
                await self.session.delete(obj)

    # -- helpers for subclasses ----------------------------------------------------------

    def _select(self) -> Select[M]:
        """``select(model)`` with soft-deleted rows hidden; build every read on this."""
        return select(self.model).where(*self._visible())

    def _visible(self) -> builtins.list[ColumnElement[bool]]:
        return [] if self._info.deleted_at is None else [self._info.deleted_at.is_(None)]

    def _sort_column(self, sort: str) -> InstrumentedAttribute[Any]:
        column = self.sortable.get(sort) if isinstance(sort, str) else None
        if column is None:
            allowed = ", ".join(sorted(self.sortable))
            raise InvalidInput(f"unknown sort field; allowed: {allowed}")
        return column

    def _after(self, column: InstrumentedAttribute[Any], position: Cursor) -> ColumnElement[bool]:
        # Spelled out rather than a row-value comparison so both backends can use the
        # (sort column, id) ordering and the planner sees plain column predicates.
        if position.descending:
            return or_(
                column < position.key, and_(column == position.key, self._info.id < position.id)
            )
        return or_(column > position.key, and_(column == position.key, self._info.id > position.id))

    def _key_of(self, obj: M) -> uuid.UUID:
        value: uuid.UUID = getattr(obj, self._info.id.key)
        return value

    def _check_changes(self, changes: Mapping[str, Any]) -> None:
        unknown = sorted(set(changes) - self._info.columns)
        if unknown:
            raise InvalidInput(f"unknown field(s): {', '.join(unknown)}")
        frozen = sorted(set(changes) & self.immutable)
        if frozen:
            raise InvalidInput(f"field(s) cannot be changed: {', '.join(frozen)}")

    async def _load_for_write(self, id: uuid.UUID | str, expected_version: int | None) -> M:
        if expected_version is not None and self._info.version_key is None:
            raise InvalidInput(f"{self.model.__name__} has no version to check")
        # populate_existing: compare against the database, not a stale identity-map copy.
        stmt = self._select().where(self._info.id == as_uuid(id))
        obj = (
            await self.session.scalars(stmt.execution_options(populate_existing=True))
        ).one_or_none()
        if obj is None:
            raise NotFound(f"{self.model.__name__} not found")
        if expected_version is not None and getattr(obj, self._info.version_key or "") != (
            expected_version
        ):
            raise ConflictError(f"{self.model.__name__} was modified by someone else")
        return obj

    async def _apply(self, obj: M, changes: Mapping[str, Any]) -> None:
        """Set already-checked ``changes`` on a loaded row and flush (no-op when empty)."""
        if changes:
            async with self._guarded():
                for key, value in changes.items():
                    setattr(obj, key, value)

    @asynccontextmanager
    async def _guarded(self) -> AsyncIterator[None]:
        """Run a write in a SAVEPOINT and flush it, mapping constraint failures.

        The savepoint keeps the caller's transaction usable after a conflict. Exceptions
        are re-raised ``from None``: driver messages quote the offending values (PHI).
        """
        name = self.model.__name__
        try:
            async with self.session.begin_nested():
                yield
                await self.session.flush()
        except StaleDataError:
            raise ConflictError(f"{name} was modified by someone else") from None
        except IntegrityError as exc:
            if _is_unique_violation(exc):
                raise ConflictError(f"{name} conflicts with an existing row") from None
            raise IntegrityViolation(f"{name} write rejected by a constraint") from None


def _python_type(sql_type: TypeEngine[Any]) -> type[Any]:
    # TypeDecorator.python_type is ``object``; the wrapped type knows the real one.
    while isinstance(sql_type, TypeDecorator):
        sql_type = sql_type.impl_instance
    return sql_type.python_type


def _is_unique_violation(exc: IntegrityError) -> bool:
    orig = exc.orig
    sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if sqlstate is not None:
        return bool(sqlstate == _PG_UNIQUE_VIOLATION)
    code = getattr(orig, "sqlite_errorcode", None)
    if code is not None:
        return code in _SQLITE_UNIQUE_CODES
    return "unique" in str(orig).lower()
