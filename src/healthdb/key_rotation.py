"""Key rotation for encrypted PHI columns: re-encrypt every value not under the active key.

Design: the rotation reads and writes only the encrypted columns, never whole rows.

* Each batch is one ``execute_transaction`` in a clinic scope (role ``doctor``, purpose
  ``key_rotation``), so on PostgreSQL it runs as the runtime role under row-level security
  and needs no superuser; the ORM wall scopes every statement to the clinic as usual.
* A batch selects ``(id, value)`` of one encrypted column (``patients.ssn``, then
  ``patients.notes``) for rows whose stored token does not start with ``v1.<active>.`` or
  whose blind index is not under the current index key, keyset-ordered by id, ``FOR
  UPDATE`` (pessimistic lock; SQLite writes are serialised by ``BEGIN IMMEDIATE``), so a
  concurrent edit can never be overwritten by the old plaintext. The filter reads the raw
  token through ``type_coerce(..., Text)`` (no decryption); the selected attribute is
  decrypted by its column type as usual.
* It writes back with an ORM UPDATE per row: the column type encrypts under the active
  key and the blind index is recomputed. ``version`` and ``updated_at`` are
  kept: the value did not change, so optimistic writers see no spurious conflict.
* Every batch commits on its own. An interruption loses nothing (a batch is all or
  nothing) and a re-run resumes, since it selects only values still under an old key.
  Soft-deleted rows are re-encrypted too, or the old key could never be retired.

Auditing: the unit of work records one ``phi.read`` (the column's field, no row id)
and one ``phi.update`` per batch and clinic, attributed to purpose ``key_rotation``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, Text, and_, func, or_, select, type_coerce, update
from sqlalchemy.ext.asyncio import AsyncSession

from healthdb.context import as_uuid
from healthdb.errors import InvalidInput
from healthdb.models import Base, Clinic, is_tenant
from healthdb.phi.crypto import BLIND_INDEX_OF, VERSION, EncryptedText, Keyring
from healthdb.query.options import QueryOptions, TransactionOptions
from healthdb.service import DatabaseService

__all__ = [
    "STALE_INDEX",
    "UNKNOWN_KEY",
    "EncryptedColumn",
    "RotationReport",
    "encrypted_columns",
    "rotate",
    "status",
]

#: ``status`` counts values that no key of the keyring names (or plaintext) under this id;
#: it is not a valid key id, so it never collides with one.
UNKNOWN_KEY = "?"
#: ``status`` counts, under this id, values under the active key whose blind index was
#: computed with a previous index key (not a valid key id either).
STALE_INDEX = "index:previous"
PURPOSE = "key_rotation"
MAX_BATCH = 10_000

#: ``on_progress(done, total)``: values re-encrypted so far, and the total found at start.
Progress = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class EncryptedColumn:
    """One encrypted attribute of a tenant model, and the blind index that follows it."""

    model: type[Base]
    key: str
    index_key: str | None
    id_key: str

    @property
    def token(self) -> ColumnElement[str]:
        """The stored token as plain text: selected this way, nothing is decrypted."""
        return type_coerce(getattr(self.model, self.key), Text)


@dataclass(slots=True)
class RotationReport:
    """What a :func:`rotate` run did: the per-key counts it found, the values it
    re-encrypted, in how many batches, and how many clinics had values to re-encrypt."""

    active: str
    before: dict[str, int] = field(default_factory=dict)
    rotated: int = 0
    batches: int = 0
    clinics: int = 0

    @property
    def total(self) -> int:
        """Values that were not under the active key (or were indexed under a previous
        index key) when the run started."""
        return sum(n for key_id, n in self.before.items() if key_id != self.active)


def encrypted_columns() -> list[EncryptedColumn]:
    """Every :class:`EncryptedText` column of the mapped models (today: ``patients.ssn``
    and ``patients.notes``)."""
    found: list[EncryptedColumn] = []
    for mapper in sorted(Base.registry.mappers, key=lambda m: m.class_.__name__):
        for prop in mapper.column_attrs:
            column = prop.columns[0]
            if not isinstance(column.type, EncryptedText):
                continue
            if not is_tenant(mapper.class_):
                # Rotation walks clinic by clinic; a shared table would need its own path.
                raise TypeError(f"{mapper.class_.__name__}.{prop.key}: only tenant tables")
            index = next(
                (c.key for c in mapper.columns if c.info.get(BLIND_INDEX_OF) == prop.key), None
            )
            pk = mapper.get_property_by_column(mapper.primary_key[0]).key
            found.append(EncryptedColumn(mapper.class_, prop.key, index, pk))
    return found


def _prefix(key_id: str) -> str:
    return f"{VERSION}.{key_id}."


def _starts_with(token: ColumnElement[str], prefix: str) -> ColumnElement[bool]:
    # substr rather than LIKE: key ids may contain "_", a LIKE wildcard.
    return func.substr(token, 1, len(prefix)) == prefix


def _stale_index(target: EncryptedColumn, keyring: Keyring) -> ColumnElement[bool]:
    """The blind index is set but not under the current index key."""
    index: ColumnElement[str] = getattr(target.model, str(target.index_key))
    return and_(index.is_not(None), ~_starts_with(index, f"{keyring.index_id}."))


async def _clinic_ids(
    db: DatabaseService, only: Sequence[uuid.UUID | str] | None
) -> list[uuid.UUID]:
    if only is not None:
        return list(dict.fromkeys(as_uuid(c, "clinic_ids") for c in only))

    async def read(session: AsyncSession) -> list[uuid.UUID]:
        return list((await session.scalars(select(Clinic.id).order_by(Clinic.id))).all())

    return await db.execute_read(read, QueryOptions.for_read("key_rotation_clinics"))


async def _count_clinic(db: DatabaseService, clinic_id: uuid.UUID) -> dict[str, int]:
    keyring = db.keyring

    async def count(session: AsyncSession) -> dict[str, int]:
        counts: dict[str, int] = {}
        for target in encrypted_columns():
            token = target.token
            # select_from(model), always: a FROM implied only by a function argument
            # (substr(...)) does not get the ORM wall's clinic criteria.
            base = select(func.count()).select_from(target.model)
            # Counting touches no PHI value, so nothing is decrypted or audited here.
            total_stmt = base.where(token.is_not(None))
            total = int((await session.execute(total_stmt)).scalar_one())
            known = 0
            for key_id in keyring.keys:
                stmt = base.where(_starts_with(token, _prefix(key_id)))
                n = int((await session.execute(stmt)).scalar_one())
                known += n
                counts[key_id] = counts.get(key_id, 0) + n
            if total > known:
                counts[UNKNOWN_KEY] = counts.get(UNKNOWN_KEY, 0) + total - known
            if target.index_key is not None:
                stale = base.where(
                    _starts_with(token, _prefix(keyring.active)), _stale_index(target, keyring)
                )
                n = int((await session.execute(stale)).scalar_one())
                if n:
                    counts[STALE_INDEX] = counts.get(STALE_INDEX, 0) + n
        return counts

    async with db.clinic(clinic_id, role="doctor", purpose=PURPOSE):
        return await db.execute_read(count, QueryOptions.for_read("key_status"))


def _add(into: dict[str, int], counts: dict[str, int]) -> None:
    for key_id, n in counts.items():
        into[key_id] = into.get(key_id, 0) + n


async def status(
    db: DatabaseService, *, clinic_ids: Sequence[uuid.UUID | str] | None = None
) -> dict[str, int]:
    """How many stored values each key id encrypts, over every clinic (or ``clinic_ids``).

    Every key of the keyring is listed (0 when unused); values under a key the keyring
    lacks, or not encrypted at all, are counted under :data:`UNKNOWN_KEY` when present, and
    values under the active key whose blind index still uses a previous index key under
    :data:`STALE_INDEX`.
    """
    totals: dict[str, int] = dict.fromkeys(db.keyring.keys, 0)
    for clinic_id in await _clinic_ids(db, clinic_ids):
        _add(totals, await _count_clinic(db, clinic_id))
    return totals


def _stale(target: EncryptedColumn, keyring: Keyring) -> ColumnElement[bool]:
    """Under an old key, or (when indexed) indexed under an old index key."""
    old_key = ~_starts_with(target.token, _prefix(keyring.active))
    if target.index_key is None:
        return old_key
    return or_(old_key, _stale_index(target, keyring))


def _batch_op(
    target: EncryptedColumn, keyring: Keyring, size: int, after: uuid.UUID | None
) -> Callable[[AsyncSession], Any]:
    """One batch: lock up to ``size`` stale values after id ``after``, re-encrypt them."""
    model = target.model
    id_attr = getattr(model, target.id_key)
    # Without this, updated_at's onupdate would stamp rows whose content did not change.
    keep = {"updated_at": model.updated_at} if hasattr(model, "updated_at") else {}

    async def run(session: AsyncSession) -> tuple[int, uuid.UUID | None]:
        token = target.token
        # The attribute itself is selected, so the column type decrypts it (raising
        # EncryptionKeyMissing for a key the keyring lacks: fail, never skip) and the PHI
        # recorder audits the read; the raw token only filters.
        stmt = (
            select(id_attr, getattr(model, target.key))
            .select_from(model)
            .where(token.is_not(None), _stale(target, keyring))
            .order_by(id_attr)
            .limit(size)
        )
        if after is not None:
            stmt = stmt.where(id_attr > after)
        rows = (await session.execute(stmt)).all()
        if not rows:
            return 0, None
        for row_id, plain in rows:
            values: dict[str, Any] = {target.key: plain, **keep}
            if target.index_key is not None:
                values[target.index_key] = keyring.blind_index(plain)
            # One ORM UPDATE per row (the wall scopes it): a bulk UPDATE by primary key
            # would insist on bumping the version column.
            write = update(model).where(id_attr == row_id).values(values)
            await session.execute(write, execution_options={"synchronize_session": False})
        return len(rows), rows[-1][0]

    return run


async def rotate(
    db: DatabaseService,
    *,
    batch_size: int = 500,
    on_progress: Progress | None = None,
    clinic_ids: Sequence[uuid.UUID | str] | None = None,
) -> RotationReport:
    """Re-encrypt every value not under the active key, clinic by clinic (every clinic, or
    ``clinic_ids``), batch by batch.

    Each batch is its own transaction; ``on_progress(done, total)`` is called after each
    commit (an exception it raises stops the run, keeping every committed batch). Re-running
    after an interruption resumes where it stopped. Raises
    :class:`~healthdb.errors.EncryptionKeyMissing` for a value under a key the keyring lacks.
    """
    if not isinstance(batch_size, int) or not 1 <= batch_size <= MAX_BATCH:
        raise InvalidInput(f"batch_size must be an int in 1..{MAX_BATCH}")
    keyring = db.keyring
    report = RotationReport(active=keyring.active, before=dict.fromkeys(keyring.keys, 0))
    clinics = await _clinic_ids(db, clinic_ids)
    pending: list[uuid.UUID] = []
    for clinic_id in clinics:
        counts = await _count_clinic(db, clinic_id)
        _add(report.before, counts)
        if any(n for key_id, n in counts.items() if key_id != keyring.active):
            pending.append(clinic_id)
    if on_progress is not None:
        on_progress(0, report.total)
    options = TransactionOptions.pessimistic().named("key_rotation")
    for clinic_id in pending:
        report.clinics += 1
        for target in encrypted_columns():
            after: uuid.UUID | None = None
            while True:
                op = _batch_op(target, keyring, batch_size, after)
                async with db.clinic(clinic_id, role="doctor", purpose=PURPOSE):
                    n, after = await db.execute_transaction(op, options)
                if n == 0:
                    break
                report.rotated += n
                report.batches += 1
                if on_progress is not None:
                    on_progress(report.rotated, report.total)
                if n < batch_size:
                    break
    return report
