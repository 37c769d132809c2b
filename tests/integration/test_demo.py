"""``healthdb demo`` runs its whole scripted tour on a fresh SQLite file."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from healthdb import cli as library_cli


def test_the_demo_tours_every_facade_method(tmp_path: Path) -> None:
    result = CliRunner().invoke(library_cli.app, ["demo", "--database", str(tmp_path / "d.db")])
    assert result.exit_code == 0, result.output
    for step in ("execute_batch", "cached strategy", "execute_critical", "health: ok=True"):
        assert step in result.output
