"""The server under abuse: big uploads, expensive or abandoned requests, invented HTTP methods, and
slow or silent connections against a real `genforge serve` process."""
from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib

import pytest
from PIL import Image

pytest.importorskip("fastapi")
import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from serve_helpers import (auth, expected_pngs, free_port, keys, one_thread, runs,  # noqa: E402,F401
                           settings, stop_server)

from genforge.serve import app as app_module  # noqa: E402
from genforge.serve import create_app  # noqa: E402


def _png16(size: int, color_type: int = 6) -> bytes:
    """A size x size PNG of 16 bits per channel (6: RGBA, 0: grey) that compresses to almost nothing."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    channels = {6: 4, 0: 1}[color_type]
    row = b"\0" + b"\x12\x34" * channels * size
    ihdr = struct.pack(">IIBBBBB", size, size, 16, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(row * size, 9))
            + chunk(b"IEND", b""))


# -- uploads ----------------------------------------------------------------------------------------
def test_large_uploads_are_decoded_small():
    for data in (_png16(2048, 6), _png16(2048, 0)):
        im = app_module._read_image(data, 4096 * 4096, 16)
        assert max(im.size) <= 64 and min(im.size) >= 32  # at least twice the model's 16 px, no more
    buf = io.BytesIO()
    Image.new("RGB", (2048, 1024), (200, 10, 10)).save(buf, "JPEG")
    im = app_module._read_image(buf.getvalue(), 4096 * 4096, 16)
    assert im.size[1] <= 64 and im.size[1] >= 32 and im.getpixel((5, 5))[0] > 150


def test_classify_decodes_a_bounded_number_of_uploads_at_once(tmp_path, runs, keys, monkeypatch):
    active, peak, company = [0], [0], threading.Event()
    lock, real = threading.Lock(), app_module._read_image

    def watched(*a):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
            if active[0] > 1:
                company.set()
        company.wait(0.5)  # a second decode, if let in, joins us here
        try:
            return real(*a)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(app_module, "_read_image", watched)
    trims = []
    monkeypatch.setattr(app_module, "malloc_trim", lambda: trims.append(1))
    app = create_app(settings(tmp_path, runs, keys, models=("clf",), max_decodes=1))
    files = {"image": ("big.png", _png16(1024, 6), "image/png")}

    async def burst():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                return await asyncio.gather(*[c.post("/v1/images/classify", files=files,
                                                     headers=auth(keys["clf"])) for _ in range(3)])

    rs = asyncio.run(burst())
    assert [r.status_code for r in rs] == [200] * 3, rs[0].text
    assert peak[0] == 1
    assert 1 <= len(trims) <= 3  # the heap is given back after large decodes...
    files = {"image": ("small.png", _png16(64, 6), "image/png")}
    del trims[:]
    rs = asyncio.run(burst())
    assert [r.status_code for r in rs] == [200] * 3 and trims == []  # ...and left alone after small ones


def test_16_bit_grey_uploads_of_any_size_are_classified(tmp_path, runs, keys):
    with TestClient(create_app(settings(tmp_path, runs, keys, models=("clf",)))) as c:
        for size in (60, 1024):  # 60 px once made resampling fail on the 16-bit mode (a 500)
            r = c.post("/v1/images/classify", files={"image": ("g.png", _png16(size, 0), "image/png")},
                       headers=auth(keys["clf"]))
            assert r.status_code == 200, r.text


# -- expensive and abandoned requests ---------------------------------------------------------------
def test_request_cost_bound_points_to_jobs(tmp_path, runs, keys, cli):
    with TestClient(create_app(settings(tmp_path, runs, keys, models=("diffusion",), max_request_cost=20))) as c:
        h = auth(keys["gen"])
        r = c.post("/v1/samples", json={"n": 3, "steps": 7, "seed": 1}, headers=h)
        assert r.status_code == 422, r.text
        err = r.json()["error"]
        assert err["code"] == "request_too_large" and err["param"] == "n" and "/v1/jobs" in err["message"]
        r = c.post("/v1/images/generations", json={"n": 3, "steps": 7}, headers=h)
        assert r.status_code == 422 and r.json()["error"]["code"] == "request_too_large"
        assert c.post("/v1/samples", json={"n": 4, "steps": 5, "seed": 1}, headers=h).status_code == 200
        # the async path takes what one request may not
        r = c.post("/v1/jobs", json={"params": {"n": 3, "steps": 7, "seed": 1}}, headers=h)
        assert r.status_code == 202
    code, _, err = cli("serve", runs["gan"], "--max-request-cost", "0")
    assert code == 2 and "--max-request-cost" in err


def test_large_request_is_split_and_others_run_between_chunks(tmp_path, runs, keys):
    app = create_app(settings(tmp_path, runs, keys, models=("gan",), max_batch_size=4))
    with TestClient(app) as c:
        gen = app.state.serve["models"].get("tiny-gan", "image-generation")
        real, batches, small_queued = gen.batcher.run_batch, [], threading.Event()

        def recording(items):
            batches.append([it.n for it in items])
            if len(batches) == 1:  # hold the first chunk until the small request is waiting behind it
                small_queued.wait(30)
            return real(items)

        gen.batcher.run_batch = recording
        h = auth(keys["gen"])
        big = {}
        t = threading.Thread(target=lambda: big.update(r=c.post("/v1/samples", json={"n": 10, "seed": 7},
                                                                headers=h)))
        t.start()
        deadline = time.time() + 30
        while not batches and time.time() < deadline:
            time.sleep(0.01)

        async def queue_small():
            task = asyncio.ensure_future(gen.generate(gen.prepare(1, 3)))
            while gen.batcher.depth == 0:
                await asyncio.sleep(0.005)
            small_queued.set()
            return await task

        small = c.portal.call(queue_small)
        t.join(60)
        assert big["r"].status_code == 200
        assert big["r"].json()["images"] == expected_pngs(runs["gan"], 10, 7)  # chunks change nothing
        assert batches == [[4], [1], [4], [2]]  # the small request ran after one chunk, not after all
        assert len(small) == 1


def _count_forwards(module, on_count):
    calls = [0]

    def hook(*_):
        calls[0] += 1
        on_count(calls[0])
    module.register_forward_hook(hook)
    return calls


def test_hung_up_requests_stop_at_the_next_step_and_leave_the_queue(tmp_path, runs, keys):
    app = create_app(settings(tmp_path, runs, keys, models=("diffusion",), max_request_cost=10_000))
    with TestClient(app) as c:
        gen = app.state.serve["models"].get("tiny-diffusion", "image-generation")
        real, ran, cancels = gen.batcher.run_batch, [], []

        def recording(items):
            ran.append(len(items))
            cancels.extend(it.cancel for it in items)
            return real(items)

        gen.batcher.run_batch = recording
        box: dict = {}

        def on_forward(k):
            if k == 3:  # mid-sample: both clients hang up now; wait (bounded) until that reaches us
                box["loop"].call_soon_threadsafe(box["at_step_3"].set)
                for ev in cancels:
                    ev.wait(20)

        calls = _count_forwards(gen.pipe.model, on_forward)
        body = json.dumps({"n": 16, "steps": 50, "sampler": "ddim", "seed": 1}).encode()

        async def call(hang_up: asyncio.Event) -> list[dict]:
            sent: list[dict] = []
            messages = [{"type": "http.request", "body": body, "more_body": False}]

            async def receive():
                if messages:
                    return messages.pop()
                await hang_up.wait()
                return {"type": "http.disconnect"}

            async def send(message):
                sent.append(message)

            scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                     "scheme": "http", "path": "/v1/samples", "raw_path": b"/v1/samples", "query_string": b"",
                     "root_path": "", "client": ("127.0.0.1", 1), "server": ("t", 80),
                     "headers": [(b"content-type", b"application/json"),
                                 (b"content-length", str(len(body)).encode()),
                                 (b"authorization", f"Bearer {keys['gen']}".encode())]}
            await app(scope, receive, send)
            return sent

        async def scenario():
            box.update(loop=asyncio.get_running_loop(), at_step_3=asyncio.Event())
            first, second = asyncio.Event(), asyncio.Event()
            a = asyncio.ensure_future(call(first))
            await asyncio.wait_for(box["at_step_3"].wait(), 60)
            b = asyncio.ensure_future(call(second))
            while gen.batcher.depth == 0:  # the second request waits behind the first
                await asyncio.sleep(0.005)
            second.set()
            while gen.batcher.depth:  # ...and leaves the queue when its client does
                await asyncio.sleep(0.005)
            first.set()
            return await a, await b

        sent_a, sent_b = c.portal.call(scenario)
        assert calls[0] == 3  # of 16 images x 50 steps in two chunks: it stopped at the step after
        assert ran == [1]  # the second chunk and the second request never ran
        assert sent_a[0]["status"] == 499 and sent_b[0]["status"] == 499
        r = c.post("/v1/samples", json={"n": 2, "steps": 3, "seed": 4}, headers=auth(keys["gen"]))
        assert r.status_code == 200  # the model is free and serves the next one


# -- metrics and headers ----------------------------------------------------------------------------
def test_invented_methods_do_not_add_metric_series(tmp_path, runs, keys):
    with TestClient(create_app(settings(tmp_path, runs, keys, models=("gan",), metrics_open=True))) as c:
        for i in range(40):
            c.request(f"BREW{i}", "/healthz")
            c.request(f"BREW{i}", f"/nothing/{i}")
        text = c.get("/metrics").text
    series = [ln for ln in text.splitlines() if ln.startswith("genforge_http_requests_total{")]
    methods = {ln.split('method="')[1].split('"')[0] for ln in series}
    routes = {ln.split('route="')[1].split('"')[0] for ln in series}
    assert methods <= {"GET", "other"} and routes <= {"/healthz", "unmatched"}
    assert len(series) <= 4


def test_hsts_only_over_tls(tmp_path, runs, keys):
    app = create_app(settings(tmp_path, runs, keys, models=("gan",)))
    with TestClient(app, base_url="https://serve.test") as c:
        assert c.get("/healthz").headers["strict-transport-security"].startswith("max-age=")
    with TestClient(app) as c:
        assert "strict-transport-security" not in c.get("/healthz").headers


def test_accept_error_logs_are_rate_limited():
    from genforge.serve.connections import AcceptErrorFilter

    lg = logging.getLogger("genforge.test.accept")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    lg.addHandler(handler)
    lg.addFilter(AcceptErrorFilter(interval=3600))
    lg.propagate = False
    try:
        err = OSError(24, "Too many open files")
        for _ in range(1000):
            lg.error("socket.accept() out of system resource\nsocket: <x>", exc_info=(OSError, err, None))
        lg.error("something else")
    finally:
        lg.removeHandler(handler)
    assert len(records) == 2
    assert "Too many open files" in records[0].getMessage() and records[0].exc_info is None


# -- connections ------------------------------------------------------------------------------------
class _FakeTransport:
    def __init__(self) -> None:
        self.closed, self.out = False, b""

    def write(self, data: bytes) -> None:
        self.out += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default=None):
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 4000)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def test_connection_cap_closes_idle_connections_first_and_spares_new_ones(monkeypatch):
    import uvicorn
    from uvicorn.server import ServerState

    from genforge.serve import connections as conn

    monkeypatch.setattr(conn.LIMITS, "max_connections", 3)
    monkeypatch.setattr(conn, "EVICT_GRACE", 0.0)

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def scenario():
        config, state = uvicorn.Config(app, log_config=None), ServerState()

        def connect() -> tuple:
            p = conn.GuardedH11Protocol(config, state, {})
            t = _FakeTransport()
            p.connection_made(t)
            return p, t

        async def settle():  # let the loop poll new connections and finish responses
            for _ in range(5):
                await asyncio.sleep(0)

        served, served_t = connect()
        served.data_received(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")  # a client that was answered, now idle
        silent, silent_t = connect()
        await settle()
        assert served.served == 1 and not served_t.closed
        dripping, dripping_t = connect()
        dripping.data_received(b"GET / HT")
        await settle()
        _, t4 = connect()  # over the cap: the oldest connection that never finished a request goes
        assert silent_t.closed and not served_t.closed and not t4.closed
        _, t5 = connect()
        assert dripping_t.closed and not t5.closed
        _, t6 = connect()  # only the served idle one is left to close (the others are too new)
        assert served_t.closed and not t6.closed
        _, t7 = connect()  # nothing may be closed for it: it is turned away with a 503
        assert t7.closed and t7.out.startswith(b"HTTP/1.1 503") and b"too_many_connections" in t7.out
        assert not (t4.closed or t5.closed or t6.closed)

    asyncio.run(scenario())


# -- connections, against a real server process -----------------------------------------------------
def _closed_by_server(sock: socket.socket, within: float) -> bool:
    """True if the server closes ``sock`` within ``within`` seconds (EOF or reset)."""
    sock.settimeout(within)
    try:
        while True:
            if not sock.recv(4096):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


def test_slow_and_silent_connections_are_closed(tmp_path, runs, keys):
    port = free_port()
    cmd = [sys.executable, "-m", "genforge.cli", "serve", str(runs["gan"]), "--port", str(port),
           "--keys", str(keys["path"]), "--jobs-url", f"sqlite:///{tmp_path / 'jobs.db'}", "--threads", "1",
           "--header-timeout", "1", "--body-timeout", "1", "--keep-alive-timeout", "1",
           "--max-connections", "8", "--log-level", "warning"]
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen(cmd, env={**os.environ, "HOME": str(tmp_path)}, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    socks: list[socket.socket] = []
    try:
        deadline = time.time() + 120
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()
            try:
                if httpx.get(base + "/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.time() < deadline, "server did not become ready"
            time.sleep(0.2)

        def connect() -> socket.socket:
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            socks.append(s)
            return s

        silent = [connect() for _ in range(20)]  # more than --max-connections 8
        time.sleep(0.2)  # old enough to be closed for a newcomer (connections.EVICT_GRACE)
        r = httpx.get(base + "/healthz", timeout=10)
        assert r.status_code == 200 and "server" not in r.headers
        assert all(_closed_by_server(s, 20) for s in silent)

        drip = connect()
        drip.sendall(b"GET /healthz HTTP/1.1\r\n")
        closed, stop = [], time.time() + 20
        while time.time() < stop and not closed:  # a header byte every 0.2 s, never finishing
            try:
                drip.sendall(b"x")
            except OSError:
                closed.append(True)
                break
            drip.settimeout(0.2)
            try:
                if drip.recv(4096) == b"":
                    closed.append(True)
            except socket.timeout:
                pass
            except OSError:
                closed.append(True)
        assert closed, "a client dripping header bytes kept its connection"

        slow_body = connect()
        slow_body.sendall(b"POST /v1/samples HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                          b"authorization: Bearer " + keys["gen"].encode() + b"\r\ncontent-length: 100\r\n\r\n{")
        assert _closed_by_server(slow_body, 20)

        with httpx.Client(base_url=base, timeout=10) as c:  # a served connection is closed once idle
            assert c.get("/healthz").status_code == 200
        kept = connect()
        kept.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        assert _closed_by_server(kept, 20)
        assert httpx.get(base + "/healthz", timeout=10).status_code == 200
    finally:
        for s in socks:
            s.close()
        stop_server(server, timeout=30, must_stop=False)
        log.close()
    text = (tmp_path / "server.log").read_text()
    assert "Traceback" not in text, text[-3000:]
