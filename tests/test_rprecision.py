"""Contrastive text-image model (clip), its InfoNCE loss, and R-precision computed by hand."""
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_resume_exact
from genforge.config import load_config
from genforge.errors import GenforgeError
from genforge.eval.rprecision import draw_distractors, r_precision, r_precision_of, retrieval_top1
from genforge.models.clip import info_nce

TINY_CLIP = ["task=contrastive", "model.name=clip", "model.params.width=8", "model.params.embed_dim=16",
             "model.params.text_dim=16", "model.params.text_layers=1", "model.params.text_heads=2",
             "model.params.context=24", "data.name=shapes", "data.image_size=16", "data.num_items=64",
             "data.max_objects=2", "train.batch_size=16", "train.tensorboard=false", "train.log_every=1",
             "train.lr=1e-3", "task_params.eval_items=40", "task_params.r=4"]


def test_info_nce_prefers_matched_pairs():
    gen = torch.Generator().manual_seed(0)
    emb = F.normalize(torch.randn(8, 16, generator=gen), dim=-1)
    matched = info_nce(10 * emb @ emb.T)
    shuffled = info_nce(10 * emb @ emb[torch.roll(torch.arange(8), 1)].T)
    assert matched < shuffled
    # rows 0 and 1 share one caption text: marked as matches, swapping them costs nothing
    same = torch.tensor([[1, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=torch.bool)
    diag = 5 * torch.eye(3)
    swapped = diag[[1, 0, 2]]
    assert info_nce(diag, torch.eye(3, dtype=torch.bool)).item() == pytest.approx(info_nce(diag).item(), rel=1e-6)
    assert info_nce(swapped).item() > info_nce(diag).item() + 1
    assert info_nce(swapped, same).item() == pytest.approx(info_nce(diag, same).item(), rel=1e-6)
    # by hand: rows/columns 0 and 1 put half their target on each duplicate, row/column 2 on itself
    ties = torch.tensor([[5.0, 5.0, 0.0], [5.0, 5.0, 0.0], [0.0, 0.0, 5.0]])
    e = math.exp(-5)
    assert info_nce(ties, same).item() == pytest.approx((2 * math.log(2 + e) + math.log(1 + 2 * e)) / 3, rel=1e-5)


def test_r_precision_by_hand():
    true_sim = torch.tensor([0.9, 0.5, 0.3, 0.2])
    distractors = torch.tensor([[0.1, 0.8], [0.4, 0.2], [0.3, 0.1], [0.6, 0.0]])
    # rows 0 and 1 rank their prompt first; row 2 ties (a miss); row 3 loses
    assert r_precision(true_sim, distractors) == pytest.approx(0.5)
    with pytest.raises(GenforgeError, match="similarities"):
        r_precision(true_sim, distractors[:3])


def test_r_precision_from_embeddings_by_hand():
    # 2-d unit vectors at angles; similarity is the cosine of the angle between them
    def at(deg):
        return torch.tensor([[math.cos(math.radians(d)), math.sin(math.radians(d))] for d in deg])

    pool = ["a", "b", "c"]
    pool_emb = at([0, 90, 180])
    images = at([10, 120])
    prompts = ["a", "c"]  # image 0 sits near "a" (its prompt), image 1 nearer "b" than its prompt "c"
    text_emb = pool_emb[[0, 2]]
    # R=3: both other pool captions are the distractors, whatever the draw
    assert r_precision_of(images, prompts, text_emb, pool, pool_emb, r=3, seed=0) == pytest.approx(0.5)
    # R=2 draws one distractor; image 0 wins against either, image 1 loses to "b" and beats "a"
    values = {r_precision_of(images, prompts, text_emb, pool, pool_emb, r=2, seed=s) for s in range(20)}
    assert values == {0.5, 1.0}


def test_distractors_are_seeded_distinct_and_never_the_true_text():
    pool = [f"caption {i % 30}" for i in range(60)]  # every text twice
    truth = ["caption 3", "caption 7", "something else"]
    a = draw_distractors(truth, pool, 20, seed=1)
    assert torch.equal(a, draw_distractors(truth, pool, 20, seed=1))
    assert not torch.equal(a, draw_distractors(truth, pool, 20, seed=2))
    for row, text in zip(a.tolist(), truth):
        assert len(set(row)) == 20 and all(pool[j] != text for j in row)
    with pytest.raises(GenforgeError, match="larger pool"):
        draw_distractors(["caption 3"], pool, 59, seed=0)


def test_retrieval_top1_counts_repeated_captions_as_right():
    img = torch.tensor([[1.0, 0, 0], [0.8, 0.6, 0], [0, 0, 1.0]])
    txt = torch.tensor([[1.0, 0, 0], [0, 0, 1.0], [0, 0, 1.0]])
    got = retrieval_top1(img, txt, ["x", "y", "y"])
    # image 1 (caption "y") is nearest text 0 ("x"): the one miss
    assert got["image_to_text_top1"] == pytest.approx(2 / 3)
    # texts 1 and 2 both retrieve image 2, whose caption is theirs
    assert got["text_to_image_top1"] == pytest.approx(1.0)


def test_train_writes_a_loadable_scorer(cli, tmp_path):
    import genforge
    from genforge.eval.rprecision import embed_images, embed_texts, load_scorer
    from genforge.train.checkpoint import read_metrics

    run = tmp_path / "clip"
    code, _, err = cli("train", *TINY_CLIP, "train.steps=3", "--out", run)
    assert code == 0, err
    final = read_metrics(run / "metrics.jsonl")[0][-1]
    for key in ("test_text_to_image_top1", "test_image_to_text_top1", "test_real_r_precision_4"):
        assert 0 <= final[key] <= 1
    model, tok, cfg = load_scorer(run)
    assert cfg.task == "contrastive" and (run / "tokenizer.json").is_file()
    texts = ["a small red circle above a large blue square", "a large blue square at the top"]
    t = embed_texts(model, tok, texts)
    i = embed_images(model, torch.zeros(2, 3, 16, 16))
    pipe = genforge.load(run, device="cpu")
    assert pipe.kind == "contrastive"
    assert torch.allclose(pipe.similarity(torch.zeros(2, 3, 16, 16), texts), i @ t.T, atol=1e-5)
    with pytest.raises(GenforgeError, match="16 px"):
        pipe.similarity(torch.zeros(2, 3, 32, 32), texts)
    assert torch.allclose(t.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert torch.allclose(i.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert not torch.allclose(t[0], t[1], atol=1e-4)  # the text encoder reads the words
    with pytest.raises(GenforgeError, match="contrastive"):
        load_scorer("text2image-shapes")


def test_flip_is_refused(cli, tmp_path):
    code, _, err = cli("train", *TINY_CLIP, "data.flip=true", "train.steps=1", "--out", tmp_path / "r")
    assert code == 2 and "data.flip" in err


def test_contrastive_resume_is_exact(tmp_path):
    cfg = load_config(None, TINY_CLIP + ["train.steps=4", "train.ckpt_every=2", "train.ema_decay=0.9",
                                         "task_params.eval_items=0"])
    assert_resume_exact(cfg, tmp_path, stop_at=2)
