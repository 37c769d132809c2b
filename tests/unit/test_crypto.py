"""AES-GCM tokens, the blind index, the keyring and key parsing (no database)."""

from __future__ import annotations

import base64
import os

import pytest
from sqlalchemy.dialects import sqlite

from healthdb.errors import EncryptionError, EncryptionKeyMissing
from healthdb.phi.crypto import (
    EncryptedText,
    Keyring,
    current_keyring,
    generate_key,
    index_key_id,
    key_id_of,
    parse_key,
    using_keyring,
)
from healthdb.phi.keys import parse_keys
from healthdb.phi.masking import MaskedValue

K1, K2, INDEX = os.urandom(32), os.urandom(32), os.urandom(32)
AAD = "patients.ssn"


def ring(active: str = "k1", **keys: bytes) -> Keyring:
    return Keyring(keys=keys or {"k1": K1, "k2": K2}, active=active, index_key=INDEX)


def flip(token: str, position: int) -> str:
    """The token with one byte of its sealed data changed."""
    head, data = token.rsplit(".", 1)
    raw = bytearray(base64.urlsafe_b64decode(data + "=" * (-len(data) % 4)))
    raw[position] ^= 0x01
    return f"{head}.{base64.urlsafe_b64encode(bytes(raw)).decode().rstrip('=')}"


def test_round_trip_names_the_active_key_and_never_repeats() -> None:
    keyring = ring()
    one, two = keyring.encrypt("123-45-6789", aad=AAD), keyring.encrypt("123-45-6789", aad=AAD)
    assert one.startswith("v1.k1.")
    assert key_id_of(one) == "k1"
    assert one != two  # a fresh nonce every time: equal SSNs do not look equal at rest
    assert "6789" not in one
    assert keyring.decrypt(one, aad=AAD) == keyring.decrypt(two, aad=AAD) == "123-45-6789"


def test_any_key_of_the_ring_decrypts_its_own_tokens() -> None:
    old = ring("k1").encrypt("078-05-1120", aad=AAD)
    new = ring("k2").encrypt("078-05-1120", aad=AAD)
    assert key_id_of(new) == "k2"
    reader = ring("k2")
    assert reader.decrypt(old, aad=AAD) == reader.decrypt(new, aad=AAD) == "078-05-1120"


def test_wrong_column_or_tampering_fails_authentication() -> None:
    keyring = ring()
    token = keyring.encrypt("123-45-6789", aad=AAD)
    with pytest.raises(EncryptionError, match="failed authentication"):
        keyring.decrypt(token, aad="patients.notes")
    for position in (0, 12, -1):  # nonce, ciphertext, tag
        with pytest.raises(EncryptionError, match="failed authentication"):
            keyring.decrypt(flip(token, position), aad=AAD)
    # Relabelling a token with another key id is caught too.
    with pytest.raises(EncryptionError, match="failed authentication"):
        keyring.decrypt(token.replace("v1.k1.", "v1.k2.", 1), aad=AAD)


def test_unknown_key_id_is_reported_as_missing() -> None:
    token = ring(k1=K1, k3=os.urandom(32)).encrypt("x", aad=AAD)
    other = Keyring(keys={"k3": os.urandom(32)}, active="k3", index_key=INDEX)
    with pytest.raises(EncryptionKeyMissing, match="'k1'"):
        other.decrypt(token, aad=AAD)


@pytest.mark.parametrize("value", ["123-45-6789", "v2.k1.abc", "v1.k1", "v1.bad key.x", ""])
def test_key_id_of_refuses_what_is_not_a_token(value: str) -> None:
    with pytest.raises(EncryptionError, match="not an encrypted value"):
        key_id_of(value)


def test_column_type_encrypts_refuses_masks_and_needs_a_keyring() -> None:
    column = EncryptedText(AAD)
    dialect = sqlite.dialect()
    with pytest.raises(EncryptionKeyMissing):
        current_keyring()
    with pytest.raises(EncryptionKeyMissing):
        column.process_bind_param("123-45-6789", dialect)  # never plaintext by accident
    with using_keyring(ring()) as keyring:
        stored = column.process_bind_param("123-45-6789", dialect)
        assert stored is not None
        assert stored.startswith("v1.k1.")
        assert column.process_result_value(stored, dialect) == "123-45-6789"
        assert column.process_bind_param(None, dialect) is None
        with pytest.raises(EncryptionError, match="masked"):
            column.process_bind_param(MaskedValue("***-**-6789"), dialect)
        assert current_keyring() is keyring
    with pytest.raises(EncryptionKeyMissing):
        current_keyring()


def test_blind_index_normalises_and_depends_on_the_index_key() -> None:
    keyring = ring()
    digest = keyring.blind_index("123-45-6789")
    key_id, _, mac = digest.partition(".")
    assert key_id == index_key_id(INDEX) == keyring.index_id
    assert len(mac) == 64
    assert "6789" not in mac
    # Separators, spacing and full-width digits (NFKC) do not change the index.
    for same in (
        "123 45 6789",
        "123456789",
        " 123-45-6789 ",
        "\uff11\uff12\uff13-\uff14\uff15-\uff16\uff17\uff18\uff19",
    ):
        assert keyring.blind_index(same) == digest
    assert keyring.blind_index("123-45-6788") != digest
    other = Keyring(keys={"k1": K1}, active="k1", index_key=os.urandom(32))
    assert other.blind_index("123-45-6789") != digest
    # The index does not follow the encryption key: rotating keys keeps every index valid.
    assert ring("k2").blind_index("123-45-6789") == digest


def test_lookups_match_under_previous_index_keys_until_recomputed() -> None:
    """Index key rotation: the new key computes new values, and a lookup also tries each
    previous key, so values not yet recomputed are still found; each form names its key."""
    old = ring()
    new_key = os.urandom(32)
    rotating = Keyring(
        keys={"k1": K1}, active="k1", index_key=new_key, previous_index_keys=(INDEX,)
    )
    candidates = rotating.blind_index_candidates("123 45 6789")
    assert candidates == [rotating.blind_index("123-45-6789"), old.blind_index("123-45-6789")]
    assert candidates[0].startswith(f"{index_key_id(new_key)}.")
    assert rotating.index_id != old.index_id
    with pytest.raises(EncryptionError, match="blind-index key"):
        Keyring(keys={"k1": K1}, active="k1", index_key=new_key, previous_index_keys=(b"x",))


def test_repr_never_shows_key_material() -> None:
    keyring = ring()
    text = repr(keyring) + str(keyring)
    assert text == "Keyring(active='k1', key_ids=['k1', 'k2'])" * 2
    for secret in (K1, K2, INDEX):
        assert secret.hex() not in text
        assert base64.urlsafe_b64encode(secret).decode().rstrip("=") not in text


def test_keyring_validation() -> None:
    with pytest.raises(EncryptionError, match="active key id"):
        Keyring(keys={"k1": K1}, active="k2", index_key=INDEX)
    with pytest.raises(EncryptionError, match="key ids"):
        Keyring(keys={"bad id": K1}, active="bad id", index_key=INDEX)
    with pytest.raises(EncryptionError, match="32 bytes"):
        Keyring(keys={"k1": K1[:16]}, active="k1", index_key=INDEX)
    with pytest.raises(EncryptionError, match="blind-index key"):
        Keyring(keys={"k1": K1}, active="k1", index_key=INDEX[:16])


def test_parse_keys_keeps_order_and_refuses_bad_input() -> None:
    a, b = generate_key(), generate_key()
    assert a != b
    assert len(parse_key(a)) == 32
    keys = parse_keys(f" new={b} , old={a},")
    assert list(keys) == ["new", "old"]
    assert keys["old"] == parse_key(a)
    with pytest.raises(EncryptionError, match="id=base64key"):
        parse_keys(a)
    with pytest.raises(EncryptionError, match="lists no key"):
        parse_keys(" , ")
    with pytest.raises(EncryptionError, match="32 bytes"):
        parse_keys("k1=" + base64.urlsafe_b64encode(b"short").decode())
    with pytest.raises(EncryptionError, match="base64url"):
        parse_keys("k1=not base64!")
