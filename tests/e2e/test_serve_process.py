"""``healthdb serve`` as a real process over a real socket: fresh SQLite, SIGTERM exits 0."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

PASSWORD = "correct horse battery staple 42"
READY_WITHIN = 30.0
EXIT_WITHIN = 15.0


def _healthdb_executable() -> str:
    beside_python = Path(sys.executable).parent / "healthdb"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("healthdb")
    assert found, "the `healthdb` console script is not installed (pip install -e .)"
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = _free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("HEALTHDB_")},
        "HEALTHDB_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'serve.sqlite3'}",
        "HEALTHDB_DATA_DIR": str(tmp_path / "data"),
    }
    log = (tmp_path / "server.log").open("wb")
    process = subprocess.Popen(
        [_healthdb_executable(), "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield process, f"http://127.0.0.1:{port}"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
        log.close()
        if process.returncode not in (0, None):
            sys.stderr.write((tmp_path / "server.log").read_text(errors="replace"))


def _wait_ready(process: subprocess.Popen[bytes], base: str) -> None:
    deadline = time.monotonic() + READY_WITHIN
    while time.monotonic() < deadline:
        assert process.poll() is None, f"server exited early with {process.returncode}"
        try:
            if httpx.get(f"{base}/health/ready", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail(f"server not ready within {READY_WITHIN} s")


def test_serve_end_to_end_and_graceful_sigterm(
    server: tuple[subprocess.Popen[bytes], str], tmp_path: Path
) -> None:
    process, base = server
    _wait_ready(process, base)

    with httpx.Client(base_url=base, timeout=10.0) as http:
        ready = http.get("/health/ready").json()
        assert ready == {"status": "ok", "database": True, "migrated": True}

        email = f"admin-{uuid.uuid4().hex[:10]}@clinic.example"
        created = http.post(
            "/api/v1/auth/register",
            json={
                "clinic_name": "Process Clinic",
                "email": email,
                "password": PASSWORD,
                "full_name": "Ada Admin",
            },
        )
        assert created.status_code == 202, created.text
        login = http.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
        assert login.status_code == 200, login.text
        headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
        patient = http.post(
            "/api/v1/patients",
            json={
                "mrn": "MRN-PROC-1",
                "given_name": "Grace",
                "family_name": "Hopper",
                "date_of_birth": "1906-12-09",
                "sex": "female",
            },
            headers=headers,
        )
        assert patient.status_code == 201, patient.text
        assert patient.json()["mrn"] == "MRN-PROC-1"
        assert "server" not in {name.lower() for name in patient.headers}

    # The embedded defaults were used: the SQLite file and the generated JWT secret.
    assert (tmp_path / "serve.sqlite3").exists()
    assert (tmp_path / "data" / "jwt_secret").exists()

    process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(EXIT_WITHIN)
    except subprocess.TimeoutExpired:
        pytest.fail(f"server did not exit within {EXIT_WITHIN} s of SIGTERM")
    assert code == 0
