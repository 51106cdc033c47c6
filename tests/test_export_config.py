"""Exports (diffusers for class-conditional diffusion, ONNX for every network), loading a kept
checkpoint with --step, and the generated config reference (genforge config)."""
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import genforge
from conftest import TINY_GAN
from genforge.config import load_config, validate_config
from genforge.errors import GenforgeError
from genforge.train.checkpoint import load_tensors
from serve_helpers import make_run

README = Path(__file__).resolve().parent.parent / "README.md"
CLASSES = ["circle", "square", "triangle"]
DIFF = {"channels": 1, "image_size": 16, "widths": [16, 16], "attention": [False, True],
        "num_train_timesteps": 50}
GAN = {"z_dim": 16, "image_size": 16, "width": 8, "d_width": 4}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("export_runs")
    return {
        "dcgan": make_run(root, "dcgan", "gan", "dcgan", GAN),
        "sngan": make_run(root, "sngan", "gan", "sngan", GAN),
        "cgan": make_run(root, "cgan", "gan", "cgan", {**GAN, "num_classes": 3}, CLASSES),
        "diffusion": make_run(root, "diffusion", "diffusion", "diffusion", DIFF),
        "diffusion_cond": make_run(root, "diffusion_cond", "diffusion", "diffusion",
                                   {**DIFF, "num_classes": 3, "prediction_type": "v_prediction"}, CLASSES),
        "classifier": make_run(root, "classifier", "classify", "cnn",
                               {"width": 4, "image_size": 16, "num_classes": 3}, CLASSES),
    }


# ---- diffusers: class-conditional diffusion ----------------------------------------------------------
def test_conditional_diffusion_exports_unet_and_scheduler_that_reproduce_sample(runs, cli, tmp_path):
    from diffusers import DDPMScheduler, UNet2DModel

    out = tmp_path / "hf"
    code, _, err = cli("export", runs["diffusion_cond"], out)
    assert code == 0, err
    unet = UNet2DModel.from_pretrained(out, subfolder="unet")
    assert unet.config.num_class_embeds == 4  # three classes and the "no class" token
    assert DDPMScheduler.from_pretrained(out, subfolder="scheduler").config.prediction_type == "v_prediction"
    meta = json.loads((out / "genforge.json").read_text())
    assert meta["class_names"] == CLASSES and meta["null_class"] == 3
    # the README's loop is what a user runs: execute it as written and compare with genforge's own
    # sampler for the same seed, labels and guidance. It loads the same float32 weights (safetensors
    # stores them bit for bit) into the same diffusers modules and runs the same scheduler steps in the
    # same order, so the two agree exactly on one machine (measured: 0.0); 1e-5 (a 400th of one grey
    # level) only leaves room for a diffusers release that picks another attention kernel on load.
    code_block = re.search(r"```python\n(.*?)```", (out / "README.md").read_text(), re.S).group(1)
    ns: dict = {}
    exec(code_block, ns)
    pipe = genforge.load(runs["diffusion_cond"], device="cpu")
    ours = pipe.generate(n=3, seed=ns["seed"], steps=ns["steps"], sampler="dpm++", labels=[0, 1, 2],
                         guidance=ns["guidance"])
    assert ns["images"].shape == ours.shape == (3, 1, 16, 16)
    assert (ns["images"] - ours).abs().max() <= 1e-5
    assert ns["guidance"] != 1  # the loop above exercised classifier-free guidance


# ---- ONNX ------------------------------------------------------------------------------------------------
def _reference(pipe, feed: dict) -> torch.Tensor:
    """What genforge itself computes for the ONNX file's inputs."""
    t = {k: torch.from_numpy(v) for k, v in feed.items()}
    with torch.no_grad():
        if pipe.cfg.task == "gan":
            return pipe.model.generator(t["z"], t.get("labels"))
        if pipe.cfg.task == "diffusion":
            return pipe.model(t["sample"], t["timestep"], t.get("class_labels"))
        return pipe.model(t["images"])


def _feed(meta: dict, n: int, rng: np.random.Generator, num_classes: int) -> dict:
    feed = {}
    for name, spec in meta["inputs"].items():
        shape = (n, *spec["shape"][1:])
        if spec["dtype"] == "int64":
            high = num_classes + 1 if name == "class_labels" else (50 if name == "timestep" else num_classes)
            feed[name] = rng.integers(0, high, size=shape).astype(np.int64)
        else:
            feed[name] = rng.standard_normal(shape).astype(np.float32).clip(-3, 3)
    return feed


@pytest.mark.parametrize("name", ["dcgan", "sngan", "cgan", "diffusion", "diffusion_cond", "classifier"])
def test_onnx_export_matches_pytorch_at_any_batch_size(runs, cli, tmp_path, name):
    import onnxruntime as ort

    from genforge.export import onnx_tolerance

    out = tmp_path / "onnx"
    code, _, err = cli("export", runs[name], out, "--format", "onnx")
    assert code == 0, err
    meta = json.loads((out / "genforge.json").read_text())
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == list(meta["inputs"])
    pipe = genforge.load(runs[name], device="cpu")
    k = 3 if name in ("cgan", "diffusion_cond", "classifier") else 0
    rng = np.random.default_rng(0)
    for n in (1, 5, 70):  # 70: past diffusers' batch >= 64 branch in the upsampler
        feed = _feed(meta, n, rng, k)
        got = torch.from_numpy(sess.run(None, feed)[0])
        ref = _reference(pipe, feed)
        assert got.shape == ref.shape and ref.shape[0] == n
        # float32 rounding of differently ordered sums: see genforge.export.ONNX_RTOL for the bound
        assert (got - ref).abs().max() <= onnx_tolerance(ref), name


@pytest.mark.parametrize("name", ["diffusion", "diffusion_cond"])
def test_onnx_readme_sampling_loop_matches_genforge_sample(runs, cli, tmp_path, name):
    out = tmp_path / "onnx"
    code, _, err = cli("export", runs[name], out, "--format", "onnx")
    assert code == 0, err
    ns: dict = {}
    exec(re.search(r"```python\n(.*?)```", (out / "README.md").read_text(), re.S).group(1), ns)
    pipe = genforge.load(runs[name], device="cpu")
    ours = pipe.generate(n=4, seed=0, steps=25, sampler="dpm++", labels=[0, 1, 2, 0] if pipe.conditional else None)
    # each denoiser call differs from PyTorch's by float32 rounding only (ONNX_RTOL); the solver's 25 steps
    # combine those outputs linearly, so the images stay within rounding too (measured: under 1e-6).
    # 2e-3 is a quarter of one grey level; a wrong schedule, input or label moves pixels by 0.1 or more
    assert (torch.as_tensor(ns["images"]) - ours).abs().max() <= 2e-3


def test_export_refuses_bad_requests_and_leaves_nothing_behind(runs, cli, tmp_path, monkeypatch):
    code, _, err = cli("export", runs["dcgan"], tmp_path / "a", "--format", "diffusers")
    assert code == 2 and "diffusion models only" in err and "--format onnx" in err
    code, _, err = cli("export", runs["dcgan"], tmp_path / "a", "--format", "tflite")
    assert code == 2 and "unknown export format 'tflite'" in err
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    code, _, err = cli("export", runs["classifier"], taken)
    assert code == 2 and "not an empty directory" in err
    assert [p.name for p in taken.iterdir()] == ["keep.txt"]
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if the export extra were not installed
    code, _, err = cli("export", runs["classifier"], tmp_path / "b")
    assert code == 2 and "pip install 'genforge[export]'" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_export_of_a_task_without_one_says_which_tasks_export(cli, tmp_path):
    for fmt in ([], ["--format", "onnx"], ["--format", "diffusers"]):
        code, out, err = cli("export", "captioner-shapes", tmp_path / "c", *fmt)
        assert code == 2 and "'caption' run, which has no export yet" in err and "tts" in err, err
        assert not (tmp_path / "c").exists()


# ---- --step: sample or export a kept checkpoint ------------------------------------------------------
@pytest.fixture(scope="module")
def stepped(tmp_path_factory):
    from genforge.train.trainer import Trainer

    root = tmp_path_factory.mktemp("stepped")
    cfg = load_config(None, TINY_GAN + ["train.steps=4", "train.ckpt_every=2", "train.keep_last=2",
                                        "train.ema_decay=0.9", "train.lr=1e-2"])
    Trainer(cfg, root / "gan").fit()
    return root / "gan"


def _state(module: torch.nn.Module) -> dict:
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_load_step_prefers_ema_weights_and_lists_kept_steps(stepped):
    at2 = _state(genforge.load(stepped, device="cpu", step=2).model)
    ema2 = load_tensors(stepped / "train_state" / "step_00000002" / "ema.safetensors")
    raw2 = load_tensors(stepped / "train_state" / "step_00000002" / "model.safetensors")
    assert all(torch.equal(at2[k], ema2[k]) for k in at2)
    assert any(not torch.equal(at2[k], raw2[k]) for k in at2)  # EMA really differs from the raw weights
    final, at4 = _state(genforge.load(stepped, device="cpu").model), _state(genforge.load(stepped, step=4).model)
    assert all(torch.equal(final[k], at4[k]) for k in final)  # model.safetensors is step 4's EMA
    assert any(not torch.equal(final[k], at2[k]) for k in final)
    with pytest.raises(GenforgeError, match=r"no checkpoint for step 3; available steps: 2, 4$"):
        genforge.load(stepped, step=3)


def test_load_step_without_ema_uses_raw_weights(runs, tmp_path):
    from genforge.train.checkpoint import save_tensors

    state = runs["dcgan"] / "train_state" / "step_00000007"
    state.mkdir(parents=True)
    torch.manual_seed(1)
    weights = {k: torch.randn_like(v) if v.is_floating_point() else v
               for k, v in genforge.load(runs["dcgan"], device="cpu").model.state_dict().items()}
    save_tensors(state / "model.safetensors", weights)
    (state / "state.json").write_text('{"step": 7}')
    try:
        got = genforge.load(runs["dcgan"], device="cpu", step=7).model.state_dict()
        assert all(torch.equal(got[k], weights[k]) for k in weights)
    finally:
        import shutil

        shutil.rmtree(runs["dcgan"] / "train_state")
    with pytest.raises(GenforgeError, match="available steps: none"):
        genforge.load(runs["dcgan"], step=7)


def test_cli_sample_and_export_take_step(stepped, cli, tmp_path):
    import onnxruntime as ort

    from PIL import Image

    code, _, err = cli("sample", stepped, "-n", "4", "--grid", tmp_path / "s2.png", "--step", "2")
    assert code == 0, err
    code, _, err = cli("sample", stepped, "-n", "4", "--grid", tmp_path / "final.png")
    assert code == 0, err
    code, _, err = cli("sample", stepped, "-n", "4", "--grid", tmp_path / "x.png", "--step", "3")
    assert code == 2 and "available steps: 2, 4" in err and not (tmp_path / "x.png").exists()
    grid2 = np.asarray(Image.open(tmp_path / "s2.png"))
    assert not np.array_equal(grid2, np.asarray(Image.open(tmp_path / "final.png")))
    from genforge.data.transforms import make_grid, to_uint8

    expected = make_grid(to_uint8(genforge.load(stepped, device="cpu", step=2).generate(n=4, seed=0)))
    assert np.array_equal(grid2, np.asarray(expected))

    code, out, err = cli("export", stepped, tmp_path / "onnx2", "--step", "2")
    assert code == 0 and "at step 2" in out, err
    assert json.loads((tmp_path / "onnx2" / "genforge.json").read_text())["step"] == 2
    z = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
    got = ort.InferenceSession(str(tmp_path / "onnx2" / "model.onnx")).run(None, {"z": z})[0]
    with torch.no_grad():
        ref = genforge.load(stepped, device="cpu", step=2).model.generator(torch.from_numpy(z)).numpy()
    assert np.abs(got - ref).max() <= 1e-4
    code, _, err = cli("export", stepped, tmp_path / "onnx9", "--step", "9")
    assert code == 2 and "available steps: 2, 4" in err and not (tmp_path / "onnx9").exists()


# ---- genforge config -------------------------------------------------------------------------------------
def test_config_prints_effective_config_with_meaning_type_and_default(cli):
    code, out, err = cli("config", "diffusion_fashion_cond", "train.lr=3e-4", "data.limit=10")
    assert code == 0, err
    expected = load_config("diffusion_fashion_cond", ["train.lr=3e-4", "data.limit=10"])
    assert validate_config(yaml.safe_load(out)) == expected  # the output is itself a usable config
    lines = out.splitlines()
    assert "  lr: 0.0003" in lines and lines[lines.index("  lr: 0.0003") - 1] == (
        "  # peak learning rate of AdamW (float > 0; default 0.0002)")
    assert lines[lines.index("  limit: 10") - 1].endswith("(int >= 1 or null; default null)")
    keys = [ln for ln in lines if not ln.lstrip().startswith("#")]
    comments = [ln for ln in lines if ln.lstrip().startswith("#")]
    assert len(keys) == len(comments)  # every key, sections included, has its comment
    code, _, err = cli("config", "diffusion_fashion_cond", "train.nope=1")
    assert code == 2 and "unknown config key 'train.nope'" in err


def test_config_reference_covers_every_key_and_is_the_readme_table(cli):
    from genforge.config import RunConfig
    from genforge.config_doc import iter_fields

    code, table, err = cli("config", "--reference")
    assert code == 0, err
    rows = [ln for ln in table.splitlines() if ln.startswith("| `")]
    assert len(rows) == len(list(iter_fields())) and len(rows) > 30
    defaults = RunConfig().model_dump(mode="json")
    assert f"| `train.steps` | int >= 1 | `{defaults['train']['steps']}` |" in table
    readme = README.read_text()
    section = readme.split("## Config reference", 1)[1].split("\n## ", 1)[0]
    assert table.strip() in section, "README's config table is stale: paste `genforge config --reference`"


def test_readme_cli_reference_lists_export_and_config():
    block = README.read_text().split("## CLI reference", 1)[1].split("```text", 1)[1].split("```", 1)[0]
    assert "genforge export RUN_DIR OUT" in block and "--format diffusers|onnx" in block
    assert "--step N" in block and "genforge config" in block and "--reference" in block
