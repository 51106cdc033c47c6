"""Text-to-video: the space-time UNet, the video task under the one trainer, the pipeline and the CLI."""
from __future__ import annotations

import copy
import warnings

import pytest
import torch

from genforge.errors import GenforgeError
from video_runs import TINY_VIDEO, pipe, run  # noqa: F401  (fixtures)

TINY_MODEL = dict(image_size=16, frames=4, widths=(16, 16), cross_attention=(False, True), attention_heads=2,
                  vocab_size=64, context=12, text_dim=16, text_layers=1, text_heads=2, num_train_timesteps=50)


def _inputs(b=2, t=4):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, t, 3, 16, 16, generator=g)
    ids = torch.randint(4, 60, (b, 6), generator=g)
    return x, torch.tensor([10, 40][:b]), ids, torch.ones_like(ids)


def test_model_keeps_clip_shape_and_mixes_frames_only_through_temporal_layers():
    from genforge.registry import MODELS

    torch.manual_seed(0)
    m = MODELS.build("video_unet", **TINY_MODEL).eval()
    x, t, ids, mask = _inputs()
    with torch.no_grad():
        out = m(x, t, ids, mask)
        assert out.shape == x.shape
        x2 = x.clone()
        x2[:, 0] += 1.0
        # temporal convs start at zero: changing frame 0 leaves the other frames' predictions alone
        assert torch.allclose(m(x2, t, ids, mask)[:, 1:], out[:, 1:], atol=1e-5)
        for p in m.temporal.parameters():
            p.normal_(0, 0.05)
        mixed = m(x2, t, ids, mask)[:, 1] - m(x, t, ids, mask)[:, 1]
    assert mixed.abs().max() > 1e-3


def test_spacetime_attention_starts_as_identity_then_moves_content_across_frames_and_places():
    """Space-time attention follows only the coarse ResNets, adds nothing until trained (so a model
    grown from one without it computes the same), then lets a pixel of one frame reach other pixels
    of other frames, at any frame count."""
    from genforge.models.video import SpaceTimeAttention
    from genforge.registry import MODELS

    torch.manual_seed(0)
    plain = MODELS.build("video_unet", **TINY_MODEL).eval()
    m = MODELS.build("video_unet", **{**TINY_MODEL, "spacetime_attention": 8}).eval()
    assert len(plain.spacetime) == 0
    assert len(m.spacetime) == 5  # 8 px: 1 ResNet of down block 2, 2 of the mid block, 2 of up block 1
    missing = m.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing and all(k.startswith("spacetime.") for k in missing)
    x, t, ids, mask = _inputs()
    with torch.no_grad():
        assert torch.allclose(m(x, t, ids, mask), plain(x, t, ids, mask), atol=1e-6)
        torch.manual_seed(1)
        for p in m.spacetime.parameters():
            p.normal_(0, 0.5)
        x2 = x.clone()
        x2[:, 0, :, :2, :2] += 2.0  # one corner of frame 0
        changed = (m(x2, t, ids, mask) - m(x, t, ids, mask))[:, 3].abs()
        assert changed[..., 8:, 8:].max() > 1e-2  # the far corner of the last frame hears of it
        layer = SpaceTimeAttention(16, 4, 2)
        torch.nn.init.normal_(layer.out.weight, 0, 0.1)
        for frames in (3, 7):
            layer.frames = frames
            f = torch.randn(2 * frames, 16, 4, 4)
            y = layer(f)
            assert y.shape == f.shape and torch.isfinite(y).all()
            # clips in a batch do not see each other
            f2 = f.clone()
            f2[:frames] += 1.0
            assert torch.allclose(layer(f2)[frames:], y[frames:], atol=1e-5)


def test_model_copy_runs_its_own_temporal_layers():
    """EMA keeps a deepcopy: its hooks must use the copy's temporal weights, not the original's."""
    from genforge.registry import MODELS

    m = MODELS.build("video_unet", **TINY_MODEL).eval()
    ema = copy.deepcopy(m)
    x, t, ids, mask = _inputs()
    with torch.no_grad():
        for p in ema.temporal.parameters():
            p.normal_(0, 0.05)
        assert not torch.allclose(ema(x, t, ids, mask), m(x, t, ids, mask), atol=1e-4)
        ema.load_state_dict(m.state_dict())
        assert torch.allclose(ema(x, t, ids, mask), m(x, t, ids, mask), atol=1e-6)


def test_model_refuses_bad_options():
    from genforge.registry import MODELS

    with pytest.raises(GenforgeError, match="frames"):
        MODELS.build("video_unet", **{**TINY_MODEL, "frames": 0})
    with pytest.raises(GenforgeError, match="divisible"):
        MODELS.build("video_unet", **{**TINY_MODEL, "image_size": 15})
    with pytest.raises(GenforgeError, match="context_frames"):
        MODELS.build("video_unet", **{**TINY_MODEL, "context_frames": 2, "shared_noise": 0.5})
    with pytest.raises(GenforgeError, match="context_frames"):
        MODELS.build("video_unet", **{**TINY_MODEL, "context_frames": 5})
    with pytest.raises(GenforgeError, match="anchor_frame"):
        MODELS.build("video_unet", **{**TINY_MODEL, "context_frames": 1, "anchor_frame": True})


AR_MODEL = {**TINY_MODEL, "context_frames": 2, "context_noise": 0.1}


def test_autoregressive_planes_hold_each_frames_predecessors_and_nothing_later():
    from genforge.registry import MODELS

    m = MODELS.build("video_unet", **AR_MODEL)
    assert len(m.temporal) == 0 and len(m.spacetime) == 0  # nothing inside the network looks across frames
    assert m.unet.conv_in.in_channels == 3 + 1 + 2 * 4
    clip = torch.randn(2, 5, 3, 16, 16)
    planes = m.planes(clip)
    assert planes.shape == (2, 5, 9, 16, 16)
    assert torch.allclose(planes[0, :, 0, 0, 0], torch.linspace(-1, 1, 5))  # the frame's place in the clip
    for i in range(5):
        for k in (1, 2):
            frame, have = planes[:, i, 1 + 4 * (k - 1): 4 * k], planes[:, i, 4 * k]
            if i - k >= 0:
                assert torch.equal(frame, clip[:, i - k]) and bool((have == 1).all())
            else:
                assert not frame.any() and not have.any()
    later = clip.clone()
    later[:, 3] += 1.0
    assert torch.equal(m.planes(later)[:, :4], planes[:, :4])  # frame 3 is never context of frames 0..3
    torch.manual_seed(0)
    noisy = m.planes(clip, noise_std=0.1)
    assert torch.equal(noisy[:, :, [0, 4, 8]], planes[:, :, [0, 4, 8]])  # places and presence stay exact
    assert 0 < (noisy - planes).abs().max() < 1.0


def test_anchor_frame_puts_frame_0_in_the_last_context_slot():
    """With ``anchor_frame`` the K-th context slot of every frame after the first holds frame 0
    (and says it is there); the other slots still hold the frames just before; frame 0 has none."""
    from genforge.registry import MODELS

    m = MODELS.build("video_unet", **{**AR_MODEL, "anchor_frame": True})
    assert m.unet.conv_in.in_channels == 3 + 1 + 2 * 4  # same input planes as without: weights carry over
    clip = torch.randn(2, 5, 3, 16, 16)
    planes = m.planes(clip)
    plain = MODELS.build("video_unet", **AR_MODEL).planes(clip)
    assert torch.equal(planes[:, :, :5], plain[:, :, :5])  # place and the previous frame unchanged
    assert not planes[:, 0, 5:].any()
    for i in range(1, 5):
        assert torch.equal(planes[:, i, 5:8], clip[:, 0]) and bool((planes[:, i, 8] == 1).all())
    later = clip.clone()
    later[:, 2] += 1.0
    assert torch.equal(m.planes(later)[:, :3], planes[:, :3])  # still nothing from a frame's own future


def test_autoregressive_sampling_draws_frames_in_order_and_keeps_a_first_frame():
    """Each frame is one denoising run that reads the frames already drawn: with ``first_frame``
    frame 0 is exactly the given image, the progress counts steps over all frames, and changing
    frame 0 changes what follows (the context is read) but not the noise-only first frame's run."""
    from genforge.registry import MODELS

    torch.manual_seed(0)
    m = MODELS.build("video_unet", **AR_MODEL).eval()
    with torch.no_grad():
        m.unet.conv_in.weight.normal_(0, 0.3)  # make the context planes matter in an untrained net
    ids = torch.randint(4, 60, (2, 6))
    tokens = (ids, torch.ones_like(ids))
    noise = torch.randn(2, 4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    seen = []
    a = m.sample(noise, tokens, steps=3, progress=lambda i, n: seen.append((i, n)))
    assert a.shape == noise.shape and a.abs().max() <= 1
    assert seen == [(i * 3 + j, 12) for i in range(4) for j in (1, 2, 3)]
    assert torch.equal(m.sample(noise, tokens, steps=3), a)
    first = torch.rand(2, 3, 16, 16) * 2 - 1
    b = m.sample(noise, tokens, steps=3, first_frame=first)
    assert torch.equal(b[:, 0], first)
    assert not torch.allclose(b[:, 1:], a[:, 1:], atol=1e-3)
    assert m._planes is None
    with pytest.raises(RuntimeError, match="autoregressive"):
        m.denoise(noise[:, 0], torch.tensor([5, 5]), m.encode_text(*tokens), tokens[1])


def test_autoregressive_model_trains_and_samples_through_the_pipeline(tmp_path):
    """The task trains an autoregressive model under the one trainer (every frame one example),
    and its pipeline gives clips of the asked length."""
    import genforge
    from genforge.config import load_config
    from genforge.train.trainer import Trainer

    cfg = load_config(None, TINY_VIDEO + ["model.params.context_frames=2", "train.steps=2", "task_params.eval_prompts=0"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Trainer(cfg, tmp_path / "ar").fit()
        pipe = genforge.load(tmp_path / "ar", device="cpu")
        clips = pipe(prompt="a red circle moves left", n=1, steps=2, frames=3)
    assert clips.shape == (1, 3, 3, 16, 16) and clips.dtype == torch.uint8


def test_trainer_runs_the_video_task(run):
    import json

    from genforge.config import config_from_json

    cfg = config_from_json(run / "config.json")
    assert cfg.model.params["frames"] == 6 and cfg.model.params["image_size"] == 16  # filled from the data
    assert (run / "model.safetensors").is_file() and (run / "tokenizer.json").is_file()
    assert (run / "samples" / "step_00000003.png").is_file() and (run / "samples" / "real.png").is_file()
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()
              if '"loss"' in line]
    assert len(losses) == 3 and all(0 < v < 10 for v in losses)
    final = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])  # the motion verifier's scores
    assert 0 <= final["motion_all_correct"] <= 1 and 0 <= final["motion_identity_frames"] <= 1


def test_frames_mismatch_is_one_line(tmp_path):
    from genforge.config import load_config
    from genforge.train.trainer import Trainer

    with pytest.raises(GenforgeError, match="data.frames"):
        Trainer(load_config(None, TINY_VIDEO + ["model.params.frames=8"]), tmp_path / "r").fit()


def test_pipeline_is_deterministic_by_seed(pipe):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = pipe(prompt="a red circle moves left", n=2, seed=3, steps=2)
        b = pipe(prompt="a red circle moves left", n=2, seed=3, steps=2)
        c = pipe(prompt="a red circle moves left", n=2, seed=4, steps=2)
        longer = pipe(prompt="a red circle moves left", n=1, seed=3, steps=2, frames=9)
    assert a.dtype == torch.uint8 and a.shape == (2, 6, 3, 16, 16)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert longer.shape == (1, 9, 3, 16, 16)
    from genforge.pipelines.video import to_frames

    frames = to_frames(a[0])
    assert len(frames) == 6 and frames[0].size == (16, 16)


def test_first_frame_is_kept(pipe):
    first = torch.zeros(3, 16, 16, dtype=torch.uint8)
    first[0, 4:12, 4:12] = 255
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clip = pipe(prompt="a red square", n=1, steps=2, first_frame=first)
    assert torch.equal(clip[0, 0], first)
    with pytest.raises(GenforgeError, match="first_frame"):
        pipe(prompt="x", n=1, steps=2, first_frame=torch.zeros(3, 8, 8, dtype=torch.uint8))


@pytest.mark.parametrize("kwargs, match", [
    ({"frames": 0}, "frames"), ({"frames": 65}, "frames"), ({"steps": 0}, "steps"), ({"n": 0}, "n must"),
    ({"prompt": ["a", "b"], "n": 3}, "prompts"), ({"prompt": "x" * 3000}, "too long"),
    ({"guidance": float("nan")}, "guidance"), ({"sampler": "euler"}, "sampler"),
])
def test_pipeline_bad_input_is_one_line(pipe, kwargs, match):
    with pytest.raises(GenforgeError, match=match):
        pipe(**{"prompt": "a red circle", "n": 1, "steps": 1, **kwargs})


@pytest.mark.parametrize("ext", [".mp4", ".gif"])
def test_cli_sample_writes_a_clip(run, cli, tmp_path, ext):
    from genforge.video_io import read_video

    out = tmp_path / f"clip{ext}"
    code, stdout, err = cli("sample", run, "--prompt", "a blue star moves up", "--frames", "5", "--fps", "4",
                            "--steps", "2", "-n", "2", "--out", out, "--grid", tmp_path / "g.png", "--device", "cpu")
    assert code == 0, err
    assert "wrote" in stdout and (tmp_path / "g.png").is_file()
    clip = read_video(out)
    assert clip.shape[0] == 5 and clip.shape[1] == 3  # two clips side by side, upscaled for players
    if ext == ".mp4":
        assert out.read_bytes()[4:8] == b"ftyp"


@pytest.mark.parametrize("args, match", [
    (["--out", "clip.avi"], "unsupported extension"), (["--out", "c.mp4", "--frames", "0"], "frames"),
    (["--out", "c.mp4", "--fps", "0"], "fps"), (["--out", "c.mp4", "--labels", "a"], "labels"),
    (["--out-dir", "d"], "--out FILE"),
])
def test_cli_sample_bad_input_writes_nothing(run, cli, tmp_path, args, match):
    args = [str(tmp_path / a) if a in ("clip.avi", "c.mp4", "d") else a for a in args]
    code, _, err = cli("sample", run, "--prompt", "a circle", "--steps", "1", "--device", "cpu", *args)
    assert code == 2 and match in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_cli_video_options_need_a_video_run(cli, tmp_path):
    code, _, err = cli("sample", "diffusion-shapes", "--out", tmp_path / "c.mp4", "--device", "cpu")
    assert code == 2 and "need a video run" in err


def test_eval_video_reports_verifier_scores(run, cli, tmp_path):
    code, out, err = cli("eval", "video", run, "-n", "2", "--steps", "1", "--device", "cpu",
                         "--out", tmp_path / "r.json")
    assert code == 0, err
    import json

    report = json.loads(out)
    assert report == json.loads((tmp_path / "r.json").read_text())
    (name, scores), = report["sets"].items()
    assert name == "all" and scores["n"] == 2
    for side in ("generated", "real"):
        assert 0 <= scores[side]["all_correct"] <= 1 and scores[side]["flicker"] >= 0
    assert scores["real"]["accuracy"]["color"] == 1.0  # the verifier reads real 16 px clips
