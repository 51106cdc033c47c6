"""Language modelling: the text dataset, the GPT model and its cache, sampling controls, the lm task,
its pipeline and `genforge write`."""
import math
import warnings

import pytest
import torch

from conftest import assert_resume_exact
from genforge.config import DataConfig, load_config
from genforge.data import load_dataset
from genforge.data.text import chunks
from genforge.models.gpt import GPT, filter_logits, pick, stream_ids
from text_runs import LM_TINY, lm_args, word_corpus


# -- data ----------------------------------------------------------------------------------------
def test_chunks_rejoin_to_the_text_and_end_at_lines():
    lines = "".join(f"line {i} " * (i % 9) + "\n" for i in range(200))
    text = lines + "x" * 3000
    parts = chunks(text, size=64)
    assert "".join(parts) == text
    assert all(p.endswith("\n") for p in chunks(lines, size=64)) and len(chunks(lines, size=64)) > 10
    # lines are added until a chunk reaches 64 characters, and no line kept whole is over 128
    assert max(map(len, parts)) < 64 + 2 * 64


def test_text_split_is_disjoint_and_skips_non_utf8(tmp_path):
    word_corpus(tmp_path / "a.txt")
    (tmp_path / "sub").mkdir()
    word_corpus(tmp_path / "sub" / "b.md", lines=120)
    (tmp_path / "bad.txt").write_bytes(b"caf\xe9 latin-1\n")
    (tmp_path / "ignored.csv").write_text("not text for us\n")
    cfg = DataConfig(name="text", path=str(tmp_path), val_fraction=0.3)
    with pytest.warns(UserWarning, match=r"skipped 1 file"):
        train = load_dataset(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        test = load_dataset(cfg.model_copy(update={"split": "test"}))
        everything = load_dataset(cfg.model_copy(update={"val_fraction": 0.0}))
    tr, te = train.column("text"), test.column("text")
    assert tr and te and not set(tr) & set(te)
    assert sorted(tr + te) == sorted(everything.column("text"))
    assert 0.1 < len(te) / len(everything) < 0.5
    assert train.meta["license"] == "user-supplied" and train.meta["skipped_files"] == 1
    assert not any("not text for us" in t for t in everything.column("text"))


# -- model -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_cached_forward_and_generation_equal_uncached(positions):
    torch.manual_seed(0)
    model = GPT(**LM_TINY, positions=positions).eval()
    ids = torch.randint(4, 40, (2, 12))
    with torch.no_grad():
        full = model(ids)
        logits, past = model(ids[:, :5], use_cache=True)
        steps = [logits]
        for t in range(5, 12):
            logits, past = model(ids[:, t:t + 1], past=past, use_cache=True)
            steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-4)
    # 30 new tokens after 4: the context passes block_size (16), where the cache gives way to windows
    prompt = ids[:, :4]
    cached = torch.stack(list(stream_ids(model, prompt, 30, temperature=0)), 1)
    plain = torch.stack(list(stream_ids(model, prompt, 30, temperature=0, use_cache=False)), 1)
    assert torch.equal(cached, plain)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a = torch.stack(list(stream_ids(model, prompt, 30, temperature=1.0, generator=g1)), 1)
    b = torch.stack(list(stream_ids(model, prompt, 30, temperature=1.0, generator=g2, use_cache=False)), 1)
    assert torch.equal(a, b)


@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_future_tokens_do_not_change_past_logits(positions):
    torch.manual_seed(1)
    model = GPT(**LM_TINY, positions=positions).eval()
    ids = torch.randint(4, 40, (1, 16))
    changed = ids.clone()
    changed[0, 9:] = (changed[0, 9:] + 7) % 40
    with torch.no_grad():
        a, b = model(ids), model(changed)
    torch.testing.assert_close(a[:, :9], b[:, :9], atol=1e-6, rtol=0)
    assert (a[:, 9:] - b[:, 9:]).abs().max() > 1e-3


def test_weight_tying_shares_one_matrix_and_survives_save(tmp_path):
    from genforge.train.checkpoint import load_weights, save_tensors

    tied, untied = GPT(**LM_TINY), GPT(**LM_TINY, tie_weights=False)
    assert tied.head.weight is tied.wte.weight
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert count(untied) - count(tied) == LM_TINY["vocab_size"] * LM_TINY["n_embd"]
    save_tensors(tmp_path / "m.safetensors", tied.state_dict())
    back = GPT(**LM_TINY)
    load_weights(back, tmp_path / "m.safetensors")
    assert back.head.weight is back.wte.weight and torch.equal(back.wte.weight, tied.wte.weight)


def test_bad_model_shapes_are_refused():
    with pytest.raises(ValueError, match="n_head"):
        GPT(n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="positions"):
        GPT(positions="alibi")
    with pytest.raises(ValueError, match="context"):
        GPT(**LM_TINY)(torch.zeros(1, 17, dtype=torch.long))


# -- sampling controls ------------------------------------------------------------------------------
def test_top_k_one_is_greedy_and_top_p_keeps_the_smallest_set():
    logits = torch.randn(8, 50, generator=torch.Generator().manual_seed(0))
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        assert torch.equal(pick(logits, 1.5, 1, 1.0, g), logits.argmax(-1))
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    kept = lambda p: torch.isfinite(filter_logits(probs.log(), top_p=p)).nonzero()[:, 1].tolist()
    assert kept(0.1) == [0]           # the likeliest token alone reaches 0.1
    assert kept(0.79) == [0, 1]       # 0.5 < 0.79 <= 0.5 + 0.3
    assert kept(0.81) == [0, 1, 2]
    assert kept(1.0) == [0, 1, 2, 3]
    # the kept tokens' renormalised probabilities are their share of the kept mass
    torch.testing.assert_close(filter_logits(probs.log(), top_p=0.79).softmax(-1),
                               torch.tensor([[0.625, 0.375, 0.0, 0.0]]))
    # top_k first, then top_p among what is left
    both = filter_logits(probs.log(), top_k=2, top_p=0.95)
    assert torch.isfinite(both).nonzero()[:, 1].tolist() == [0, 1]


# -- task, pipeline, CLI -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    from genforge.train.trainer import Trainer

    root = tmp_path_factory.mktemp("lm")
    word_corpus(root / "corpus.txt")
    cfg = load_config(None, lm_args(root / "corpus.txt", "train.steps=40"))
    result = Trainer(cfg, root / "run").fit()
    return root / "run", result


def test_training_lowers_the_loss_and_reports_perplexity(lm_run):
    from genforge.train.checkpoint import read_metrics

    run, result = lm_run
    rows = read_metrics(run / "metrics.jsonl")[0]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert (run / "tokenizer.json").is_file()
    # a char model starts near log(vocab in use) and must beat it clearly after 40 steps
    assert losses[0] > losses[-1] + 0.5
    m = result["metrics"]
    assert m["val_ppl"] == pytest.approx(math.exp(m["val_loss"]), rel=1e-9) and m["val_tokens"] > 0


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size():
    from genforge.tasks.lm import perplexity

    model = GPT(**LM_TINY)
    with torch.no_grad():
        model.head.weight.zero_()  # zero logits everywhere: every token has probability 1/V
    out = perplexity(model, torch.randint(4, 40, (75,)), batch_size=2)
    assert out["val_tokens"] == 74
    assert out["val_loss"] == pytest.approx(math.log(LM_TINY["vocab_size"]), rel=1e-6)
    assert out["val_ppl"] == pytest.approx(LM_TINY["vocab_size"], rel=1e-5)


def test_pipeline_seed_greedy_stream_and_stop(lm_run):
    import genforge

    pipe = genforge.load(lm_run[0])
    kw = dict(max_tokens=40, temperature=1.0, top_k=0, top_p=1.0)
    a = pipe.generate("alpha ", seed=1, **kw)
    assert a == pipe.generate("alpha ", seed=1, **kw) and len(a) > 0
    assert "".join(pipe.stream("alpha ", seed=1, **kw)) == a
    assert a != pipe.generate("alpha ", seed=2, **kw) or a != pipe.generate("alpha ", seed=3, **kw)
    greedy = pipe.generate("alpha ", max_tokens=30, temperature=0)
    assert greedy == pipe.generate("alpha ", max_tokens=30, temperature=0.7, top_k=1, seed=5)
    # a stop string ends the text just before its first occurrence, even across token boundaries
    stop = a[len(a) // 2: len(a) // 2 + 2]
    cut = pipe.generate("alpha ", seed=1, stop=["\x00never", stop], **kw)
    assert cut == a[:a.find(stop)]
    pieces = list(pipe.stream("alpha ", seed=1, stop=[stop], **kw))
    assert "".join(pieces) == cut


def test_train_with_cli_then_write_prints_text(cli, tmp_path):
    word_corpus(tmp_path / "c.txt")
    code, out, err = cli("train", *lm_args(tmp_path / "c.txt"), "--out", tmp_path / "run")
    assert code == 0, err
    code, out, err = cli("write", tmp_path / "run", "beta ", "--max-tokens", "12", "--temperature", "0")
    assert code == 0, err
    import genforge

    expected = genforge.load(tmp_path / "run").generate("beta ", max_tokens=12, temperature=0)
    assert out == expected + "\n" and expected
    code, out, err = cli("eval", "perplexity", tmp_path / "run")
    assert code == 0, err
    assert '"val_ppl"' in out


@pytest.mark.parametrize("option", [["--temperature", "-0.5"], ["--top-p", "0"], ["--top-p", "1.5"],
                                    ["--max-tokens", "0"], ["--top-k", "-1"]])
def test_write_refuses_bad_sampling_values(cli, lm_run, option):
    code, out, err = cli("write", lm_run[0], "alpha", *option)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1


def test_bad_lm_configs_exit_2(cli, tmp_path):
    word_corpus(tmp_path / "c.txt", lines=3)
    one = "train.batch_size=1"  # three lines are a single chunk
    code, _, err = cli("train", *lm_args(tmp_path / "c.txt", "task_params.tokenizer=bpe", one), "--out",
                       tmp_path / "r1")
    assert code == 2 and "bytebpe" in err
    code, _, err = cli("train", *lm_args(tmp_path / "nowhere.txt", one), "--out", tmp_path / "r2")
    assert code == 2 and "does not exist" in err
    code, _, err = cli("train", *lm_args(tmp_path / "c.txt", "data.val_fraction=0",
                                          "model.params.block_size=512", one), "--out", tmp_path / "r3")
    assert code == 2 and "block_size" in err, err
    # refused after its tokenizer was trained: still nothing written, so the same --out works next time
    assert not (tmp_path / "r3").exists()


def test_resume_is_exact(tmp_path):
    word_corpus(tmp_path / "c.txt")
    cfg = load_config(None, lm_args(tmp_path / "c.txt", "train.steps=4", "model.params.dropout=0.1",
                                     "task_params.eval_tokens=0"))
    assert_resume_exact(cfg, tmp_path, stop_at=2)


def test_write_without_a_run_uses_the_shipped_model_and_reads_stop_escapes(cli, lm_run):
    import genforge

    code, out, err = cli("write", "And God said", "--max-tokens", "6", "--temperature", "0")
    assert code == 0, err
    assert out == genforge.load("gpt-web").generate("And God said", max_tokens=6, temperature=0) + "\n"
    # --stop reads backslash escapes: the first character the model writes, typed as \xNN, ends the
    # text before it (read literally, four characters that never come, it would not)
    full = genforge.load(lm_run[0]).generate("alpha", max_tokens=20, temperature=0)
    assert full
    code, out, err = cli("write", "--model", lm_run[0], "alpha", "--max-tokens", "20", "--temperature", "0",
                         "--stop", f"\\x{ord(full[0]):02x}")
    assert code == 0, err
    assert out == "\n"
    code, out, err = cli("write", lm_run[0], "alpha", "extra")
    assert code == 2 and "one prompt" in err
