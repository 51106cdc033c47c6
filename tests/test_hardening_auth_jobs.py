"""Hardening of API keys, the keys file and the jobs store: failed-key limits that cannot lock a
key out, a keys file that goes bad under a running server, jobs written and read by servers with
different GENFORGE_JOBS_KEY settings, the jobs database's file mode and `serve --jobs-url` checks."""
from __future__ import annotations

import logging
import os
import sqlite3
import stat

import pytest

pytest.importorskip("fastapi")
from cryptography.fernet import Fernet  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from serve_helpers import auth, expected_pngs, keys, one_thread, runs, settings, wait_job  # noqa: E402,F401

from genforge.errors import GenforgeError  # noqa: E402
from genforge.serve import auth as auth_mod  # noqa: E402
from genforge.serve import create_app  # noqa: E402
from genforge.serve.auth import KeyStore  # noqa: E402
from genforge.serve.jobs import JobStore  # noqa: E402

GAN_PARAMS = {"model": "tiny-gan", "n": 2, "seed": 4, "steps": 25, "sampler": "dpm++", "guidance": 1.0,
              "labels": None}


@pytest.fixture
def scrypt_calls(monkeypatch):
    """How many times the server ran scrypt (the expensive part of checking a key)."""
    calls = []
    real = auth_mod._scrypt

    def counting(secret, salt):
        calls.append(salt)
        return real(secret, salt)

    monkeypatch.setattr(auth_mod, "_scrypt", counting)
    return calls


@pytest.fixture
def serve_log():
    """Records the genforge.serve logger emits while the test runs."""
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record):
            records.append(record)

    logger, handler = logging.getLogger("genforge.serve"), Collect(logging.INFO)
    old = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(old)


def _from(app, address):
    return TestClient(app, client=(address, 40000))


# -- failed key checks --------------------------------------------------------------------------------
def test_known_key_id_under_attack_still_admits_its_secret(tmp_path, runs, keys, scrypt_calls):
    app = create_app(settings(tmp_path, runs, keys, models=("gan",)))
    with TestClient(app):
        attacker, owner = _from(app, "203.0.113.7"), _from(app, "198.51.100.2")
        wrong = f"gf_{keys['gen_id']}_not-the-secret"
        codes = [attacker.get("/v1/models", headers=auth(wrong + str(i))).status_code for i in range(12)]
        assert codes == [401] * 5 + [429] * 7
        assert len(scrypt_calls) == 5  # refused guesses cost no scrypt
        # first use of the real key in this process, from another address, while the id is under attack
        assert owner.get("/v1/models", headers=auth(keys["gen"])).status_code == 200
        r = attacker.get("/v1/models", headers=auth(wrong))
        assert r.status_code == 429 and "address" in r.json()["error"]["message"]


def test_unknown_key_id_costs_one_scrypt_like_a_known_one(tmp_path, runs, keys, scrypt_calls):
    app = create_app(settings(tmp_path, runs, keys, models=("gan",)))
    with TestClient(app):
        known = [_from(app, "192.0.2.1").get("/v1/models", headers=auth(f"gf_{keys['gen_id']}_guess{i}"))
                 for i in range(6)]
        assert len(scrypt_calls) == 5
        unknown = [_from(app, "192.0.2.2").get("/v1/models", headers=auth(f"gf_0123456789ab_guess{i}"))
                   for i in range(6)]
        assert len(scrypt_calls) == 10  # the same work for an id that does not exist
        assert [r.status_code for r in known] == [r.status_code for r in unknown] == [401] * 5 + [429]
        assert [r.json()["error"]["code"] for r in known] == [r.json()["error"]["code"] for r in unknown]


def test_failed_key_checks_have_a_global_bound(tmp_path, runs, keys, scrypt_calls):
    app = create_app(settings(tmp_path, runs, keys, models=("gan",), auth_fail_global_rate=0.01))
    with TestClient(app):
        assert _from(app, "192.0.2.100").get("/v1/models", headers=auth(keys["gen"])).status_code == 200
        codes = [_from(app, f"192.0.2.{i}").get("/v1/models", headers=auth(f"gf_{keys['gen_id']}_x")).status_code
                 for i in range(1, 9)]  # one guess from each of many addresses
        assert codes == [401] * 5 + [429] * 3 and len(scrypt_calls) == 1 + 5
        r = _from(app, "192.0.2.101").get("/v1/models", headers=auth(keys["admin"]))
        assert r.status_code == 429 and "server" in r.json()["error"]["message"]
        # a key this process verified before needs no scrypt, so it is still admitted
        assert _from(app, "192.0.2.102").get("/v1/models", headers=auth(keys["gen"])).status_code == 200


def test_failed_check_buckets_stay_bounded():
    """Buckets exist only for addresses that failed, and refilled ones are dropped when many pile up."""
    from genforge.serve.auth import RateLimiter

    now = [0.0]
    rl = RateLimiter(rate=1.0, burst=5, clock=lambda: now[0], max_keys=3)
    assert rl.peek("never-failed") == 0 and rl._buckets == {}
    for who in ("a", "b", "c"):
        rl.take(who)
    now[0] += 10.0  # all three are full again
    rl.take("d")
    assert set(rl._buckets) == {"d"}


# -- the keys file -------------------------------------------------------------------------------------
def test_corrupt_keys_file_keeps_the_last_good_key_set(tmp_path, runs, keys, serve_log):
    path = tmp_path / "keys.json"
    good = keys["path"].read_text()
    path.write_text(good)
    with TestClient(create_app(settings(tmp_path, runs, keys, models=("gan",), keys_path=path))) as c:
        assert c.get("/v1/models", headers=auth(keys["gen"])).status_code == 200
        path.write_text(good[: len(good) // 2])  # a copy caught half-way
        for key in ("gen", "admin", "clf", "admin"):  # cached and not-yet-verified keys alike
            assert c.get("/v1/models", headers=auth(keys[key])).status_code == 200
        errors = [r for r in serve_log if r.levelno >= logging.ERROR and "keys file" in r.getMessage()]
        assert len(errors) == 1
        ready = c.get("/readyz")
        assert ready.status_code == 200 and any("keys file" in w for w in ready.json()["warnings"])
        path.write_text(good)
        assert c.get("/v1/models", headers=auth(keys["both"])).status_code == 200
        assert "warnings" not in c.get("/readyz").json()


def test_server_started_with_a_corrupt_keys_file_answers_503(tmp_path, runs, keys):
    path = tmp_path / "keys.json"
    path.write_text('{"version": 1, "keys": [')
    with TestClient(create_app(settings(tmp_path, runs, keys, models=("gan",), keys_path=path))) as c:
        r = c.get("/v1/models", headers=auth(keys["gen"]))
        assert r.status_code == 503 and r.json()["error"]["code"] == "keys_unavailable"
        assert c.get("/v1/models").status_code == 401  # no key at all is still the caller's problem
        ready = c.get("/readyz")
        assert ready.status_code == 503 and "keys file" in ready.json()["reason"]
        path.write_text(keys["path"].read_text())
        assert c.get("/v1/models", headers=auth(keys["gen"])).status_code == 200
        assert c.get("/readyz").status_code == 200
    for bad in ("[", "[]"):
        path.write_text(bad)
        with pytest.raises(GenforgeError, match="not a readable genforge keys file"):
            KeyStore(path).create("x", "generate")  # the keys commands never write over a bad file
        assert path.read_text() == bad


# -- jobs and GENFORGE_JOBS_KEY ---------------------------------------------------------------------------
def test_job_queued_without_key_then_run_with_key_reads_back(tmp_path, runs, keys, monkeypatch):
    cfg = settings(tmp_path, runs, keys, models=("gan",))
    store = JobStore(cfg.jobs_url)  # queued by a server without GENFORGE_JOBS_KEY
    job_id = store.create("samples", "tiny-gan", GAN_PARAMS, keys["gen_id"])
    store.close()
    monkeypatch.setenv("GENFORGE_JOBS_KEY", Fernet.generate_key().decode())
    with TestClient(create_app(cfg)) as c:
        j = wait_job(c, job_id, keys["gen"])
        assert j["status"] == "succeeded" and j["result"]["images"] == expected_pngs(runs["gan"], 2, 4)
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("jobs.db*"))
    assert b"\x89PNG" not in raw and j["result"]["images"][0].encode()[:40] not in raw
    monkeypatch.delenv("GENFORGE_JOBS_KEY")
    with TestClient(create_app(cfg)) as c:
        r = c.get(f"/v1/jobs/{job_id}", headers=auth(keys["gen"]))
        assert r.status_code == 200 and r.json()["status"] == "succeeded" and "result" not in r.json()
        assert r.json()["params"]["seed"] == 4 and "GENFORGE_JOBS_KEY" in r.json()["result_error"]


def test_server_without_the_key_leaves_encrypted_jobs_queued(tmp_path, runs, keys, serve_log):
    cfg = settings(tmp_path, runs, keys, models=("gan",))
    sealed_store = JobStore(cfg.jobs_url, Fernet.generate_key())
    sealed = sealed_store.create("samples", "tiny-gan", GAN_PARAMS, keys["gen_id"])
    for other in (JobStore(cfg.jobs_url), JobStore(cfg.jobs_url, Fernet.generate_key())):
        assert other.claim_next() is None and other.unopenable_queued() == 1  # no key, another key
        other.close()
    app = create_app(cfg)
    with TestClient(app) as c:
        ready = c.get("/readyz")
        assert ready.status_code == 200 and any("GENFORGE_JOBS_KEY" in w for w in ready.json()["warnings"])
        plain = c.post("/v1/jobs", json={"params": {**GAN_PARAMS, "seed": 5}}, headers=auth(keys["gen"]))
        assert wait_job(c, plain.json()["id"], keys["gen"])["status"] == "succeeded"  # runner got past it
        runner = app.state.serve["runner"]
        for _ in range(3):
            c.portal.call(runner.sweep)
        r = c.get(f"/v1/jobs/{sealed}", headers=auth(keys["gen"]))
        assert r.status_code == 200 and r.json()["status"] == "queued" and r.json()["attempts"] == 0
        assert "GENFORGE_JOBS_KEY" in r.json()["params_error"]
    said = [x for x in serve_log if "GENFORGE_JOBS_KEY" in x.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.WARNING
    row = sealed_store.claim_next()  # a server with the key still gets it
    assert row.id == sealed and sealed_store.params(row)["seed"] == 4
    sealed_store.close()


_OLD_SCHEMA = """CREATE TABLE genforge_jobs (id VARCHAR(40) NOT NULL PRIMARY KEY, type VARCHAR(32) NOT NULL,
 model VARCHAR(200) NOT NULL, owner VARCHAR(64) NOT NULL, status VARCHAR(16) NOT NULL, progress FLOAT NOT NULL,
 params BLOB NOT NULL, result BLOB, encrypted BOOLEAN NOT NULL, error TEXT, attempts INTEGER NOT NULL,
 worker VARCHAR(200), created FLOAT NOT NULL, started FLOAT, finished FLOAT, heartbeat FLOAT)"""


def test_jobs_database_of_the_old_schema_still_opens(tmp_path):
    raw = Fernet.generate_key()
    key = Fernet(raw)
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.execute(_OLD_SCHEMA)
    rows = [  # id, status, params, result, encrypted flag, created
        ("job_plain", "queued", b'{"seed": 1}', None, 0, 1.0),
        ("job_sealed", "queued", key.encrypt(b'{"seed": 2}'), None, 1, 2.0),
        # what the old code stored for a job queued without the key and run with it
        ("job_mixed", "succeeded", b'{"seed": 3}', key.encrypt(b'{"images": []}'), 0, 3.0),
    ]
    for job_id, status, params, result, enc, created in rows:
        db.execute("INSERT INTO genforge_jobs VALUES (?, 'samples', 'm', 'o', ?, 0, ?, ?, ?, NULL, 0, NULL, ?, "
                   "NULL, NULL, NULL)", (job_id, status, params, result, enc, created))
    db.commit()
    db.close()
    url = f"sqlite:///{path}"
    with_key = JobStore(url, raw)
    assert with_key.public(with_key.row("job_mixed"))["result"] == {"images": []}
    assert with_key.public(with_key.row("job_sealed"))["params"] == {"seed": 2}
    with_key.close()
    keyless = JobStore(url)  # opening again (schema already current) works too
    assert "GENFORGE_JOBS_KEY" in keyless.public(keyless.row("job_mixed"))["result_error"]
    assert keyless.claim_next().id == "job_plain" and keyless.claim_next() is None  # never the sealed one
    keyless.close()


def test_sqlite_jobs_files_are_private(tmp_path):
    old = os.umask(0o022)
    try:
        store = JobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
        store.create("samples", "m", {"seed": 1}, "o")
        files = sorted(tmp_path.glob("jobs.db*"))
        assert {p.name for p in files} >= {"jobs.db", "jobs.db-wal"}
        assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {p.name: "0o600" for p in files}
        store.close()
    finally:
        os.umask(old)


# -- genforge serve --jobs-url ------------------------------------------------------------------------
@pytest.mark.parametrize("url, says", [("notaurl", "not a database URL"),
                                       ("postgresql+nosuchdriver://u:hunter2@db/jobs", "nosuchdriver")])
def test_serve_refuses_a_bad_jobs_url_before_starting(cli, runs, url, says, monkeypatch):
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("the server started"))
    code, _, err = cli("serve", runs["gan"], "--jobs-url", url)
    assert code == 2 and err.startswith("error: ") and says in err and len(err.strip().splitlines()) == 1
    assert "hunter2" not in err


def test_serve_takes_the_jobs_url_from_env_or_file(cli, runs, tmp_path, monkeypatch):
    import uvicorn

    started = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **k: started.append(app.state.settings.jobs_url))
    env_url = f"sqlite:///{tmp_path / 'env.db'}"
    monkeypatch.setenv("GENFORGE_JOBS_URL", env_url)
    assert cli("serve", runs["gan"])[0] == 0 and started[-1] == env_url
    secret = tmp_path / "jobs-url"
    secret.write_text(f"sqlite:///{tmp_path / 'file.db'}\n")
    monkeypatch.delenv("GENFORGE_JOBS_URL")
    assert cli("serve", runs["gan"], "--jobs-url-file", secret)[0] == 0
    assert started[-1] == f"sqlite:///{tmp_path / 'file.db'}"
    code, _, err = cli("serve", runs["gan"], "--jobs-url-file", secret, "--jobs-url", env_url)
    assert code == 2 and "--jobs-url-file" in err
    code, _, err = cli("serve", runs["gan"], "--jobs-url-file", tmp_path / "missing")
    assert code == 2 and "missing" in err
    code, out, _ = cli("serve", "--help")
    assert "GENFORGE_JOBS_URL" in out and "--jobs-url-file" in out
