"""Datasets as typed examples, and the one trainer on data that is not images: the task collates."""
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from genforge.config import load_config
from genforge.data import Examples, ImageSet
from genforge.errors import GenforgeError
from genforge.registry import register_dataset, register_model, register_task
from genforge.tasks import Task
from genforge.train.trainer import Trainer


def test_examples_hold_typed_columns_and_take_picks_rows():
    tokens = [torch.arange(n) for n in (3, 1, 4)]
    ex = Examples(text=["abc", "a", "abcd"], tokens=tokens, label=torch.tensor([0, 1, 0]), class_names=["x", "y"])
    assert len(ex) == 3 and ex.fields == ("text", "tokens", "label") and ex.num_classes == 2
    got = ex.take(torch.tensor([2, 0]))
    assert got["text"] == ["abcd", "abc"] and got["label"].tolist() == [0, 0]
    assert [t.tolist() for t in got["tokens"]] == [[0, 1, 2, 3], [0, 1, 2]]
    assert ex.take([1], fields=["text"]) == {"text": ["a"]}
    assert ex[1]["text"] == "a"
    with pytest.raises(KeyError, match="no 'image' field"):
        ex.column("image")
    with pytest.raises(ValueError, match="unknown example field 'sound'"):
        Examples(sound=[1])
    with pytest.raises(ValueError, match="one value per example"):
        Examples(text=["a", "b"], label=torch.tensor([0]))


def test_image_set_is_examples_with_image_fields():
    ds = ImageSet(images=torch.zeros(4, 3, 8, 8, dtype=torch.uint8), captions=["a", "b", "c", "d"])
    assert ds.fields == ("image", "caption") and ds.labels is None and ds.channels == 3 and ds.image_size == 8
    assert ds.take([3])["caption"] == ["d"]


# ---- a text task that exists only here: nothing in the trainer had to change for it ------------

VOCAB = 12


@register_dataset("test_counting")
def _counting(cfg):
    # sequences that count up modulo VOCAB from a random start, of varying length
    g = torch.Generator().manual_seed(cfg.seed)
    n = cfg.limit or 64
    starts = torch.randint(0, VOCAB, (n,), generator=g)
    lengths = torch.randint(3, 9, (n,), generator=g)
    return Examples(tokens=[(s + torch.arange(int(L))) % VOCAB for s, L in zip(starts, lengths)],
                    meta={"name": "test_counting"})


@register_model("test_bigram")
class _Bigram(nn.Module):
    def __init__(self, vocab: int = VOCAB):
        super().__init__()
        self.logits = nn.Embedding(vocab + 1, vocab)  # the extra row is the padding id

    def forward(self, tokens):
        return self.logits(tokens)


@register_task("test_next_token")
class _NextToken(Task):
    models = ("test_bigram",)
    needs = ("tokens",)

    def collate(self, data, idx, generator):
        seqs = data.take(idx, ["tokens"])["tokens"]
        width = max(len(s) for s in seqs)
        batch = torch.full((len(seqs), width), VOCAB, dtype=torch.long)  # pad with the padding id
        for i, s in enumerate(seqs):
            batch[i, :len(s)] = s
        return {"tokens": batch}

    def step(self, batch, optimize):
        x = batch["tokens"]
        logits = self.nets["model"](x[:, :-1])
        target = x[:, 1:].masked_fill(x[:, 1:] == VOCAB, -100)
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), target.reshape(-1), ignore_index=-100)
        optimize("model", loss)
        return {"loss": loss.detach()}


TEXT = ["task=test_next_token", "model.name=test_bigram", "data.name=test_counting", "data.limit=64",
        "train.batch_size=8", "train.lr=0.1", "train.tensorboard=false", "train.log_every=1",
        "train.ckpt_every=5"]


def _losses(run):
    return [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_the_trainer_trains_a_token_task_and_resumes_it_exactly(tmp_path):
    cfg = load_config(None, TEXT + ["train.steps=40"])
    res = Trainer(cfg, tmp_path / "a").fit()
    losses = _losses(tmp_path / "a")
    assert res["status"] == "completed" and len(losses) == 40
    assert losses[-1] < 0.5 * losses[0]  # counting is learnable from one token: the loss must fall
    Trainer(load_config(None, TEXT + ["train.steps=13"]), tmp_path / "b").fit()
    Trainer(cfg, tmp_path / "b", resume=True).fit()
    assert _losses(tmp_path / "b") == losses


def test_a_task_refuses_a_dataset_without_its_fields(tmp_path):
    cfg = load_config(None, ["task=diffusion", "model.name=diffusion", "data.name=test_counting",
                             "train.batch_size=8"])
    with pytest.raises(GenforgeError, match="has no 'image' field"):
        Trainer(cfg, tmp_path / "run")
