"""Bad input reaching the server and the CLI: Unicode digits as class labels, loosely typed JSON,
non-finite floats and out-of-range seeds; and what the logs may hold with --redact-inputs."""
from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("fastapi")
import httpx  # noqa: E402
from fastapi import Request  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from serve_helpers import auth, free_port, keys, one_thread, runs, settings, stop_server, wait_job  # noqa: E402,F401

import genforge  # noqa: E402
from conftest import TINY_GAN  # noqa: E402
from genforge.errors import GenforgeError  # noqa: E402
from genforge.serve import create_app  # noqa: E402
from genforge.serve.observability import configure_logging  # noqa: E402

# Unicode digits that str.isdigit() accepts but int() refuses: they once reached int() and made a 500
MARK = "\u00b2\u00b3\u2079\u2078"  # ²³⁹⁸
# JsonFormatter writes non-ASCII as \\uXXXX escapes, so a leak can show up in either spelling
MARK_FORMS = (MARK, "".join(f"\\u{ord(c):04x}" for c in MARK), "".join(f"\\u{ord(c):04X}" for c in MARK))


@pytest.fixture
def client(tmp_path, runs, keys):
    app = create_app(settings(tmp_path, runs, keys, models=("gan", "cgan"), rate_limit=0))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def saved_logging():
    """configure_logging changes process-wide loggers; put them back for the tests that follow."""
    names = ["", "genforge", "genforge.serve", "uvicorn", "uvicorn.error", "uvicorn.access", "asyncio"]
    saved = {n: (logging.getLogger(n).handlers[:], logging.getLogger(n).level, logging.getLogger(n).propagate)
             for n in names}
    yield
    for n, (handlers, level, propagate) in saved.items():
        lg = logging.getLogger(n)
        if n:
            lg.handlers[:], lg.propagate = handlers, propagate
        else:  # pytest swaps its own capture handlers on the root logger between test phases
            lg.handlers[:] = [h for h in lg.handlers if not getattr(h, "genforge", False)]
        lg.setLevel(level)


def _our_handler() -> logging.Handler:
    return next(h for h in logging.getLogger().handlers if getattr(h, "genforge", False))


# -- 1. class labels: ASCII indices in range or class names, nothing else -----------------------------
@pytest.mark.parametrize("label", ["\u00b2", "\u0663", "\uff11", "1\u00b2", "+1", "-0", " ", "", "3", "1.0"])
def test_pipeline_refuses_labels_that_are_not_indices_or_names(runs, label):
    pipe = genforge.load(runs["cgan"], device="cpu")
    with pytest.raises(GenforgeError) as e:
        pipe.label_tensor(2, [label])
    msg = str(e.value)
    assert "\n" not in msg and "label" in msg and "circle, square, triangle" in msg and "0..2" in msg


def test_pipeline_accepts_indices_and_names(runs):
    pipe = genforge.load(runs["cgan"], device="cpu")
    assert pipe.label_tensor(4, ["2", 0, "square", "Triangle"]).tolist() == [2, 0, 1, 2]
    for bad in (True, 3, -1, 1.0):
        with pytest.raises(GenforgeError, match="label"):
            pipe.label_tensor(1, [bad])


def test_unicode_digits_are_422_naming_the_field(client, keys):
    h = auth(keys["gen"])
    r = client.post("/v1/images/generations", json={"model": "tiny-cgan", "prompt": "\u00b2"}, headers=h)
    err = r.json()["error"]
    assert r.status_code == 422 and err["param"] == "prompt", r.text
    assert "prompt" in err["message"] and "circle, square, triangle" in err["message"]
    r = client.post("/v1/samples", json={"model": "tiny-cgan", "n": 1, "labels": ["\u00b3"]}, headers=h)
    err = r.json()["error"]
    assert r.status_code == 422 and err["param"] == "labels" and "circle, square, triangle" in err["message"]
    r = client.post("/v1/jobs", json={"params": {"model": "tiny-cgan", "n": 1, "labels": ["\u00b3"]}}, headers=h)
    err = r.json()["error"]
    assert r.status_code == 422 and err["param"] == "params.labels" and "circle, square" in err["message"]
    # the good spellings still work: an ASCII index, a name in any case, through every route
    for prompt in ("2", "Triangle"):
        r = client.post("/v1/images/generations", json={"model": "tiny-cgan", "prompt": prompt, "seed": 1},
                        headers=h)
        assert r.status_code == 200, r.text
    r = client.post("/v1/samples", json={"model": "tiny-cgan", "n": 2, "labels": [2, "circle"]}, headers=h)
    assert r.status_code == 200


def test_cli_unicode_label_is_exit_2(cli, runs, tmp_path):
    grid = tmp_path / "grid.png"
    code, out, err = cli("sample", runs["cgan"], "--labels", "\u00b2", "--grid", grid, "-n", "1")
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert "circle, square, triangle" in err and not grid.exists()


# -- 3. JSON bodies are strictly typed ----------------------------------------------------------------
@pytest.mark.parametrize("route", ["/v1/images/generations", "/v1/samples", "/v1/jobs"])
@pytest.mark.parametrize("field, value", [("n", "3"), ("n", True), ("n", 2.0), ("steps", "5"), ("seed", "1"),
                                          ("seed", False), ("guidance", "2"), ("guidance", True)])
def test_json_fields_must_have_their_json_type(client, keys, route, field, value):
    body = {"model": "tiny-gan", field: value}
    if route == "/v1/jobs":
        body, field = {"params": body}, f"params.{field}"
    r = client.post(route, json=body, headers=auth(keys["gen"]))
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["param"] == field and field in err["message"]


def test_strict_json_still_takes_ints_for_floats_and_typed_labels(client, keys):
    h = auth(keys["gen"])
    r = client.post("/v1/samples", json={"model": "tiny-cgan", "n": 1, "guidance": 2, "labels": [1]}, headers=h)
    assert r.status_code == 200, r.text
    r = client.post("/v1/samples", json={"model": "tiny-cgan", "n": 1, "labels": [True]}, headers=h)
    assert r.status_code == 422 and r.json()["error"]["param"].startswith("labels")
    r = client.post("/v1/samples", content=b'{"model": "tiny-gan", "n": 1, "guidance": NaN}',
                    headers={**h, "Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["param"] == "guidance"


# -- 5. non-finite floats and seeds the generator cannot take ----------------------------------------
@pytest.mark.parametrize("args, word", [
    (["--guidance", "nan"], "guidance"), (["--guidance", "inf"], "guidance"), (["--guidance", "-1"], "guidance"),
    (["--seed", str(2**64)], "seed"), (["--seed", str(2**63)], "seed"), (["--seed", "-1"], "seed"),
])
def test_cli_refuses_nonsense_numbers(cli, runs, tmp_path, args, word):
    grid = tmp_path / "grid.png"
    code, out, err = cli("sample", runs["cgan"], "-n", "1", "--grid", grid, *args)
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert word in err and not grid.exists()


def test_pipeline_checks_numbers_and_largest_seed_works(runs):
    pipe = genforge.load(runs["cgan"], device="cpu")
    for kw in ({"guidance": float("nan")}, {"guidance": float("-inf")}, {"seed": 2**63}, {"seed": -5}):
        with pytest.raises(GenforgeError):
            pipe.generate(n=1, **kw)
    assert pipe.generate(n=1, seed=2**63 - 1).shape[0] == 1


@pytest.mark.parametrize("args", [["--rate-limit", "inf"], ["--rate-limit", "nan"], ["--max-wait-ms", "nan"]])
def test_cli_serve_refuses_non_finite_options(cli, monkeypatch, tmp_path, args):
    def no_server(*a, **kw):
        raise AssertionError("the server was started")

    monkeypatch.setattr("uvicorn.run", no_server)
    code, out, err = cli("serve", "--jobs-url", f"sqlite:///{tmp_path / 'jobs.db'}", *args)
    assert code == 2 and args[0] in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("override", ["train.lr=inf", "train.weight_decay=nan", "train.betas=[0.5,inf]"])
def test_cli_train_refuses_non_finite_config_before_making_the_run(cli, tmp_path, override):
    run = tmp_path / "run"
    code, out, err = cli("train", *TINY_GAN, "train.steps=1", override, "--out", run)
    assert code == 2 and "finite" in err and override.split("=")[0] in err, err
    assert not run.exists()


def test_cli_keys_refuse_non_finite_rate(cli, tmp_path):
    code, out, err = cli("keys", "create", "--name", "x", "--rate-limit", "nan", "--store", tmp_path / "k.json")
    assert code == 2 and "--rate-limit" in err and not (tmp_path / "k.json").exists()


# -- 2 and 4. logs: redaction everywhere, each 500 logged once ---------------------------------------
def test_redaction_covers_exception_text_on_every_logger(saved_logging):
    configure_logging("DEBUG", redact=True)
    _our_handler().setStream(stream := io.StringIO())
    try:
        try:
            int(MARK)
        except ValueError as inner:
            raise RuntimeError(f"while reading {MARK!r}") from inner
    except RuntimeError:
        for name in ("genforge.serve", "uvicorn.error", "asyncio", ""):
            logging.getLogger(name).exception("something failed")
        err = sys.exc_info()[1]
        logging.getLogger("genforge.jobs").error("job failed: %s", err)
    logging.getLogger("uvicorn.access").info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5", "GET",
                                             f"/v1/jobs?x={MARK}", "1.1", 200)
    text = stream.getvalue()
    lines = [json.loads(x) for x in text.splitlines()]
    assert not any(m in text for m in MARK_FORMS), text
    assert len(lines) == 6 and {x["logger"] for x in lines} >= {"genforge.serve", "uvicorn.error", "asyncio", "root"}
    tracebacks = [x["exc"] for x in lines if "exc" in x]
    assert len(tracebacks) == 4 and all("ValueError" in t and "RuntimeError" in t and "int(MARK)" in t
                                        for t in tracebacks)
    assert "/v1/jobs" in lines[-1]["msg"]


def test_without_redaction_exception_text_is_logged(saved_logging):
    configure_logging("INFO", redact=False)
    _our_handler().setStream(stream := io.StringIO())
    try:
        int(MARK)
    except ValueError:
        logging.getLogger("uvicorn.error").exception("failed")
    assert any(m in stream.getvalue() for m in MARK_FORMS)


def test_500_is_logged_once_and_redacted(tmp_path, runs, keys, saved_logging):
    import uvicorn

    app = create_app(settings(tmp_path, runs, keys, models=("gan",), redact_inputs=True))

    @app.post("/crash")
    async def crash(request: Request):
        raise ValueError(f"cannot use {(await request.body()).decode()!r}")

    configure_logging("INFO", redact=True)
    _our_handler().setStream(stream := io.StringIO())
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None,
                                           access_log=False, log_level="info"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.time() + 60
        while not server.started:
            assert thread.is_alive() and time.time() < deadline, stream.getvalue()
            time.sleep(0.05)
        r = httpx.post(f"http://127.0.0.1:{port}/crash", content=MARK.encode(), timeout=30)
        assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=30).status_code == 200
    finally:
        server.should_exit = True
        thread.join(30)
    text = stream.getvalue()
    lines = [json.loads(x) for x in text.splitlines()]
    assert len([x for x in lines if "exc" in x]) == 1, text
    assert [x["status"] for x in lines if x["msg"] == "request"] == [500, 200]
    assert not any(m in text for m in MARK_FORMS), text


def test_served_process_with_redact_inputs_logs_no_input(tmp_path, runs, keys):
    port = free_port()
    env = {**os.environ, "HOME": str(tmp_path)}
    cmd = [sys.executable, "-m", "genforge.cli", "serve", str(runs["cgan"]), "--port", str(port),
           "--keys", str(keys["path"]), "--jobs-url", f"sqlite:///{tmp_path / 'jobs.db'}", "--threads", "1",
           "--redact-inputs", "--log-level", "debug", "--rate-limit", "0"]
    log_path = tmp_path / "server.log"
    with open(log_path, "w") as log_file:
        server = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    base, h = f"http://127.0.0.1:{port}", auth(keys["gen"])
    statuses = []
    try:
        with httpx.Client(base_url=base, timeout=30) as c:
            deadline = time.time() + 120
            while True:
                assert server.poll() is None, log_path.read_text()
                try:
                    if c.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.time() < deadline, "server did not become ready"
                time.sleep(0.2)
            requests = [
                ("/v1/images/generations", {"prompt": MARK}), ("/v1/images/generations", {"prompt": "triangle"}),
                ("/v1/samples", {"n": 1, "labels": [MARK]}), ("/v1/samples", {"n": 1, "labels": ["circle"]}),
                ("/v1/samples", {"n": 1, "labels": [MARK * 30]}), ("/v1/samples", {"n": MARK}),
                ("/v1/jobs", {"params": {"n": 1, "labels": [MARK]}}), ("/v1/jobs", {"params": {"n": 1, "bad": MARK}}),
                ("/v1/images/generations", {"prompt": MARK, "n": 1, "seed": 2**70}),
            ]
            for path, body in requests:
                statuses.append(c.post(path, json=body, headers=h).status_code)
            statuses.append(c.post("/v1/samples", content=b'{"labels": ["' + MARK.encode() + b'"',
                                   headers={**h, "Content-Type": "application/json"}).status_code)
            job = c.post("/v1/jobs", json={"params": {"n": 2, "labels": ["circle", 2]}}, headers=h)
            statuses.append(job.status_code)
            assert wait_job(c, job.json()["id"], keys["gen"])["status"] == "succeeded"
    finally:
        stop_server(server)
    text = log_path.read_text()
    assert statuses[1] == statuses[3] == 200 and 500 not in statuses, statuses
    logged = [json.loads(x) for x in text.splitlines() if x.startswith("{")]
    assert len([x for x in logged if x["msg"] == "request" and x["route"] != "/readyz"]) >= len(statuses)
    assert any(x["msg"] == "job finished" for x in logged)
    assert not any(m in text for m in (*MARK_FORMS, "triangle", "circle")), text
