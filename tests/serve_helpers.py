"""Shared pieces of the serving tests: tiny run directories, API keys, settings, expected images.

Models are randomly initialised tiny run directories (config.json + model.safetensors, as the
Trainer writes them), so serving tests run in seconds on two cores.
"""
from __future__ import annotations

import base64
import io
import socket
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from genforge import __version__
from genforge.config import validate_config
from genforge.models import build_model
from genforge.serve import Settings
from genforge.serve.auth import KeyStore
from genforge.train.checkpoint import atomic_write_json, save_tensors

CLASSES = ["circle", "square", "triangle"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_run(root: Path, name: str, task: str, model: str, params: dict, class_names=None) -> Path:
    """A run directory like the Trainer's, holding a randomly initialised model."""
    torch.manual_seed(0)
    cfg = validate_config({"task": task, "model": {"name": model, "params": params},
                           "data": {"name": "digits", "image_size": params.get("image_size", 32)},
                           "class_names": class_names})
    d = root / name
    d.mkdir(parents=True)
    atomic_write_json(d / "config.json", {"genforge_version": __version__, **cfg.model_dump(mode="json")})
    save_tensors(d / "model.safetensors", build_model(model, **params).state_dict())
    return d


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # two busy cores: torch's spinning worker threads make tiny models 100x slower, not faster
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return {
        "gan": make_run(root, "tiny-gan", "gan", "dcgan",
                        {"z_dim": 16, "width": 8, "d_width": 8, "image_size": 16, "channels": 1}),
        "cgan": make_run(root, "tiny-cgan", "gan", "cgan",
                         {"z_dim": 16, "width": 8, "d_width": 8, "image_size": 16, "channels": 1,
                          "num_classes": 3}, CLASSES),
        "diffusion": make_run(root, "tiny-diffusion", "diffusion", "diffusion",
                              {"widths": [16, 16], "attention": [False, True], "num_train_timesteps": 50,
                               "image_size": 16, "channels": 1}),
        "clf": make_run(root, "tiny-clf", "classify", "cnn",
                        {"in_channels": 1, "num_classes": 3, "image_size": 16, "width": 4, "feature_dim": 16},
                        CLASSES),
    }


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    path = tmp_path_factory.mktemp("keys") / "keys.json"
    store = KeyStore(path)
    out = {"path": path}
    for name, scopes in [("gen", "generate"), ("clf", "classify"), ("admin", "admin"),
                         ("both", "generate,classify")]:
        rec, key = store.create(name, scopes)
        out[name], out[name + "_id"] = key, rec.id
    return out


def settings(tmp_path, runs, keys, models=("gan", "cgan", "diffusion", "clf"), **kw) -> Settings:
    base = dict(models=[str(runs[m]) for m in models], keys_path=keys["path"], device="cpu",
                jobs_url=f"sqlite:///{tmp_path / 'jobs.db'}", max_wait_ms=0,
                auth_fail_rate=0.01)  # no refill during the test, however slow the machine
    return Settings(**{**base, **kw})


def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def png_size(b64: str) -> tuple[int, int]:
    data = base64.b64decode(b64)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return Image.open(io.BytesIO(data)).size


def expected_pngs(run_dir: Path, n: int, seed: int, **kw) -> list[str]:
    """What ``genforge.load(run).generate`` makes, encoded as the server encodes it."""
    import genforge
    from genforge.data.transforms import to_pil_list, to_uint8
    from genforge.serve.models import png_bytes

    pipe = genforge.load(run_dir, device="cpu")
    return [base64.b64encode(png_bytes(im)).decode() for im in to_pil_list(to_uint8(pipe.generate(n=n, seed=seed, **kw)))]



def wait_job(c, job_id, key, timeout=30.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        j = c.get(f"/v1/jobs/{job_id}", headers=auth(key)).json()
        if j["status"] in ("succeeded", "failed"):
            return j
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {j['status']}")


def stop_server(server, timeout: float = 60.0, must_stop: bool = True) -> None:
    """Ctrl-C a `genforge serve` subprocess and wait for it; kill it if it hangs, and then fail the
    test when ``must_stop`` (a clean shutdown is part of what it checks)."""
    import signal
    import subprocess

    server.send_signal(signal.SIGINT)
    try:
        server.wait(timeout)
    except subprocess.TimeoutExpired:
        server.kill()
        if must_stop:
            raise
