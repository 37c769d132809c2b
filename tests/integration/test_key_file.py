"""The embedded default's key file: created for a new database, never silently replaced."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from pydantic import SecretStr

from healthdb.errors import EncryptionKeyMissing
from healthdb.phi.keys import default_key_file, keyring_for
from healthdb.settings import Settings


def settings_for(path: Path) -> Settings:
    # Explicitly no keys in settings: the suite's environment sets test keys.
    return Settings(
        database_url=SecretStr(f"sqlite+aiosqlite:///{path}"), phi_keys=None, phi_index_key=None
    )


def test_a_new_database_gets_a_private_key_file_that_is_reused(tmp_path: Path) -> None:
    settings = settings_for(tmp_path / "new.sqlite3")
    first = keyring_for(settings)
    key_file = default_key_file(settings)
    assert key_file is not None
    assert key_file.stat().st_mode & 0o777 == 0o600
    second = keyring_for(settings)
    token = first.encrypt("123-45-6789", aad="patients.ssn")
    assert second.decrypt(token, aad="patients.ssn") == "123-45-6789"


def test_a_lost_key_file_is_refused_when_ciphertexts_exist(tmp_path: Path) -> None:
    database = tmp_path / "old.sqlite3"
    settings = settings_for(database)
    token = keyring_for(settings).encrypt("123-45-6789", aad="patients.ssn")
    with sqlite3.connect(database) as conn:
        conn.execute("CREATE TABLE patients (id INTEGER PRIMARY KEY, ssn TEXT)")
        conn.execute("INSERT INTO patients (ssn) VALUES (?)", (token,))
    key_file = default_key_file(settings)
    assert key_file is not None
    key_file.unlink()
    with pytest.raises(EncryptionKeyMissing, match="key file"):
        keyring_for(settings)
    assert not key_file.exists()
