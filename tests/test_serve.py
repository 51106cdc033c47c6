"""The HTTP server: auth, API shapes and limits, dynamic batching, metrics, logs, the web page."""
from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import logging
import os
import re
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from serve_helpers import (CLASSES, auth, expected_pngs, keys, one_thread, png_size, runs,  # noqa: E402,F401
                           settings)

from genforge.serve import create_app  # noqa: E402
from genforge.serve.auth import KeyStore, RateLimiter  # noqa: E402
from genforge.serve.observability import JsonFormatter  # noqa: E402


@pytest.fixture
def client(tmp_path, runs, keys):
    with TestClient(create_app(settings(tmp_path, runs, keys))) as c:
        yield c


# -- auth -------------------------------------------------------------------------------------------
def test_auth_401_403_and_open_routes(client, keys):
    r = client.get("/v1/models")
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    assert "Bearer" in r.json()["error"]["message"]
    assert client.get("/v1/models", headers=auth("gf_nothere_xyz")).status_code == 401
    wrong_secret = keys["gen"].rsplit("_", 1)[0] + "_wrong"
    assert client.get("/v1/models", headers=auth(wrong_secret)).status_code == 401
    assert client.get("/v1/models", headers={"Authorization": keys["gen"]}).status_code == 401  # no scheme
    assert client.get("/v1/models", headers=auth(keys["gen"])).status_code == 200
    # guessing from one address: scrypt runs a bounded number of times, then 429 for that address only
    guesser = TestClient(client.app, client=("192.0.2.9", 50000))
    codes = [guesser.get("/v1/models", headers=auth(wrong_secret + str(i))).status_code for i in range(6)]
    assert codes[:5] == [401] * 5 and codes[-1] == 429
    assert client.get("/v1/models", headers=auth(keys["gen"])).status_code == 200  # verified before: unaffected
    r = client.post("/v1/samples", json={"model": "tiny-gan", "n": 1}, headers=auth(keys["clf"]))
    assert r.status_code == 403 and "generate" in r.json()["error"]["message"]
    assert client.post("/v1/samples", json={"model": "tiny-gan", "n": 1}, headers=auth(keys["admin"])).status_code == 200
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["status"] == "ready"
    assert client.get("/docs").status_code == 200
    assert "/v1/images/generations" in client.get("/openapi.json").json()["paths"]


def test_revoked_key_refused_by_running_server(tmp_path, runs, keys):
    store = KeyStore(keys["path"])
    rec, key = store.create("temp", "generate")
    with TestClient(create_app(settings(tmp_path, runs, keys, models=("gan",)))) as c:
        assert c.get("/v1/models", headers=auth(key)).status_code == 200
        store.revoke(rec.id)
        r = c.get("/v1/models", headers=auth(key))
        assert r.status_code == 401 and "revoked" in r.json()["error"]["message"]


def test_rate_limit_429(tmp_path, runs, keys):
    with TestClient(create_app(settings(tmp_path, runs, keys, models=("gan",), rate_limit=0.5,
                                        rate_burst=2))) as c:
        codes = [c.get("/v1/models", headers=auth(keys["gen"])).status_code for _ in range(3)]
        assert codes == [200, 200, 429]
        r = c.get("/v1/models", headers=auth(keys["gen"]))
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert c.get("/v1/models", headers=auth(keys["clf"])).status_code == 200  # buckets are per key


def test_token_bucket_refills():
    now = [0.0]
    rl = RateLimiter(rate=2.0, burst=1, clock=lambda: now[0])
    assert rl.take("k") == 0 and rl.take("k") == pytest.approx(0.5)
    now[0] += 0.5
    assert rl.take("k") == 0
    assert RateLimiter(rate=0).take("k") == 0  # 0 disables


def test_keys_cli_and_file(cli, tmp_path):
    store = tmp_path / "k" / "keys.json"
    code, out, err = cli("keys", "create", "--name", "app", "--scopes", "generate,classify", "--store", store)
    assert code == 0, err
    key = out.strip()
    assert key.startswith("gf_") and "cannot be shown again" in err
    assert oct(store.stat().st_mode & 0o777) == "0o600"
    assert key.split("_", 2)[2] not in store.read_text()  # only the hash is stored
    code, out, _ = cli("keys", "list", "--store", store)
    listed = json.loads(out)
    assert listed[0]["name"] == "app" and listed[0]["scopes"] == ["classify", "generate"]
    assert "hash" not in listed[0] and "salt" not in listed[0]
    assert KeyStore(store).verify(key).name == "app"
    code, _, err = cli("keys", "revoke", "nope", "--store", store)
    assert code == 2 and err.startswith("error: no key with id")
    assert cli("keys", "revoke", listed[0]["id"], "--store", store)[0] == 0
    assert KeyStore(store).verify(key).revoked is not None
    code, _, err = cli("keys", "create", "--name", "x", "--scopes", "root", "--store", store)
    assert code == 2 and "unknown scope 'root'" in err


def test_serve_cli_errors(cli, tmp_path):
    code, _, err = cli("serve", str(tmp_path / "missing"))
    assert code == 2 and err.startswith("error: no run directory")
    code, _, err = cli("serve", str(tmp_path), "--ssl-certfile", "x.pem")
    assert code == 2 and "--ssl-keyfile" in err


# -- API shapes and limits --------------------------------------------------------------------------
def test_models_list(client, keys):
    body = client.get("/v1/models", headers=auth(keys["clf"])).json()
    assert body["object"] == "list"
    by_id = {m["id"]: m for m in body["data"]}
    assert set(by_id) == {"tiny-gan", "tiny-cgan", "tiny-diffusion", "tiny-clf"}
    assert all(m["object"] == "model" and m["owned_by"] == "genforge" for m in body["data"])
    assert by_id["tiny-gan"]["kind"] == "image-generation" and by_id["tiny-gan"]["size"] == "16x16"
    assert by_id["tiny-cgan"]["classes"] == CLASSES
    assert by_id["tiny-clf"]["kind"] == "image-classification"


def test_generations_deterministic_pngs(client, keys, runs):
    h = auth(keys["gen"])
    body = {"model": "tiny-gan", "n": 3, "seed": 7, "size": "16x16", "response_format": "b64_json"}
    a = client.post("/v1/images/generations", json=body, headers=h)
    assert a.status_code == 200, a.text
    a = a.json()
    assert set(a) >= {"created", "data"} and len(a["data"]) == 3 and a["seed"] == 7
    assert all(png_size(d["b64_json"]) == (16, 16) for d in a["data"])
    b = client.post("/v1/images/generations", json=body, headers=h).json()
    assert [d["b64_json"] for d in a["data"]] == [d["b64_json"] for d in b["data"]]
    assert [d["b64_json"] for d in a["data"]] == expected_pngs(runs["gan"], 3, 7)
    c = client.post("/v1/images/generations", json={**body, "seed": 8}, headers=h).json()
    assert c["data"][0]["b64_json"] != a["data"][0]["b64_json"]
    # a class name as the prompt of a class-conditional GAN; prompts are ignored by unconditional ones
    r = client.post("/v1/images/generations", json={"model": "tiny-cgan", "prompt": "Square", "n": 2, "seed": 1},
                    headers=h)
    assert [d["b64_json"] for d in r.json()["data"]] == expected_pngs(runs["cgan"], 2, 1, labels=["square"])
    r = client.post("/v1/images/generations", json={"model": "tiny-cgan", "prompt": "a cat", "seed": 1}, headers=h)
    assert r.status_code == 422 and "circle, square, triangle" in r.json()["error"]["message"]
    r = client.post("/v1/images/generations", json={**body, "prompt": "anything"}, headers=h)
    assert r.status_code == 200
    s = client.post("/v1/samples", json={"model": "tiny-diffusion", "n": 2, "seed": 3, "steps": 3,
                                         "sampler": "ddim"}, headers=h)
    assert s.status_code == 200 and s.json()["images"] == expected_pngs(runs["diffusion"], 2, 3, steps=3,
                                                                         sampler="ddim")


@pytest.mark.parametrize("body, field", [
    ({"n": 0}, "n"), ({"n": 10**6}, "n"), ({"steps": 0}, "steps"), ({"steps": 5000}, "steps"),
    ({"sampler": "euler"}, "sampler"), ({"seed": -1}, "seed"), ({"size": "32x32"}, "size"),
    ({"size": "big"}, "size"), ({"response_format": "url"}, "response_format"), ({"n": "many"}, "n"),
])
def test_generation_422_names_the_field(client, keys, body, field):
    r = client.post("/v1/images/generations", json={"model": "tiny-gan", **body}, headers=auth(keys["gen"]))
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["param"] == field and field in err["message"]
    if body.get("size") == "32x32":
        assert "makes 16x16 images" in err["message"]


def test_not_found_and_malformed(client, keys):
    h = auth(keys["gen"])
    for model in ["../../etc/passwd", "/etc/passwd", "tiny-clf", "nope", "x" * 150]:
        r = client.post("/v1/samples", json={"model": model, "n": 1}, headers=h)
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found", model
    assert "etc/passwd" in client.post("/v1/samples", json={"model": "../../etc/passwd"}, headers=h).json()[
        "error"]["message"]
    r = client.post("/v1/samples", content=b'{"model": "tiny-gan", "n": ', headers={**h, "Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
    r = client.post("/v1/samples", content=b"[1, 2]", headers={**h, "Content-Type": "application/json"})
    assert r.status_code == 422
    r = client.post("/v1/samples", json={"model": "tiny-gan", "n": 1, "bogus": 1}, headers=h)
    assert r.status_code == 422 and r.json()["error"]["param"] == "bogus"
    r = client.post("/v1/samples", json={"model": "tiny-gan", "labels": ["square"]}, headers=h)
    assert r.status_code == 422 and "unconditional" in r.json()["error"]["message"]
    assert client.get("/v1/jobs/../../etc/passwd", headers=h).status_code == 404
    r = client.post("/v1/embeddings", headers=h, json={"input": "hi"})  # an OpenAI route genforge lacks
    assert r.status_code == 404 and r.json()["error"]["message"].startswith("no route POST /v1/embeddings;")
    r = client.delete("/v1/models", headers=h)
    assert r.status_code == 405 and "/v1/models does not take DELETE" in r.json()["error"]["message"]


def _png(size=(16, 16), color=128) -> bytes:
    buf = io.BytesIO()
    Image.new("L", size, color).save(buf, format="PNG")
    return buf.getvalue()


def _bomb_png(width=100_000, height=100_000) -> bytes:
    """A valid PNG header claiming a huge image, with one tiny compressed row block."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_classify_and_upload_limits(tmp_path, runs, keys):
    cfg = settings(tmp_path, runs, keys, models=("clf",), max_body_bytes=64 * 1024, max_image_pixels=512 * 512)
    with TestClient(create_app(cfg)) as c:
        h = auth(keys["clf"])
        r = c.post("/v1/images/classify", files={"image": ("a.png", _png(), "image/png")}, data={"top_k": "2"},
                   headers=h)
        assert r.status_code == 200, r.text
        labels = r.json()["labels"]
        assert len(labels) == 2 and {x["label"] for x in labels} <= set(CLASSES)
        assert labels[0]["score"] >= labels[1]["score"]
        r = c.post("/v1/images/classify", files={"image": ("a.txt", b"hello, not an image", "text/plain")}, headers=h)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_image"
        r = c.post("/v1/images/classify", files={"image": ("b.png", _bomb_png(), "image/png")}, headers=h)
        assert r.status_code == 413 and "pixels" in r.json()["error"]["message"]
        r = c.post("/v1/images/classify", files={"image": ("c.png", _png((1024, 1024)), "image/png")}, headers=h)
        assert r.status_code == 413
        r = c.post("/v1/images/classify", files={"image": ("d.bin", os.urandom(100_000), "image/png")}, headers=h)
        assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
        chunks = (b"x" * 16384 for _ in range(8))  # no Content-Length: counted as it streams
        r = c.post("/v1/samples", content=chunks, headers={**auth(keys["gen"]), "Content-Type": "application/json"})
        assert r.status_code == 413
        r = c.post("/v1/images/classify", data={"top_k": "2"}, headers=h)
        assert r.status_code == 422 and r.json()["error"]["param"] == "image"


# -- batching ---------------------------------------------------------------------------------------
async def _with_client(app, fn):
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://serve.test") as c:
            return await fn(c)


def _pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))


def _batch_stats(metrics_text: str, model: str) -> tuple[float, float]:
    vals = {}
    for line in metrics_text.splitlines():
        for part in ("sum", "count"):
            if line.startswith(f'genforge_batch_requests_{part}{{model="{model}"}}'):
                vals[part] = float(line.split()[-1])
    return vals["sum"], vals["count"]


@pytest.mark.parametrize("model, extra", [("gan", {}), ("diffusion", {"steps": 3, "sampler": "dpm++"})])
def test_concurrent_requests_are_merged_and_match_unbatched(tmp_path, runs, keys, model, extra):
    app = create_app(settings(tmp_path, runs, keys, models=(model,), max_wait_ms=300, max_batch_size=16))
    reqs = [{"n": n, "seed": seed, **extra} for n, seed in [(1, 11), (3, 12), (2, 13), (4, 14)]]

    async def go(c):
        rs = await asyncio.gather(*[c.post("/v1/samples", json=r, headers=auth(keys["gen"])) for r in reqs])
        m = await c.get("/metrics", headers=auth(keys["admin"]))
        return [r.json() for r in rs], m.text

    bodies, metrics = asyncio.run(_with_client(app, go))
    total, batches = _batch_stats(metrics, runs[model].name)
    assert batches < len(reqs) and total == len(reqs)  # some forward pass served several requests
    for req, body in zip(reqs, bodies):
        # each request's images equal generating it alone with its own seed
        want = expected_pngs(runs[model], req["n"], req["seed"],
                             **{k: v for k, v in req.items() if k in ("steps", "sampler")})
        if model == "gan":
            assert body["images"] == want
        else:  # batched CPU kernels sum in another order: at most a rare one-level pixel difference
            got, ref = (np.stack([_pixels(b) for b in x]).astype(int) for x in (body["images"], want))
            assert np.abs(got - ref).max() <= 1 and (got != ref).mean() < 0.01


def test_queue_full_503(tmp_path, runs, keys):
    import threading

    app = create_app(settings(tmp_path, runs, keys, models=("gan",), queue_size=1, max_batch_size=1))
    gate = threading.Event()

    async def go(c):
        served = app.state.serve["models"].by_id["tiny-gan"]
        real = served.batcher.run_batch
        served.batcher.run_batch = lambda items: (gate.wait(10), real(items))[1]
        tasks = [asyncio.create_task(c.post("/v1/samples", json={"n": 1, "seed": i}, headers=auth(keys["gen"])))
                 for i in range(4)]
        while sum(t.done() for t in tasks) < 2:  # two are held (one running, one waiting)
            await asyncio.sleep(0.01)
        gate.set()
        return await asyncio.gather(*tasks)

    rs = asyncio.run(_with_client(app, go))
    codes = sorted(r.status_code for r in rs)
    assert codes == [200, 200, 503, 503]
    busy = next(r for r in rs if r.status_code == 503)
    assert int(busy.headers["retry-after"]) >= 1 and busy.json()["error"]["code"] == "queue_full"


def test_batcher_wait_counts_from_arrival():
    """A lone request at an idle model waits up to max_wait_ms for company; requests that queued
    behind a running batch have waited already and start the moment the model is free."""
    import threading

    from genforge.serve.batching import Batcher

    gate, batches = threading.Event(), []

    def run(items):
        gate.wait(10)
        batches.append((time.perf_counter(), list(items)))
        return items

    async def go():
        b = Batcher("m", run, max_batch_size=8, max_wait_ms=400)
        b.start()
        t0 = time.perf_counter()
        first = asyncio.create_task(b.submit("a", key=0))
        await asyncio.sleep(0.1)  # arrives within a's wait: merged with it
        second = asyncio.create_task(b.submit("b", key=0))
        await asyncio.sleep(0.5)  # a's wait is over: [a, b] is running, held at the gate
        rest = [asyncio.create_task(b.submit(x, key=0)) for x in "cd"]
        await asyncio.sleep(0.5)  # c and d queue behind the running batch past their max wait
        t_open = time.perf_counter()
        gate.set()
        out = await asyncio.gather(first, second, *rest)
        await b.stop()
        return t0, t_open, out

    t0, t_open, out = asyncio.run(go())
    assert out == ["a", "b", "c", "d"]
    assert [items for _, items in batches] == [["a", "b"], ["c", "d"]]
    assert batches[1][0] - t_open < 0.2  # no fresh 400 ms wait once the model was free


def test_batcher_wait_bounded_by_forward_time():
    """Once a forward pass has been timed, a lone request waits at most wait_fraction of it for
    company (not the full max_wait_ms); wait_fraction=None keeps the fixed wait."""
    from genforge.serve.batching import Batcher

    def run(items):
        time.sleep(0.04)
        return items

    async def lone_latency(wait_fraction):
        b = Batcher("m", run, max_batch_size=8, max_wait_ms=400, wait_fraction=wait_fraction)
        b.start()
        assert b.wait_s == 0.4  # nothing measured yet: the full wait
        t = time.perf_counter()
        await b.submit("a", key=0)
        first = time.perf_counter() - t
        t = time.perf_counter()
        await b.submit("b", key=0)
        second = time.perf_counter() - t
        wait = b.wait_s
        await b.stop()
        return first, second, wait

    first, second, wait = asyncio.run(lone_latency(0.25))
    assert first >= 0.4 and 0.009 <= wait <= 0.05 and second < 0.2
    first, second, wait = asyncio.run(lone_latency(None))
    assert first >= 0.4 and second >= 0.4 and wait == 0.4


# -- metrics and logs -------------------------------------------------------------------------------
def test_metrics_scope_and_open(tmp_path, runs, keys, client):
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers=auth(keys["gen"])).status_code == 403
    r = client.get("/metrics", headers=auth(keys["admin"]))
    assert r.status_code == 200 and "genforge_http_requests_total" in r.text
    assert "genforge_queue_depth" in r.text
    with TestClient(create_app(settings(tmp_path, runs, keys, models=("gan",), metrics_open=True))) as c:
        assert c.get("/metrics").status_code == 200


@pytest.mark.parametrize("redact", [True, False])
def test_logs_never_hold_keys_and_redact_prompts(tmp_path, runs, keys, redact):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("genforge.serve")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        with TestClient(create_app(settings(tmp_path, runs, keys, models=("cgan",), redact_inputs=redact))) as c:
            r = c.post("/v1/images/generations", json={"prompt": "triangle", "n": 1}, headers=auth(keys["gen"]))
            assert r.status_code == 200
            c.post("/v1/samples", json={"labels": ["circle"], "n": 1}, headers=auth(keys["gen"]))
            c.get("/v1/models", headers=auth(keys["gen"] + "tampered"))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    text = stream.getvalue()
    lines = [json.loads(x) for x in text.splitlines()]
    assert any(x.get("route") == "/v1/images/generations" and x["key_id"] == keys["gen_id"] for x in lines)
    secret = keys["gen"].split("_", 2)[2]
    assert keys["gen"] not in text and secret not in text
    assert ("triangle" in text) is (not redact) and ("circle" in text) is (not redact)


# -- web page ---------------------------------------------------------------------------------------
def test_web_page_served_with_csp(client):
    r = client.get("/")
    assert r.status_code == 200 and "<title>genforge</title>" in r.text
    assert "script-src 'self'" in r.headers["content-security-policy"]
    js = client.get("/web/app.js")
    assert js.status_code == 200 and "/v1/samples" in js.text
    assert client.get("/web/../settings.py").status_code == 404


def test_api_docs_served_offline(client):
    """/docs and /redoc name files of this server only (no CDN: they work with no internet), and
    each page's CSP admits exactly its own inline script."""
    for page in ("/docs", "/redoc"):
        r = client.get(page)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert "http://" not in r.text and "https://" not in r.text and "//cdn" not in r.text
        csp = r.headers["content-security-policy"]
        inline = re.findall(r"<script>(.*?)</script>", r.text, re.S)
        want = "".join(f" 'sha256-{base64.b64encode(hashlib.sha256(js.encode()).digest()).decode()}'"
                       for js in inline)
        assert f"script-src 'self'{want};" in csp and "frame-ancestors 'none'" in csp
        assets = re.findall(r'(?:src|href)="([^"]+)"', r.text)
        assert assets and all(a.startswith("/docs/assets/") for a in assets), assets
        for a in assets:
            got = client.get(a)
            kind = {"js": "javascript", "css": "text/css", "png": "image/png"}[a.rsplit(".", 1)[1]]
            assert got.status_code == 200 and kind in got.headers["content-type"] and len(got.content) > 100
    assert len(re.findall(r"<script>", client.get("/docs").text)) == 1  # Swagger UI's start-up script
    assert client.get("/docs/assets/nothere.js").status_code == 404
