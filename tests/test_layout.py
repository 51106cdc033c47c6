"""Layout-planned sampling: the planner's placements and regions, and region-wise denoising."""
import warnings

import pytest
import torch

from genforge.data.shapes import Obj, relation
from genforge.errors import GenforgeError
from genforge.pipelines.layout import placements, plan, region_masks

TWO = "a small red circle above a large blue square"


def test_placements_satisfy_every_relation_and_nothing_else():
    got = placements(2, ((0, 1, "above"),))
    # same column, the first in a higher row: 3 columns x 3 row pairs
    assert len(got) == 9 and all(a[1] == b[1] and a[0] < b[0] for a, b in got)
    for name in ("to the upper left of", "to the right of", "below"):
        found = placements(2, ((0, 1, name),))
        everything = [(a, b) for a in [(r, c) for r in range(3) for c in range(3)]
                      for b in [(r, c) for r in range(3) for c in range(3)] if a != b]
        assert set(found) == {(a, b) for a, b in everything
                              if relation(Obj(row=a[0], col=a[1]), Obj(row=b[0], col=b[1])) == name}
    chain = placements(3, ((0, 1, "above"), (1, 2, "above")))
    assert chain and all(len({c for c in p}) == 3 and p[0][0] == 0 and p[2][0] == 2 for p in chain)
    assert placements(4, ((0, 1, "above"), (1, 2, "above"), (2, 3, "above"))) == []  # 3 rows only


def test_plan_reads_the_caption_and_is_seeded():
    regions = plan(TWO + " on a grey background", seed=3, image_size=32)
    assert [r.prompt.split(" at ")[0].split(" on ")[0].split(" in ")[0] for r in regions] == \
        ["a small red circle", "a large blue square"]
    assert all(r.prompt.endswith("on a grey background") for r in regions)
    (t0, l0, b0, r0), (t1, l1, b1, r1) = (r.box for r in regions)
    assert t0 < t1 and (l0, r0) == (l1, r1)  # above: same column, higher row
    assert all(0 <= v <= 32 for r in regions for v in r.box)
    assert plan(TWO, 3, 32) == plan(TWO, 3, 32)
    assert len({tuple(r.box for r in plan(TWO, s, 32)) for s in range(40)}) > 1
    for nothing in ["a small red circle at the top left", "a cat on a mat", "",
                    "a small red circle above a large blue square, which is above a small green ring, "
                    "which is above a large white star"]:
        assert plan(nothing, 0, 32) is None


def test_region_masks_pad_and_cover():
    plans = [plan(TWO, 0, 16), None]
    texts, masks = region_masks(plans, [TWO, "a small red circle at the top"], 16)
    assert texts[1] == ["a small red circle at the top", ""] and len(texts[0]) == 2
    assert masks.shape == (2, 2, 1, 16, 16)
    assert masks[1, 0].min() == 1 and masks[1, 1].max() == 0
    assert 0 < masks[0, 0].mean() < 0.5 and (masks[0].sum(0) > 0).float().mean() < 1


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    import genforge
    from genforge.config import load_config
    from genforge.train.trainer import Trainer
    from test_text2image import TINY_T2I

    out = tmp_path_factory.mktemp("layout") / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Trainer(load_config(None, TINY_T2I + ["train.steps=2"]), out).fit()
    return genforge.load(out, device="cpu")


def test_regions_of_one_text_are_plain_guided_sampling(pipe):
    """Region-wise denoising only chooses which guided prediction counts where: with the same text in
    every region (overlapping, and leaving some pixels to the mean outside them) it is the plain
    guided sample."""
    m, size = pipe.model, pipe.model.image_size
    noise = pipe.draw_noise(2, 5)
    uncond = pipe._tokens(["", ""])
    ids, keep = pipe._tokens([TWO] * 4)
    masks = torch.zeros(2, 2, 1, size, size)
    masks[:, 0, :, :9, :9] = 1
    masks[:, 1, :, 6:, 4:12] = 1
    whole = pipe._tokens([TWO] * 2)
    want = m.sample(noise, whole, uncond, guidance=3.0, steps=3)
    for region_steps in (None, 3):  # half the steps from the regions (the default), or all of them
        got = m.sample_regions(noise, (ids.view(2, 2, -1), keep.view(2, 2, -1)), masks, uncond, whole,
                               guidance=3.0, steps=3, region_steps=region_steps)
        assert torch.allclose(got, want, atol=1e-4)


def test_pipeline_layout_modes(pipe):
    assert pipe.default_layout == "grid"  # trained on shapes captions
    one = "a small red circle at the top left"
    for prompt in [one, "a cat"]:  # nothing to plan: the same images either way
        assert torch.equal(pipe.generate(n=2, seed=1, prompt=prompt, steps=2, layout="grid"),
                           pipe.generate(n=2, seed=1, prompt=prompt, steps=2, layout="off"))
    planned = pipe.generate(n=2, seed=1, prompt=[TWO, one], steps=2)
    assert torch.equal(planned, pipe.generate(n=2, seed=1, prompt=[TWO, one], steps=2, layout="grid"))
    assert not torch.allclose(planned[0], pipe.generate(n=1, seed=1, prompt=TWO, steps=2, layout="off")[0])
    with pytest.raises(GenforgeError, match="unknown layout"):
        pipe.generate(n=1, prompt=TWO, steps=1, layout="boxes")


def test_cli_layout(pipe, cli, tmp_path):
    code, _, _ = cli("sample", pipe.run_dir, "--prompt", TWO, "-n", 2, "--steps", 1, "--layout", "off",
                     "--grid", tmp_path / "g.png")
    assert code == 0 and (tmp_path / "g.png").is_file()
    code, _, err = cli("sample", pipe.run_dir, "--prompt", TWO, "--steps", 1, "--layout", "boxes",
                       "--grid", tmp_path / "h.png")
    assert code == 2 and "unknown layout" in err and not (tmp_path / "h.png").exists()


def test_planned_prompts_are_checked_as_the_model_reads_them(pipe):
    three = TWO + ", which is to the left of a small green ring"
    read = pipe.read_texts(three, "grid")  # each object's caption, then the whole text (the last steps)
    assert len(read) == 4 and read[2].startswith("a small green ring ") and read[3] == three
    assert pipe.read_texts(three, "off") == [three] and pipe.read_texts("a cat", "grid") == ["a cat"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipe.generate(n=1, prompt="a small red circle above a large zqxjv square", steps=1, layout="grid")
    assert any("'zqxjv'" in str(w.message) for w in caught)
