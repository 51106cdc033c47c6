"""The shipped default models load, generate and carry their recipe and measured figures."""
import json

import numpy as np
import pytest
import torch

import genforge
from genforge.pipelines import ASSETS_DIR, shipped_models
from genforge.pipelines.image import ImagePipeline

SHIPPED = shipped_models()


def test_defaults_are_shipped():
    assert {"classifier-fashion", "dcgan-fashion", "diffusion-fashion"} <= set(SHIPPED)


def test_shipped_weights_are_small():
    total = sum(p.stat().st_size for p in ASSETS_DIR.rglob("*.safetensors"))
    assert total <= 64 * 10**6  # every modality's defaults together


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_runs_and_records_its_recipe(name):
    cfg = json.loads((ASSETS_DIR / name / "config.json").read_text())
    assert cfg["recipe"].startswith("genforge train ") and "seed" in cfg["train"]
    pipe = genforge.load(name, device="cpu")
    if isinstance(pipe, ImagePipeline):
        assert cfg["notes"]["fid"]["metric"].startswith("FID-")
        a = pipe(n=2, seed=3, steps=2)
        assert len(a) == 2 and [x.tobytes() for x in a] == [x.tobytes() for x in pipe(n=2, seed=3, steps=2)]
    elif cfg["task"] == "caption":
        assert 0 < cfg["notes"]["test_exact_match"] <= 1 and 0 < cfg["notes"]["test_bleu_4"] <= 1
    elif cfg["task"] == "contrastive":
        notes = cfg["notes"]
        assert 0 < notes["test_text_to_image_top1"] <= 1 and 0 < notes["test_image_to_text_top1"] <= 1
        assert all(0 <= v <= 1 for g in notes["r_precision"].values() for v in g.values())
        from genforge.data.shapes import render_batch, scene_for_item
        from genforge.data.transforms import to_float

        scenes = [scene_for_item(i, seed=7, split="test", max_objects=2) for i in range(8)]
        sim = pipe.similarity(to_float(render_batch(scenes, 32)), [s.caption() for s in scenes])
        assert (sim.argmax(1) == torch.arange(8)).float().mean() >= 0.75  # each scene finds its own caption
    elif cfg["task"] == "text2image":
        scores = cfg["notes"]["verify"]["all_correct"]  # pixel-verifier rates per guidance and prompt set
        assert all(0 <= v <= 1 for g in scores.values() for v in g.values())
        prompt = "a large yellow square at the top right"
        a = pipe(prompt=prompt, n=2, seed=3, steps=2)
        assert len(a) == 2 and [x.tobytes() for x in a] == [x.tobytes() for x in pipe(prompt=prompt, n=2, seed=3,
                                                                                       steps=2)]
    elif cfg["task"] == "lm":
        held_out = cfg["notes"]["held_out"]
        assert 0 < held_out["val_bpc"] < 8 and held_out["val_ppl"] > 1
        text = pipe.generate("In the beginning", max_tokens=12, seed=5)
        assert text and text == pipe.generate("In the beginning", max_tokens=12, seed=5)
    elif cfg["task"] == "translate":
        held_out = cfg["notes"]["held_out"]
        assert 0 <= held_out["bleu"] <= 100 and 0 <= held_out["chrf"] <= 100
        assert pipe.translate(["God said."], beam=2)[0].strip()
    elif cfg["task"] == "tts":
        bench = cfg["notes"]["bench"]  # bench/tts.py's figures for the shipped pair
        assert 0 <= bench["wer"] <= 1 and bench["rtf"] > 0 and bench["mcd_db"] > 0
        assert pipe.vocoder is not None  # names a shipped vocoder, not the Griffin-Lim floor
        wav, sr = pipe("A short test.")
        assert sr == 22050 and len(wav) > sr // 4 and np.isfinite(wav).all()
        assert np.array_equal(wav, pipe("A short test.")[0])
    elif cfg["task"] == "vocoder":
        wav = pipe(np.zeros((cfg["model"]["params"].get("n_mels", 80), 20), np.float32) - 5)
        assert wav.shape == (19 * 256,) and np.isfinite(wav).all()
    elif cfg["task"] == "video":
        scores = {k: v for k, v in cfg["notes"]["held_out"].items() if k.startswith("motion_")}
        assert all(0 <= v <= 1 for k, v in scores.items() if not k.endswith("_n"))  # rates
        assert all(v >= 1 for k, v in scores.items() if k.endswith("_n"))  # clips per object count
        prompt = "a small red circle moves right"
        clip = pipe(prompt=prompt, n=1, seed=3, steps=2)
        assert clip.shape[:2] == (1, cfg["data"]["frames"]) and clip.dtype == torch.uint8
        assert torch.equal(clip, pipe(prompt=prompt, n=1, seed=3, steps=2))
    elif cfg["task"] == "video_classify":  # the FVD feature net: per-group test accuracies
        acc = cfg["notes"]["test_accuracy"]
        assert {"accuracy_shape", "accuracy_motion", "accuracy_color"} <= acc.keys()
        assert all(0 <= v <= 1 for v in acc.values())
        from genforge.data import load_dataset
        from genforge.tasks.video_classify import clip_attributes

        test = load_dataset(pipe.cfg.data.model_copy(update={"split": "test", "limit": 8}))
        found = pipe(test.column("frames"))
        truth = [sorted(a.split(":")[1] for a in clip_attributes(s) if a.startswith("background:"))
                 for s in test.column("spec")]
        # backgrounds are ~100 % right on test clips: allow one miss in 8
        assert sum(f["background"] == t for f, t in zip(found, truth)) >= 7
    else:
        assert 0 < cfg["notes"]["test_accuracy"] <= 1


@pytest.mark.skipif("classifier-fashion" not in SHIPPED, reason="not shipped")
def test_shipped_classifier_recognises_fashion():
    from genforge.data import load_dataset
    from genforge.tasks.classify import accuracy

    pipe = genforge.load("classifier-fashion", device="cpu")
    test = load_dataset(pipe.cfg.data.model_copy(update={"split": "test", "limit": 1000}))
    assert accuracy(pipe.model, test.images, test.labels) >= 0.9
