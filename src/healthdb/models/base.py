"""Declarative base, column types and mixins shared by every model."""

from __future__ import annotations

import datetime as dt
import os
import uuid
from typing import Any, ClassVar

from sqlalchemy import DateTime, MetaData, TypeDecorator, Uuid, func
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, declared_attr, mapped_column

from healthdb.errors import InvalidInput

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware timestamps on every backend (SQLite stores them naive, in UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: pass a timezone-aware value")
        try:
            return value.astimezone(dt.UTC)
        except OverflowError:
            # 9999-12-31T23:00-05:00 is year 10000 in UTC: no backend can hold it. A typed
            # error (translated once, like every other) rather than a driver failure.
            raise InvalidInput("a timestamp must fall within years 1-9999 in UTC") from None

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = dt.datetime.fromisoformat(value)
        stamp: dt.datetime = value
        if stamp.tzinfo is None:
            return stamp.replace(tzinfo=dt.UTC)
        return stamp.astimezone(dt.UTC)


class Base(DeclarativeBase):
    """Root of every mapped class."""

    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        uuid.UUID: Uuid(as_uuid=True),
        dt.datetime: UTCDateTime(),
    }


class Timestamped:
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow, server_default=func.now())
    updated_at: Mapped[dt.datetime] = mapped_column(
        default=utcnow, onupdate=utcnow, server_default=func.now()
    )


class Tenant:
    """Marks a table as clinic-owned: every row carries an indexed ``clinic_id``.

    The isolation walls find tenant tables through this mixin; nothing else opts in.
    """

    __tenant__: ClassVar[bool] = True

    @declared_attr
    def clinic_id(cls) -> Mapped[uuid.UUID]:
        from sqlalchemy import ForeignKey

        return mapped_column(ForeignKey("clinics.id", ondelete="RESTRICT"), index=True)


def is_tenant(entity: object) -> bool:
    """True for tenant mapped classes (and their instances)."""
    return bool(getattr(entity, "__tenant__", False))


def new_id() -> uuid.UUID:
    return uuid.uuid4()


def new_ids(count: int) -> list[uuid.UUID]:
    """``count`` random (version 4) UUIDs from one read of the OS's randomness: ``uuid4``
    reads it once per id, a system call each, which a bulk insert felt."""
    raw = os.urandom(16 * count)
    return [
        uuid.UUID(int=(int.from_bytes(raw[i : i + 16]) & _CLEAR) | _VERSION_4)
        for i in range(0, 16 * count, 16)
    ]


# What uuid.UUID(..., version=4) does to 128 random bits: RFC 4122 variant, version 4.
_CLEAR = ~((0xC000 << 48) | (0xF000 << 64)) & ((1 << 128) - 1)
_VERSION_4 = (0x8000 << 48) | (4 << 76)


def tenant_tables() -> tuple[str, ...]:
    """Names of every tenant table (models mixing in :class:`Tenant`), sorted."""
    return tuple(
        sorted(
            str(mapper.local_table.name)  # type: ignore[attr-defined]
            for mapper in Base.registry.mappers
            if is_tenant(mapper.class_)
        )
    )
