"""`genforge serve` as a real process: HTTPS with a self-signed certificate, and several worker
processes on one port that share the jobs database."""
from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
import httpx  # noqa: E402
from serve_helpers import auth, expected_pngs, free_port, keys, runs, stop_server, wait_job  # noqa: E402,F401


def self_signed(tmp: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def worker_processes(pid: int) -> int:
    """Children of ``pid`` that are multiprocessing-spawned workers (not its resource tracker)."""
    count = 0
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
                cmdline = (d / "cmdline").read_bytes()
            except OSError:
                continue
            count += ppid == pid and b"spawn_main" in cmdline
    return count


def test_https_with_two_workers_sharing_the_jobs_db(tmp_path, runs, keys):
    cert, key = self_signed(tmp_path)
    port = free_port()
    env = {**os.environ, "HOME": str(tmp_path)}
    cmd = [sys.executable, "-m", "genforge.cli", "serve", str(runs["gan"]), "--port", str(port),
           "--keys", str(keys["path"]), "--jobs-url", f"sqlite:///{tmp_path / 'jobs.db'}", "--threads", "1",
           "--ssl-certfile", str(cert), "--ssl-keyfile", str(key), "--workers", "2", "--log-level", "warning"]
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"https://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, verify=ssl.create_default_context(cafile=str(cert)), timeout=30) as c:
            deadline = time.time() + 120
            while True:  # both workers up and answering
                assert server.poll() is None, server.stdout.read()
                try:
                    if c.get("/readyz").status_code == 200 and worker_processes(server.pid) == 2:
                        break
                except httpx.TransportError:
                    pass
                assert time.time() < deadline, "server did not become ready"
                time.sleep(0.3)
            h = auth(keys["gen"])
            for seed in range(6):  # whichever worker answers, same seed, same images
                r = c.post("/v1/samples", json={"n": 1, "seed": seed}, headers=h)
                assert r.status_code == 200 and r.json()["images"] == expected_pngs(runs["gan"], 1, seed)
            assert c.get("/v1/models").status_code == 401
            job = c.post("/v1/jobs", json={"type": "samples", "params": {"model": "tiny-gan", "n": 2, "seed": 3}},
                         headers=h).json()
            assert wait_job(c, job["id"], keys["gen"])["status"] == "succeeded"
        with pytest.raises(httpx.ConnectError):  # the certificate is not trusted without its CA
            httpx.get(f"{base}/healthz", timeout=10)
        with pytest.raises(httpx.TransportError):  # plain HTTP to the TLS port
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10)
    finally:
        stop_server(server)
