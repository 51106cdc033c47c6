"""Background jobs: lifecycle, results equal to direct generation, recovery after a crashed server,
encryption at rest, and (opt-in) PostgreSQL."""
from __future__ import annotations

import base64
import os
import sqlite3
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from serve_helpers import auth, expected_pngs, keys, one_thread, runs, settings, wait_job  # noqa: E402,F401

from genforge.serve import create_app  # noqa: E402


def test_job_lifecycle(tmp_path, runs, keys):
    with TestClient(create_app(settings(tmp_path, runs, keys, models=("diffusion",)))) as c:
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


def _mark_running(db: Path, job_id: str, worker: str, attempts: int, heartbeat: float) -> None:
    with sqlite3.connect(db) as con:
        con.execute("UPDATE genforge_jobs SET status='running', worker=?, attempts=?, heartbeat=?, "
                    "started=? WHERE id=?", (worker, attempts, heartbeat, heartbeat, job_id))


def test_jobs_survive_a_crashed_server(tmp_path, runs, keys):
    from genforge.serve.jobs import JobStore

    cfg = settings(tmp_path, runs, keys, models=("gan",), job_max_attempts=2)
    db = tmp_path / "jobs.db"
    store = JobStore(cfg.jobs_url)
    params = {"model": "tiny-gan", "n": 2, "seed": 9, "steps": 25, "sampler": "dpm++", "guidance": 1.0,
              "labels": None}
    rerun = store.create("samples", "tiny-gan", params, keys["gen_id"])
    doomed = store.create("samples", "tiny-gan", params, keys["gen_id"])
    # as a server killed mid-job leaves them: running, by a process that no longer exists
    _mark_running(db, rerun, f"{os.uname().nodename}:999999999:dead", 1, time.time())
    _mark_running(db, doomed, "elsewhere:1:x", 2, time.time() - 3600)  # stale heartbeat, attempts used up
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


@pytest.mark.skipif(os.environ.get("GENFORGE_TEST_PG") != "1",
                    reason="PostgreSQL test: set GENFORGE_TEST_PG=1 and GENFORGE_TEST_PG_URL")
def test_jobs_on_postgres(tmp_path, runs, keys):
    url = os.environ.get("GENFORGE_TEST_PG_URL", "postgresql+psycopg://postgres@localhost/genforge_test")
    with TestClient(create_app(settings(tmp_path, runs, keys, models=("gan",), jobs_url=url))) as c:
        r = c.post("/v1/jobs", json={"params": {"model": "tiny-gan", "n": 1, "seed": 1}}, headers=auth(keys["gen"]))
        assert wait_job(c, r.json()["id"], keys["gen"])["status"] == "succeeded"


