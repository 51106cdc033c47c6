"""Pipelines and the CLI as a user meets them: sample, info, eval accuracy, and every bad input."""
import json
import os
from pathlib import Path

import pytest
from PIL import Image

import genforge
from conftest import TINY_DIFFUSION, TINY_GAN
from genforge.config import load_config
from genforge.errors import GenforgeError
from genforge.train.trainer import Trainer


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    gan = load_config(None, TINY_GAN + ["train.steps=3"])
    Trainer(gan, root / "gan").fit()
    diff = load_config(None, TINY_DIFFUSION + ["train.steps=3"])
    Trainer(diff, root / "diff").fit()
    cgan = load_config(None, TINY_GAN + ["model.name=cgan", "train.steps=2", "model.params.d_width=4"])
    Trainer(cgan, root / "cgan").fit()
    sngan = load_config(None, TINY_GAN + ["model.name=sngan", "train.steps=2", "model.params.d_width=4"])
    Trainer(sngan, root / "sngan").fit()
    clf = load_config(None, ["task=classify", "model.name=cnn", "model.params.width=4", "data.name=digits",
                             "data.image_size=16", "data.limit=64", "train.batch_size=16", "train.steps=3",
                             "train.tensorboard=false"])
    Trainer(clf, root / "clf").fit()
    return root


def test_same_seed_same_images(runs):
    for name in ("gan", "diff"):
        pipe = genforge.load(runs / name)
        a, b = pipe(n=3, seed=7, steps=4), pipe(n=3, seed=7, steps=4)
        c = pipe(n=3, seed=8, steps=4)
        assert all(isinstance(x, Image.Image) and x.size == (16, 16) for x in a)
        assert [x.tobytes() for x in a] == [x.tobytes() for x in b]
        assert [x.tobytes() for x in a] != [x.tobytes() for x in c]


def test_batching_does_not_change_images(runs):
    pipe = genforge.load(runs / "gan")
    whole = pipe.generate(n=5, seed=1)
    split = pipe.generate(n=5, seed=1, batch_size=2)
    assert (whole == split).all()


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm++", "dpm++sde"])
def test_samplers(runs, sampler):
    x = genforge.load(runs / "diff").generate(n=2, steps=3, sampler=sampler)
    assert x.shape == (2, 1, 16, 16) and x.abs().max() <= 1


def test_conditional_labels(runs):
    pipe = genforge.load(runs / "cgan")
    assert len(pipe(n=2, labels=["3", "7"])) == 2
    with pytest.raises(GenforgeError, match="out of range"):
        pipe(n=1, labels=[12])
    with pytest.raises(GenforgeError, match="takes no labels"):
        genforge.load(runs / "gan")(n=1, labels=[1])


def test_sngan_is_unconditional_hinge_with_spectral_norm(runs):
    from torch.nn.utils import parametrize

    pipe = genforge.load(runs / "sngan")
    model = pipe.model
    assert model.loss == "hinge" and not model.conditional and not pipe.conditional
    d = model.discriminator
    assert d.embed is None and parametrize.is_parametrized(d.linear)
    x = pipe.generate(n=3, seed=2)
    assert x.shape == (3, 1, 16, 16) and (pipe.generate(n=3, seed=2) == x).all()
    assert d(x).shape == (3,)  # one logit per image, no labels needed
    logged = [json.loads(ln) for ln in (runs / "sngan" / "metrics.jsonl").read_text().splitlines()]
    assert any("loss_d" in r for r in logged)


def test_classifier_pipeline(runs):
    pipe = genforge.load(runs / "clf")
    out = pipe(Image.new("L", (40, 30), 128), top_k=2)
    assert len(out[0]) == 2 and abs(sum(p["score"] for p in out[0])) <= 1.0 + 1e-6


def test_cli_sample_grid_and_dir(runs, cli, tmp_path):
    code, out, err = cli("sample", runs / "diff", "-n", "4", "--steps", "3", "--grid", tmp_path / "g.png",
                         "--out-dir", tmp_path / "imgs")
    assert code == 0, err
    assert Image.open(tmp_path / "g.png").size[0] > 16
    assert len(list((tmp_path / "imgs").glob("*.png"))) == 4


def test_cli_info(runs, cli):
    code, out, err = cli("info", runs / "gan")
    assert code == 0, err
    info = json.loads(out)
    assert info["task"] == "gan" and info["params"] > 0 and info["last_metrics"]["step"] == 3


def test_cli_accuracy(runs, cli):
    code, out, err = cli("eval", "accuracy", runs / "clf")
    assert code == 0, err
    assert 0 <= json.loads(out)["accuracy"] <= 1


@pytest.mark.parametrize("args,pattern", [
    (["train", "train.lrr=1"], "unknown config key 'train.lrr'"),
    (["train", "model.name=nope"], "unknown model 'nope'; choose one of"),
    (["train", "data.name=nope"], "unknown dataset 'nope'"),
    (["train", "task=nope"], "unknown task 'nope'"),
    (["train", "task=diffusion", "model.name=dcgan"], "cannot train model 'dcgan'"),
    (["train", "data.name=folder"], "data.path is required"),
    (["train", "data.name=folder", "data.path=/nonexistent/x"], "/nonexistent/x"),
    (["train", "train.steps=abc"], "train.steps"),
    (["sample", "/nonexistent/run", "--grid", "x.png"], "no run directory"),
])
def test_cli_bad_input_is_one_line_exit_2(cli, tmp_path, args, pattern):
    os.chdir(tmp_path)
    code, out, err = cli(*args, *(["--out", tmp_path / "r"] if args[0] == "train" else []))
    assert code == 2
    assert pattern in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "r").exists(), "no partial run directory is left behind"


def test_an_option_out_of_its_bounds_is_a_usage_error_exit_2(cli, tmp_path):
    # typer checks min/max itself and raises from its own copy of click, not click's
    code, out, err = cli("sample", "diffusion-shapes", "--scale", "0", "--grid", tmp_path / "x.png")
    assert code == 2 and "--scale" in err and "Traceback" not in err
    assert not (tmp_path / "x.png").exists()


def test_cli_bad_sampler_and_truncated_weights(runs, cli, tmp_path):
    code, _, err = cli("sample", runs / "diff", "--sampler", "euler", "--grid", tmp_path / "x.png")
    assert code == 2 and "unknown sampler 'euler'" in err
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in ("config.json",):
        (broken / f).write_bytes((runs / "gan" / f).read_bytes())
    data = (runs / "gan" / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    code, _, err = cli("sample", broken, "--grid", tmp_path / "x.png")
    assert code == 2 and "truncated" in err
    assert not (tmp_path / "x.png").exists()


def test_checkpoint_from_another_model(runs, cli, tmp_path):
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "config.json").write_bytes((runs / "gan" / "config.json").read_bytes())
    (mixed / "model.safetensors").write_bytes((runs / "diff" / "model.safetensors").read_bytes())
    code, _, err = cli("sample", mixed, "--grid", tmp_path / "x.png")
    assert code == 2 and "different model" in err
    cfg = json.loads((runs / "gan" / "config.json").read_text())
    cfg["model"]["params"]["width"] = 12
    (mixed / "config.json").write_text(json.dumps(cfg))
    (mixed / "model.safetensors").write_bytes((runs / "gan" / "model.safetensors").read_bytes())
    code, _, err = cli("sample", mixed, "--grid", tmp_path / "x.png")
    assert code == 2 and "shape" in err


def test_unwritable_output(runs, cli, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as a user that ignores permissions")
        code, _, err = cli("sample", runs / "gan", "--grid", ro / "x.png")
        assert code == 2 and "writable" in err
        code, _, err = cli("train", *TINY_GAN, "--out", ro / "run")
        assert code == 2 and "writ" in err
    finally:
        ro.chmod(0o700)


def test_output_under_a_file(runs, cli, tmp_path):
    (tmp_path / "file.txt").write_text("x")
    code, _, err = cli("sample", runs / "gan", "--grid", tmp_path / "file.txt" / "x.png")
    assert code == 2 and "writable" in err
    code, _, err = cli("train", *TINY_GAN, "--out", tmp_path / "file.txt" / "run")
    assert code == 2 and "writable" in err


def test_debug_shows_traceback(cli, tmp_path):
    code, _, err = cli("--debug", "sample", "/nonexistent", "--grid", tmp_path / "x.png")
    assert code == 2 and "Traceback" in err


def test_cli_eval_fid_with_a_classifier_feature_net(runs, cli, tmp_path):
    code, out, err = cli("eval", "fid", runs / "gan", "--feature-net", runs / "clf", "-n", "40",
                         "--out", tmp_path / "fid.json")
    assert code == 0, err
    rep = json.loads(out)
    assert rep["metric"] == "FID-clf" and rep["n_fake"] == 40 and rep["n_real"] == 40
    assert rep["fid"] > 0 and 0 <= rep["precision"] <= 1 and 0 <= rep["recall"] <= 1
    assert json.loads((tmp_path / "fid.json").read_text())["fid"] == rep["fid"]


def test_cli_eval_fid_bad_feature_net(runs, cli):
    code, _, err = cli("eval", "fid", runs / "gan", "--feature-net", runs / "diff", "-n", "8")
    assert code == 2 and "must be a classify run" in err
    code, _, err = cli("eval", "fid", runs / "gan", "--inception-weights", "/nonexistent.pth", "-n", "8")
    assert code == 2 and "nonexistent" in err


def test_export_to_diffusers(runs, cli, tmp_path):
    import torch
    from diffusers import DDPMPipeline

    code, _, err = cli("export", runs / "diff", tmp_path / "hf")
    assert code == 0, err
    hf = DDPMPipeline.from_pretrained(tmp_path / "hf")
    ours = genforge.load(runs / "diff").model
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([3, 10])
    with torch.no_grad():
        assert torch.allclose(hf.unet(x, t).sample, ours(x, t), atol=1e-6)
    assert hf.scheduler.config.num_train_timesteps == 50
    code, _, err = cli("export", runs / "gan", tmp_path / "hf2", "--format", "diffusers")
    assert code == 2 and "diffusion" in err


def test_cli_models_lists_registries(cli):
    code, out, err = cli("models")
    assert code == 0, err
    listing = json.loads(out)
    assert {"dcgan", "cgan", "diffusion", "cnn"} <= set(listing["models"])
    assert {"shapes", "fashion", "digits", "folder"} <= set(listing["datasets"])
    assert {"classifier", "inception"} <= set(listing["feature_nets"])
    assert "dcgan_fashion" in listing["recipes"] and "dcgan-fashion" in listing["shipped"]


def test_cli_eval_fid_shows_progress_on_stderr_when_progress_is_on(runs, cli, monkeypatch):
    args = ("eval", "fid", runs / "diff", "--feature-net", runs / "clf", "-n", "8", "--steps", "2")
    code, out, err = cli(*args)  # the fixtures' GENFORGE_NO_PROGRESS: nothing but warnings
    assert code == 0, err
    assert "generate" not in err
    monkeypatch.delenv("GENFORGE_NO_PROGRESS", raising=False)
    code, out, err = cli(*args)
    assert code == 0, err
    assert "generate 2/2 (100%)" in err  # 8 images are one batch of 2 denoising steps, on stderr
    assert json.loads(out)["n_fake"] == 8  # stdout stays the JSON report alone


def test_cli_sample_nrow_puts_n_images_on_each_row(runs, cli, tmp_path):
    import numpy as np

    tile = 16 + 2  # 16 px images, 2 px padding around each
    code, out, err = cli("sample", runs / "gan", "-n", "6", "--nrow", "4", "--grid", tmp_path / "g.png",
                         "--out-dir", tmp_path / "imgs")
    assert code == 0, err
    grid = Image.open(tmp_path / "g.png")
    assert grid.size == (2 + 4 * tile, 2 + 2 * tile)  # 4 on the first row, 2 on the second
    # image i sits in row i // 4, column i % 4
    pixels = np.asarray(grid)
    for i, f in enumerate(sorted((tmp_path / "imgs").glob("*.png"))):
        y, x = 2 + (i // 4) * tile, 2 + (i % 4) * tile
        assert (pixels[y:y + 16, x:x + 16] == np.asarray(Image.open(f))).all(), f
    code, _, err = cli("sample", runs / "gan", "-n", "6", "--grid", tmp_path / "sq.png")
    assert code == 0 and Image.open(tmp_path / "sq.png").size == (2 + 3 * tile, 2 + 2 * tile)  # default: 3
    # on a class-conditional run --nrow overrides the one-class-per-row layout (10 digit classes)
    code, _, err = cli("sample", runs / "cgan", "-n", "20", "--nrow", "4", "--grid", tmp_path / "c.png")
    assert code == 0, err
    assert Image.open(tmp_path / "c.png").size == (2 + 4 * tile, 2 + 5 * tile)
    code, _, err = cli("sample", runs / "cgan", "-n", "20", "--grid", tmp_path / "c10.png")
    assert code == 0 and Image.open(tmp_path / "c10.png").size == (2 + 2 * tile, 2 + 10 * tile)


@pytest.mark.parametrize("flags,named", [(["--sampler", "ddim"], "--sampler"), (["--steps", "7"], "--steps"),
                                         (["--sampler", "ddpm", "--steps", "3"], "--steps, --sampler")])
def test_cli_sample_gan_warns_that_it_ignores_sampler_and_steps(runs, cli, tmp_path, flags, named):
    code, _, err = cli("sample", runs / "gan", "-n", "2", "--grid", tmp_path / "plain.png")
    assert code == 0 and "warning" not in err
    code, _, err = cli("sample", runs / "gan", "-n", "2", *flags, "--grid", tmp_path / "flags.png")
    assert code == 0, err
    assert f"warning: {named} ignored: a GAN makes its images in one pass" in err
    assert len([x for x in err.splitlines() if x.startswith("warning")]) == 1
    # ignored means ignored: the same images
    assert Image.open(tmp_path / "flags.png").tobytes() == Image.open(tmp_path / "plain.png").tobytes()
    # a diffusion run uses them, so it does not warn
    code, _, err = cli("sample", runs / "diff", "-n", "1", "--sampler", "ddim", "--steps", "2", "--grid",
                       tmp_path / "d.png")
    assert code == 0 and "warning" not in err


def test_cli_sample_labels_take_class_names_in_any_case(cli, tmp_path):
    from serve_helpers import make_run

    run = make_run(tmp_path, "cgan", "gan", "cgan", {"z_dim": 16, "width": 8, "d_width": 8, "image_size": 16,
                                                     "channels": 1, "num_classes": 3}, ["T-shirt", "Sneaker", "Bag"])

    def images(labels):
        out = tmp_path / f"imgs-{len(list(tmp_path.iterdir()))}"
        code, _, err = cli("sample", run, "-n", "2", "--labels", labels, "--out-dir", out)
        assert code == 0, err
        return [Image.open(f).tobytes() for f in sorted(out.glob("*.png"))]

    sneaker = images("1")
    assert images("sNeAkEr") == images("Sneaker") == images("SNEAKER") == sneaker
    assert images("sNeAkEr") != images("t-SHIRT")  # a name picks its own class, not any class
    assert images("bAG, sneaker") == images("2,1")
    code, _, err = cli("sample", run, "--labels", "sneakers", "--grid", tmp_path / "x.png")
    assert code == 2 and "'sneakers' is not a class" in err and "Sneaker" in err
