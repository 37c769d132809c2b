"""``healthdb demo`` runs its whole scripted tour on a fresh SQLite file."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from healthdb import cli as library_cli


def test_the_demo_tours_every_facade_method(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The CLI configures logging at WARNING with cached loggers; in this process that would
    # freeze module-level loggers at WARNING for every later test (structlog caches them).
    monkeypatch.setattr("healthdb.logging.configure", lambda **_kwargs: None)
    result = CliRunner().invoke(library_cli.app, ["demo", "--database", str(tmp_path / "d.db")])
    assert result.exit_code == 0, result.output
    for step in ("execute_batch", "cached strategy", "execute_critical", "health: ok=True"):
        assert step in result.output
