"""Which lane of a clinic's chain a transaction appends to, and this process's memory of
the lane heads it wrote.

A clinic's chain is split into *lanes* (independent sub-chains, migration 0005) so that
concurrent transactions of one clinic do not queue behind one lock held until COMMIT.
Appends to a lane are serialised by ``pg_advisory_xact_lock`` on the lane's key. Everything
kept here is a hint, never trusted on its own: the database checks every use (the lane lock
is held, the remembered head is still the newest row, and a unique index on
``(clinic_id, lane, seq)`` backs the sequence).
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass

from healthdb.errors import InvalidInput
from healthdb.internal.audit.chain import lane_keys

__all__ = [
    "LANE_SETTING",
    "LaneClaim",
    "claim_lane",
    "forget_heads",
    "release_lane",
    "remember_head",
    "remembered_head",
    "reserve_lane",
    "try_lanes_sql",
]

#: The transaction-local setting in which :func:`claim_lane` leaves the lane it locked
#: ('' when every lane was busy).
LANE_SETTING = "healthdb.audit_lane"


@dataclass(frozen=True, slots=True)
class LaneClaim:
    """A lane lock requested with BEGIN: ``sql`` is the select-list item for the prelude,
    ``lane`` the lane tried first (the one this transaction holds unless another process
    held it). When every lane is already claimed in this process, ``sql`` is None and the
    append waits for ``lane``'s lock instead. Give it back with :func:`release_lane` when
    the transaction ends."""

    clinic_id: uuid.UUID
    lane: int
    sql: str | None  # None: share ``lane``, waiting for its lock when appending


# The lanes that this process's open transactions tried first, per clinic, so concurrent
# units start from different lanes; the lanes this process's group-commit writer keeps for
# itself; and the newest (seq, row_hash) this process wrote per (engine, clinic, lane).
_first_tries: dict[uuid.UUID, list[int]] = {}
_reserved: set[int] = set()
_heads: dict[tuple[int, uuid.UUID, int], tuple[int, str]] = {}
_MAX_HEADS = 50_000


def reserve_lane(lanes: int) -> int:
    """A lane for this process's group-commit writer: the claims of this process's own
    transactions try the other lanes first (another process's writer may still pick it:
    the lock and the head checks sort that out)."""
    free = [lane for lane in range(lanes) if lane not in _reserved]
    lane = random.choice(free or list(range(lanes)))
    _reserved.add(lane)
    return lane


def claim_lane(clinic_id: uuid.UUID, lanes: int) -> LaneClaim:
    """Lock a lane of the clinic's chain in the statement that begins a transaction
    (PostgreSQL), and leave its number in :data:`LANE_SETTING`. Tried first: a random lane
    that no other open transaction of this process claimed (nor this process's writer
    keeps); then the other lanes. Nothing waits here: when they are all
    busy the setting is '' and the append takes a lane itself. When every lane is already
    claimed in this process, trying them would only take a lane from a unit that has not
    begun yet: the claim then shares the least claimed lane and its ``sql`` is None (the
    append waits for that lane's lock).

    The text is rendered inline (it travels with ``BEGIN`` in the simple protocol): it holds
    only Python ints and constants."""
    if not isinstance(clinic_id, uuid.UUID) or not 1 <= lanes <= 64:
        raise InvalidInput("claim_lane needs a clinic uuid and 1-64 lanes")
    tried = _first_tries.setdefault(clinic_id, [])
    # Spreading only, nothing to guess: the cheap PRNG (secrets reads the OS on every call).
    start = random.randrange(lanes)
    order = [lane for i in range(lanes) if (lane := (start + i) % lanes) not in tried]
    if len(order) > 1:
        # The writer's lanes go last: its flushes would otherwise wait for this unit.
        order.sort(key=lambda lane: lane in _reserved)
    if not order:
        # Every lane is claimed here: share the least claimed one (waiting for its lock at
        # append time) rather than take a lane from a unit that has not begun yet.
        shared = min(range(lanes), key=lambda lane: (tried.count(lane), lane != start))
        tried.append(shared)
        return LaneClaim(clinic_id, shared, None)
    tried.append(order[0])
    return LaneClaim(clinic_id, order[0], try_lanes_sql(clinic_id, lanes, order))


def try_lanes_sql(clinic_id: uuid.UUID, lanes: int, order: list[int]) -> str:
    """A select-list item that locks the first free lane of ``order`` (without waiting) and
    leaves its number in :data:`LANE_SETTING` ('' when all were busy). Inline text: it holds
    only ints derived from a validated uuid and constants."""
    keys = lane_keys(clinic_id, lanes)
    key_list = ",".join(str(keys[lane]) for lane in order)
    lane_list = ",".join(str(int(lane)) for lane in order)
    return (
        f"set_config('{LANE_SETTING}', COALESCE((SELECT k.lane::text FROM "  # noqa: S608
        f"unnest('{{{key_list}}}'::bigint[], '{{{lane_list}}}'::integer[]) AS k(key, lane) "
        "WHERE pg_try_advisory_xact_lock(k.key) LIMIT 1), ''), true)"
    )


def release_lane(claim: LaneClaim) -> None:
    """The transaction that made ``claim`` has ended (its lock went with it)."""
    tried = _first_tries.get(claim.clinic_id)
    if tried is not None and claim.lane in tried:  # a hint: never fail a unit over it
        tried.remove(claim.lane)
        if not tried:
            del _first_tries[claim.clinic_id]


def remembered_head(engine: int, clinic_id: uuid.UUID, lane: int) -> tuple[int, str] | None:
    """The newest ``(seq, row_hash)`` this process wrote to a lane, if it remembers one.
    ``engine``: ``id()`` of the engine the rows were written through."""
    return _heads.get((engine, clinic_id, lane))


def remember_head(engine: int, clinic_id: uuid.UUID, lane: int, seq: int, digest: str) -> None:
    """Note the newest row this process appended to a lane. Noted before the commit: if the
    commit fails, the next append on the hint finds no such row and reads the head."""
    if len(_heads) >= _MAX_HEADS:
        _heads.clear()
    _heads[(engine, clinic_id, lane)] = (seq, digest)


def forget_heads(engine: int) -> None:
    """Drop every head remembered for ``engine`` (it is being disposed of)."""
    for key in [key for key in _heads if key[0] == engine]:
        del _heads[key]
