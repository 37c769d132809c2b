"""Encryption at rest for the most sensitive PHI (SSN): AES-256-GCM with a key id per value,
and an HMAC-SHA256 blind index so an exact lookup works without decrypting the table.

A stored value is the token ``v1.<key id>.<base64url(nonce || ciphertext+tag)>``; the
additional authenticated data is the column (``patients.ssn``), so a ciphertext cannot be
moved to another column unnoticed. Decryption picks the key named in the token, so keys
rotate without downtime: add a key, make it active, run ``healthdb keys rotate``, retire
the old key once ``healthdb keys status`` shows no value under it.

A blind-index value is ``<index key id>.<hex HMAC>``, so the index key rotates too: the new
key becomes ``index_key``, the old one moves to ``previous_index_keys`` (lookups try both),
``healthdb keys rotate`` recomputes every index value not under the current key, and the old
key is retired once ``keys status`` counts none.

The keyring reaches the column type through a ContextVar that :class:`DatabaseService` sets
for each call (:func:`using_keyring`); outside one, encrypting or decrypting raises
:class:`EncryptionKeyMissing` instead of storing plaintext.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import unicodedata
from collections.abc import Mapping
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Text, TypeDecorator
from sqlalchemy.engine import Dialect

from healthdb.errors import EncryptionError, EncryptionKeyMissing
from healthdb.phi.masking import MaskedValue

__all__ = [
    "BLIND_INDEX_OF",
    "EncryptedText",
    "Keyring",
    "blind_index_pairs",
    "current_keyring",
    "generate_key",
    "index_key_id",
    "key_id_of",
    "using_keyring",
]

VERSION = "v1"
KEY_ID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
#: ``info`` key on a blind-index column naming the encrypted attribute it indexes.
BLIND_INDEX_OF = "healthdb.blind_index_of"
_NONCE = 12


def _b64e(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def generate_key() -> str:
    """A fresh random 256-bit key, base64url (for ``HEALTHDB_PHI_KEYS``)."""
    return _b64e(os.urandom(32))


def parse_key(text: str) -> bytes:
    try:
        raw = _b64d(text.strip())
    except ValueError:
        raise EncryptionError("a PHI key must be base64url") from None
    if len(raw) != 32:
        raise EncryptionError("a PHI key must be 32 bytes (256 bits), base64url-encoded")
    return raw


def normalise_for_index(value: str) -> str:
    """What the blind index hashes: NFKC, digits and letters only, case-folded, so
    ``123-45-6789`` and ``123 45 6789`` find the same patient."""
    folded = unicodedata.normalize("NFKC", value).casefold()
    return "".join(filter(str.isalnum, folded))


def index_key_id(key: bytes) -> str:
    """The short public name of a blind-index key, stored in front of each index value.

    A truncated hash of the key (32 bits): enough to tell a handful of keys apart, far too
    little to help guess the key.
    """
    return hashlib.sha256(b"healthdb-blind-index-key:" + key).hexdigest()[:8]


@dataclass(frozen=True, slots=True, repr=False)
class Keyring:
    """Every key that may still decrypt a value, the one that encrypts, the blind-index key,
    and earlier blind-index keys whose index values may not be recomputed yet."""

    keys: Mapping[str, bytes]
    active: str
    index_key: bytes
    previous_index_keys: tuple[bytes, ...] = ()
    _ciphers: dict[str, AESGCM] = field(default_factory=dict, compare=False)
    _ids: dict[bytes, str] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.active not in self.keys:
            raise EncryptionError(f"the active key id {self.active!r} is not in the keyring")
        for key_id, key in self.keys.items():
            if not KEY_ID.match(key_id):
                raise EncryptionError("key ids are 1-32 characters of [A-Za-z0-9_-]")
            if len(key) != 32:
                raise EncryptionError("PHI keys are 32 bytes")
            self._ciphers[key_id] = AESGCM(key)
        for index_key in (self.index_key, *self.previous_index_keys):
            if len(index_key) < 32:
                raise EncryptionError("a blind-index key must be at least 32 bytes")
            self._ids[index_key] = index_key_id(index_key)  # a sha256 each: once, not per row

    def __repr__(self) -> str:  # keys never reach a log line or a traceback
        return f"Keyring(active={self.active!r}, key_ids={sorted(self.keys)!r})"

    def encrypt(self, plaintext: str, *, aad: str) -> str:
        nonce = os.urandom(_NONCE)
        sealed = self._ciphers[self.active].encrypt(nonce, plaintext.encode(), aad.encode())
        return f"{VERSION}.{self.active}.{_b64e(nonce + sealed)}"

    def decrypt(self, token: str, *, aad: str) -> str:
        parts = token.split(".", 2)
        cipher = self._ciphers.get(parts[1]) if len(parts) == 3 and parts[0] == VERSION else None
        if cipher is None:  # the slow path names what is wrong
            key_id = key_id_of(token)
            raise EncryptionKeyMissing(f"no key {key_id!r} in the keyring for a stored value")
        raw = _b64d(parts[2])
        try:
            return cipher.decrypt(raw[:_NONCE], raw[_NONCE:], aad.encode()).decode()
        except InvalidTag:
            raise EncryptionError("a stored value failed authentication (tampered?)") from None

    @property
    def index_id(self) -> str:
        """:func:`index_key_id` of the current blind-index key."""
        return self._ids[self.index_key]

    def blind_index(self, value: str) -> str:
        """``<index key id>.<HMAC-SHA256 of the normalised value, hex>``, current key."""
        return f"{self.index_id}.{self.index_digest(value)}"

    def index_digest(self, value: str, key: bytes | None = None) -> str:
        """The bare HMAC (hex) under ``key`` (default: the current index key)."""
        message = normalise_for_index(value).encode()
        return hmac.digest(key or self.index_key, message, "sha256").hex()

    def blind_index_candidates(self, value: str) -> list[str]:
        """Every form ``value``'s index may be stored in while index keys rotate: under the
        current key first, then under each previous key."""
        keys = (self.index_key, *self.previous_index_keys)
        return [f"{self._ids[k]}.{self.index_digest(value, k)}" for k in keys]


def key_id_of(token: str) -> str:
    parts = token.split(".", 2)
    if len(parts) != 3 or parts[0] != VERSION or not KEY_ID.match(parts[1]):
        raise EncryptionError("not an encrypted value (expected v1.<key id>.<data>)")
    return parts[1]


_keyring: ContextVar[Keyring | None] = ContextVar("healthdb_keyring", default=None)


def current_keyring() -> Keyring:
    keyring = _keyring.get()
    if keyring is None:
        raise EncryptionKeyMissing(
            "encrypted PHI needs a keyring: go through DatabaseService or using_keyring()"
        )
    return keyring


class using_keyring:
    """``with using_keyring(keyring):`` encrypted columns read and write with ``keyring``.

    A class, not a generator: the facade enters it on every call."""

    __slots__ = ("_keyring", "_token")

    def __init__(self, keyring: Keyring) -> None:
        self._keyring = keyring
        self._token: Token[Keyring | None] | None = None

    def __enter__(self) -> Keyring:
        self._token = _keyring.set(self._keyring)
        return self._keyring

    def __exit__(self, *_exc: object) -> None:
        if self._token is not None:
            _keyring.reset(self._token)
            self._token = None


class EncryptedText(TypeDecorator[str]):
    """A string column stored AES-GCM-encrypted; ``aad`` names the column."""

    impl = Text
    cache_ok = True

    def __init__(self, aad: str) -> None:
        super().__init__()
        self.aad = aad

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        if value is None:
            return None
        if isinstance(value, MaskedValue):
            raise EncryptionError("refusing to store a masked value over the real one")
        return current_keyring().encrypt(str(value), aad=self.aad)

    def process_result_value(self, value: Any, dialect: Dialect) -> str | None:
        if value is None:
            return None
        return current_keyring().decrypt(str(value), aad=self.aad)


_INDEXES: dict[type[Any], tuple[tuple[str, str], ...]] = {}


def blind_index_pairs(model: type[Any]) -> tuple[tuple[str, str], ...]:
    """``(index column, source attribute)`` pairs of ``model``, looked up once."""
    pairs = _INDEXES.get(model)
    if pairs is None:
        pairs = _INDEXES[model] = tuple(
            (column.key, column.info[BLIND_INDEX_OF])
            for column in model.__table__.columns
            if BLIND_INDEX_OF in column.info
        )
    return pairs


def fill_blind_indexes(model: type[Any], values: dict[str, Any], keyring: Keyring) -> None:
    """Set each blind-index column of ``model`` in ``values`` from its source attribute."""
    for target, source in blind_index_pairs(model):
        if source in values:
            plain = values[source]
            values[target] = None if plain is None else keyring.blind_index(str(plain))
