"""Password hashing and the password policy."""

from __future__ import annotations

import pytest
from argon2 import PasswordHasher

from healthdb_api.auth.passwords import (
    HASHER,
    MAX_LENGTH,
    MIN_LENGTH,
    WeakPassword,
    check_password_policy,
    dummy_verify,
    hash_password,
    verify_password,
)

GOOD = "correct horse battery staple 42"


def test_hashes_are_argon2id_at_owasp_parameters() -> None:
    stored = hash_password(GOOD)
    assert stored.startswith("$argon2id$")
    assert "m=19456,t=2,p=1" in stored
    assert GOOD not in stored
    assert hash_password(GOOD) != stored  # salted


def test_verify_accepts_the_right_password_only() -> None:
    stored = hash_password(GOOD)
    assert verify_password(stored, GOOD).ok
    assert not verify_password(stored, GOOD + " ").ok
    assert not verify_password(stored, "").ok


@pytest.mark.parametrize("stored", ["", "not a hash", "$argon2id$v=19$m=1,t=1,p=1$bad"])
def test_verify_of_a_malformed_hash_is_a_mismatch(stored: str) -> None:
    assert verify_password(stored, GOOD).ok is False


def test_weaker_parameters_need_a_rehash() -> None:
    weak = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1).hash(GOOD)
    result = verify_password(weak, GOOD)
    assert result.ok
    assert result.needs_rehash
    current = verify_password(HASHER.hash(GOOD), GOOD)
    assert current.ok
    assert not current.needs_rehash


def test_dummy_verify_does_the_work_and_never_raises() -> None:
    dummy_verify(GOOD)
    dummy_verify("")


@pytest.mark.parametrize(
    "password",
    [
        GOOD,
        "Tr0ub4dor&3-horse-zebra",
        "xK9#mQ2$vL8@nR4!" * 8,  # exactly 128
        "ünïcödé pässphrase wïth ümlauts",
    ],
)
def test_strong_passwords_pass(password: str) -> None:
    check_password_policy(password, email="ada@clinic.example", user_inputs=("Ada Admin",))


@pytest.mark.parametrize(
    ("password", "fragment"),
    [
        ("short1!A", f"at least {MIN_LENGTH}"),
        ("", f"at least {MIN_LENGTH}"),
        ("x" * (MAX_LENGTH + 1), f"at most {MAX_LENGTH}"),
        (" " * 20, "whitespace"),
        ("password1234", "too easy to guess"),
        ("123456789012", "too easy to guess"),
        ("qwertyuiopasdf", "too easy to guess"),
        ("iloveyou2024!", "too easy to guess"),
        ("a" * 72 + "Qz7!pV2#kL9$mN4@wR8^", "too easy to guess"),  # the prefix is judged
    ],
)
def test_weak_passwords_are_refused_without_echoing_them(password: str, fragment: str) -> None:
    with pytest.raises(WeakPassword) as raised:
        check_password_policy(password, email="ada@clinic.example")
    message = str(raised.value)
    assert fragment in message
    if password.strip():
        assert password not in message


def test_password_containing_the_email_local_part_is_refused() -> None:
    with pytest.raises(WeakPassword, match="e-mail"):
        check_password_policy("Margaret.Hamilton galaxy 93", email="margaret.hamilton@nasa.example")


def test_user_inputs_make_a_password_weaker() -> None:
    password = "zanzibarquokka"
    check_password_policy(password)  # fine in isolation: two uncommon words
    with pytest.raises(WeakPassword):
        check_password_policy(password, user_inputs=("Zanzibar Quokka Clinic",))
    with pytest.raises(WeakPassword):
        check_password_policy(password, email="quokka.zanzibar@clinic.example")


def test_short_local_parts_are_not_searched() -> None:
    check_password_policy("abyssal orchid lantern 77", email="ab@clinic.example")


def test_non_string_is_refused() -> None:
    with pytest.raises(WeakPassword):
        check_password_policy(12345678901234)  # type: ignore[arg-type]
