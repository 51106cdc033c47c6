"""train.init_from: a run starts from another run's weights. The case it is built for: a text-to-video
model grown from the text-to-image model it runs on every frame (same names, one input channel more,
a tokenizer trained on other captions)."""
from __future__ import annotations

import json
import warnings

import pytest
import torch

from genforge.errors import GenforgeError
from genforge.models.text2image import TextToImageModel
from genforge.models.video import VideoModel
from genforge.text.tokenizer import TextTokenizer
from genforge.train.checkpoint import load_tensors
from genforge.train.warmstart import warm_start
from text_runs import TINY, text_runs  # noqa: F401 (fixture)

# the tiny text2image run's model (tests/text_runs.py), as keyword arguments
T2I = dict(image_size=16, widths=[16, 16], cross_attention=[False, True], attention_heads=2, vocab_size=64,
           context=12, text_dim=16, text_layers=1, text_heads=2, num_train_timesteps=50)


def _image_model(run):
    m = TextToImageModel(**T2I)
    m.load_state_dict(load_tensors(run / "model.safetensors"))
    return m.eval()


def test_video_model_starts_as_the_image_model_on_every_frame(text_runs):
    run = text_runs["t2i"]
    tok = TextTokenizer.load(run / "tokenizer.json")
    video = VideoModel(frames=5, **T2I)
    report = warm_start(video, run, tok)
    assert report["widened"] == ["unet.conv_in.weight"]  # the frame-position channel, zero-filled
    assert report["fresh"] and all(k.startswith("temporal.") for k in report["fresh"])
    assert not report["mismatched"]
    assert video.unet.conv_in.weight[:, 3].abs().max() == 0
    image = _image_model(run)
    video.eval()
    x = torch.randn(2, 5, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([40, 7])
    ids = tok.batch(["a small red circle", "a large blue square"], max_length=12)
    mask = (ids != 0).long()
    with torch.no_grad():
        clip = video(x, t, ids, mask)
        frames = image(x.flatten(0, 1), t.repeat_interleave(5), ids.repeat_interleave(5, 0),
                       mask.repeat_interleave(5, 0)).view_as(clip)
    # the same float32 network on the same inputs: only summation order may differ
    assert torch.allclose(clip, frames, rtol=1e-4, atol=1e-5 * float(frames.abs().max()))


def test_token_embeddings_follow_the_token_text_not_its_id(text_runs):
    run = text_runs["t2i"]
    old = TextTokenizer.load(run / "tokenizer.json").tok.get_vocab()
    # a tokenizer trained on other text numbers the shared tokens differently
    new_tok = TextTokenizer.train(["a circle moves left", "the square falls down", "a red star bounces"] * 20,
                                  kind="bpe", vocab_size=64)
    new = new_tok.tok.get_vocab()
    shared = [w for w in new if w in old and w not in ("[PAD]", "[BOS]", "[EOS]", "[UNK]")]
    assert shared and any(new[w] != old[w] for w in shared)
    torch.manual_seed(0)
    video = VideoModel(frames=3, **T2I)
    fresh = video.text.tokens.weight.detach().clone()
    report = warm_start(video, run, new_tok)
    source = load_tensors(run / "model.safetensors")["text.tokens.weight"]
    got = video.text.tokens.weight.detach()
    for w in shared:
        assert torch.equal(got[new[w]], source[old[w]])
    unseen = [i for w, i in new.items() if w not in old]
    assert unseen and all(torch.equal(got[i], fresh[i]) for i in unseen)
    assert report["remapped_tokens"] == len([w for w in new if w in old])


def test_training_from_a_run_records_it_and_resume_keeps_its_own_weights(text_runs, tmp_path, capsys):
    from genforge.config import load_config
    from genforge.train.trainer import Trainer

    source = text_runs["t2i"]
    overrides = [o for o in TINY["t2i"] if not o.startswith(("train.steps", "task_params.eval"))]
    cfg = load_config(None, overrides + ["train.steps=1", "train.lr=1e-30", "task_params.eval_prompts=0",
                                         f"train.init_from={source}"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Trainer(cfg, tmp_path / "ft").fit()
    assert f"initialised from {source}" in capsys.readouterr().err
    assert json.loads((tmp_path / "ft" / "config.json").read_text())["train"]["init_from"] == str(source)
    a, b = load_tensors(source / "model.safetensors"), load_tensors(tmp_path / "ft" / "model.safetensors")
    assert a.keys() == b.keys()
    # one step at a learning rate of 1e-30 moves no weight by more than rounding
    assert all(torch.allclose(a[k], b[k], rtol=1e-6, atol=1e-7) for k in a)
    # a resumed run continues from its own checkpoint; the source is not read again
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg2 = load_config(None, overrides + ["train.steps=2", "train.lr=1e-30", "task_params.eval_prompts=0",
                                              "train.init_from=/no/such/run"])
        Trainer(cfg2, tmp_path / "ft", resume=True).fit()
    assert "initialised from" not in capsys.readouterr().err


def test_init_from_a_missing_or_unrelated_run_is_a_one_line_error(cli, tmp_path):
    code, _, err = cli("train", *TINY["t2i"], "train.init_from=/no/such/run", "--out", tmp_path / "a")
    assert code == 2 and "no run directory '/no/such/run'" in err and "Traceback" not in err
    assert not (tmp_path / "a").exists()
    code, _, err = cli("train", *TINY["t2i"], "train.init_from=classifier-shapes", "--out", tmp_path / "b")
    assert code == 2 and "none of its tensors match" in err and "Traceback" not in err


def test_shared_noise_prior():
    model = VideoModel(frames=4, shared_noise=0.5, **T2I)
    gen = torch.Generator().manual_seed(0)
    x = model.noise((512, 4, 3, 16, 16), generator=gen)
    # unit variance per element, and frames of one clip correlated by the shared fraction
    # (1.5M samples: the standard error of each estimate is below 0.002)
    assert abs(float(x.var()) - 1) < 0.02
    a, b = x[:, 0].flatten(), x[:, 3].flatten()
    assert abs(float(torch.corrcoef(torch.stack([a, b]))[0, 1]) - 0.5) < 0.02
    torch.manual_seed(1)
    y = model.noise_like(torch.zeros(512, 4, 3, 16, 16))
    assert abs(float(torch.corrcoef(torch.stack([y[:, 1].flatten(), y[:, 2].flatten()]))[0, 1]) - 0.5) < 0.02
    # without sharing the prior is the plain normal of the same generator (older runs sample as before)
    plain = VideoModel(frames=4, **T2I)
    assert torch.equal(plain.noise((2, 4, 3, 16, 16), generator=torch.Generator().manual_seed(3)),
                       torch.randn(2, 4, 3, 16, 16, generator=torch.Generator().manual_seed(3)))
    with pytest.raises(ValueError, match="shared_noise"):
        VideoModel(frames=4, shared_noise=1.0, **T2I)


def test_warm_start_refuses_a_source_with_nothing_in_common(tmp_path):
    from genforge.train.checkpoint import save_tensors

    save_tensors(tmp_path / "model.safetensors", {"other.weight": torch.zeros(2)})
    with pytest.raises(GenforgeError, match="none of its tensors match"):
        warm_start(VideoModel(frames=2, **T2I), tmp_path)


def test_text_models_name_their_token_tables():
    """Warm starts remap these by token text; a renamed embedding would silently be copied by id."""
    from genforge.models.gpt import GPT
    from genforge.models.seq2seq import Seq2Seq

    for model in (GPT(vocab_size=32, block_size=8, n_layer=1, n_head=2, n_embd=8),
                  Seq2Seq(vocab_size=32, d_model=8, n_layer_enc=1, n_layer_dec=1, n_head=2, d_ff=16, max_len=8),
                  TextToImageModel(**T2I)):
        sd = model.state_dict()
        assert model.token_tables and all(sd[k].shape[0] == 32 or sd[k].shape[0] == 64 for k in model.token_tables)
