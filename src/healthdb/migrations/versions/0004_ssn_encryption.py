"""SSN encrypted at rest, with an HMAC blind index.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28

``patients.ssn`` becomes TEXT holding ``v1.<key id>.<AES-GCM data>`` tokens
(:mod:`healthdb.phi.crypto`), and ``patients.ssn_index`` holds the HMAC-SHA256 of the
normalised SSN for exact lookups, indexed per clinic. SSNs already stored in plaintext are
encrypted here with the keyring the environment configures (``HEALTHDB_PHI_KEYS`` or the
key file); on PostgreSQL the owner walks each clinic with ``app.clinic_id`` set, because
forced row-level security hides tenant rows from it otherwise.

A frozen snapshot: never import the models here.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_AAD = "patients.ssn"


def upgrade() -> None:
    with op.batch_alter_table("patients") as batch:
        batch.alter_column("ssn", type_=sa.Text(), existing_type=sa.String(64))
        batch.add_column(sa.Column("ssn_index", sa.String(length=64), nullable=True))
        batch.create_index("ix_patients_clinic_id_ssn_index", ["clinic_id", "ssn_index"])
    _encrypt_plaintext()


def _encrypt_plaintext() -> None:
    bind = op.get_bind()
    postgres = bind.dialect.name == "postgresql"
    keyring = None
    for (clinic_id,) in bind.execute(sa.text("SELECT id FROM clinics")).all():
        if postgres:
            bind.execute(
                sa.text("SELECT set_config('app.clinic_id', :c, true)"), {"c": str(clinic_id)}
            )
        rows = bind.execute(
            sa.text(
                "SELECT id, ssn FROM patients WHERE clinic_id = :c AND ssn IS NOT NULL "
                "AND ssn NOT LIKE 'v1.%'"
            ),
            {"c": clinic_id},
        ).all()
        if rows and keyring is None:
            from healthdb.phi.keys import keyring_for
            from healthdb.settings import Settings

            keyring = keyring_for(Settings())
        for patient_id, ssn in rows:
            bind.execute(
                sa.text("UPDATE patients SET ssn = :token, ssn_index = :bidx WHERE id = :id"),
                {
                    "token": keyring.encrypt(ssn, aad=_AAD),  # type: ignore[union-attr]
                    # The bare digest fits this revision's 64-character column; 0007 prefixes
                    # the index key id.
                    "bidx": keyring.index_digest(ssn),  # type: ignore[union-attr]
                    "id": patient_id,
                },
            )
    if postgres:
        bind.execute(sa.text("SELECT set_config('app.clinic_id', '', true)"))


def downgrade() -> None:
    # Decrypting back to plaintext is deliberately not automated: it would put every SSN
    # in the clear. Restore from a backup taken before 0004 instead.
    raise RuntimeError("0004 cannot be downgraded without decrypting every SSN")
