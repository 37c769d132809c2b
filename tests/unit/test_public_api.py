"""The public surface is curated: internals and pipeline machinery never leak into it."""

from __future__ import annotations

import subprocess
import sys
import types

import healthdb

# Pipeline objects that are deliberately public (options, keys, batch results).
PUBLIC_FROM_QUERY = {
    "BatchFailure",
    "BatchResult",
    "IsolationLevel",
    "QueryOptions",
    "TransactionOptions",
    "keys",
}


def _origin(obj: object) -> str:
    if isinstance(obj, types.ModuleType):
        return obj.__name__
    return str(getattr(obj, "__module__", ""))


def test_every_exported_name_exists() -> None:
    for name in healthdb.__all__:
        assert hasattr(healthdb, name), name


def test_nothing_from_internal_is_exported() -> None:
    leaked = [
        n for n in healthdb.__all__ if _origin(getattr(healthdb, n)).startswith("healthdb.internal")
    ]
    assert leaked == []


def test_only_the_documented_query_objects_are_exported() -> None:
    from_query = {
        n for n in healthdb.__all__ if _origin(getattr(healthdb, n)).startswith("healthdb.query")
    }
    assert from_query == PUBLIC_FROM_QUERY


NO_IO_PROBE = """
import importlib, pkgutil, socket, healthdb

def refuse(*args, **kwargs):
    raise AssertionError("network I/O at import time")

socket.socket.connect = refuse
socket.create_connection = refuse
for info in pkgutil.walk_packages(healthdb.__path__, "healthdb."):
    if ".migrations" not in info.name:  # alembic's env.py runs only inside alembic
        importlib.import_module(info.name)
print("imported", flush=True)
"""


def test_importing_any_module_does_no_network_io() -> None:
    """Composition happens in DatabaseService.connect; importing must not connect anywhere."""
    done = subprocess.run(
        [sys.executable, "-c", NO_IO_PROBE], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "imported" in done.stdout
