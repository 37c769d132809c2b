"""Blind-index values name their index key, so the index key can rotate.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26

``patients.ssn_index`` widens to 80 characters and each stored value becomes
``<index key id>.<hex HMAC>`` (:func:`healthdb.phi.crypto.index_key_id`). The values stored
before this revision were all computed under the index key the environment configures now
(``HEALTHDB_PHI_INDEX_KEY`` or the key file; there was no way to rotate it), so each gets
that key's id in front; nothing is decrypted. On PostgreSQL the owner walks each clinic with
``app.clinic_id`` set, because forced row-level security hides tenant rows from it
otherwise.

A frozen snapshot: never import the models here.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_UNPREFIXED = "ssn_index IS NOT NULL AND ssn_index NOT LIKE '%.%'"


def upgrade() -> None:
    with op.batch_alter_table("patients") as batch:
        batch.alter_column("ssn_index", type_=sa.String(80), existing_type=sa.String(64))
    bind = op.get_bind()
    postgres = bind.dialect.name == "postgresql"
    key_id: str | None = None
    for (clinic_id,) in bind.execute(sa.text("SELECT id FROM clinics")).all():
        if postgres:
            bind.execute(
                sa.text("SELECT set_config('app.clinic_id', :c, true)"), {"c": str(clinic_id)}
            )
        pending = bind.execute(
            sa.text(f"SELECT 1 FROM patients WHERE clinic_id = :c AND {_UNPREFIXED} LIMIT 1"),  # noqa: S608
            {"c": clinic_id},
        ).first()
        if pending is None:
            continue
        if key_id is None:
            from healthdb.phi.keys import keyring_for
            from healthdb.settings import Settings

            key_id = keyring_for(Settings()).index_id
        bind.execute(
            sa.text(
                f"UPDATE patients SET ssn_index = :prefix || ssn_index "  # noqa: S608
                f"WHERE clinic_id = :c AND {_UNPREFIXED}"
            ),
            {"prefix": f"{key_id}.", "c": clinic_id},
        )
    if postgres:
        bind.execute(sa.text("SELECT set_config('app.clinic_id', '', true)"))


def downgrade() -> None:
    # Like 0004 and 0006: restore from a backup taken before the upgrade instead.
    raise RuntimeError("0007 cannot be downgraded; restore from a backup taken before it")
