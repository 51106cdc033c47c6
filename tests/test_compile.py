"""Compiled sampling (pipelines/compiled.py) and encoding off the forward pass (serve/models.py).

Most tests swap torch.compile for a recording stand-in, so they check the bucketing, fallback and
serving logic in milliseconds. The real inductor compile of even a tiny UNet takes one to several
minutes on a busy two-core machine (about 70 s a bucket measured here, seconds with a warm cache),
so those tests run only with GENFORGE_SLOW_TESTS=1, or on a CUDA machine for the CUDA-graph one.
"""
from __future__ import annotations

import base64
import io
import logging
import os
import threading
import time

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from serve_helpers import auth, keys, one_thread, runs, settings  # noqa: F401 (fixtures)

import genforge
from genforge.pipelines import compiled as compiled_mod
from genforge.pipelines.compiled import BucketedForward, bucket_for
from genforge.serve import models as served_models
from genforge.serve.app import create_app

slow = pytest.mark.skipif(os.environ.get("GENFORGE_SLOW_TESTS") != "1",
                          reason="a real inductor compile takes minutes here; set GENFORGE_SLOW_TESTS=1")
# float32 kernels that inductor fuses sum in another order: about 1e-6 apart after a few sampler
# steps (measured 1.5e-6), while one grey level of the uint8 image is 2/255 ~ 7.8e-3 in [-1, 1].
# 1e-4 is far above the rounding and 78x below a visible difference.
ATOL = 1e-4


class Recorder:
    """Stands in for torch.compile: runs ``fn`` eagerly and notes each batch size it is given."""

    def __init__(self, fail: Exception | None = None):
        self.sizes: list[int] = []
        self.fail = fail

    def __call__(self, fn, **kw):
        self.kw = kw

        def run(x, *rest):
            self.sizes.append(x.shape[0])
            if self.fail is not None:
                raise self.fail
            return fn(x, *rest)
        return run


def test_bucket_for():
    assert [bucket_for(n) for n in (1, 2, 3, 5, 16, 17, 64)] == [1, 2, 4, 8, 16, 32, 64]
    assert bucket_for(65) is None


def test_padding_rows_and_chunks_beyond_the_largest_bucket():
    rec = Recorder()
    f = BucketedForward(lambda x, y: x * 2 + y[:, None], torch.device("cpu"), buckets=(1, 2, 4, 8),
                        compiler=rec)
    x, y = torch.arange(21.0).reshape(7, 3), torch.arange(7.0)
    assert torch.equal(f(x[:3], y[:3]), x[:3] * 2 + y[:3, None])  # 3 rows padded to 4, sliced back
    assert torch.equal(f(x, y), x * 2 + y[:, None])  # 7 -> 8
    assert rec.sizes == [4, 8]
    assert rec.kw == {"mode": None, "dynamic": False}  # CPU: inductor's default mode, static shapes
    rec.sizes.clear()
    big = torch.arange(30.0).reshape(10, 3)
    assert torch.equal(f(big, torch.zeros(10)), big * 2)  # chunks of the largest bucket: 8, then 2
    assert rec.sizes == [8, 2]


def test_compiled_pipeline_pads_to_buckets_and_returns_n_images(runs, monkeypatch):
    rec = Recorder()
    monkeypatch.setattr(torch, "compile", rec)
    eager = genforge.load(runs["diffusion"], device="cpu")
    pipe = genforge.load(runs["diffusion"], device="cpu", compile=True)
    out = pipe.generate(n=3, seed=5, steps=2)
    assert out.shape == (3, 1, 16, 16)
    assert rec.sizes == [4, 4]  # one forward per step, each padded from 3 to 4 rows
    assert torch.allclose(out, eager.generate(n=3, seed=5, steps=2), atol=ATOL)
    gan = genforge.load(runs["cgan"], device="cpu", compile=True)
    rec.sizes.clear()
    imgs = gan.generate(n=5, seed=1, labels=["circle"])
    assert imgs.shape[0] == 5 and rec.sizes == [8]
    assert torch.equal(imgs, genforge.load(runs["cgan"], device="cpu").generate(n=5, seed=1, labels=["circle"]))


def test_failing_compile_warns_once_and_samples_eagerly(runs, monkeypatch, caplog):
    rec = Recorder(fail=RuntimeError("InvalidCxxCompiler: No working C++ compiler found"))
    monkeypatch.setattr(torch, "compile", rec)
    pipe = genforge.load(runs["diffusion"], device="cpu", compile=True)
    with caplog.at_level(logging.WARNING, logger="genforge"):
        a = pipe.generate(n=2, seed=3, steps=2)
        b = pipe.generate(n=1, seed=3, steps=2)
    warnings = [r for r in caplog.records if "--compile" in r.getMessage()]
    assert len(warnings) == 1 and "InvalidCxxCompiler" in warnings[0].getMessage()
    assert "\n" not in warnings[0].getMessage()
    assert rec.sizes == [2]  # tried once; eager from then on
    eager = genforge.load(runs["diffusion"], device="cpu")
    assert torch.equal(a, eager.generate(n=2, seed=3, steps=2))
    assert torch.equal(b, eager.generate(n=1, seed=3, steps=2))


def test_bad_input_is_not_mistaken_for_a_compile_failure(runs, monkeypatch):
    """A compiled call that fails because the input is wrong fails eagerly too: it raises, and
    compiling stays on for the next (good) call."""
    rec = Recorder()
    monkeypatch.setattr(torch, "compile", rec)
    pipe = genforge.load(runs["diffusion"], device="cpu", compile=True)
    with pytest.raises(RuntimeError):
        pipe.generate_from_noise(torch.zeros(1, 5, 16, 16), steps=1)
    assert pipe.compiled.failed is None


def test_sample_cli_compile_falls_back(cli, runs, monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(torch, "compile", Recorder(fail=RuntimeError("no C compiler")))
    with caplog.at_level(logging.WARNING, logger="genforge"):
        code, out, err = cli("sample", runs["gan"], "-n", "3", "--grid", tmp_path / "g.png", "--compile")
    assert code == 0, err
    assert (tmp_path / "g.png").is_file()
    assert sum("--compile" in r.getMessage() for r in caplog.records) == 1


def test_inductor_cache_dir_defaults_under_genforge_and_respects_the_user(monkeypatch, tmp_path):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert compiled_mod.use_inductor_cache() == str(tmp_path / ".cache" / "genforge" / "inductor")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert compiled_mod.use_inductor_cache() == str(tmp_path / "mine")


# -- serving ----------------------------------------------------------------------------------------

def test_output_format_webp_and_jpeg(tmp_path, runs, keys):
    with TestClient(create_app(settings(tmp_path, runs, keys, models=("gan",)))) as c:
        h = auth(keys["gen"])
        for fmt, pil_name in [("webp", "WEBP"), ("jpeg", "JPEG"), ("png", "PNG")]:
            r = c.post("/v1/images/generations", json={"n": 2, "seed": 1, "output_format": fmt}, headers=h)
            assert r.status_code == 200, r.text
            assert r.json()["output_format"] == fmt
            for d in r.json()["data"]:
                im = Image.open(io.BytesIO(base64.b64decode(d["b64_json"])))
                assert im.format == pil_name and im.size == (16, 16)
        r = c.post("/v1/images/generations", json={"n": 1, "output_format": "gif"}, headers=h)
        assert r.status_code == 422 and "output_format" in r.text


def test_encoding_runs_after_the_forward_on_the_encode_pool(tmp_path, runs, keys, monkeypatch):
    calls: list[tuple[str, bool]] = []
    in_forward = threading.local()
    real_encode = served_models.encode_images

    def encode(x, fmt="png"):
        calls.append((threading.current_thread().name, getattr(in_forward, "on", False)))
        return real_encode(x, fmt)

    monkeypatch.setattr(served_models, "encode_images", encode)
    app = create_app(settings(tmp_path, runs, keys, models=("gan",)))
    with TestClient(app) as c:
        gen = app.state.serve["models"].get("tiny-gan", "image-generation")
        real_run = gen.batcher.run_batch
        results = []

        def run_batch(items):
            in_forward.on = True
            try:
                out = real_run(items)
            finally:
                in_forward.on = False
            results.append(out)
            return out

        gen.batcher.run_batch = run_batch
        r = c.post("/v1/samples", json={"n": 3, "seed": 2}, headers=auth(keys["gen"]))
        assert r.status_code == 200, r.text
    assert len(results) == 1
    assert [t.dtype for t in results[0]] == [torch.uint8] and results[0][0].shape == (3, 1, 16, 16)
    assert len(calls) == 1
    name, during_forward = calls[0]
    assert name.startswith("genforge-encode") and not during_forward


def test_readyz_waits_for_the_compile_warm_up(tmp_path, runs, keys, monkeypatch):
    release, sizes = threading.Event(), []

    def slow_compile(fn, **kw):
        def run(x, *rest):
            sizes.append(x.shape[0])
            release.wait(60)  # a compile that takes as long as the test wants
            return fn(x, *rest)
        return run

    monkeypatch.setattr(torch, "compile", slow_compile)
    app = create_app(settings(tmp_path, runs, keys, models=("diffusion",), max_batch_size=4, compile=True))
    with TestClient(app) as c:
        r = c.get("/readyz")
        assert r.status_code == 503 and "compiling" in r.json()["reason"]
        release.set()
        deadline = time.time() + 60
        while c.get("/readyz").status_code != 200 and time.time() < deadline:
            time.sleep(0.05)
        assert c.get("/readyz").status_code == 200
        assert sizes[:3] == [1, 2, 4]  # every bucket up to --max-batch-size, before ready
        r = c.post("/v1/images/generations", json={"n": 3, "seed": 4, "steps": 2}, headers=auth(keys["gen"]))
        assert r.status_code == 200 and len(r.json()["data"]) == 3


# -- the real compilers -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def compiled_diffusion(runs):
    return genforge.load(runs["diffusion"], device="cpu", compile=True)


@slow
def test_inductor_matches_eager_and_repeats(runs, compiled_diffusion):
    eager = genforge.load(runs["diffusion"], device="cpu")
    for n in (1, 3):
        a = compiled_diffusion.generate(n=n, seed=11, steps=3)
        assert compiled_diffusion.compiled.failed is None
        assert torch.allclose(a, eager.generate(n=n, seed=11, steps=3), atol=ATOL)
        assert torch.equal(a, compiled_diffusion.generate(n=n, seed=11, steps=3))  # same seed, same images
    assert set(compiled_diffusion.compiled.ready) == {1, 4}


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graphs_match_eager(runs):
    eager = genforge.load(runs["diffusion"], device="cuda")
    pipe = genforge.load(runs["diffusion"], device="cuda", compile=True)
    assert pipe.compiled.mode == "reduce-overhead"
    for n in (1, 3, 8):
        a = pipe.generate(n=n, seed=11, steps=4)
        assert pipe.compiled.failed is None
        # TF32 and fused kernels on the GPU: a little looser than CPU, still far below a grey level
        assert torch.allclose(a, eager.generate(n=n, seed=11, steps=4), atol=1e-3)
        assert torch.equal(a, pipe.generate(n=n, seed=11, steps=4))


def test_serve_cli_compile_flag_compiles_every_bucket_before_ready(cli, tmp_path, runs, keys, monkeypatch):
    """`genforge serve --compile` (the flag itself, not Settings): the app it would run compiles each
    batch bucket up to --max-batch-size before /readyz answers 200, GAN generators included."""
    import uvicorn

    rec = Recorder()
    monkeypatch.setattr(torch, "compile", rec)
    started = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: started.update(app=app, **kw))
    code, _, err = cli("serve", runs["diffusion"], runs["gan"], "--compile", "--max-batch-size", "4",
                       "--keys", keys["path"], "--jobs-url", f"sqlite:///{tmp_path / 'jobs.db'}",
                       "--device", "cpu")
    assert code == 0, err
    with TestClient(started["app"]) as c:
        deadline = time.time() + 60
        while c.get("/readyz").status_code != 200 and time.time() < deadline:
            time.sleep(0.05)
        assert c.get("/readyz").status_code == 200
    # two models, each warmed at buckets 1, 2 and 4
    assert sorted(rec.sizes) == [1, 1, 2, 2, 4, 4], rec.sizes
