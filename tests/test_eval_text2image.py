"""genforge eval text2image: pixel-verifier scores of text2image and textgan runs on three prompt sets,
the real scenes' ceiling, R-precision, and the prompt sets bench/text2image.py shares with it."""
from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path

import pytest

from genforge.config import load_config
from genforge.eval.text2image_eval import SETS, prompt_sets
from genforge.eval.verify import parse_caption
from test_rprecision import TINY_CLIP
from text_runs import TINY

ROOT = Path(__file__).resolve().parent.parent
# 32 px: the verifier is exact on rendered scenes from 32 px (at 16 px small objects are a few pixels)
PX32 = ["data.image_size=32", "task_params.eval_prompts=0", "train.steps=2"]


def _train(overrides, out):
    import torch

    from genforge.train.trainer import Trainer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # captions cut to the tiny context, untrained metrics
            Trainer(load_config(None, overrides), out).fit()
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval-t2i")
    return {"t2i": _train(TINY["t2i"] + PX32, root / "t2i"),
            "textgan": _train(TINY["textgan"] + PX32, root / "textgan"),
            "clip": _train(TINY_CLIP + ["data.image_size=32", "task_params.eval_items=0", "train.steps=2"],
                           root / "clip")}


def _heldout(caption: str) -> bool:
    """Whether a caption names one of the default hold-out's combinations (green triangle, orange ring,
    a star below a ring)."""
    spec = parse_caption(caption)
    if any((o["color"], o["shape"]) in {("green", "triangle"), ("orange", "ring")} for o in spec.objects):
        return True
    shapes = [o["shape"] for o in spec.objects]
    return any((shapes[i], rel, shapes[j]) in {("star", "below", "ring"), ("ring", "above", "star")}
               for i, j, rel in spec.relations)


def test_prompt_sets_are_the_captions_bench_text2image_used():
    cfg = load_config(None, TINY["t2i"])
    # bench/text2image.py's sets before they moved into the library (the same for the shipped model's data)
    assert prompt_sets(cfg, 2) == {
        "seen_one_object": ["a small red square at the bottom", "a large yellow square at the top right"],
        "seen_two_objects": ["a large blue square to the lower left of a small blue circle",
                             "a small orange circle to the left of a large white circle"],
        "heldout": ["a small blue star below a large orange ring",
                    "a large orange ring to the lower right of a small orange square"]}
    scenes: dict = {}
    sets = prompt_sets(cfg, 16, scenes)
    assert list(sets) == list(SETS) and all(len(v) == 16 for v in sets.values())
    assert sets["seen_one_object"][:2] == prompt_sets(cfg, 2)["seen_one_object"]  # a larger n only adds
    assert all(len(parse_caption(c).objects) == 1 for c in sets["seen_one_object"])
    assert all(len(parse_caption(c).objects) == 2 for c in sets["seen_two_objects"])
    assert all(_heldout(c) for c in sets["heldout"])
    assert not any(_heldout(c) for c in sets["seen_one_object"] + sets["seen_two_objects"])
    assert all(scenes[k].shape == (16, 3, 16, 16) for k in SETS)
    # bench/text2image.py draws its prompts from the library, not from a copy
    spec = importlib.util.spec_from_file_location("bench_text2image", ROOT / "bench" / "text2image.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.prompt_sets is prompt_sets


def test_eval_text2image_scores_three_sets_with_the_real_scenes_ceiling(runs, cli, tmp_path):
    out = tmp_path / "report.json"
    code, stdout, err = cli("eval", "text2image", runs["t2i"], "-n", 2, "--steps", 2, "--out", out)
    assert code == 0, err
    report = json.loads(stdout)
    assert json.loads(out.read_text()) == report
    assert report["task"] == "text2image" and report["steps"] == 2 and report["layout"] == "grid"
    assert report["guidance"] == 2.0 and report["image_size"] == 32  # the run's defaults
    assert list(report["sets"]) == list(SETS)
    for name, s in report["sets"].items():
        assert s["n"] == 2 and s["generated"]["n"] == 2
        for side in ("generated", "real"):
            assert 0 <= s[side]["all_correct"] <= 1
            assert all(v is None or 0 <= v <= 1 for v in s[side]["accuracy"].values())
        assert s["real"]["all_correct"] == 1.0  # the verifier is exact on rendered scenes
        assert f"{name}: all correct" in err
    assert "rprecision" not in report and report["images_per_s"] > 0
    code, stdout, err = cli("eval", "text2image", runs["t2i"], "-n", 1, "--steps", 1, "--layout", "off",
                            "--guidance", 1)
    assert code == 0, err
    off = json.loads(stdout)
    assert off["layout"] == "off" and off["guidance"] == 1.0 and off["sets"]["heldout"]["n"] == 1
    code, _, err = cli("eval", "text2image", runs["t2i"], "--layout", "diagonal")
    assert code == 2 and "layout" in err


def test_eval_text2image_r_precision_and_a_textgan_run(runs, cli):
    code, stdout, err = cli("eval", "text2image", runs["textgan"], "-n", 2, "--rprecision", runs["clip"],
                            "--r", 4, "--guidance", 3)
    assert code == 0, err
    report = json.loads(stdout)
    assert report["task"] == "textgan" and report["guidance"] is None and report["layout"] == "off"
    assert "--guidance ignored" in err
    assert all(s["real"]["all_correct"] == 1.0 for s in report["sets"].values())
    rp = report["rprecision"]
    assert rp["scorer"] == str(runs["clip"]) and rp["r"] == 4 and rp["pool"] == 2000
    for side in ("generated", "real"):
        assert set(rp[side]) == set(SETS) and all(0 <= v <= 1 for v in rp[side].values())
    code, _, err = cli("eval", "text2image", runs["textgan"], "-n", 1, "--layout", "grid")
    assert code == 2 and "GAN" in err
    code, _, err = cli("eval", "text2image", runs["clip"], "-n", 1)
    assert code == 2 and "needs a text2image or textgan run" in err


def test_a_run_on_other_data_is_one_line_exit_2(tmp_path, cli):
    from genforge.data.shapes import render, scene_for_item

    (tmp_path / "data").mkdir()
    lines = []
    for i in range(16):
        scene = scene_for_item(i, max_objects=2)
        render(scene, 16).save(tmp_path / "data" / f"{i}.png")
        lines.append(json.dumps({"file_name": f"{i}.png", "text": scene.caption()}))
    (tmp_path / "data" / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    shapes_only = [o for o in TINY["t2i"] if not o.startswith("data.")]
    run = _train(shapes_only + ["data.name=captions", f"data.path={tmp_path / 'data'}", "data.image_size=16",
                                "data.val_fraction=0", "task_params.eval_prompts=0"], tmp_path / "run")
    code, out, err = cli("eval", "text2image", run, "-n", 2)
    assert code == 2 and out == ""
    assert err.strip().splitlines() == ["error: the pixel verifier reads shapes scenes only; this run trained on "
                                        "'captions' (eval text2image needs a text2image or textgan run trained "
                                        "with data.name=shapes)"]
