"""shapes_video, video_folder, genforge.video_io and the motion checker (genforge.eval.motion)."""
from __future__ import annotations

import json
import os
import stat
import warnings

import numpy as np
import pytest
import torch

from genforge.config import DataConfig
from genforge.data import load_dataset
from genforge.data.video import (VIDEO_HOLDOUTS, MovingObj, VideoScene, parse_video_caption, random_video_scene,
                                 video_scene_for_item)
from genforge.errors import GenforgeError
from genforge.eval.motion import flicker, verify_clip, verify_clips
from genforge.video_io import read_video, write_video


def _video(**kw):
    return load_dataset(DataConfig(name="shapes_video", max_objects=2, **{"num_items": 24, **kw}))


@pytest.fixture(scope="module")
def clips():
    return _video()


def test_columns_and_determinism(clips):
    frames = clips.column("frames")
    assert frames.shape == (24, 16, 3, 32, 32) and frames.dtype == torch.uint8
    assert len(clips.column("caption")) == len(clips.column("spec")) == 24
    again = _video(limit=5)
    assert torch.equal(again.column("frames"), frames[:5])  # a limit is a prefix of the same stream
    assert again.column("caption") == clips.column("caption")[:5]
    assert _video(num_items=5, seed=1).column("caption") != clips.column("caption")[:5]
    # objects really move: consecutive frames differ in most clips
    moving = (frames[:, 1:].int() - frames[:, :-1].int()).abs().amax(dim=(1, 2, 3, 4)) > 50
    assert moving.float().mean() > 0.7
    assert clips.meta["fps"] == 8 and clips.meta["frames"] == 16


def test_splits_are_separate_streams(clips):
    test = _video(split="test", num_items=24)
    assert set(test.column("caption")) != set(clips.column("caption"))
    assert not torch.equal(test.column("frames"), clips.column("frames"))


def test_heldout_combinations_never_in_train():
    rule = VIDEO_HOLDOUTS["default"]
    train = [video_scene_for_item(i, split="train", holdout="default", heldout=False) for i in range(400)]
    assert not any(rule.matches(s) for s in train)
    held = [video_scene_for_item(i, split="test", holdout="default", heldout=True) for i in range(20)]
    assert all(rule.matches(s) for s in held)
    # without the filter the stream does contain them, so the filter is what removes them
    assert any(rule.matches(video_scene_for_item(i)) for i in range(400))
    ds = _video(num_items=6, split="test", holdout="default", compositions="heldout")
    assert all(rule.matches(s) for s in ds.column("spec"))
    assert ds.meta["held_out_combinations"]["combos"][0] == {"color": "green", "shape": "triangle", "motion": "move up"}
    with pytest.raises(GenforgeError, match="train split never"):
        _video(num_items=2, holdout="default", compositions="heldout")


def test_object_weights_shape_the_train_clips_only():
    two = _video(num_items=12, frames=8, object_weights=[0, 1])
    assert all(len(s.objects) == 2 for s in two.column("spec")) and two.meta["object_weights"] == [0, 1]
    # the weights are the clips' shares: a collision redraws the layout, not the count
    counts = [len(video_scene_for_item(i, object_weights=[1, 1]).objects) for i in range(800)]
    assert abs(counts.count(1) / 800 - 0.5) < 0.07  # binomial sd at n=800 is 0.018
    assert video_scene_for_item(3) == video_scene_for_item(3, object_weights=None)  # unweighted: the old stream
    test = _video(num_items=12, frames=8, split="test", object_weights=[0, 1])
    assert test.column("spec") == _video(num_items=12, frames=8, split="test").column("spec")
    with pytest.raises(GenforgeError, match="object_weights needs 2 non-negative weights"):
        _video(num_items=2, frames=8, object_weights=[1, 1, 1])


def test_bad_configs():
    with pytest.raises(GenforgeError, match="max_objects=1 or 2"):
        load_dataset(DataConfig(name="shapes_video", num_items=2))  # the default 3 is for shapes
    with pytest.raises(GenforgeError, match="frames >= 6"):
        _video(num_items=2, frames=4)
    with pytest.raises(GenforgeError, match="at least 16 px"):
        _video(num_items=2, image_size=8)


def test_caption_round_trip():
    scenes = [random_video_scene(i, frames=12) for i in range(300)]
    for s in scenes:
        assert parse_video_caption(s.caption()) == s.spec(), s.caption()
    assert {o.motion for s in scenes for o in s.objects} == {"move", "bounce", "grow", "shrink", "turn"}
    spec = parse_video_caption("A small red circle moves right while a large blue square falls.")
    assert [o["label"] for o in spec.objects] == ["move right", "move down"]
    assert parse_video_caption("a large red star moves up").objects[0]["label"] == "move up"
    assert parse_video_caption("a small green ring turns blue on a grey background").background == "grey"
    with pytest.raises(GenforgeError, match="cannot read video caption"):
        parse_video_caption("a red circle dances")


def test_scene_validation_and_dict_round_trip():
    s = random_video_scene(3, max_objects=2)
    assert VideoScene.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    with pytest.raises(GenforgeError, match="leaves the picture"):
        VideoScene(objects=(MovingObj(x=0.8, direction="right"),))
    with pytest.raises(GenforgeError, match="touch"):
        VideoScene(objects=(MovingObj(x=0.2, y=0.5), MovingObj(shape="star", size="small", x=0.75, y=0.5, direction="left")))
    with pytest.raises(GenforgeError, match="valid directions"):
        MovingObj(direction="sideways")


def test_verifier_is_exact_on_ground_truth(clips):
    frames, caps, specs = clips.column("frames"), clips.column("caption"), clips.column("spec")
    for sp in (specs, caps):
        summary = verify_clips(frames, sp)
        assert summary["all_correct"] == 1.0, summary
        assert summary["identity_frames"] == 1.0
        by = summary["by_objects"]
        assert sum(v["n"] for v in by.values()) == len(caps) and all(v["all_correct"] == 1.0 for v in by.values())
        assert {int(k) for k in by} == {len(s.objects) for s in specs}
    r = verify_clip(frames[0], caps[0])
    assert r["all_correct"] and r["objects"][0]["observed"] == specs[0].objects[0].label


def test_verifier_rejects_broken_clips(clips):
    frames, caps = clips.column("frames"), clips.column("caption")
    g = torch.Generator().manual_seed(0)
    shuffled = torch.stack([c[torch.randperm(c.shape[0], generator=g)] for c in frames])
    static = frames[:, :1].expand_as(frames).contiguous()
    wrong_colour = frames[:, :, [2, 0, 1]]
    for broken in (shuffled, static, wrong_colour):
        assert verify_clips(broken, caps)["all_correct"] <= 0.2
    assert verify_clips(wrong_colour, caps)["accuracy"]["color"] <= 0.2
    two = torch.tensor([len(s.objects) == 2 for s in clips.column("spec")])
    assert two.any() and not two.all()
    by = verify_clips(torch.where(two.view(-1, 1, 1, 1, 1), static, frames), caps)["by_objects"]
    assert by["1"]["all_correct"] == 1.0 and by["2"]["all_correct"] <= 0.2  # frozen two-object clips only
    kinds = verify_clips(frames, caps)["by_motion"]
    assert sum(k["n"] for k in kinds.values()) == sum(len(s.objects) for s in clips.column("spec"))
    assert all(k["motion"] == 1.0 for k in kinds.values())
    frozen = verify_clips(static, caps)["by_motion"]
    assert frozen["move"]["n"] == kinds["move"]["n"] and frozen["move"]["motion"] == 0.0  # nothing moves
    with pytest.raises(GenforgeError, match="one spec per clip"):
        verify_clips(frames[:2], caps[:3])


def test_verifier_scores_a_clip_without_the_object_without_numpy_warnings():
    """A growth caption against empty frames: nothing to track, every attribute of the object is
    wrong, and the size check (a change from small to large at the best-fitting frame) has no frame
    that fits rather than an empty list whose mean is NaN."""
    from genforge.eval.motion import _switch_ok

    assert _switch_ok([None] * 8, "small", "large", None) == [False] * 8
    empty = torch.zeros(8, 3, 32, 32, dtype=torch.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        r = verify_clip(empty, "a small red star grows")
    assert not r["size"] and not r["shape"] and not r["all_correct"]


def test_flicker(clips):
    frames, specs = clips.column("frames"), clips.column("spec")
    assert max(flicker(frames[i], specs[i]) for i in range(6)) < 0.5
    assert flicker(frames[0], clips.column("caption")[0]) < 0.5
    noisy = (frames[0].int() + torch.randint(-30, 31, frames[0].shape, generator=torch.Generator().manual_seed(0)))
    assert flicker(noisy.clamp(0, 255).to(torch.uint8), specs[0]) > 10


@pytest.mark.parametrize("ext,tol", [(".mp4", 4.0), (".gif", 2.0), (".png", 0.0)])
def test_video_io_round_trip(tmp_path, clips, ext, tol):
    clip = clips.column("frames")[2]
    path = write_video(tmp_path / f"c{ext}", clip, fps=8)
    assert [p.name for p in tmp_path.iterdir()] == [f"c{ext}"]  # no temporary file left behind
    # the mode a plain open would give (0666 less the umask), not the temporary file's 0600
    mask = os.umask(0o022)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
    back = read_video(path, frames=16, size=32)
    assert back.shape == clip.shape and back.dtype == torch.uint8
    assert (back.float() - clip.float()).abs().mean().item() <= tol
    if ext != ".png":
        assert min(read_video(path).shape[-2:]) >= 128  # upscaled for players
    assert read_video(path, frames=4, size=16).shape == (4, 3, 16, 16)


def test_video_io_errors_and_layouts(tmp_path):
    frames = np.zeros((5, 45, 33, 3), dtype=np.uint8)  # (T, H, W, 3) with odd sides
    frames[:, 10:20, 10:20] = 200
    assert read_video(write_video(tmp_path / "odd.mp4", frames, fps=5)).shape[0] == 5
    with pytest.raises(GenforgeError, match=r"supported: \.mp4, \.gif, \.png"):
        write_video(tmp_path / "clip.avi", frames)
    with pytest.raises(GenforgeError, match="uint8"):
        write_video(tmp_path / "clip.gif", frames.astype(np.float32))
    assert not list(tmp_path.glob("clip*")) and not list(tmp_path.glob(".*"))
    with pytest.raises(GenforgeError, match="not found"):
        read_video(tmp_path / "missing.mp4")


def test_video_folder(tmp_path, clips):
    frames, caps = clips.column("frames"), clips.column("caption")
    lines = []
    for i, ext in enumerate((".mp4", ".gif", ".mp4")):
        write_video(tmp_path / f"clip{i}{ext}", frames[i], fps=8)
        lines.append({"file_name": f"clip{i}{ext}", "text": caps[i]})
    (tmp_path / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
    lines.append({"file_name": "broken.mp4", "text": "a broken clip"})
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    cfg = DataConfig(name="video_folder", path=str(tmp_path), val_fraction=0, frames=8, image_size=24)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load_dataset(cfg)
    assert [str(w.message) for w in caught if "skipped 1 of 4" in str(w.message)]
    assert ds.column("frames").shape == (3, 8, 3, 24, 24)
    assert ds.column("caption") == caps[:3] and ds.meta["skipped"] == 1
    assert load_dataset(cfg.model_copy(update={"limit": 1})).column("frames").shape[0] == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "metadata.jsonl").write_text(json.dumps({"file_name": "nope.mp4", "text": "x"}) + "\n")
    with pytest.raises(GenforgeError, match="no usable clips"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        load_dataset(cfg.model_copy(update={"path": str(empty)}))
    with pytest.raises(GenforgeError, match="data.path is required"):
        load_dataset(DataConfig(name="video_folder"))
