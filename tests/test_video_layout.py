"""Path-planned video sampling: the planner's scenes and layers, moving a model's estimate to a
planned place, compositing layers, and the pipeline, CLI and server taking ``layout``."""
from __future__ import annotations

import math
import warnings

import pytest
import torch

from genforge.data.video import VideoScene, parse_video_caption, plan_scene, render_clip
from genforge.errors import GenforgeError
from genforge.eval.motion import verify_clip
from genforge.models.video import box_masks, drawn, keep_to
from genforge.pipelines.video_layout import composite, object_layers, plan_layers
from text_runs import text_runs  # noqa: F401
from video_runs import pipe, run  # noqa: F401  (fixtures)

CAPTIONS = ["a small red circle moves right", "a large blue square bounces up and down on a grey background",
            "a small green star grows", "a large yellow ring shrinks while a small white triangle moves up and left",
            "a small purple square turns orange while a large red star falls"]


@pytest.mark.parametrize("caption", CAPTIONS)
def test_a_planned_scene_does_what_its_caption_says(caption):
    """The plan is a real clip of the data's grammar: rendered, the verifier passes it, and seeds
    move it around."""
    scene = plan_scene(parse_video_caption(caption), 8, seed=1)
    assert scene.caption() == caption
    assert verify_clip(render_clip(scene, 32), caption)["all_correct"]
    starts = {tuple((round(o.x, 3), round(o.y, 3)) for o in plan_scene(parse_video_caption(caption), 8, s).objects)
              for s in range(6)}
    assert len(starts) > 1
    assert plan_scene(parse_video_caption(caption), 8, 1) == scene  # seeded


def test_unplannable_captions_give_none():
    assert plan_layers("a cat on a mat", 0, 8, 32) is None
    assert plan_layers("a small black circle moves right", 0, 8, 32) is None  # invisible on black
    assert plan_layers("a small red circle moves right while a small red circle falls", 0, 8, 32) is None


def test_layers_one_per_object_and_two_for_a_colour_change():
    layers = plan_layers(CAPTIONS[4], 2, 8, 32)
    assert [(layer.prompt, layer.start, layer.stop) for layer in layers] == [
        ("a small purple square turns orange", 0, 4), ("a small orange square turns purple", 4, 8),
        ("a large red star falls", 0, 8)]
    assert layers[0].avoid == layers[1].prompt and layers[1].avoid == layers[0].prompt
    assert layers[0].still.startswith("a small purple square ") and layers[1].still.startswith("a small orange square ")
    assert torch.equal(layers[1].path[:4], layers[0].path[4:])  # the same place, from the change on
    fall = layers[2].path
    assert fall.shape == (8, 3) and (fall[1:, 1] > fall[:-1, 1]).all() and (fall[:, 0] == fall[0, 0]).all()
    grow = plan_layers(CAPTIONS[2], 0, 8, 32)[0].path
    assert grow[-1, 2] / grow[0, 2] == pytest.approx(0.44 / 0.26, rel=1e-6)


def _blob(cx, cy, r, size=32, bg=(-1.0, -1.0, -1.0), color=(1.0, -1.0, -1.0)):
    rows, cols = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    inside = ((cols - cx) ** 2 + (rows - cy) ** 2 <= r * r).float()
    bg_t, col_t = torch.tensor(bg).view(3, 1, 1), torch.tensor(color).view(3, 1, 1)
    return bg_t + inside * (col_t - bg_t)


def test_keep_to_moves_the_drawn_object_and_flattens_the_rest():
    x = _blob(8, 8, 3) + 0.05 * torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(0))
    path = torch.tensor([[20.0, 15.0, 3.0]])
    out = keep_to(x[None], path)[0]
    _, (cy, cx, _) = drawn(out)
    assert abs(float(cx) - 20) <= 0.75 and abs(float(cy) - 15) <= 0.75  # whole-pixel shifts
    outside = box_masks(path, 32, 32)[0, 0] < 0.5
    assert out[:, outside].std(1).max() == 0  # flat background outside the box
    assert float(out[:, outside].mean()) == pytest.approx(-1, abs=0.1)
    # not planned, or nothing drawn: left as it is
    assert torch.equal(keep_to(x[None], torch.full((1, 3), float("nan")))[0], x)
    flat = torch.full((1, 3, 32, 32), 0.2)
    assert torch.equal(keep_to(flat, path), flat)


def test_keep_to_scales_to_a_planned_size():
    x = _blob(16, 16, 3)
    g0 = float(drawn(x)[1][2])
    out = keep_to(x[None], torch.tensor([[12.0, 20.0, 5.0]]), size=torch.tensor([1.6 * g0]))[0]
    _, (cy, cx, g1) = drawn(out)
    assert float(g1) / g0 == pytest.approx(1.6, rel=0.15)
    assert abs(float(cx) - 12) < 0.5 and abs(float(cy) - 20) < 0.5  # subpixel when warped
    same = keep_to(x[None], torch.tensor([[16.0, 16.0, 3.0]]), size=torch.tensor([g0 * 1.05]))[0]
    assert torch.allclose(same, x)  # within WARP_MIN of its size and in place: only flattened (nothing outside)


def test_on_background_holds_the_background_still():
    from genforge.models.video import on_background

    frame = _blob(10, 12, 3, bg=(0.1, 0.2, 0.3)) + 0.02 * torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(1))
    path = torch.tensor([[10.0, 12.0, 3.0], [float("nan")] * 3])
    out = on_background(torch.stack([frame, frame]), path, torch.tensor([[0.0, 0.0, 0.0]] * 2))
    outside = box_masks(path[:1], 32, 32)[0, 0] < 0.5
    assert out[0][:, outside].abs().max() == 0  # the given background, exactly
    assert float(out[0, 0, 12, 10]) == pytest.approx(float(frame[0, 12, 10]) - 0.1, abs=0.05)  # the object, shifted
    assert torch.equal(out[1], frame.clamp(-1, 1))  # not planned: kept


def test_box_masks_cover_the_planned_object():
    masks = box_masks(torch.tensor([[10.0, 20.0, 4.0], [float("nan")] * 3]), 32, 32)
    rows, cols = masks[0, 0].nonzero().unbind(1)
    half = 1.15 * 4 + 1
    assert rows.min() + 0.5 >= 20 - half and rows.max() + 0.5 <= 20 + half
    assert cols.min() + 0.5 >= 10 - half and cols.max() + 0.5 <= 10 + half
    assert masks[1].all()


def test_composite_adds_later_layers_inside_their_boxes_over_their_span():
    layers = plan_layers(CAPTIONS[4], 2, 8, 32)
    clips = torch.stack([torch.full((8, 3, 32, 32), v) for v in (-0.5, 0.3, -0.8)])
    for k, layer in enumerate(layers):  # each layer draws a bright dot at its planned place
        for t in range(8):
            x, y = (int(v) for v in layer.path[t, :2])
            clips[k, t, :, y, x] = 1.0
    out = composite(clips, layers)
    for t in range(8):
        k = 0 if t < 4 else 1  # the colour shown: from the change on, the second layer leads
        # the background stays the first layer's, and each dot keeps its own contrast on it
        assert float(out[t, 0, 0, 0]) == pytest.approx(-0.5)
        for j, layer in ((k, layers[k]), (2, layers[2])):
            x, y = (int(v) for v in layer.path[t - layer.start, :2])
            assert float(out[t, 0, y, x]) == pytest.approx(min(1.0, -0.5 + 1.0 - float(clips[j, 0, 0, 0, 0])))


def test_with_x0_rewrites_the_prediction_for_an_edited_estimate():
    from genforge.models.text2image import TextToImageModel

    m = TextToImageModel(image_size=16, widths=(16, 16), cross_attention=(False, True), attention_heads=2,
                         vocab_size=64, context=8, text_dim=16, text_layers=1, text_heads=2,
                         num_train_timesteps=50)
    g = torch.Generator().manual_seed(0)
    x0, eps, out = (torch.randn(2, 3, 16, 16, generator=g) for _ in range(3))
    t = torch.tensor(20)
    abar = m.train_scheduler.alphas_cumprod[20]
    xt = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
    implied = []
    new = m._with_x0(xt, t, out, lambda est: implied.append(est) or x0)
    assert torch.allclose(abar.sqrt() * xt - (1 - abar).sqrt() * new, x0, atol=1e-5)  # v: x0 = a x_t - s v
    assert torch.allclose(m._with_x0(xt, t, out, lambda est: est), out, atol=1e-5)
    assert torch.allclose(implied[0], abar.sqrt() * xt - (1 - abar).sqrt() * out, atol=1e-6)


def test_pipeline_paths_are_seeded_per_clip_and_off_is_the_model_alone(pipe):
    assert pipe.default_layout == "paths"  # trained on shapes_video
    prompts = [CAPTIONS[0], CAPTIONS[3], "a cat on a mat"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        both = pipe.generate(n=3, prompt=prompts, seed=5)
        other = pipe.generate(n=3, prompt=[CAPTIONS[4]] + prompts[1:], seed=5)  # another row 0 (two layers)
        off = pipe.generate(n=3, prompt=prompts, seed=5, layout="off")
        plain = pipe.generate(n=3, prompt=[CAPTIONS[1]] * 2 + prompts[2:], seed=5, layout="off")
    assert both.shape == (3, 6, 3, 16, 16) and both.abs().max() <= 1
    assert torch.allclose(both[1:], other[1:], atol=1e-5)  # a row's plan and layers are its own
    assert not torch.allclose(both[0], off[0], atol=1e-3)  # planned
    assert torch.allclose(both[2], plain[2], atol=1e-5)  # outside the grammar: drawn as usual
    assert pipe.read_texts(CAPTIONS[3], "paths") == [layer.prompt for layer in plan_layers(CAPTIONS[3], 0, 6, 16)]
    assert pipe.read_texts(CAPTIONS[3], "off") == [CAPTIONS[3]]
    with pytest.raises(GenforgeError, match="unknown layout 'grid' for a video model; choose one of: paths, off"):
        pipe.generate(n=1, prompt=CAPTIONS[0], layout="grid")


def test_first_frame_model_draws_first_frames_at_the_planned_place(run, text_runs, tmp_path):
    import genforge

    pipe = genforge.load(run, device="cpu")
    pipe.first_frame_model = str(text_runs["t2i"])  # 16 px text2image, like the video run
    path = torch.tensor([[4.0, 11.0, 2.2], [12.0, 5.0, 3.8]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = pipe.first_frames(["a small red circle at the top left", "a large blue square in the centre"],
                                  [0, 1], "", path)
        again = pipe.first_frames(["a large blue square in the centre"], [1], "", path[1:])
        clips = pipe.generate(n=1, prompt=CAPTIONS[0], seed=3)
    assert first.shape == (2, 3, 16, 16) and torch.allclose(first[1], again[0], atol=1e-5)  # seeded per frame
    for k in range(2):  # barely trained: whatever it drew, the rest is flat outside its box
        outside = box_masks(path[k:k + 1], 16, 16)[0, 0] < 0.5
        assert first[k][:, outside].std(1).max() < 1e-6
    layer = plan_layers(CAPTIONS[0], 3, 6, 16)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = pipe.first_frames([layer.still], [3], "", layer.path[:1])
    assert torch.allclose(clips[0, 0], want[0], atol=1e-5)  # a clip starts from its planned first frame
    # a colour change's two layers stay put: each is its own first frame, held over the frames it shows
    turn = plan_layers(CAPTIONS[4], 5, 6, 16)
    assert [layer.held for layer in turn] == [True, True, False]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clip = pipe.generate(n=1, prompt=CAPTIONS[4], seed=5, frames=6)[0]
        stills = pipe.first_frames([layer.still for layer in turn[:2]], [5, 1_000_003 + 5], "",
                                   torch.stack([layer.path[0] for layer in turn[:2]]))
    boxes = box_masks(turn[0].path[:1], 16, 16)[0, 0] >= 0.5
    bg = stills[0].flatten(1).median(-1).values[:, None, None]
    later = (bg + stills[1] - stills[1].flatten(1).median(-1).values[:, None, None]).clamp(-1, 1)
    for t in range(6):  # inside the turning object's box, frame t is the still of its colour then,
        want = stills[0] if t < 3 else later  # the new colour on the first still's background
        assert torch.allclose(clip[t][:, boxes], want[:, boxes], atol=1e-5), t
    pipe.first_frame_model = str(text_runs["cap"])
    pipe._stills = None
    with pytest.raises(GenforgeError, match="must be a text2image run"):
        pipe.first_frames(["a small red circle at the top left"], [0], "", path[:1])


def test_cli_layout_for_video_runs(run, cli, tmp_path):
    out = tmp_path / "clip.gif"
    code, _, err = cli("sample", run, "--prompt", CAPTIONS[0], "--layout", "off", "--out", out, "--device", "cpu")
    assert code == 0 and out.is_file()
    bad = tmp_path / "bad.gif"
    code, _, err = cli("sample", run, "--prompt", CAPTIONS[0], "--layout", "grid", "--out", bad, "--device", "cpu")
    assert code == 2 and "unknown layout 'grid' for a video model" in err and err.count("\n") == 1
    assert not bad.exists()
    code, _, err = cli("sample", "diffusion-shapes", "--layout", "paths", "--grid", tmp_path / "g.png",
                       "--device", "cpu")
    assert code == 2 and "--layout needs a text2image diffusion run or a video run" in err


def test_video_object_layout_keys():
    """The scene behind a plan is an ordinary VideoScene (what the data layer draws)."""
    scene = plan_scene(parse_video_caption(CAPTIONS[3]), 8, 0)
    assert isinstance(scene, VideoScene) and scene.to_dict()["frames"] == 8
    assert all(math.isfinite(o.x) and math.isfinite(o.y) for o in scene.objects)
    assert object_layers(scene.objects[0], torch.zeros(8, 3), None, 8)[0].stop == 8


def _tiny_video(frames: int, **kw):
    """A 16-px video model small enough to sample in a test, in eval mode."""
    from genforge.models.video import VideoModel

    return VideoModel(image_size=16, frames=frames, widths=(16, 16), cross_attention=(False, True),
                      attention_heads=2, vocab_size=64, context=8, text_dim=16, text_layers=1, text_heads=2,
                      num_train_timesteps=50, **kw).eval()


def test_upto_draws_the_first_frames_of_the_whole_clip():
    torch.manual_seed(0)
    m = _tiny_video(6, context_frames=2, anchor_frame=True)
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(2, 6, 3, 16, 16, generator=g)
    cond = (torch.randint(4, 60, (2, 5), generator=g), torch.ones(2, 5, dtype=torch.long))
    paths = torch.tensor([[8.0, 8.0, 3.0]]).repeat(2, 6, 1)
    whole = m.sample(noise, cond, steps=2, paths=paths)
    part = m.sample(noise, cond, steps=2, paths=paths, upto=3)
    assert torch.allclose(part[:, :3], whole[:, :3], atol=1e-5) and (part[:, 3:] == 0).all()
    joint = _tiny_video(4)
    with pytest.raises(ValueError, match="only an autoregressive model"):
        joint.sample(noise[:, :4], cond, steps=1, upto=2)


def test_refine_redraws_later_frames_from_the_one_before_over_the_last_steps(monkeypatch):
    """refine=0.5 with paths: frame 0 takes every step, each later frame only the last half, starting
    from the frame before moved to its planned place; refine=0 is the plain loop."""
    torch.manual_seed(0)
    m = _tiny_video(4, context_frames=2, anchor_frame=True)
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(1, 4, 3, 16, 16, generator=g)
    cond = (torch.randint(4, 60, (1, 5), generator=g), torch.ones(1, 5, dtype=torch.long))
    paths = torch.tensor([[5.0 + 2 * t, 8.0, 3.0] for t in range(4)])[None]
    calls, guesses = [], []
    real_denoise, real_add = m.denoise, m.train_scheduler.add_noise

    def counting(*a, **k):
        calls.append(1)
        return real_denoise(*a, **k)

    def noising(x0, noise_, t):
        guesses.append((x0.clone(), int(t[0])))
        return real_add(x0, noise_, t)

    monkeypatch.setattr(m, "denoise", counting)
    plain = m.sample(noise, cond, steps=4, paths=paths)
    assert len(calls) == 4 * 4 and not guesses
    assert torch.equal(plain, m.sample(noise, cond, steps=4, paths=paths, refine=0.0))
    calls.clear()
    monkeypatch.setattr(m.train_scheduler, "add_noise", noising)
    refined = m.sample(noise, cond, steps=4, paths=paths, refine=0.5)
    assert len(calls) == 4 + 3 * 2 and len(guesses) == 3  # frame 0 whole, frames 1-3 from step 2
    for t, (x0, _) in enumerate(guesses, start=1):  # each start: the frame before, at this frame's place
        found = drawn(x0[0])[1]
        if found is not None:
            assert float(found[1]) == pytest.approx(float(paths[0, t, 0]), abs=0.51)
    assert refined.shape == plain.shape and not torch.equal(refined[:, 1:], plain[:, 1:])
    with pytest.raises(ValueError, match="refine"):
        m.sample(noise, cond, steps=2, paths=paths, refine=1.0)
