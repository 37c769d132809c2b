"""Password hashing (argon2id at OWASP's parameters) and the password policy."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from zxcvbn import zxcvbn

# OWASP Password Storage Cheat Sheet: argon2id, m=19 MiB, t=2, p=1 (minimum).
HASHER = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)
MIN_LENGTH = 12
MAX_LENGTH = 128
#: zxcvbn scores 0-4; below this a password is refused as too guessable.
MIN_SCORE = 3
#: zxcvbn's own bound (its matching is super-linear); longer passwords are scored on this
#: prefix, which can only make the verdict stricter.
SCORED_PREFIX = 72
#: E-mail local parts shorter than this are not searched for inside the password.
MIN_LOCAL_PART = 3

# zxcvbn keeps the user inputs in a module-global dictionary: serialise its calls.
_ZXCVBN_LOCK = threading.Lock()
_SPLIT = re.compile(r"[^\w]+|_")


class WeakPassword(ValueError):
    """The password breaks the policy; the message is safe to show (it never echoes it)."""


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


def check_password_policy(
    password: str, *, email: str | None = None, user_inputs: Iterable[str] = ()
) -> None:
    """Raise :class:`WeakPassword` unless ``password`` meets the policy.

    12-128 characters; not containing the e-mail's local part; a zxcvbn score of at least
    :data:`MIN_SCORE` with the e-mail, names and other ``user_inputs`` as context. Costs up
    to ~100 ms of CPU for long passwords: call it off the event loop.
    """
    if not isinstance(password, str):
        raise WeakPassword("password must be a string")
    if len(password) < MIN_LENGTH:
        raise WeakPassword(f"password must be at least {MIN_LENGTH} characters long")
    if len(password) > MAX_LENGTH:
        raise WeakPassword(f"password must be at most {MAX_LENGTH} characters long")
    if not password.strip():
        raise WeakPassword("password must not be only whitespace")
    context = list(user_inputs)
    if email:
        local = email.rsplit("@", 1)[0].strip().lower()
        if len(local) >= MIN_LOCAL_PART and local in password.lower():
            raise WeakPassword("password must not contain your e-mail address")
        context += [email, local]
    # zxcvbn matches each input as one dictionary word: add the words of names too.
    context += [part for item in context for part in _SPLIT.split(item) if len(part) > 1]
    context = [item for item in dict.fromkeys(c.lower() for c in context) if item]
    with _ZXCVBN_LOCK:
        result = zxcvbn(password[:SCORED_PREFIX], user_inputs=context)
    if int(result["score"]) < MIN_SCORE:
        raise WeakPassword(_weak_message(result.get("feedback") or {}))


def _weak_message(feedback: dict[str, object]) -> str:
    parts = ["password is too easy to guess"]
    warning = feedback.get("warning")
    if isinstance(warning, str) and warning:
        parts.append(warning.rstrip("."))
    suggestions = feedback.get("suggestions")
    if isinstance(suggestions, list):
        parts.extend(str(s).rstrip(".") for s in suggestions if s)
    parts.append("a passphrase of several uncommon words works well")
    return "; ".join(parts)


_DUMMY_HASH = HASHER.hash("healthdb-dummy-password-for-timing")
