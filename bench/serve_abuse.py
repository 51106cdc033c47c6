"""`serve_load.py --abuse`: the attacks of the outside review against one live server on 127.0.0.1,
all at once for --abuse-seconds, while a prober measures what a load balancer would see.

- slow connections: --slow-conns sockets, half dripping one header byte every 5 s, half silent,
  each reopened a second after the server closes it (the server runs with an open-file limit of
  --nofile);
- big uploads: rounds of --uploads concurrent /v1/images/classify posts of a 4096x4096 16-bit RGBA
  PNG that compresses to ~140 KB;
- abandoned requests: expensive generations (n x steps at the server's default cost bound) whose
  client hangs up after 2 s, and one request over the bound, which must get 422;
- meanwhile: GET /healthz on a fresh connection every 100 ms, and a small generation every second.

Reported: /healthz p50/p99 and failures (before and during the attacks), small-request latency,
server RSS (sampled every 0.2 s, and VmHWM) and open files, 5xx responses seen by any client, and how much the
server logged.
"""
from __future__ import annotations

import asyncio
import json
import resource
import struct
import time
import zlib
from pathlib import Path
from typing import Any

import httpx


def big_png(size: int = 4096) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    row = b"\0" + b"\x12\x34\x56\x78\x9a\xbc\xff\xff" * size
    ihdr = struct.pack(">IIBBBBB", size, size, 16, 6, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(row * size, 9))
            + chunk(b"IEND", b""))


class Tally:
    def __init__(self) -> None:
        self.status: dict[str, int] = {}

    def add(self, kind: str, status: Any) -> None:
        k = f"{kind}:{status}"
        self.status[k] = self.status.get(k, 0) + 1

    @property
    def five_xx(self) -> int:
        return sum(v for k, v in self.status.items() if k.split(":")[1].startswith("5"))


async def raw_request(host: str, port: int, head: bytes, body: bytes = b"", timeout: float = 10.0) -> int:
    """One request on a fresh connection; returns the status code."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    try:
        writer.write(head + body)
        line = await asyncio.wait_for(reader.readline(), timeout)
        if not line:
            raise ConnectionError("closed without an answer")
        return int(line.split()[1])
    finally:
        writer.close()


async def prober(host: str, port: int, stop: float, tally: Tally, kind: str) -> list[float]:
    out: list[float] = []
    head = b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    while time.monotonic() < stop:
        t = time.perf_counter()
        try:
            status = await raw_request(host, port, head, timeout=5.0)
            out.append(time.perf_counter() - t)
            tally.add(kind, status)
        except (OSError, asyncio.TimeoutError, ConnectionError, ValueError, IndexError) as e:
            tally.add(kind, type(e).__name__)
        await asyncio.sleep(0.1)
    return out


async def slow_connection(host: str, port: int, stop: float, drip: bool, counts: dict) -> None:
    while time.monotonic() < stop:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            await asyncio.sleep(1.0)
            continue
        counts["opened"] += 1
        try:
            if drip:
                writer.write(b"GET /healthz HTTP/1.1\r\n")
            while time.monotonic() < stop:
                if drip:
                    writer.write(b"x")
                    await writer.drain()
                try:
                    if await asyncio.wait_for(reader.read(1024), 5.0) == b"":
                        counts["closed_by_server"] += 1
                        break
                except asyncio.TimeoutError:
                    pass
        except OSError:
            counts["closed_by_server"] += 1
        finally:
            writer.close()
        await asyncio.sleep(1.0)  # and back a second later, holding the pressure on


async def uploads(url: str, key: str, png: bytes, rounds: int, per_round: int, stop: float, tally: Tally) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=120, headers={"Authorization": f"Bearer {key}"},
                                 limits=httpx.Limits(max_connections=per_round)) as c:
        for _ in range(rounds):
            if time.monotonic() >= stop:
                break

            async def one() -> None:
                try:
                    r = await c.post("/v1/images/classify", files={"image": ("big.png", png, "image/png")})
                    tally.add("upload", r.status_code)
                except httpx.HTTPError as e:
                    tally.add("upload", type(e).__name__)
            await asyncio.gather(*[one() for _ in range(per_round)])


def post_head(path: str, key: str, body: bytes) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode()


async def abandoned(host: str, port: int, key: str, model: str, stop: float, every: float, cost: int,
                    tally: Tally) -> None:
    steps = 100
    body = json.dumps({"model": model, "n": max(1, cost // steps), "steps": steps, "sampler": "ddim"}).encode()
    over = json.dumps({"model": model, "n": 64, "steps": steps, "sampler": "ddim"}).encode()
    try:
        tally.add("over_cost", await raw_request(host, port, post_head("/v1/samples", key, over), over, 30))
    except (OSError, asyncio.TimeoutError, ConnectionError, ValueError, IndexError) as e:
        tally.add("over_cost", type(e).__name__)
    while time.monotonic() < stop:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError as e:
            tally.add("abandoned", type(e).__name__)
            await asyncio.sleep(every)
            continue
        writer.write(post_head("/v1/samples", key, body) + body)
        await asyncio.sleep(2.0)  # then hang up, as a client with a 2 s timeout does
        writer.close()
        tally.add("abandoned", "sent")
        await asyncio.sleep(every)


async def small_requests(host: str, port: int, key: str, model: str, stop: float, tally: Tally) -> list[float]:
    body = json.dumps({"model": model, "n": 1, "steps": 5, "sampler": "ddim"}).encode()
    out = []
    while time.monotonic() < stop:
        t = time.perf_counter()
        try:
            status = await raw_request(host, port, post_head("/v1/samples", key, body), body, timeout=60)
            tally.add("small", status)
            if status == 200:
                out.append(time.perf_counter() - t)
        except (OSError, asyncio.TimeoutError, ConnectionError, ValueError, IndexError) as e:
            tally.add("small", type(e).__name__)
        await asyncio.sleep(1.0)
    return out


def _pcts(xs: list[float]) -> dict:
    from serve_load import percentile

    ms = [x * 1000 for x in xs]
    return {"count": len(ms), "p50_ms": round(percentile(ms, 0.5), 1), "p99_ms": round(percentile(ms, 0.99), 1),
            "max_ms": round(max(ms), 1) if ms else None}


async def attacks(url: str, key: str, gen_model: str, seconds: float, slow_conns: int, upload_rounds: int,
                  per_round: int, cost: int) -> dict:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # the attackers need sockets of their own
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    u = httpx.URL(url)
    host, port = u.host, u.port
    tally, counts = Tally(), {"opened": 0, "closed_by_server": 0}
    png = big_png()
    stop = time.monotonic() + seconds
    tasks = [asyncio.ensure_future(slow_connection(host, port, stop, i % 2 == 0, counts))
             for i in range(slow_conns)]
    tasks.append(asyncio.ensure_future(uploads(url, key, png, upload_rounds, per_round, stop, tally)))
    tasks.append(asyncio.ensure_future(abandoned(host, port, key, gen_model, stop, 1.0, cost, tally)))
    await asyncio.gather(*tasks, return_exceptions=True)
    return {"responses": tally.status, **counts}


def _attack_process(out: Any, *args: Any) -> None:
    out.put(asyncio.run(attacks(*args)))


async def run_abuse(server: Any, key: str, gen_model: str, seconds: float, slow_conns: int, upload_rounds: int,
                    per_round: int, cost: int) -> dict:
    """The attacks run in a process of their own, so their client work does not delay the prober."""
    import multiprocessing

    from serve_load import proc_memory_mb

    u = httpx.URL(server.url)
    host, port = u.host, u.port
    log_before = Path(server.log.name).stat().st_size
    tally = Tally()
    calm = await prober(host, port, time.monotonic() + 5, tally, "healthz_calm")
    rss_ready = proc_memory_mb(server.pid)["VmRSS"]
    rss: list[float] = []
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    attacker = ctx.Process(target=_attack_process, args=(results, server.url, key, gen_model, seconds, slow_conns,
                                                          upload_rounds, per_round, cost))
    attacker.start()
    await asyncio.sleep(2.0)  # the attacker process starting up
    stop = time.monotonic() + seconds - 2.0

    fds: list[int] = []

    async def sample() -> None:
        while attacker.is_alive():
            rss.append(proc_memory_mb(server.pid)["VmRSS"])
            fds.append(len(list(Path(f"/proc/{server.pid}/fd").iterdir())))
            await asyncio.sleep(0.2)

    sampler = asyncio.ensure_future(sample())
    small = asyncio.ensure_future(small_requests(host, port, key, gen_model, stop, tally))
    probes = await prober(host, port, stop, tally, "healthz")
    small_lat = await small
    attack = await asyncio.get_running_loop().run_in_executor(None, results.get, True, seconds + 300)
    attacker.join(30)
    await sampler
    after = proc_memory_mb(server.pid)
    for k, v in attack.pop("responses").items():
        tally.status[k] = tally.status.get(k, 0) + v
    healthz_fail = sum(v for k, v in tally.status.items() if k.startswith("healthz:") and k != "healthz:200")
    return {"seconds": seconds, "slow_connections": slow_conns, "upload_rounds": upload_rounds,
            "uploads_per_round": per_round, "healthz_calm": _pcts(calm), "healthz_under_attack": _pcts(probes),
            "healthz_failures": healthz_fail, "small_generation": _pcts(small_lat),
            "responses": dict(sorted(tally.status.items())), "five_xx": tally.five_xx,
            "slow_connections_opened": attack["opened"],
            "slow_connections_closed_by_server": attack["closed_by_server"],
            "rss_ready_mb": round(rss_ready, 1), "rss_peak_mb": round(max(rss), 1),
            "rss_final_mb": round(after["VmRSS"], 1), "vm_hwm_mb": round(after["VmHWM"], 1),
            "server_open_files_peak": max(fds),
            "server_log_bytes": Path(server.log.name).stat().st_size - log_before,
            "server_log_errors": server.log_errors()}
