"""The audit hash chain: each clinic's chain, in lanes, appended in the caller's transaction
(:mod:`.append`, for writes) or by this process's group-commit writer (:mod:`.writer`, for
reads). :mod:`.chain` holds the sealing arithmetic, :mod:`.lanes` the lane locks and heads.
"""

from healthdb.internal.audit.append import append, append_many, append_rows, fill_rows
from healthdb.internal.audit.chain import GENESIS_HASH, SEALED, clinic_lock_key, row_hash
from healthdb.internal.audit.lanes import LANE_SETTING, LaneClaim, claim_lane, release_lane

__all__ = [
    "GENESIS_HASH",
    "LANE_SETTING",
    "SEALED",
    "LaneClaim",
    "append",
    "append_many",
    "append_rows",
    "claim_lane",
    "clinic_lock_key",
    "fill_rows",
    "release_lane",
    "row_hash",
]
