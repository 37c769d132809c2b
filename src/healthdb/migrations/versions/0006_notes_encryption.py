"""Clinical notes encrypted at rest.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26

``patients.notes`` (already TEXT) now holds ``v1.<key id>.<AES-GCM data>`` tokens
(:mod:`healthdb.phi.crypto`, associated data ``patients.notes``), like the SSN since 0004.
Notes need no blind index: nothing searches them. Every note stored before this revision
is plaintext by construction, so every one is encrypted, whatever it looks like (a note may
well begin with ``v1.``), with the keyring the environment configures
(``HEALTHDB_PHI_KEYS`` or the key file). On PostgreSQL the owner walks each clinic with
``app.clinic_id`` set, because forced row-level security hides tenant rows from it
otherwise. Each clinic's notes are read in keyset-ordered batches so a large table is
never held in memory at once.

A frozen snapshot: never import the models here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_AAD = "patients.notes"
_BATCH = 500


def upgrade() -> None:
    bind = op.get_bind()
    postgres = bind.dialect.name == "postgresql"
    keyring: Any = None
    for (clinic_id,) in bind.execute(sa.text("SELECT id FROM clinics")).all():
        if postgres:
            bind.execute(
                sa.text("SELECT set_config('app.clinic_id', :c, true)"), {"c": str(clinic_id)}
            )
        after: Any = None
        while True:
            rows = _batch(bind, clinic_id, after)
            if not rows:
                break
            if keyring is None:
                from healthdb.phi.keys import keyring_for
                from healthdb.settings import Settings

                keyring = keyring_for(Settings())
            bind.execute(
                sa.text("UPDATE patients SET notes = :token WHERE id = :id"),
                [{"token": keyring.encrypt(note, aad=_AAD), "id": pid} for pid, note in rows],
            )
            after = rows[-1][0]
    if postgres:
        bind.execute(sa.text("SELECT set_config('app.clinic_id', '', true)"))


_FIRST = sa.text(
    "SELECT id, notes FROM patients WHERE clinic_id = :c AND notes IS NOT NULL ORDER BY id LIMIT :n"
)
_NEXT = sa.text(
    "SELECT id, notes FROM patients WHERE clinic_id = :c AND notes IS NOT NULL "
    "AND id > :after ORDER BY id LIMIT :n"
)


def _batch(bind: sa.Connection, clinic_id: Any, after: Any) -> Sequence[Any]:
    if after is None:
        return bind.execute(_FIRST, {"c": clinic_id, "n": _BATCH}).all()
    return bind.execute(_NEXT, {"c": clinic_id, "after": after, "n": _BATCH}).all()


def downgrade() -> None:
    # Decrypting back to plaintext is deliberately not automated: it would put every note
    # in the clear. Restore from a backup taken before 0006 instead.
    raise RuntimeError("0006 cannot be downgraded without decrypting every note")
