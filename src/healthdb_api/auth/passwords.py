"""Password hashing (argon2id at OWASP's parameters) and the password policy."""

from __future__ import annotations

from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

# OWASP Password Storage Cheat Sheet: argon2id, m=19 MiB, t=2, p=1 (minimum).
HASHER = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)
MIN_LENGTH = 12
MAX_LENGTH = 128


@dataclass(frozen=True, slots=True)
class Verified:
    ok: bool
    needs_rehash: bool = False


def hash_password(password: str, hasher: PasswordHasher = HASHER) -> str:
    return hasher.hash(password)


def verify_password(stored: str, password: str, hasher: PasswordHasher = HASHER) -> Verified:
    """Constant-work verification; ``needs_rehash`` when parameters have changed."""
    try:
        hasher.verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return Verified(False)
    return Verified(True, hasher.check_needs_rehash(stored))


def dummy_verify(password: str) -> None:
    """Spend the same work as a real verification (unknown e-mail: no timing oracle)."""
    verify_password(_DUMMY_HASH, password)


_DUMMY_HASH = HASHER.hash("healthdb-dummy-password-for-timing")
