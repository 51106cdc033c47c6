"""Background jobs: lifecycle, results equal to direct generation, recovery after a crashed server,
encryption at rest. The lifecycle and crash tests run on SQLite and, with GENFORGE_TEST_PG=1, on a
throwaway PostgreSQL server started here (or on the server at GENFORGE_TEST_PG_URL, whose genforge_jobs
table they drop)."""
from __future__ import annotations

import base64
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from serve_helpers import auth, expected_pngs, free_port, keys, one_thread, runs, settings, wait_job  # noqa: E402,F401
from sqlalchemy import update  # noqa: E402

from genforge.serve import create_app  # noqa: E402
from genforge.serve.jobs import JobStore, jobs, metadata  # noqa: E402

PG = os.environ.get("GENFORGE_TEST_PG") == "1"


def _pg_bindir() -> Optional[Path]:
    """Debian keeps the server binaries off PATH, one folder per major version: take the newest."""
    found = [Path(d) for d in glob.glob("/usr/lib/postgresql/*/bin") if os.path.exists(f"{d}/initdb")]
    if found:
        return max(found, key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else 0)
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@pytest.fixture(scope="module")
def pg_server():
    """A URL of a PostgreSQL database: GENFORGE_TEST_PG_URL's, or one of a server run here in a
    temporary folder (initdb + pg_ctl) and removed afterwards."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.fail("GENFORGE_TEST_PG=1 needs the PostgreSQL driver: pip install -e '.[pg]'", pytrace=False)
    if os.environ.get("GENFORGE_TEST_PG_URL"):
        yield os.environ["GENFORGE_TEST_PG_URL"]
        return
    bindir = _pg_bindir()
    if bindir is None:
        pytest.fail("GENFORGE_TEST_PG=1 but no PostgreSQL server (initdb, pg_ctl) in /usr/lib/postgresql/*/bin "
                    "or on PATH: install it with `apt-get install -y postgresql` (or run scripts/setup.sh "
                    "with GENFORGE_SETUP_PG=1), or set GENFORGE_TEST_PG_URL to a server's URL", pytrace=False)
    # not under pytest's tmp_path: its parents are root-only, and the socket path must stay short
    root = Path(tempfile.mkdtemp(prefix="genforge-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: run it as the user the package made
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.fail("running as root, PostgreSQL needs an unprivileged `postgres` user; install the "
                        "`postgresql` package, which creates it", pytrace=False)
        os.chown(root, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    data, log = root / "data", root / "server.log"

    def run(*cmd: str, check: bool = True) -> None:
        subprocess.run([*as_user, *cmd], cwd=root, check=check, capture_output=True, text=True, timeout=120)

    def remove() -> None:
        if (data / "postmaster.pid").exists():
            run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop", check=False)
        shutil.rmtree(root, ignore_errors=True)

    try:
        run(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync",
            "-E", "UTF8", "--locale=C")
        # fsync off: a throwaway server, and the two-core test machine is slow enough
        run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o",
            f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
        run(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "genforge_test")
    except subprocess.CalledProcessError as e:
        tail = log.read_text()[-2000:] if log.exists() else ""
        remove()
        pytest.fail(f"could not start PostgreSQL from {bindir}: {e.cmd[len(as_user)]} said:\n"
                    f"{e.stderr}{tail}", pytrace=False)
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/genforge_test"
    finally:
        remove()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.skipif(
    not PG, reason="PostgreSQL: set GENFORGE_TEST_PG=1 (needs `apt-get install postgresql`)"))])
def jobs_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.db'}"
    url = request.getfixturevalue("pg_server")
    store = JobStore(url)  # one database for the module: each test starts from an empty table
    metadata.drop_all(store.engine)
    store.close()
    return url


def test_job_lifecycle(tmp_path, runs, keys, jobs_url):
    with TestClient(create_app(settings(tmp_path, runs, keys, models=("diffusion",), jobs_url=jobs_url))) as c:
        h = auth(keys["gen"])
        params = {"model": "tiny-diffusion", "n": 3, "seed": 5, "steps": 3, "sampler": "ddpm"}
        r = c.post("/v1/jobs", json={"type": "samples", "params": params}, headers=h)
        assert r.status_code == 202 and r.json()["status"] in ("queued", "running")
        job_id = r.json()["id"]
        j = wait_job(c, job_id, keys["gen"])
        assert j["status"] == "succeeded" and j["progress"] == 1.0 and j["attempts"] == 1
        assert j["result"]["images"] == expected_pngs(runs["diffusion"], 3, 5, steps=3, sampler="ddpm")
        assert c.get(f"/v1/jobs/{job_id}", headers=auth(keys["both"])).status_code == 404  # not its owner
        assert c.get(f"/v1/jobs/{job_id}", headers=auth(keys["admin"])).status_code == 200
        assert [x["id"] for x in c.get("/v1/jobs", headers=h).json()["data"]] == [job_id]
        bad = c.post("/v1/jobs", json={"type": "samples", "params": {**params, "sampler": "x"}}, headers=h)
        assert bad.status_code == 422
        bad = c.post("/v1/jobs", json={"type": "speech", "params": params}, headers=h)
        assert bad.status_code == 422 and bad.json()["error"]["param"] == "type"
        assert c.get("/v1/jobs/job_%00", headers=h).status_code == 404  # PostgreSQL text holds no NUL
    store = JobStore(jobs_url)  # what a restarted server reads back
    assert store.public(store.row(job_id)) == j
    store.close()


def test_servers_starting_together_create_the_table_once(jobs_url):
    """Several workers started at once on a fresh database all open it (none dies on "table exists")."""
    barrier, stores, errors = threading.Barrier(6), [], []

    def start() -> None:
        barrier.wait()
        try:
            stores.append(JobStore(jobs_url))
        except Exception as e:  # noqa: BLE001 - the assertion below shows it
            errors.append(e)

    threads = [threading.Thread(target=start) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and len(stores) == 6
    for s in stores:
        s.close()


@pytest.mark.parametrize("have, want", [({"psycopg"}, "postgresql+psycopg://u:pw@db:5432/jobs"),
                                        ({"psycopg", "psycopg2"}, "postgresql://u:pw@db:5432/jobs")])
def test_bare_postgresql_url_uses_the_installed_driver(monkeypatch, have, want):
    import importlib.util

    from genforge.serve import jobs as jobs_mod

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name in have else
                        (None if name in ("psycopg", "psycopg2") else real(name, *a)))
    assert jobs_mod._driver_url("postgresql://u:pw@db:5432/jobs") == want
    assert jobs_mod._driver_url("sqlite:///x.db") == "sqlite:///x.db"


def _mark_running(store: JobStore, job_id: str, worker: str, attempts: int, heartbeat: float) -> None:
    with store.engine.begin() as c:
        c.execute(update(jobs).where(jobs.c.id == job_id).values(
            status="running", worker=worker, attempts=attempts, heartbeat=heartbeat, started=heartbeat))


def test_jobs_survive_a_crashed_server(tmp_path, runs, keys, jobs_url):
    cfg = settings(tmp_path, runs, keys, models=("gan",), job_max_attempts=2, jobs_url=jobs_url)
    store = JobStore(cfg.jobs_url)
    params = {"model": "tiny-gan", "n": 2, "seed": 9, "steps": 25, "sampler": "dpm++", "guidance": 1.0,
              "labels": None}
    rerun = store.create("samples", "tiny-gan", params, keys["gen_id"])
    doomed = store.create("samples", "tiny-gan", params, keys["gen_id"])
    # as a server killed mid-job leaves them: running, by a process that no longer exists
    _mark_running(store, rerun, f"{os.uname().nodename}:999999999:dead", 1, time.time())
    _mark_running(store, doomed, "elsewhere:1:x", 2, time.time() - 3600)  # stale heartbeat, attempts used up
    store.close()
    with TestClient(create_app(cfg)) as c:
        j = wait_job(c, rerun, keys["gen"])
        assert j["status"] == "succeeded" and j["attempts"] == 2
        assert j["result"]["images"] == expected_pngs(runs["gan"], 2, 9)
        d = c.get(f"/v1/jobs/{doomed}", headers=auth(keys["gen"])).json()
        assert d["status"] == "failed" and "stopped" in d["error"] and "2 attempts" in d["error"]


def test_jobs_encrypted_at_rest(tmp_path, runs, keys, monkeypatch):
    from cryptography.fernet import Fernet

    monkeypatch.setenv("GENFORGE_JOBS_KEY", Fernet.generate_key().decode())
    cfg = settings(tmp_path, runs, keys, models=("gan",))
    with TestClient(create_app(cfg)) as c:
        r = c.post("/v1/jobs", json={"params": {"model": "tiny-gan", "n": 2, "seed": 4, "labels": None}},
                   headers=auth(keys["gen"]))
        j = wait_job(c, r.json()["id"], keys["gen"])
    images = j["result"]["images"]
    assert images == expected_pngs(runs["gan"], 2, 4)
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("jobs.db*"))
    assert images[0].encode()[:40] not in raw and base64.b64decode(images[0]) not in raw
    assert b"\x89PNG" not in raw and b'"seed"' not in raw
    monkeypatch.delenv("GENFORGE_JOBS_KEY")
    with TestClient(create_app(cfg)) as c:
        j = c.get(f"/v1/jobs/{j['id']}", headers=auth(keys["gen"])).json()
        assert "result" not in j and "GENFORGE_JOBS_KEY" in j["result_error"]
