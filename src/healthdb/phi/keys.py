"""Where the keyring comes from: settings (production), a key file (the embedded default),
or a throwaway keyring for an in-memory SQLite database."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from pathlib import Path

import structlog

from healthdb.errors import EncryptionError, EncryptionKeyMissing
from healthdb.phi.crypto import Keyring, _b64d, generate_key, parse_key
from healthdb.settings import Settings

__all__ = [
    "add_key_to_file",
    "default_key_file",
    "keyring_for",
    "load_key_file",
    "new_index_key_in_file",
    "parse_keys",
]

log = structlog.get_logger("healthdb.phi")


def parse_keys(text: str) -> dict[str, bytes]:
    """``"k1=base64,k2=base64"`` → ``{"k1": b"...", ...}`` (order kept: first is default)."""
    keys: dict[str, bytes] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key_id, sep, encoded = item.partition("=")
        if not sep:
            raise EncryptionError("HEALTHDB_PHI_KEYS entries look like id=base64key")
        keys[key_id.strip()] = parse_key(encoded)
    if not keys:
        raise EncryptionError("HEALTHDB_PHI_KEYS lists no key")
    return keys


def default_key_file(settings: Settings) -> Path | None:
    """``<database>.keys.json`` for a SQLite file database; ``None`` otherwise."""
    if settings.phi_key_file:
        return Path(settings.phi_key_file)
    url = settings.url
    if not url.startswith("sqlite") or ":memory:" in url or url.rstrip("/").endswith(":"):
        return None
    path = url.split(":///", 1)[1].split("?", 1)[0]
    return Path(path + ".keys.json") if path else None


def load_key_file(path: Path) -> Keyring:
    data = json.loads(path.read_text())
    keys = {key_id: parse_key(value) for key_id, value in data["keys"].items()}
    previous = tuple(_b64d(value) for value in data.get("previous_index_keys", []))
    return Keyring(
        keys=keys,
        active=data["active"],
        index_key=_b64d(data["index_key"]),
        previous_index_keys=previous,
    )


def _write_key_file(path: Path, data: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def add_key_to_file(path: Path, key_id: str) -> Keyring:
    """Add a new random key to a key file and make it the active one."""
    data = json.loads(path.read_text())
    if key_id in data["keys"]:
        raise EncryptionError(f"key id {key_id!r} already exists")
    data["keys"][key_id] = generate_key()
    data["active"] = key_id
    _write_key_file(path, data)
    return load_key_file(path)


def new_index_key_in_file(path: Path) -> Keyring:
    """Make a new random blind-index key current in a key file; the old one stays as a
    previous key (lookups keep matching) until a rotation has recomputed every index."""
    data = json.loads(path.read_text())
    previous = [data["index_key"], *data.get("previous_index_keys", [])]
    data["index_key"] = generate_key()
    data["previous_index_keys"] = list(dict.fromkeys(previous))
    _write_key_file(path, data)
    return load_key_file(path)


def _create_key_file(path: Path) -> Keyring:
    _write_key_file(
        path, {"active": "k1", "keys": {"k1": generate_key()}, "index_key": generate_key()}
    )
    log.warning("phi_key_file_created", path=str(path))
    return load_key_file(path)


def _refuse_if_encrypted_values_exist(settings: Settings, key_file: Path) -> None:
    """A new key file for a database that already holds ciphertexts would make them
    unreadable: refuse instead of silently starting over."""
    database = Path(settings.url.split(":///", 1)[1].split("?", 1)[0])
    if not database.exists():
        return
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as conn:
        try:
            row = conn.execute("SELECT 1 FROM patients WHERE ssn LIKE 'v1.%' LIMIT 1").fetchone()
        except sqlite3.OperationalError:
            return  # not migrated yet: nothing is encrypted
    if row is not None:
        raise EncryptionKeyMissing(
            f"{database} holds encrypted values but its key file {key_file} is missing: "
            "restore the key file (or set HEALTHDB_PHI_KEYS) instead of generating new keys"
        )


def keyring_for(settings: Settings) -> Keyring:
    """The keyring ``settings`` configure; see :class:`~healthdb.settings.Settings`."""
    if settings.phi_keys is not None:
        if settings.phi_index_key is None:
            raise EncryptionKeyMissing("HEALTHDB_PHI_KEYS needs HEALTHDB_PHI_INDEX_KEY too")
        keys = parse_keys(settings.phi_keys.get_secret_value())
        active = settings.phi_active_key or next(iter(keys))
        previous = settings.phi_previous_index_keys
        return Keyring(
            keys=keys,
            active=active,
            index_key=parse_key(settings.phi_index_key.get_secret_value()),
            previous_index_keys=tuple(
                parse_key(part)
                for part in (previous.get_secret_value() if previous else "").split(",")
                if part.strip()
            ),
        )
    path = default_key_file(settings)
    if path is not None:
        if path.exists():
            return load_key_file(path)
        _refuse_if_encrypted_values_exist(settings, path)
        return _create_key_file(path)
    if settings.is_postgres:
        raise EncryptionKeyMissing(
            "PostgreSQL needs HEALTHDB_PHI_KEYS and HEALTHDB_PHI_INDEX_KEY "
            "(generate keys with: healthdb keys generate)"
        )
    # An in-memory database dies with the process, and so may its keys.
    return Keyring(keys={"mem": os.urandom(32)}, active="mem", index_key=os.urandom(32))
