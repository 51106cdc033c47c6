"""The video feature net (video_cnn trained by the video_classify task) and FVD-<name> in eval video."""
from __future__ import annotations

import json
import warnings

import pytest
import torch

from genforge.errors import GenforgeError

TINY_VC = ["task=video_classify", "model.name=video_cnn", "model.params.width=4", "model.params.feature_dim=16",
           "data.name=shapes_video", "data.image_size=16", "data.frames=8", "data.max_objects=2",
           "data.num_items=32", "task_params.eval_items=8", "train.steps=3", "train.batch_size=8",
           "train.tensorboard=false", "train.log_every=1"]


@pytest.fixture(scope="module")
def vc_run(tmp_path_factory):
    from genforge.config import load_config
    from genforge.train.trainer import Trainer

    out = tmp_path_factory.mktemp("vc") / "videoclass-tiny"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        Trainer(load_config(None, TINY_VC), out).fit()
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="module")
def test_clips():
    from genforge.config import DataConfig
    from genforge.data import load_dataset

    return load_dataset(DataConfig(name="shapes_video", split="test", image_size=16, frames=8, max_objects=2,
                                   num_items=80))


def test_attributes_of_a_clip():
    from genforge.data.video import MovingObj, VideoScene
    from genforge.registry import MODELS
    from genforge.tasks.video_classify import ATTRIBUTES, attribute_accuracy, attribute_targets, clip_attributes

    scene = VideoScene(objects=(MovingObj(shape="star", color="red", size="small", x=0.7, y=0.5,
                                          motion="move", direction="left"),
                                MovingObj(shape="ring", color="blue", size="small", x=0.2, y=0.8, motion="turn",
                                          direction=None, end_color="green")), frames=8, background="grey")
    assert clip_attributes(scene) == {"shape:star", "shape:ring", "color:red", "color:blue", "color:green",
                                      "motion:move left", "motion:turn", "size:small", "background:grey"}
    t = attribute_targets([scene])
    assert t.shape == (1, len(ATTRIBUTES)) and t.sum() == 9
    assert MODELS.build("video_cnn").num_outputs == len(ATTRIBUTES)  # the default fits the task
    wrong = t.clone()
    wrong[0, ATTRIBUTES.index("motion:grow")] = 1
    acc = attribute_accuracy(torch.cat([t, wrong]), torch.cat([t, t]))
    assert acc["accuracy"] == 0.5 and acc["accuracy_motion"] == 0.5 and acc["accuracy_shape"] == 1.0


def test_model_refuses_bad_options():
    from genforge.registry import MODELS

    for kwargs, match in [({"image_size": 12}, "multiple of 8"), ({"frames": 2}, "frames"),
                          ({"spatial_convs": (1, 0, 2)}, "spatial_convs")]:
        with pytest.raises(GenforgeError, match=match):
            MODELS.build("video_cnn", **kwargs)


def test_trainer_runs_the_video_classifier(vc_run, test_clips):
    import genforge
    from genforge.pipelines.video_classify import VideoClassifierPipeline

    lines = [json.loads(x) for x in (vc_run / "metrics.jsonl").read_text().splitlines()]
    assert sum("loss" in x for x in lines) == 3
    final = lines[-1]
    for key in ("test_accuracy", "test_accuracy_motion", "test_accuracy_color"):
        assert 0.0 <= final[key] <= 1.0
    pipe = genforge.load(vc_run, device="cpu")
    assert isinstance(pipe, VideoClassifierPipeline)
    found = pipe(test_clips.column("frames")[:3])
    assert len(found) == 3 and set(found[0]) == {"shape", "color", "motion", "size", "background"}
    assert pipe.features(test_clips.column("frames")[:3]).shape == (3, 16)


def test_attribute_count_mismatch_is_one_line(tmp_path):
    from genforge.config import load_config
    from genforge.train.trainer import Trainer

    with pytest.raises(GenforgeError, match="num_outputs=32"):
        Trainer(load_config(None, TINY_VC + ["model.params.num_outputs=5"]), tmp_path / "r").fit()


def test_fvd_real_vs_real_is_zero_and_noise_is_far(vc_run, test_clips):
    from genforge.eval.fvd import fvd, video_feature_net

    net = video_feature_net(str(vc_run), "cpu")
    clips = test_clips.column("frames")
    a, b = clips[:40], clips[40:80]
    noise = torch.randint(0, 256, a.shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    same = fvd(net, a, a)
    assert same["metric"] == f"FVD-{vc_run.name}" and same["n_real"] == same["n_fake"] == 40
    # identical statistics: the exact value is 0 and only the rounding of 2 tr s - 2 tr sqrt(s s) is left.
    # tr sqrt(s s) is summed from the square roots of the eigenvalues mu = lam^2 of a d x d matrix A^T s A
    # (A A^T = s), each moved by at most delta ~ d eps ||s||^2 (Weyl); sqrt turns that into
    # delta / (2 lam) for a clear eigenvalue and sqrt(delta) for a zero one (a dead feature, or rank < d),
    # as in test_fid.py; the two traces add d eps tr s each
    s = torch.cov(net.features(a).double().T)
    lam, d, eps = torch.linalg.eigvalsh(s).clamp(min=0.0), s.shape[0], torch.finfo(torch.float64).eps
    delta = 10 * d * eps * float(torch.linalg.matrix_norm(s, 2)) ** 2
    tol = 2.0 * sum(min(delta ** 0.5, delta / (2.0 * x)) if x > 0 else delta ** 0.5 for x in lam.tolist())
    tol += 4 * d * eps * float(s.trace())
    assert tol < 1e-5 * float(s.trace())  # still a real check against the size of the cancelling terms
    assert 0.0 <= same["value"] <= tol
    real_real, real_noise = fvd(net, a, b)["value"], fvd(net, a, noise)["value"]
    assert real_noise > 3 * real_real > 0


def test_clips_are_resampled_to_the_net(vc_run):
    from genforge.eval.fvd import frame_indices, video_feature_net

    net = video_feature_net(str(vc_run), "cpu")
    long = torch.randint(0, 256, (2, 16, 3, 32, 32), dtype=torch.uint8)
    assert net.features(long).shape == (2, 16)
    assert net.prepare(long).shape == (2, 8, 3, 16, 16)
    assert frame_indices(16, 8) == [0, 2, 4, 6, 9, 11, 13, 15] and frame_indices(4, 7) == [0, 0, 1, 2, 2, 2, 3]
    with pytest.raises(GenforgeError, match="uint8 clips"):
        net.features(torch.zeros(2, 8, 3, 16, 16))
    with pytest.raises(GenforgeError, match="3-channel"):
        net.features(torch.zeros(2, 8, 1, 16, 16, dtype=torch.uint8))


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    from video_runs import video_run

    return video_run(tmp_path_factory.mktemp("video-runs"))


def test_eval_video_reports_fvd_with_a_feature_net(video, vc_run, cli):
    code, out, err = cli("eval", "video", video, "-n", "3", "--steps", "1", "--device", "cpu",
                         "--feature-net", vc_run)
    assert code == 0, err
    report = json.loads(out)
    assert report["fvd_feature_net"] == vc_run.name and "fvd_note" not in report
    scores = report["sets"]["all"]["fvd"]
    assert scores["metric"] == f"FVD-{vc_run.name}" and scores["value"] >= 0 and scores["n_fake"] == 3


def test_eval_video_without_a_feature_net_says_so(video, cli):
    code, out, err = cli("eval", "video", video, "-n", "2", "--steps", "1", "--device", "cpu")
    assert code == 0, err
    report = json.loads(out)
    assert "FVD skipped" in err and "videoclass_shapes" in err and "FVD skipped" in report["fvd_note"]
    assert "fvd" not in report["sets"]["all"]


def test_eval_video_refuses_a_feature_net_of_another_task(video, cli, tmp_path):
    code, _, err = cli("eval", "video", video, "-n", "2", "--steps", "1", "--device", "cpu",
                       "--feature-net", video, "--out", tmp_path / "r.json")
    assert code == 2 and "video_classify" in err and err.count("\n") == 1
    assert not (tmp_path / "r.json").exists()


def test_cli_sample_starts_from_the_first_frame(video, cli, tmp_path):
    import numpy as np
    from PIL import Image

    from genforge.video_io import read_video

    img = Image.new("RGB", (40, 40))  # not the model's 16 px: resized like the pipeline does
    img.paste((230, 30, 30), (8, 8, 32, 32))
    img.save(tmp_path / "first.png")
    want = torch.from_numpy(np.asarray(img.resize((16, 16), Image.BICUBIC)).copy()).permute(2, 0, 1)
    code, out, err = cli("sample", video, "--prompt", "a red square moves right", "--steps", "2", "--first-frame",
                         tmp_path / "first.png", "--out", tmp_path / "clip.png", "--device", "cpu")
    assert code == 0, err
    clip = read_video(tmp_path / "clip.png")  # a .png strip keeps the exact pixels
    assert clip.shape == (6, 3, 16, 16)
    assert (clip[0].int() - want.int()).abs().max() <= 1  # one uint8 step: the [-1, 1] round trip
    assert all(not torch.equal(clip[t], clip[0]) for t in range(1, 6))  # the other frames are drawn


@pytest.mark.parametrize("content, match", [(b"not an image", "not a readable image"), (None, "no such file")])
def test_cli_sample_unreadable_first_frame_is_one_line(video, cli, tmp_path, content, match):
    bad = tmp_path / "bad.png"
    if content is not None:
        bad.write_bytes(content)
    code, _, err = cli("sample", video, "--prompt", "a circle", "--steps", "1", "--first-frame", bad,
                       "--out", tmp_path / "clip.mp4", "--device", "cpu")
    assert code == 2 and match in err and err.count("\n") == 1
    assert not (tmp_path / "clip.mp4").exists()
