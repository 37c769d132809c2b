"""HTTP throughput of the reference service against a bare FastAPI + asyncpg app, same run.

    .venv/bin/python bench/http_path.py [--seconds 10] [--connections 32] [--workers 1]
                                        [--scenarios get,page,patch,post,live]
                                        [--profile bench/results/flame.svg] [--pg-url URL]

One run starts, on a throwaway PostgreSQL database:
  * the service (``healthdb serve``, ``--workers`` processes) as the provisioned runtime role
    (forced row-level security), with Redis, PHI keys and the rate limits raised out of the
    way, logging at its default level;
  * ``bench/bare_app.py`` (uvicorn, one worker): the same reads and writes with no auth, no
    RLS, no audit, no masking, as the database owner;
and drives both with ``wrk -t1 -c<connections>`` (Debian's wrk, installed by
``scripts/install-tools``), one scenario at a time, bare first, after a warm-up of each:

  get    GET one patient by id, as a doctor (audited: one audit row per request)
  page   GET a page of 50 patients (50 audit rows per request)
  patch  PATCH a patient's phone with If-Match (each connection re-uses the versions the
         responses return)
  post   POST an appointment (distinct clinician/slot per request)
  live   GET /health/live against a bare ``/health``: the stack without the database

Every figure is from this run; the ratio is the service's req/s over the bare app's. A run
in which either side answered anything but 2xx is reported as failed. With ``--profile``,
py-spy samples the service's (first) worker during the ``get`` scenario and writes a flame
graph SVG. Results are also written to ``bench/results/http_path.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from sqlalchemy.ext.asyncio import AsyncSession

from _common import (
    DEFAULT_PG_URL,
    asyncpg_dsn,
    machine,
    patient_rows,
    postgres_version,
    runtime_role,
    throwaway_database,
    timestamp,
    versions,
    write_json,
)
from healthdb import DatabaseService, QueryOptions, Role
from healthdb.migrate import upgrade
from healthdb.models import Patient
from healthdb.phi.crypto import generate_key

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
SCENARIOS = ("get", "page", "patch", "post", "live")
PASSWORD = "bench-Correct-Horse-Battery-9"
REDIS_URL = os.environ.get("HEALTHDB_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")


# -- results --------------------------------------------------------------------------------


@dataclass(slots=True)
class WrkResult:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def ok(self) -> bool:
        return self.non_2xx == 0 and self.socket_errors == 0 and self.requests > 0


@dataclass(slots=True)
class ScenarioResult:
    name: str
    label: str
    bare: WrkResult
    service: WrkResult
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.service.rps / self.bare.rps if self.bare.rps else 0.0


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip()).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def parse_wrk(output: str, seconds: float) -> WrkResult:
    requests = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    duration = re.search(r"requests in ([\d.]+)(us|ms|s|m)", output)
    elapsed = _ms(duration.group(1) + duration.group(2)) / 1000 if duration else seconds
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.M)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    return WrkResult(
        requests=requests,
        seconds=elapsed,
        p50_ms=_ms(p50.group(1)) if p50 else float("nan"),
        p99_ms=_ms(p99.group(1)) if p99 else float("nan"),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(map(int, errors.groups())) if errors else 0,
    )


# -- wrk scripts ----------------------------------------------------------------------------


def _lua_list(values: Sequence[str]) -> str:
    return "{" + ",".join(f'"{v}"' for v in values) + "}"


def lua_get(prefix: str, ids: Sequence[uuid.UUID], token: str | None) -> str:
    return f"""
local ids = {_lua_list([str(i) for i in ids])}
local n = #ids
local i = 0
{_auth(token)}
request = function()
  i = i + 1
  return wrk.format("GET", "{prefix}" .. ids[(i % n) + 1], headers)
end
"""


def lua_fixed(path: str, token: str | None) -> str:
    return f"""
{_auth(token)}
request = function()
  return wrk.format("GET", "{path}", headers)
end
"""


def lua_patch(prefix: str, versions: dict[uuid.UUID, int], token: str | None) -> str:
    pairs = ",".join(f'{{"{pid}",{v}}}' for pid, v in versions.items())
    fallback = next(iter(versions))
    return f"""
local free = {{{pairs}}}
local phones = {{"+14155550100","+14155550101","+14155550102","+14155550103"}}
local k = 0
{_auth(token)}
headers["Content-Type"] = "application/json"
request = function()
  local p = table.remove(free, 1)
  if p == nil then p = {{"{fallback}", 0}} end  -- every patient lost to errors: a 4xx, counted
  k = k + 1
  local h = {{}}
  for key, value in pairs(headers) do h[key] = value end
  h["If-Match"] = '"' .. p[2] .. '"'
  local body = '{{"phone":"' .. phones[(k % 4) + 1] .. '"}}'
  return wrk.format("PATCH", "{prefix}" .. p[1], h, body)
end
response = function(status, hdrs, body)
  local id = string.match(body, '"id"%s*:%s*"([%x%-]+)"')
  local v = string.match(body, '"version"%s*:%s*(%d+)')
  if id and v then table.insert(free, {{id, tonumber(v)}}) end
end
"""


def lua_post(
    path: str,
    patients: Sequence[uuid.UUID],
    clinicians: Sequence[uuid.UUID],
    base: dt.datetime,
    token: str | None,
) -> str:
    return f"""
local patients = {_lua_list([str(p) for p in patients])}
local clinicians = {_lua_list([str(c) for c in clinicians])}
local base = {int(base.timestamp())}
local k = 0
{_auth(token)}
headers["Content-Type"] = "application/json"
request = function()
  k = k + 1
  local c = clinicians[(k % #clinicians) + 1]
  local p = patients[(k % #patients) + 1]
  local slot = math.floor(k / #clinicians)
  local start = base + slot * 1800
  local body = string.format(
    '{{"patient_id":"%s","clinician_id":"%s","start_at":"%s","end_at":"%s","reason":"bench"}}',
    p, c, os.date("!%Y-%m-%dT%H:%M:%SZ", start), os.date("!%Y-%m-%dT%H:%M:%SZ", start + 1200))
  return wrk.format("POST", "{path}", headers, body)
end
"""


def _auth(token: str | None) -> str:
    if token is None:
        return "local headers = {}"
    return f'local headers = {{}}\nheaders["Authorization"] = "Bearer {token}"'


def run_wrk(url: str, script: str, *, seconds: float, connections: int) -> WrkResult:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
    try:
        out = subprocess.run(
            [
                "wrk",
                "-t1",
                f"-c{connections}",
                f"-d{max(1, round(seconds))}s",
                "--latency",
                "--timeout",
                "10s",
                "-s",
                f.name,
                url,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
    finally:
        os.unlink(f.name)
    if out.returncode != 0:
        raise SystemExit(f"wrk failed ({out.returncode}): {out.stderr.strip() or out.stdout}")
    return parse_wrk(out.stdout, seconds)


# -- processes ------------------------------------------------------------------------------


@contextmanager
def process(cmd: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{url} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} did not become ready in {timeout} s:\n{log.read_text()[-3000:]}")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def worker_pids(root: int) -> list[int]:
    """The uvicorn processes serving requests: the root, or its children with --workers."""
    children = Path(f"/proc/{root}/task/{root}/children")
    found = [int(p) for p in children.read_text().split()] if children.exists() else []
    return found or [root]


# -- seeding --------------------------------------------------------------------------------


@dataclass(slots=True)
class Seeded:
    clinic_id: uuid.UUID
    email: str
    patients: list[uuid.UUID]
    clinicians: list[uuid.UUID]


async def seed(
    owner: str, runtime: str, env: dict[str, str], patients: int, clinicians: int
) -> Seeded:
    from healthdb_api.accounts import create_account
    from healthdb_api.settings import ApiSettings

    settings = ApiSettings(
        database_url=runtime,
        admin_database_url=owner,
        phi_keys=env["HEALTHDB_PHI_KEYS"],
        phi_index_key=env["HEALTHDB_PHI_INDEX_KEY"],
        jwt_secret=env["HEALTHDB_JWT_SECRET"],
        auto_migrate=False,
        slow_query_ms=60_000,
    )
    email = "doctor@bench.example"
    doctor, clinic_id = await create_account(
        settings,
        email=email,
        password=PASSWORD,
        full_name="Bench Doctor",
        role=Role.DOCTOR,
        clinic_name="Bench clinic",
    )
    staff = [doctor]
    for n in range(1, clinicians):
        user, _ = await create_account(
            settings,
            email=f"clinician{n}@bench.example",
            password=PASSWORD,
            full_name=f"Clinician {n}",
            role=Role.DOCTOR,
            clinic_id=str(clinic_id),
        )
        staff.append(user)
    async with (
        DatabaseService.connect(settings) as db,
        db.clinic(clinic_id, role=Role.CLINIC_ADMIN, purpose="bench"),
    ):
        result = await db.execute_batch(patient_rows(patients), Patient, chunk_size=5000)
        if not result.ok:
            raise SystemExit(f"seeding failed: {result.failures[:3]}")

        async def ids(session: AsyncSession) -> list[uuid.UUID]:
            from sqlalchemy import select

            return list((await session.scalars(select(Patient.id))).all())

        found = await db.execute_read(ids, QueryOptions.for_read("bench.ids"))
    return Seeded(clinic_id, email, sorted(found), staff)


async def analyze(owner: str) -> None:
    """Refresh the planner's statistics after the bulk load, as an operator (or autovacuum,
    eventually) would: with none, the planner picks a clinic-wide index scan over the
    primary key for a by-id read (measured: 0.8 ms instead of 0.04 ms per read)."""
    conn = await asyncpg.connect(asyncpg_dsn(owner))
    try:
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


async def versions_of(owner: str, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, int]:
    conn = await asyncpg.connect(asyncpg_dsn(owner))
    try:
        rows = await conn.fetch("SELECT id, version FROM patients WHERE id = ANY($1)", list(ids))
    finally:
        await conn.close()
    return {r["id"]: r["version"] for r in rows}


async def audit_rows(owner: str) -> int:
    conn = await asyncpg.connect(asyncpg_dsn(owner))
    try:
        return int(await conn.fetchval("SELECT count(*) FROM audit_events"))
    finally:
        await conn.close()


def login(base: str, email: str) -> str:
    reply = httpx.post(
        f"{base}/api/v1/auth/login", json={"email": email, "password": PASSWORD}, timeout=30
    )
    reply.raise_for_status()
    return str(reply.json()["access_token"])


# -- the run --------------------------------------------------------------------------------


def service_env(runtime: str, owner: str, data_dir: Path, workers: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHDB_")}
    env.update(
        HEALTHDB_DATABASE_URL=runtime,
        HEALTHDB_ADMIN_DATABASE_URL=owner,
        HEALTHDB_REDIS_URL=REDIS_URL,
        HEALTHDB_RATE_LIMIT_PER_MINUTE="10000000",
        HEALTHDB_RATE_LIMIT_BURST="10000000",
        HEALTHDB_JWT_SECRET=generate_key() + generate_key(),
        HEALTHDB_ACCESS_TOKEN_TTL="3600",
        HEALTHDB_PHI_KEYS=f"bench={generate_key()}",
        HEALTHDB_PHI_INDEX_KEY=generate_key(),
        HEALTHDB_AUTO_MIGRATE="false",
        HEALTHDB_DATA_DIR=str(data_dir),
    )
    return env


def quiesce() -> None:
    """wrk stops counting at its deadline, but the server still finishes the requests in
    flight: let them land before the next script reads versions or counts audit rows."""
    time.sleep(2)


def profile(pid: int, seconds: float, out: Path, fmt: str) -> subprocess.Popen[bytes] | None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        print("py-spy not found: no flame graph", file=sys.stderr)
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    target = out.with_suffix(".svg" if fmt == "flamegraph" else ".txt")
    command = [spy, "record", "-p", str(pid), "-d", str(int(seconds)), "-r", "100", "-f", fmt]
    return subprocess.Popen(
        [*command, "-o", str(target)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def scenario(
    name: str,
    args: argparse.Namespace,
    seeded: Seeded,
    owner: str,
    bare: str,
    service: str,
    token: str,
    service_pid: int,
) -> ScenarioResult:
    prefix = "/api/v1/patients/"
    reads = seeded.patients[200:]
    updates = seeded.patients[: max(100, args.connections * 3)]
    run = {"seconds": args.seconds, "connections": args.connections}

    def scripts() -> tuple[str, str, str]:
        if name == "get":
            return (
                "GET one patient (doctor, audited)",
                lua_get("/patients/", reads, None),
                lua_get(prefix, reads, token),
            )
        if name == "page":
            return (
                "GET a page of 50 patients",
                lua_fixed(f"/patients?clinic_id={seeded.clinic_id}&limit=50", None),
                lua_fixed("/api/v1/patients?limit=50", token),
            )
        if name == "patch":
            current = asyncio.run(versions_of(owner, updates))
            return (
                "PATCH a patient (If-Match)",
                lua_patch("/patients/", current, None),
                lua_patch(prefix, current, token),
            )
        if name == "post":
            base = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)
            base += dt.timedelta(days=30 + 3650 * scripts.calls)  # type: ignore[attr-defined]
            scripts.calls += 1  # type: ignore[attr-defined]
            return (
                "POST an appointment",
                lua_post("/appointments", reads, seeded.clinicians, base, None),
                lua_post("/api/v1/appointments", reads, seeded.clinicians, base, token),
            )
        return (
            "GET /health/live (no database)",
            lua_fixed("/health", None),
            lua_fixed("/health/live", token),
        )

    scripts.calls = 0  # type: ignore[attr-defined]
    fresh = name in ("patch", "post")  # versions and slots move with every run

    def timed(url: str, side: int) -> WrkResult:
        script = scripts()[side]
        run_wrk(url, script, seconds=args.warmup, connections=args.connections)
        quiesce()
        if fresh:
            script = scripts()[side]
        result = run_wrk(url, script, **run)
        quiesce()
        return result

    label = scripts()[0]
    bare_result = timed(bare, 1)
    before = asyncio.run(audit_rows(owner))
    service_result = timed(service, 2)
    after = asyncio.run(audit_rows(owner))
    if name == "get" and args.profile:
        # Extra runs under the sampler (it slows the process): never the reported figures.
        for fmt in ("flamegraph", "raw"):
            spy = profile(service_pid, args.seconds, Path(args.profile), fmt)
            run_wrk(service, scripts()[2], **run)
            if spy is not None:
                spy.wait(60)
            quiesce()
    result = ScenarioResult(name, label, bare_result, service_result)
    if service_result.requests:
        # Approximate: the requests still in flight at wrk's deadline land afterwards.
        result.extra["audit_rows_per_counted_request"] = round(
            (after - before) / service_result.requests, 3
        )
    if name in ("get", "page"):
        path = f"{prefix}{reads[0]}" if name == "get" else "/api/v1/patients?limit=50"
        result.extra["audit_rows_per_request_exact"] = exact_audit(owner, service + path, token)
    return result


def exact_audit(owner: str, url: str, token: str, requests: int = 20) -> float:
    """Audit rows written per request, from ``requests`` sequential requests on a quiet
    service (the load's figure above is blurred by requests in flight at its deadline)."""
    before = asyncio.run(audit_rows(owner))
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(headers=headers, timeout=30) as client:
        for _ in range(requests):
            client.get(url).raise_for_status()
    return (asyncio.run(audit_rows(owner)) - before) / requests


def report(results: list[ScenarioResult], args: argparse.Namespace) -> None:
    print(
        f"\nwrk -t1 -c{args.connections} -d{args.seconds}s; service workers: {args.workers}; "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    head = f"{'scenario':<36} {'bare req/s':>11} {'p50':>7} {'p99':>7}"
    head += f" {'healthdb req/s':>15} {'p50':>7} {'p99':>7} {'ratio':>7}"
    print(head)
    for r in results:
        flag = "" if r.bare.ok and r.service.ok else "  FAILED (non-2xx or socket errors)"
        print(
            f"{r.label:<36} {r.bare.rps:>11,.0f} {r.bare.p50_ms:>6.1f}m {r.bare.p99_ms:>6.1f}m"
            f" {r.service.rps:>15,.0f} {r.service.p50_ms:>6.1f}m {r.service.p99_ms:>6.1f}m"
            f" {r.ratio:>6.2f}x{flag}"
        )
        for key, value in r.extra.items():
            print(f"    {key}: {value}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--patients", type=int, default=2000)
    parser.add_argument("--clinicians", type=int, default=16)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--profile", default=None, help="flame graph SVG of the get scenario")
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL)
    parser.add_argument("--out", default="http_path.json")
    args = parser.parse_args()
    names = [s for s in args.scenarios.split(",") if s]
    unknown = set(names) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s) {sorted(unknown)}; choose from {SCENARIOS}")
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: run scripts/install-tools")
    asyncio.run(_main(args, names))


async def _main(args: argparse.Namespace, names: list[str]) -> None:
    async with throwaway_database(args.pg_url, prefix="bench_http") as owner:
        await upgrade(owner)
        async with runtime_role(owner) as runtime:
            await asyncio.to_thread(_run, args, names, owner, runtime)


def _run(args: argparse.Namespace, names: list[str], owner: str, runtime: str) -> None:
    with tempfile.TemporaryDirectory(prefix="healthdb-bench-") as tmp:
        tmp_path = Path(tmp)
        env = service_env(runtime, owner, tmp_path / "data", args.workers)
        seeded = asyncio.run(seed(owner, runtime, env, args.patients, args.clinicians))
        asyncio.run(analyze(owner))
        service_port, bare_port = free_port(), free_port()
        healthdb_bin = str(Path(sys.executable).with_name("healthdb"))
        serve = [healthdb_bin, "serve", "--port", str(service_port)]
        if args.workers > 1:
            serve += ["--workers", str(args.workers)]
        bare_env = {**env, "BARE_DSN": asyncpg_dsn(owner)}
        bare_cmd = [
            sys.executable,
            "-m",
            "uvicorn",
            "bare_app:app",
            "--app-dir",
            str(BENCH_DIR),
            "--port",
            str(bare_port),
            "--no-access-log",
            "--log-level",
            "warning",
        ]
        service_url = f"http://127.0.0.1:{service_port}"
        bare_url = f"http://127.0.0.1:{bare_port}"
        with (
            process(serve, env, tmp_path / "service.log") as svc,
            process(bare_cmd, bare_env, tmp_path / "bare.log") as bare,
        ):
            wait_ready(f"{service_url}/health/live", svc, tmp_path / "service.log")
            wait_ready(f"{bare_url}/health", bare, tmp_path / "bare.log")
            if args.workers > 1:
                time.sleep(2)  # every worker up
            token = login(service_url, seeded.email)
            pid = worker_pids(svc.pid)[0]
            results = []
            for name in names:
                print(f"-- {name}", flush=True)
                results.append(
                    scenario(name, args, seeded, owner, bare_url, service_url, token, pid)
                )
            log_lines = (tmp_path / "service.log").read_text(errors="replace").count("\n")
        report(results, args)
        print(f"service log lines over the run: {log_lines}")
        pg = asyncio.run(postgres_version(owner))
        path = write_json(
            args.out,
            {
                "when": timestamp(),
                "machine": machine(),
                "versions": versions(postgresql=pg),
                "args": vars(args),
                "service_log_lines": log_lines,
                "results": [
                    {
                        "scenario": r.name,
                        "label": r.label,
                        "ratio": round(r.ratio, 3),
                        "bare": {**_fig(r.bare)},
                        "service": {**_fig(r.service)},
                        **r.extra,
                    }
                    for r in results
                ],
            },
        )
        print(f"results: {path}")
        if not all(r.bare.ok and r.service.ok for r in results):
            raise SystemExit(1)


def _fig(w: WrkResult) -> dict[str, Any]:
    return {
        "rps": round(w.rps, 1),
        "p50_ms": w.p50_ms,
        "p99_ms": w.p99_ms,
        "non_2xx": w.non_2xx,
        "socket_errors": w.socket_errors,
    }


if __name__ == "__main__":
    sys.argv[0] = "http_path.py"
    main()
