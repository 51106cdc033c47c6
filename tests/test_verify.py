"""The pixel checker for shapes scenes: exact on rendered scenes, honest on everything else."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from PIL import Image

from genforge.data import shapes as S
from genforge.data.shapes import Obj, Scene
from genforge.errors import GenforgeError
from genforge.eval import verify as V


def _key(o):
    return (o.shape, o.color, o.size, o.row, o.col)


def _exact(scene: Scene, image) -> bool:
    found = V.detect(image)
    return found.background == scene.background and sorted(map(_key, found.objects)) == sorted(map(_key, scene.objects))


def _exact_rate(px: int, n: int, seed: int, noise=None) -> float:
    rng = np.random.default_rng(seed)
    hits = 0
    for i in range(n):
        scene = S.scene_for_item(i, seed=seed)
        image = S.render_array(scene, px)
        if noise is not None:
            image = noise(image, rng)
        hits += _exact(scene, image)
    return hits / n


@pytest.mark.parametrize("px,n", [(32, 400), (64, 120)])
def test_rendered_scenes_decode_exactly(px, n):
    # Measured 100 % on 500 scenes at both sizes; the goal is 99.5 %.
    assert _exact_rate(px, n, seed=7) >= 0.995


@pytest.mark.parametrize("px", [32, 64])
def test_every_shape_colour_and_size_decodes(px):
    misses = []
    combos = itertools.product(S.SHAPES, S.COLORS, S.SIZES)
    for k, ((shape, color, size), cell) in enumerate(zip(combos, itertools.cycle(range(9)))):
        backgrounds = [None, *S.BACKGROUNDS] if color != "black" else list(S.BACKGROUNDS)
        background = backgrounds[k % len(backgrounds)]
        scene = Scene(objects=(Obj(shape, color, size, *divmod(cell, 3)),), background=background)
        if not _exact(scene, S.render_array(scene, px)):
            misses.append(scene.caption())
    assert misses == []


def _noisy(sigma: float, shift: float):
    def apply(image, rng):
        out = image.astype(np.float64) + rng.uniform(-shift, shift, size=3) + rng.normal(0, sigma, image.shape)
        return np.clip(out + 0.5, 0, 255).astype(np.uint8)
    return apply


@pytest.mark.parametrize("px,sigma,rate", [(32, 8, 0.98), (64, 12, 0.98)])
def test_mild_noise_and_colour_shift_still_decode(px, sigma, rate):
    # Gaussian pixel noise plus a whole-image shift of up to +-15 per channel, as a generator's
    # output might carry. Measured on 300 scenes: 99.7 % (32 px, sigma 8), 100 % (64 px, sigma 12).
    assert _exact_rate(px, 150, seed=3, noise=_noisy(sigma, 15)) >= rate


@pytest.mark.parametrize("background", [None, *S.BACKGROUNDS])
def test_empty_image_has_no_objects(background):
    blank = np.empty((32, 32, 3), dtype=np.uint8)
    blank[:] = S.background_rgb(background)
    noisy = _noisy(8, 10)(blank, np.random.default_rng(0))
    for image in (blank, noisy):
        found = V.detect(image)
        assert found.objects == () and found.background == background
        assert V.check(image, Scene(objects=(Obj(),), background=background))["count"] is False


@pytest.mark.parametrize("rgb", [(0, 128, 128), (110, 20, 20), (128, 0, 64), (200, 200, 120), (90, 90, 90)])
def test_colour_far_from_palette_is_never_named(rgb):
    mask = S._mask("square", "large", 1, 1, 32)[:, :, None]
    image = np.clip(mask * np.asarray(rgb) + 0.5, 0, 255).astype(np.uint8)
    for o in V.detect(image).objects:  # none at all is an acceptable answer too
        assert o.color == V.UNKNOWN and o.confidence == 0
    result = V.check(image, Scene(objects=(Obj(shape="square"),)))
    assert result["color"] is False and result["all_correct"] is False


def test_background_off_the_list_is_unknown():
    scene = Scene(objects=(Obj(color="white"),))
    image = S.render_array(scene, 32).astype(np.float64)
    mask = S._mask("circle", "large", 1, 1, 32)[:, :, None]
    image = np.clip(image + (1 - mask) * np.asarray([60, 30, 120]) + 0.5, 0, 255).astype(np.uint8)
    found = V.detect(image)
    assert found.background == V.UNKNOWN and found.background_rgb == (60, 30, 120)
    assert [_key(o) for o in found.objects] == [_key(scene.objects[0])]


def test_every_input_form_gives_the_same_answer():
    scene = S.scene_for_item(4)
    arr = S.render_array(scene, 32)
    chw = torch.from_numpy(arr).permute(2, 0, 1)
    forms = [arr, Image.fromarray(arr), chw, chw.float() / 255, arr.astype(np.float32) / 255]
    assert all(V.detect(f) == V.detect(arr) for f in forms)
    assert V.check(Image.fromarray(arr), scene)["all_correct"]


@pytest.mark.parametrize("bad,fragment", [
    (np.zeros((8, 8, 3), np.uint8), "at least 16 px"),
    (np.zeros((32, 32), np.uint8), "RGB image"),
    (np.full((32, 32, 3), -1.0), "(x + 1) / 2"),
])
def test_unusable_images_are_clear_errors(bad, fragment):
    with pytest.raises(GenforgeError, match=fragment.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        V.detect(bad)


def _render(*objs: Obj, background=None, px: int = 32) -> np.ndarray:
    return S.render_array(Scene(objects=objs, background=background), px)


def test_check_names_each_wrong_attribute():
    want = Scene(objects=(Obj("star", "red", "large", 0, 0), Obj("ring", "blue", "small", 2, 2)))
    assert V.check(_render(*want.objects), want)["all_correct"] is True
    cases = {
        "shape": _render(Obj("circle", "red", "large", 0, 0), want.objects[1]),
        "color": _render(Obj("star", "green", "large", 0, 0), want.objects[1]),
        "size": _render(Obj("star", "red", "small", 0, 0), want.objects[1]),
        "position": _render(Obj("star", "red", "large", 0, 1), want.objects[1]),
        "count": _render(*want.objects, Obj("square", "white", "large", 1, 1)),
        "background": _render(*want.objects, background="grey"),
    }
    for attr, image in cases.items():
        result = V.check(image, want)
        wrong = {k for k in V.ATTRIBUTES if result[k] is False}
        assert wrong == {attr}, (attr, result)
        assert result["all_correct"] is False
    missing = V.check(_render(want.objects[0]), want)
    assert missing["count"] is False and missing["objects"][1]["detected"] is None
    assert missing["relation"] is False


def test_caption_specs_judge_relations_not_cells():
    caption = "a large red star above a small blue ring"
    moved = _render(Obj("star", "red", "large", 1, 2), Obj("ring", "blue", "small", 2, 2))
    result = V.check(moved, caption)
    assert result["position"] is None and result["relation"] is True and result["all_correct"]
    swapped = _render(Obj("star", "red", "large", 2, 2), Obj("ring", "blue", "small", 1, 2))
    assert V.check(swapped, caption)["relation"] is False
    assert V.check(moved, Scene(objects=(Obj("star", "red", "large", 0, 0), Obj("ring", "blue", "small", 2, 2))))[
        "position"] is False


def test_look_alike_objects_are_matched_so_the_relation_holds():
    image = _render(Obj("star", "red", "small", 0, 1), Obj("star", "red", "small", 2, 1))
    # Either reading fits this picture; a first-come matching would fail one of them.
    assert V.check(image, "a small red star above a small red star")["all_correct"]
    assert V.check(image, "a small red star below a small red star")["all_correct"]
    assert V.check(image, "a small red star to the left of a small red star")["relation"] is False


def test_captions_parse_back_to_their_scenes():
    for i in range(200):
        scene = S.scene_for_item(i, seed=1)
        parsed, exact = V.parse_caption(scene.caption()), V.as_spec(scene)
        strip = [{k: o[k] for k in ("shape", "color", "size")} for o in exact.objects]
        assert [{k: o[k] for k in ("shape", "color", "size")} for o in parsed.objects] == strip
        assert parsed.relations == exact.relations and parsed.background == exact.background
        if len(scene.objects) == 1:
            assert parsed == exact
    with pytest.raises(GenforgeError, match="cannot read caption"):
        V.parse_caption("a huge red circle in the centre")


def test_score_aggregates_per_attribute_and_per_prompt():
    scenes = [S.scene_for_item(i, seed=2) for i in range(6)]
    images = S.render_batch(scenes, 32)
    # Recolour the first image's objects: colour and all-correct fail for that one image only.
    wrong = [Obj(o.shape, "white" if o.color != "white" else "red", o.size, o.row, o.col) for o in scenes[0].objects]
    images[0] = torch.from_numpy(_render(*wrong, background=scenes[0].background)).permute(2, 0, 1)
    prompts = ["first", *["rest"] * 5]
    out = V.score(images, scenes, prompts=prompts)
    assert out["n"] == 6 and out["all_correct"] == pytest.approx(5 / 6)
    assert out["accuracy"]["color"] == pytest.approx(5 / 6) and out["accuracy"]["shape"] == 1.0
    assert out["per_prompt"]["first"]["all_correct"] == 0 and out["per_prompt"]["rest"]["all_correct"] == 1
    by_caption = V.score(list(images), [s.caption() for s in scenes])
    assert by_caption["all_correct"] == pytest.approx(5 / 6) and "per_prompt" not in by_caption
    with pytest.raises(GenforgeError, match="one spec"):
        V.score(images, scenes[:2])
