"""The text-conditional GAN baseline: model, matching-aware loss, training through the CLI, pipeline, resume."""
import json

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_resume_exact
from genforge.config import load_config
from genforge.errors import GenforgeError
from genforge.models.textgan import textgan

TINY_TEXTGAN = ["task=textgan", "model.name=textgan", "model.params.vocab_size=128", "model.params.max_length=24",
                "model.params.z_dim=8", "model.params.width=8", "model.params.d_width=8",
                "model.params.embed_dim=16", "model.params.text_hidden=16", "data.name=shapes",
                "data.image_size=16", "data.num_items=64", "data.max_objects=2", "train.batch_size=16",
                "train.tensorboard=false", "train.log_every=1", "task_params.eval_prompts=8"]


def tiny_model(**kw):
    torch.manual_seed(0)
    return textgan(vocab_size=40, max_length=12, z_dim=8, width=8, d_width=8, embed_dim=16, text_hidden=16,
                   image_size=16, **kw).eval()


def test_shapes_and_text_conditioning():
    m = tiny_model()
    ids = torch.tensor([[1, 5, 6, 7, 8, 2, 0, 0], [1, 8, 7, 6, 5, 2, 0, 0], [1, 9, 10, 2, 0, 0, 0, 0]])
    z = torch.randn(1, 8).repeat(3, 1)
    with torch.no_grad():
        x = m.generate(z, ids)
        assert x.shape == (3, 3, 16, 16) and x.abs().max() <= 1
        # one noise vector, three captions: three different images (relative to the output's scale,
        # which is small at initialisation, far above float rounding)
        scale = x.abs().max()
        for i, j in [(0, 1), (0, 2), (1, 2)]:
            assert (x[i] - x[j]).abs().max() > 1e-2 * scale
        # the same words in another order are another sentence (a bag of words could not tell)
        e = m.encode(ids)
        assert (e[0] - e[1]).abs().max() > 1e-3
        # padding is not read: extra [PAD] columns leave the embedding as it was
        padded = F.pad(ids, (0, 5))
        torch.testing.assert_close(m.encode(padded), e, rtol=0, atol=1e-6)
        # each image depends only on its own noise and caption (eval BatchNorm), so batching changes nothing
        torch.testing.assert_close(m.generate(z[1:2], ids[1:2]), x[1:2], rtol=0, atol=1e-6 * scale)
        d = m.discriminator(x, ids)
        right, wrong = m.discriminator(x, ids, ids.roll(1, dims=0))
    assert d.shape == right.shape == wrong.shape == (3,)
    torch.testing.assert_close(right, d)
    assert (right - wrong).abs().max() > 1e-5
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        m.encode(torch.tensor([[1, 40, 2]]))


@pytest.fixture(scope="module")
def tiny_task():
    from genforge.data import load_dataset
    from genforge.tasks import build_task, resolve_model_params

    cfg = load_config(None, TINY_TEXTGAN)
    data = load_dataset(cfg.data)
    return build_task(resolve_model_params(cfg, data), data), data


def test_discriminator_loss_has_the_mismatched_caption_term(tiny_task):
    task, data = tiny_task
    batch = task.collate(data, torch.arange(16), torch.Generator().manual_seed(0))
    assert batch["differs"].sum() >= 12  # random other captions rarely say the same thing
    task.model.eval()  # spectral norm holds its power iteration still, so D is one fixed function here

    def losses(b):
        seen = {}
        torch.manual_seed(1)
        out = task.step(b, lambda name, loss: seen.__setitem__(name, loss.detach()))
        return seen, out

    seen, out = losses(batch)
    torch.manual_seed(1)
    with torch.no_grad():
        cond = task.model.encode(batch["ids"])
        fake = task.model.generator(torch.randn(16, task.model.z_dim), cond)
        d = task.model.discriminator
        real, fk = d(batch["image"], batch["ids"]), d(fake, batch["ids"])
        wrong = d(batch["image"], batch["wrong_ids"])
    m = batch["differs"]
    mismatch = (F.relu(1 + wrong) * m).sum() / m.sum()
    expected = F.relu(1 - real).mean() + 0.5 * F.relu(1 + fk).mean() + 0.5 * mismatch
    torch.testing.assert_close(seen["d"], expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["loss_d_mismatch"], mismatch, rtol=1e-5, atol=1e-6)
    assert mismatch > 0.1  # not a vanishing term at initialisation
    # a "wrong" caption identical to the right one is no mismatch and leaves the loss
    same = dict(batch, wrong_ids=batch["ids"], differs=torch.zeros(16))
    seen_same, out_same = losses(same)
    assert out_same["loss_d_mismatch"] == 0
    torch.testing.assert_close(seen_same["d"], expected - 0.5 * mismatch, rtol=1e-5, atol=1e-6)
    task.model.train()


def test_flipped_training_data_is_refused(tiny_task):
    from genforge.tasks import build_task

    task, data = tiny_task
    cfg = task.cfg.model_copy(update={"data": task.cfg.data.model_copy(update={"flip": True})})
    with pytest.raises(GenforgeError, match="data.flip=false"):
        build_task(cfg, data)


def test_cli_train_then_sample_with_a_prompt(cli, tmp_path, recwarn):
    import genforge
    from genforge.pipelines.textgan import TextGANPipeline

    run = tmp_path / "run"
    code, out, err = cli("train", *TINY_TEXTGAN, "train.steps=4", "--out", run)
    assert code == 0, err
    tok = json.loads((run / "tokenizer.json").read_text())
    assert "circle" in " ".join(tok["model"]["vocab"])
    rows = (run / "samples" / "prompts.txt").read_text().splitlines()
    assert len(rows) == 8 and all(r.startswith("a ") for r in rows)
    final = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    assert 0 <= final["verify_all_correct"] <= final["verify_color"] <= 1  # scored by the pixel verifier
    cfg = json.loads((run / "config.json").read_text())
    vocab = len(tok["model"]["vocab"])
    assert vocab <= cfg["model"]["params"]["vocab_size"] == 128

    pipe = genforge.load(run, device="cpu")
    assert isinstance(pipe, TextGANPipeline) and pipe.kind == "text2image"
    prompt = "a large red circle in the centre"
    a = pipe.generate(n=3, seed=5, prompt=prompt)
    assert a.shape == (3, 3, 16, 16)
    torch.testing.assert_close(pipe.generate(n=3, seed=5, prompt=prompt, batch_size=2), a, rtol=0, atol=1e-6)
    b = pipe.generate(n=3, seed=5, prompt="a small blue star at the top left")
    assert (a - b).abs().max() > 1e-4  # trained for 4 steps, yet the caption already moves the pixels
    images = pipe(prompt=[prompt, "a small blue star at the top left"], n=2, seed=5)
    assert [im.size for im in images] == [(16, 16)] * 2
    with pytest.raises(GenforgeError, match="negative prompt"):
        pipe.generate(n=1, prompt=prompt, negative_prompt="blue")
    with pytest.raises(GenforgeError, match="empty prompt"):
        pipe.generate(n=1, prompt="  ")
    with pytest.warns(UserWarning, match="never saw 'zebra'"):
        pipe.generate(n=1, prompt="a large red zebra in the centre")
    with pytest.warns(UserWarning, match="steps, guidance ignored"):
        pipe.generate(n=1, prompt=prompt, steps=10, guidance=3.0)

    grid = tmp_path / "grid.png"
    code, out, err = cli("sample", run, "-n", 4, "--prompt", prompt, "--grid", grid)
    assert code == 0 and grid.is_file(), err
    code, out, err = cli("sample", run, "-n", 1, "--prompt", prompt, "--negative-prompt", "red", "--grid", grid)
    assert code == 2 and "negative prompt" in err


def test_resume_is_exact(tmp_path):
    # no final verifier scores: the short run would log them at its own last step, which the long one has not
    cfg = load_config(None, TINY_TEXTGAN + ["train.steps=4", "train.ckpt_every=2", "train.ema_decay=0.9",
                                            "task_params.eval_prompts=0"])
    assert_resume_exact(cfg, tmp_path, stop_at=2)
    # the resumed run kept the tokenizer it started with rather than training another
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()


def test_too_small_vocabulary_is_refused_before_anything_is_written(cli, tmp_path):
    run = tmp_path / "run"
    code, out, err = cli("train", *TINY_TEXTGAN, "model.params.vocab_size=12", "--out", run)
    assert code == 2 and "raise model.params.vocab_size" in err
    assert not run.exists() or not any(run.iterdir())
