"""``healthdb migrate`` then ``healthdb serve`` on a fresh PostgreSQL database, as processes:
the two URLs are all it takes, and a role that could bypass row-level security is refused."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

from tests.conftest import _drop_database, _drop_role
from tests.e2e.test_serve_process import EXIT_WITHIN, _free_port, _healthdb_executable, _wait_ready

pytestmark = pytest.mark.postgres


@pytest.fixture
def runtime_role(pg_empty_url: str) -> Iterator[str]:
    """Dropped after the database that holds its grants (dropped here first)."""
    role = f"hdb_srv_{uuid.uuid4().hex[:10]}"
    yield role
    name = make_url(pg_empty_url).database
    assert name
    asyncio.run(_drop_database(name))
    asyncio.run(_drop_role(role))


def _env(tmp_path: Path, runtime: str, admin: str) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("HEALTHDB_")},
        "HEALTHDB_DATABASE_URL": runtime,
        "HEALTHDB_ADMIN_DATABASE_URL": admin,
        "HEALTHDB_DATA_DIR": str(tmp_path / "data"),
        # PostgreSQL refuses to start without PHI keys: pass the suite's test keys on.
        **{k: os.environ[k] for k in ("HEALTHDB_PHI_KEYS", "HEALTHDB_PHI_INDEX_KEY")},
    }


def _plain(url: str, username: str | None = None, password: str | None = None) -> str:
    parsed = make_url(url).set(drivername="postgresql")
    if username is not None:
        parsed = parsed.set(username=username, password=password)
    return parsed.render_as_string(hide_password=False)


def test_migrate_then_serve_as_the_provisioned_runtime_role(
    pg_empty_url: str, runtime_role: str, tmp_path: Path
) -> None:
    admin = _plain(pg_empty_url)
    runtime = _plain(pg_empty_url, username=runtime_role, password="not-checked-under-trust")
    env = _env(tmp_path, runtime, admin)
    exe = _healthdb_executable()
    for _ in range(2):  # idempotent
        done = subprocess.run([exe, "migrate"], env=env, capture_output=True, timeout=60)
        assert done.returncode == 0, done.stderr.decode()
    port = _free_port()
    log = (tmp_path / "server.log").open("wb")
    process = subprocess.Popen(
        [exe, "serve", "--port", str(port)], env=env, cwd=tmp_path, stdout=log, stderr=log
    )
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_ready(process, base)
        body = {
            "clinic_name": "PG Clinic",
            "email": f"admin-{uuid.uuid4().hex[:8]}@clinic.example",
            "password": "correct horse battery staple 42",
            "full_name": "Ada Admin",
        }
        assert httpx.post(f"{base}/api/v1/auth/register", json=body).status_code == 202
        process.send_signal(signal.SIGTERM)
        assert process.wait(EXIT_WITHIN) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
        log.close()


def test_serve_refuses_a_superuser_with_a_clear_message(pg_empty_url: str, tmp_path: Path) -> None:
    admin = _plain(pg_empty_url)
    env = _env(tmp_path, admin, admin)
    exe = _healthdb_executable()
    assert (
        subprocess.run([exe, "migrate"], env=env, capture_output=True, timeout=60).returncode == 0
    )
    done = subprocess.run(
        [exe, "serve", "--port", str(_free_port())], env=env, capture_output=True, timeout=60
    )
    assert done.returncode != 0
    last = done.stderr.decode().strip().splitlines()[-1]
    assert last.startswith("healthdb serve: refusing to start: database role 'postgres'")
    assert "SUPERUSER" in last
