"""Language-model evaluation (bits per character / byte, `genforge eval text`), GPT presets, and bad input
for `genforge write`, the lm pipeline and the `text` dataset."""
import json
import math
import sys
import warnings

import pytest
import torch

from genforge.config import DataConfig, load_config
from genforge.data import load_dataset
from genforge.errors import GenforgeError
from genforge.models.gpt import GPT, pick
from genforge.tasks.lm import bits_per_unit, score_text, scored_text
from genforge.text.tokenizer import TextTokenizer
from text_runs import LM_TINY, lm_args, word_corpus

#: bits_per_unit is two divisions of inputs that are themselves one or two correctly rounded operations
#: away from exact, so a handful of float64 roundings bound its error
ROUNDING = 8 * sys.float_info.epsilon


def _lm_args(corpus, *extra):  # 6 steps and a longer held-out text than lm_args' defaults
    return lm_args(corpus, "train.steps=6", "task_params.eval_tokens=300", *extra)


# -- bits per character / byte -------------------------------------------------------------------------
def test_bits_per_unit_by_hand():
    # 10 nats over 5 characters: 10 / 0.693147... / 5
    assert bits_per_unit(10.0, 5) == pytest.approx(2.8853900817779268, rel=ROUNDING)
    # ln 2 nats per unit is one bit per unit; 3 ln 256 nats over 3 bytes is 8 bits per byte
    assert bits_per_unit(4 * math.log(2), 4) == pytest.approx(1.0, rel=ROUNDING)
    assert bits_per_unit(3 * math.log(256), 3) == pytest.approx(8.0, rel=ROUNDING)
    with pytest.raises(GenforgeError, match="no characters"):
        bits_per_unit(1.0, 0)


def test_scored_text_is_exactly_the_text_after_the_first_token():
    texts = ["héllo wörld\n", "naïve café\n"]
    char = TextTokenizer.train(texts, kind="char", vocab_size=64, lowercase=False)
    ids, text = scored_text(char, texts)
    assert text == "".join(texts)[1:] and len(ids) == len("".join(texts))
    ids, text = scored_text(char, texts, max_tokens=3)
    assert len(ids) == 4 and text == "éll" and len(text.encode()) == 4
    # across the boundary between two texts
    ids, text = scored_text(char, texts, max_tokens=14)
    assert text == "éllo wörld\nnaï"
    # byte-level BPE: whatever the first token covers, the rest is the scored text
    byte = TextTokenizer.train(texts * 5, kind="bytebpe", vocab_size=300, lowercase=False)
    ids, text = scored_text(byte, texts)
    first = byte.tok.decode(ids[:1].tolist())
    assert first + text == "".join(texts) and len(ids) < len("".join(texts).encode())


def test_uniform_model_scores_log2_vocab_bits_per_character():
    texts = ["abcab cba\n", "ccb ä\n"]
    tok = TextTokenizer.train(texts, kind="char", vocab_size=40, lowercase=False)
    model = GPT(**LM_TINY)
    with torch.no_grad():
        model.head.weight.zero_()  # every token has probability 1/40
    out = score_text(model, tok, texts, batch_size=1)
    scored = "".join(texts)[1:]
    assert out["val_tokens"] == out["val_chars"] == len(scored) and out["val_bytes"] == len(scored) + 1
    assert out["val_bpc"] == pytest.approx(math.log2(40), rel=1e-6)
    assert out["val_bpb"] == pytest.approx(math.log2(40) * len(scored) / (len(scored) + 1), rel=1e-6)
    assert out["val_loss"] == pytest.approx(math.log(40), rel=1e-6)


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    from genforge.train.trainer import Trainer

    root = tmp_path_factory.mktemp("lm-eval")
    word_corpus(root / "corpus.txt")
    result = Trainer(load_config(None, _lm_args(root / "corpus.txt")), root / "run").fit()
    return root / "run", result


def test_final_evaluation_reports_bits_per_character_and_byte(lm_run):
    m = lm_run[1]["metrics"]
    # ASCII text and a char tokenizer: one token per character per byte
    assert m["val_tokens"] == m["val_chars"] == m["val_bytes"] == 300
    assert m["val_bpc"] == pytest.approx(m["val_loss"] / math.log(2), rel=1e-9)
    assert m["val_bpb"] == pytest.approx(m["val_bpc"], rel=ROUNDING)  # the same sum over equal counts


def test_eval_text_cli_plain_json_and_perplexity_alias(cli, lm_run):
    run = lm_run[0]
    code, out, err = cli("eval", "text", run, "-n", "300", "--json")
    assert code == 0, err
    r = json.loads(out)
    assert r["split"] == "test" and r["val_tokens"] == 300
    assert r["val_bpc"] == pytest.approx(lm_run[1]["metrics"]["val_bpc"], rel=1e-5)
    code, out, err = cli("eval", "text", run, "--split", "train", "-n", "100")
    assert code == 0, err
    assert "bits/character" in out and "bits/byte" in out and "100 tokens" in out
    code, out, err = cli("eval", "perplexity", run, "--max-tokens", "300")
    assert code == 0, err
    assert json.loads(out)["val_ppl"] == pytest.approx(r["val_ppl"], rel=1e-9)
    for bad in (["--split", "dev"], ["-n", "-1"]):
        code, out, err = cli("eval", "text", run, *bad)
        assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err


# -- bad input for write / the pipeline -------------------------------------------------------------
def test_long_prompt_is_cut_from_the_left_with_a_warning(cli, lm_run):
    import genforge

    pipe = genforge.load(lm_run[0], device="cpu")
    long = "alpha beta line 1.\n" * 3  # 57 characters, context 16
    with pytest.warns(UserWarning, match=r"57 tokens.*context of 16.*last 16"):
        a = pipe.generate(long, max_tokens=10, temperature=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert a == pipe.generate(long[-16:], max_tokens=10, temperature=0)
    code, out, err = cli("write", lm_run[0], long, "--max-tokens", "10", "--temperature", "0")
    assert code == 0 and out == a + "\n"
    assert err.startswith("warning: the prompt is 57 tokens") and len(err.strip().splitlines()) == 1


def test_sampling_limits_and_tiny_temperatures(cli, lm_run):
    import genforge

    pipe = genforge.load(lm_run[0], device="cpu")
    for kw in (dict(max_tokens=10 ** 6), dict(max_tokens=8193), dict(temperature=float("inf")),
               dict(temperature=float("nan")), dict(temperature=-1.0)):
        with pytest.raises(GenforgeError):
            pipe.generate("alpha", **kw)
    code, out, err = cli("write", lm_run[0], "alpha", "--max-tokens", "100000")
    assert code == 2 and out == "" and "8192" in err and len(err.strip().splitlines()) == 1
    # a temperature too small for float32 division is still a valid (near-greedy) temperature
    greedy = pipe.generate("alpha ", max_tokens=20, temperature=0)
    assert pipe.generate("alpha ", max_tokens=20, temperature=1e-30, top_k=0, top_p=1.0) == greedy
    logits = torch.tensor([[3.0, 1.0, -2.0]])
    assert pick(logits, 1e-38, 0, 0.5, torch.Generator().manual_seed(0)).tolist() == [0]


# -- bad files in `text` data --------------------------------------------------------------------
def _load(path, **kw):
    return load_dataset(DataConfig(name="text", path=str(path), val_fraction=0.0, **kw))


def test_binary_and_non_utf8_files_are_named_with_their_byte_offset(tmp_path):
    word_corpus(tmp_path / "good.txt", lines=40)
    (tmp_path / "latin.txt").write_bytes(b"plain start, then caf\xe9\n")
    (tmp_path / "blob.md").write_bytes(b"PK\x03\x04\x00\x00binary")
    with pytest.warns(UserWarning) as got:
        data = _load(tmp_path)
    msg = str(got[0].message)
    assert "skipped 2 file(s)" in msg and "blob.md looks binary (NUL byte at byte offset 4)" in msg
    assert data.meta["skipped_files"] == 2 and data.meta["files"] == 1
    with pytest.raises(GenforgeError, match=r"latin.txt is not UTF-8 \(byte 0xe9 at byte offset 21\)"):
        _load(tmp_path / "latin.txt")


def test_empty_files_missing_files_and_byte_order_marks(tmp_path):
    (tmp_path / "a.txt").write_text("")
    (tmp_path / "b.txt").write_text("  \n\n")
    with pytest.raises(GenforgeError, match=r"2 file\(s\) are empty"):
        _load(tmp_path)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.csv").write_text("a,b\n")
    with pytest.raises(GenforgeError, match=r"no \.txt/\.md files under"):
        _load(tmp_path / "other")
    (tmp_path / "bom.txt").write_bytes("\ufeffhello\n".encode("utf-8"))
    assert _load(tmp_path / "bom.txt").column("text") == ["hello\n"]


def test_bad_data_exits_2_in_the_cli(cli, tmp_path):
    (tmp_path / "only.txt").write_bytes(b"\xff\xfeh\x00i\x00")
    code, out, err = cli("train", *_lm_args(tmp_path / "only.txt"), "--out", tmp_path / "run")
    assert code == 2 and "only.txt" in err and "byte offset" in err
    assert not (tmp_path / "run").exists()


# -- presets ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset,params", [("tiny", 836_736), ("mini", 2_755_008), ("small", 6_426_880)])
def test_presets_have_their_documented_sizes(preset, params):
    model = GPT(preset=preset)
    assert sum(p.numel() for p in model.parameters()) == params
    # the sizes given beside a preset win over it
    assert GPT(preset=preset, block_size=32, n_layer=1).block_size == 32


def test_default_is_tiny_and_a_bad_preset_is_a_one_line_error():
    from genforge.registry import MODELS

    assert sum(p.numel() for p in GPT().parameters()) == 836_736
    with pytest.raises(GenforgeError, match="preset must be one of tiny, mini, small"):
        MODELS.build("gpt", preset="huge")
