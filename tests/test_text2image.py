"""Text encoders, text-to-image training, sampling, guidance and resume on tiny shapes data."""
import warnings

import pytest
import torch

from conftest import assert_resume_exact
from genforge.config import load_config

TINY_T2I = ["task=text2image", "model.name=text2image", "model.params.widths=[16,32]",
            "model.params.cross_attention=[false,true]", "model.params.attention_heads=2",
            "model.params.text_dim=32", "model.params.text_layers=1", "model.params.context=24",
            "model.params.num_train_timesteps=50", "data.name=shapes", "data.image_size=16",
            "data.num_items=64", "data.max_objects=2", "train.batch_size=8", "train.tensorboard=false",
            "train.log_every=1", "train.lr=1e-3", "task_params.sample_steps=2", "task_params.eval_prompts=4"]
PROMPT = "a small red circle above a large blue square"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from genforge.train.trainer import Trainer

    out = tmp_path_factory.mktemp("t2i") / "run"
    Trainer(load_config(None, TINY_T2I + ["train.steps=3"]), out).fit()
    return out


def test_minilm_places_unseen_words_near_their_meaning():
    from genforge.text.encoders import minilm_embed

    e = minilm_embed(["crimson", "red", "blue", "box", "square", "circle"])
    sim = e @ e.T
    assert sim[0, 1] > sim[0, 2] + 0.05  # crimson: nearer red than blue
    assert sim[3, 4] > sim[3, 5] + 0.05  # box: nearer square than circle


def test_minilm_weights_stay_out_of_the_state_dict():
    from genforge.models.text2image import TextToImageModel
    from genforge.tasks.text2image import tokenize_prompts

    m = TextToImageModel(widths=(16, 32), cross_attention=(False, True), attention_heads=2, text_dim=32,
                         image_size=16, text_encoder="minilm").eval()
    assert sum(v.numel() for v in m.state_dict().values()) < 2_000_000  # MiniLM alone is 22 M
    ids, mask = tokenize_prompts(["a crimson box", "a red square on a grey background"], {"text_encoder": "minilm"},
                                 None)
    states = m.encode_text(ids, mask)
    assert states.shape == (2, ids.shape[1], 32) and mask[0].sum() < mask[1].sum()
    x = m(torch.randn(2, 3, 16, 16), torch.tensor([3, 40]), ids, mask)
    assert x.shape == (2, 3, 16, 16) and torch.isfinite(x).all()


def test_transformer_encoder_ignores_padding():
    from genforge.text.encoders import TransformerTextEncoder

    torch.manual_seed(0)
    enc = TransformerTextEncoder(vocab_size=50, dim=32, depth=2, heads=4, context=16).eval()
    ids = torch.tensor([[1, 7, 9, 11, 2]])
    short = enc(ids, torch.ones_like(ids))
    padded_ids = torch.cat([ids, torch.tensor([[0, 0, 0]])], 1)
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0, 0]])
    long = enc(padded_ids, mask)
    other = torch.cat([ids, torch.tensor([[30, 31, 32]])], 1)  # other tokens under the mask
    assert torch.allclose(long[:, :5], short, atol=1e-5)
    assert torch.allclose(enc(other, mask)[:, :5], short, atol=1e-5)
    # and the mask is what does it: unmasked, those tokens change the real positions
    assert not torch.allclose(enc(other, torch.ones_like(mask))[:, :5], short, atol=1e-3)


def test_train_writes_tokenizer_and_load_samples_from_prompts(run, cli, tmp_path):
    import genforge

    assert (run / "tokenizer.json").is_file()
    prompts = (run / "samples" / "prompts.txt").read_text().splitlines()
    assert len(prompts) == 8 and all(p.startswith("a ") for p in prompts)
    from genforge.train.checkpoint import read_metrics

    final = read_metrics(run / "metrics.jsonl")[0][-1]  # the end-of-run verifier scores
    assert 0 <= final["verify_all_correct"] <= final["verify_background"] <= 1
    pipe = genforge.load(run, device="cpu")
    assert pipe.kind == "text2image" and pipe.tokenizer is not None
    kw = dict(prompt=PROMPT, negative_prompt="a large green star", guidance=3.0, steps=3)
    a = pipe.generate(n=3, seed=5, **kw)
    assert a.shape == (3, 3, 16, 16) and a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, pipe.generate(n=3, seed=5, **kw))  # same seed, same images
    assert not torch.equal(a, pipe.generate(n=3, seed=6, **kw))
    assert not torch.equal(a, pipe.generate(n=3, seed=5, **{**kw, "prompt": "a large white ring at the top"}))
    assert not torch.equal(a, pipe.generate(n=3, seed=5, **{**kw, "negative_prompt": None}))
    images = pipe(prompt=[PROMPT, "a small green star at the top"], n=2, seed=0, steps=2)
    assert len(images) == 2 and images[0].size == (16, 16)
    code, out, err = cli("sample", run, "--prompt", PROMPT, "-n", 4, "--guidance", 4, "--steps", 2,
                         "--grid", tmp_path / "g.png")
    assert code == 0 and (tmp_path / "g.png").is_file(), err
    code, _, err = cli("sample", run, "--labels", "1", "-n", 2, "--grid", tmp_path / "h.png")
    assert code == 2 and "prompt" in err


def test_guidance_one_is_the_plain_conditional_forward(run):
    import genforge

    pipe = genforge.load(run, device="cpu")
    m = pipe.model
    got = pipe.generate(n=2, seed=1, prompt=PROMPT, guidance=1.0, steps=3, layout="off")
    ids, mask = pipe._tokens([PROMPT] * 2)
    sched = m.make_scheduler("dpm++")
    sched.set_timesteps(3)
    x = pipe.draw_noise(2, 1) * sched.init_noise_sigma
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(m(sched.scale_model_input(x, t), t.expand(2), ids, mask), t, x).prev_sample
    assert torch.allclose(got, x.clamp(-1, 1), atol=1e-5)
    assert not torch.allclose(got, pipe.generate(n=2, seed=1, prompt=PROMPT, guidance=3.0, steps=3, layout="off"),
                              atol=1e-3)


def test_prompt_warnings_and_refusals(run):
    import genforge
    from genforge.errors import GenforgeError

    pipe = genforge.load(run, device="cpu")
    assert pipe.check_prompt(PROMPT) == []
    long = " ".join([PROMPT] * 4)
    notes = pipe.check_prompt(long)
    assert len(notes) == 1 and "cut" in notes[0] and "24" in notes[0]
    assert "'crimson'" in " ".join(pipe.check_prompt("a crimson box"))
    assert "unconditional" in pipe.check_prompt("")[0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        x = pipe.generate(n=1, prompt=long, steps=1)
    assert x.shape[0] == 1 and any("cut" in str(w.message) for w in caught)
    for bad in [dict(prompt=3), dict(prompt=["a", "b"], n=3), dict(prompt=PROMPT, guidance=float("nan")),
                dict(prompt=PROMPT, sampler="euler"), dict(prompt="x" * 5000)]:
        with pytest.raises(GenforgeError):
            pipe.generate(steps=1, **bad)


def test_tokenizer_larger_than_the_model_vocab_is_refused(tmp_path, cli):
    code, _, err = cli("train", *TINY_T2I, "model.params.vocab_size=8", "train.steps=1", "--out", tmp_path / "r")
    assert code == 2 and "vocab_size" in err


def test_text2image_resume_is_exact(tmp_path):
    cfg = load_config(None, TINY_T2I + ["train.steps=4", "train.ckpt_every=2", "train.ema_decay=0.9",
                                        "task_params.cond_drop=0.3", "task_params.eval_prompts=0"])
    assert_resume_exact(cfg, tmp_path, stop_at=2)


def test_fid_of_a_text2image_run_draws_one_image_per_reference_caption(run, monkeypatch):
    from genforge.errors import GenforgeError
    from genforge.eval.runner import fid_for_run
    from genforge.pipelines.text2image import TextToImagePipeline

    asked = []
    real_generate = TextToImagePipeline.generate

    def spy(self, *a, **kw):
        asked.append(kw.get("prompt"))
        return real_generate(self, *a, **kw)

    monkeypatch.setattr(TextToImagePipeline, "generate", spy)
    rep = fid_for_run(str(run), n=6, steps=2, device="cpu", guidance=2.0)
    test = load_config(None, TINY_T2I).data.model_copy(update={"split": "test", "limit": 6})
    from genforge.data import load_dataset
    assert asked == [load_dataset(test).column("caption")]  # the reference images' own captions
    assert rep["n_fake"] == 6 and rep["guidance"] == 2.0 and rep["prompts"] and rep["fid"] >= 0
    with pytest.raises(GenforgeError, match="no captions"):
        fid_for_run(str(run), n=6, steps=2, device="cpu", data="digits")


def test_caption_dropout_replaces_that_share_of_captions_with_the_empty_prompt(monkeypatch, tmp_path):
    """Classifier-free guidance needs the model to have seen the empty prompt: cond_drop of the
    batch's captions become "" and the rest are the items' own captions."""
    import genforge.tasks.text2image as t2i
    from genforge.data import load_dataset
    from genforge.tasks import build_task

    seen: list[list[str]] = []
    real = t2i.tokenize_prompts
    monkeypatch.setattr(t2i, "tokenize_prompts", lambda texts, *a: seen.append(list(texts)) or real(texts, *a))
    idx = torch.arange(400) % 64
    for drop in (0.0, 0.5):
        cfg = load_config(None, TINY_T2I + [f"task_params.cond_drop={drop}"])
        data = load_dataset(cfg.data)
        task = build_task(cfg, data, tmp_path / f"r{drop}")
        task.collate(data, idx, torch.Generator().manual_seed(0))
        texts = seen[-1]
        captions = data.column("caption")
        kept = [(t, int(i)) for t, i in zip(texts, idx) if t]
        assert all(t == captions[i] or t in captions[i] for t, i in kept)
        empty = 1 - len(kept) / len(texts)
        # a binomial share of 400 draws: 5 standard deviations (0.025 at p = 0.5) either side
        assert abs(empty - drop) <= 5 * (drop * (1 - drop) / len(texts)) ** 0.5
