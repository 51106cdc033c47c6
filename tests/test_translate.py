"""Translation: the parallel dataset, the seq2seq model and its cache and search, the translate task,
its pipeline, `genforge translate` and `genforge eval translate`."""
import io
import json
import random
import sys
import warnings

import pytest
import torch

import genforge
from genforge.config import DataConfig, load_config
from genforge.data import load_dataset
from genforge.errors import GenforgeError
from genforge.models.captioner import beam_search, greedy_search
from genforge.models.seq2seq import Seq2Seq
from genforge.train.trainer import Trainer

EN_ES = {"the": "el", "red": "rojo", "house": "casa", "is": "es", "big": "grande", "small": "pequeño",
         "dog": "perro", "cat": "gato", "sees": "ve", "a": "un", "green": "verde", "tree": "árbol"}
TINY = dict(vocab_size=60, d_model=32, n_layer_enc=2, n_layer_dec=2, n_head=4, d_ff=64, max_len=40)


def _pairs(n=300, seed=0):
    rng = random.Random(seed)
    words = list(EN_ES)
    out = []
    for i in range(n):
        ws = [rng.choice(words) for _ in range(rng.randint(2, 7))]
        out.append((" ".join(ws) + f" {i}.", " ".join(EN_ES[w] for w in ws) + f" {i}."))
    return out


def _write_tsv(path, pairs, extra=()):
    path.write_text("".join(f"{s}\t{t}\n" for s, t in pairs) + "".join(extra), encoding="utf-8")
    return path


def _args(path, *extra):
    return ["task=translate", "model.name=seq2seq", "model.params.vocab_size=200", "model.params.d_model=32",
            "model.params.n_layer_enc=1", "model.params.n_layer_dec=1", "model.params.n_head=2",
            "model.params.d_ff=64", "model.params.max_len=32", "data.name=parallel", f"data.path={path}",
            "data.val_fraction=0.2", "train.steps=6", "train.batch_size=16", "train.lr=3e-3",
            "train.tensorboard=false", "train.log_every=2", "task_params.eval_sentences=12", *extra]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("translate")
    tsv = _write_tsv(root / "pairs.tsv", _pairs())
    out = root / "run"
    result = Trainer(load_config(None, _args(tsv)), out).fit()
    return out, result


# -- data ------------------------------------------------------------------------------------------
def test_tsv_folder_reads_metadata_and_counts_bad_lines(tmp_path):
    pairs = _pairs(50)
    _write_tsv(tmp_path / "pairs.tsv", pairs, extra=["no tab on this line\n", "\tempty source\n",
                                                      "target empty\t  \n", "\n", "a\tb\tverse 1:1\n"])
    (tmp_path / "metadata.json").write_text(json.dumps({"source": "test bible", "license": "public domain",
                                                        "pair": "en-es"}))
    with pytest.warns(UserWarning, match=r"skipped 3 line\(s\).*1 without a tab, 2 with an empty side"):
        data = load_dataset(DataConfig(name="parallel", path=str(tmp_path), val_fraction=0.0))
    assert data.column("source") == [s for s, _ in pairs] + ["a"]
    assert data.column("target") == [t for _, t in pairs] + ["b"]  # a third column is ignored
    assert data.meta["source"] == "test bible" and data.meta["license"] == "public domain"
    assert data.meta["pair"] == "en-es" and data.meta["skipped_lines"] == 3


def test_two_aligned_files_and_their_errors(tmp_path):
    pairs = _pairs(20)
    (tmp_path / "en.txt").write_text("".join(s + "\n" for s, _ in pairs))
    (tmp_path / "es.txt").write_text("".join(t + "\n" for _, t in pairs))
    cfg = DataConfig(name="parallel", path=str(tmp_path / "en.txt"), target_path=str(tmp_path / "es.txt"),
                     val_fraction=0.0)
    data = load_dataset(cfg)
    assert list(zip(data.column("source"), data.column("target"))) == pairs
    (tmp_path / "es.txt").write_text("".join(t + "\n" for _, t in pairs[:-1]))
    with pytest.raises(GenforgeError, match=r"has 20 lines but data.target_path .* has 19"):
        load_dataset(cfg)
    with pytest.raises(GenforgeError, match="not a file"):
        load_dataset(cfg.model_copy(update={"target_path": str(tmp_path / "missing.txt")}))


def test_non_utf8_and_folder_errors_name_the_problem(tmp_path):
    (tmp_path / "bad.tsv").write_bytes("hola\tadiós\n".encode() + b"caf\xe9\tcafe\n")
    with pytest.raises(GenforgeError, match=r"bad.tsv is not UTF-8 text: byte offset 15 \(0xe9\)"):
        load_dataset(DataConfig(name="parallel", path=str(tmp_path / "bad.tsv")))
    (tmp_path / "two.tsv").write_text("a\tb\n")
    with pytest.raises(GenforgeError, match="2 .tsv files"):
        load_dataset(DataConfig(name="parallel", path=str(tmp_path)))
    with pytest.raises(GenforgeError, match="does not exist"):
        load_dataset(DataConfig(name="parallel", path=str(tmp_path / "nope")))


def test_empty_and_binary_parallel_files_are_one_line_errors_naming_the_file(cli, tmp_path):
    empty = tmp_path / "empty.tsv"
    empty.write_bytes(b"")
    nul = tmp_path / "nul.tsv"
    nul.write_bytes("hola\tadiós\n".encode() + b"a\0b\tc\n")  # decodes as UTF-8: only the NUL tells
    utf16 = tmp_path / "utf16.tsv"
    utf16.write_bytes("hello\thola\n".encode("utf-16-le"))  # a Windows "Unicode" save without a BOM
    (tmp_path / "en.txt").write_text("a\nb\n")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "pairs.tsv").write_text("\n  \n")
    cases = [((empty,), f"no sentence pairs in {empty} (empty: no lines of text)"),
             ((tmp_path / "folder",), f"no sentence pairs in {tmp_path / 'folder' / 'pairs.tsv'} (empty"),
             ((nul,), f"{nul} looks binary (NUL byte at byte offset 13)"),
             ((utf16,), f"{utf16} looks binary (NUL byte at byte offset 1)"),
             ((tmp_path / "en.txt", f"data.target_path={nul}"), f"{nul} looks binary"),
             ((empty, f"data.target_path={empty}"), f"no sentence pairs in {empty} + {empty} (empty")]
    for (path, *extra), msg in cases:
        code, out, err = cli("train", *_args(path, *extra), "--out", tmp_path / "run")
        assert code == 2 and out == "", (path, err)
        assert err.startswith("error: ") and msg in err and len(err.strip().splitlines()) == 1, err


def test_split_is_disjoint_stable_and_follows_the_source(tmp_path):
    pairs = _pairs(400)
    cfg = DataConfig(name="parallel", path=str(_write_tsv(tmp_path / "a.tsv", pairs)), val_fraction=0.2)
    train, test = load_dataset(cfg), load_dataset(cfg.model_copy(update={"split": "test"}))
    tr, te = set(train.column("source")), set(test.column("source"))
    assert not tr & te and tr | te == {s for s, _ in pairs}
    assert 0.1 < len(te) / len(pairs) < 0.3
    # more pairs (and another order) leave every old pair on its side
    more = _pairs(600, seed=1) + pairs[::-1]
    cfg2 = cfg.model_copy(update={"path": str(_write_tsv(tmp_path / "b.tsv", more))})
    assert te <= set(load_dataset(cfg2.model_copy(update={"split": "test"})).column("source"))
    assert tr <= set(load_dataset(cfg2).column("source"))


# -- model -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("positions", ["sinusoidal", "learned"])
def test_shapes_and_cached_decode_equal_full_decode(positions):
    torch.manual_seed(0)
    model = Seq2Seq(**TINY, positions=positions).eval()
    src = torch.randint(4, 60, (3, 9))
    src[1, 5:] = 0  # padding
    tgt = torch.randint(4, 60, (3, 8))
    tgt[:, 0] = 1
    with torch.no_grad():
        full = model(src, tgt)
        assert full.shape == (3, 8, 60)
        mask = model.source_mask(src)
        memory = model.encode(src, mask)
        assert memory.shape == (3, 9, 32)
        logits, cache = model.decode(tgt[:, :3], memory, mask)
        steps = [logits]
        for t in range(3, 8):
            logits, cache = model.decode(tgt[:, t:t + 1], None, mask, cache)
            steps.append(logits)
        # padding changes nothing for the real tokens: the padded sentence alone gives the same
        alone = model(src[1:2, :5], tgt[1:2])
    # float32 sums of a few dozen terms of size ~1 in another order: rounding near 1e-6
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alone, full[1:2], atol=1e-5, rtol=1e-5)


def test_beam_of_one_equals_greedy_and_beams_score_no_worse():
    torch.manual_seed(1)
    model = Seq2Seq(**TINY).eval()
    src = torch.randint(4, 60, (4, 7))
    with torch.no_grad():
        greedy = model.generate(src, beam=1, max_len=12)
        step, state = model.step_fn(src, repeat=1)
        beam1, _ = beam_search(step, state, 4, 1, 12)
        step, state = model.step_fn(src, repeat=1)
        assert torch.equal(greedy, greedy_search(step, state, 4, 12))
        wide = model.generate(src, beam=4, max_len=12)
    n = max(greedy.shape[1], beam1.shape[1])
    pad = lambda x: torch.nn.functional.pad(x, (0, n - x.shape[1]))  # noqa: E731
    assert torch.equal(pad(greedy), pad(beam1))
    assert wide.shape[0] == 4 and not bool(((wide == 0) | (wide == 1)).all())


def test_model_rejects_bad_options():
    with pytest.raises(ValueError, match="split into n_head"):
        Seq2Seq(d_model=30, n_head=4)
    with pytest.raises(ValueError, match="positions"):
        Seq2Seq(positions="rotary")


# -- task, pipeline, CLI ---------------------------------------------------------------------------
def test_training_writes_a_run_with_bleu_and_chrf(run):
    out, result = run
    assert (out / "tokenizer.json").is_file() and (out / "model.safetensors").is_file()
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 3 and all(0 < x < 10 for x in losses) and losses[-1] < losses[0]
    final = records[-1]
    assert isinstance(final["bleu"], float) and isinstance(final["chrf"], float) and final["eval_sentences"] == 12
    assert 0 <= final["bleu"] <= 100 and 0 < final["chrf"] <= 100


def test_length_buckets_change_only_the_padding(run, tmp_path):
    from genforge.config import config_from_json
    from genforge.tasks import build_task

    cfg = config_from_json(run[0] / "config.json")
    data = load_dataset(cfg.data)
    idx = torch.arange(24)
    out = {}
    for buckets in (1, 4):
        cfg_b = cfg.model_copy(update={"task_params": {**cfg.task_params, "buckets": buckets}})
        torch.manual_seed(0)  # the same initial weights for both
        task = build_task(cfg_b, data, run_dir=run[0])  # reads the run's tokenizer.json
        task.model.eval()  # no dropout: the two losses must see the same network
        batch = task.collate(data, idx, torch.Generator().manual_seed(0))
        out[buckets] = task.step(batch, lambda name, loss: None)
        if buckets == 4:  # the slices are trimmed: less padding than the one padded batch
            assert sum((b - a) * wt for a, b, _, wt in batch["slices"]) < len(idx) * batch["target"].shape[1]
    # the same token losses summed in another grouping: float32 rounding only
    for key in ("loss", "nll", "token_acc"):
        torch.testing.assert_close(out[1][key], out[4][key], atol=1e-5, rtol=1e-5)


class _FixedLogits(torch.nn.Module):
    """Stands in for the seq2seq model: the same logits whatever the input."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, src, tgt_in):
        return self.logits


def test_label_smoothing_is_the_nll_uniform_mixture(tmp_path):
    import math

    from genforge.tasks import build_task
    from genforge.text.tokenizer import BOS, EOS, PAD

    tsv = _write_tsv(tmp_path / "p.tsv", _pairs(60))
    # targets (after [BOS]) over a 5-token vocabulary: 5 real tokens, one padding position
    target = torch.tensor([[BOS, 3, 4, EOS], [BOS, 4, EOS, PAD]])
    logits = torch.tensor([[[0.5, -1.0, 2.0, 0.3, -0.7], [1.5, 0.0, -2.0, 0.8, 2.5], [-0.3, 0.4, 1.1, -1.2, 0.0]],
                           [[2.0, 1.0, 0.0, -1.0, 3.0], [0.1, -0.4, 0.9, 1.7, -2.2], [9.0, -9.0, 9.0, -9.0, 9.0]]])
    batch = {"source": torch.tensor([[5, EOS], [6, EOS]]), "target": target, "truncated": torch.tensor(0.0)}
    # by hand, in float64: -log p_k = logsumexp(z) - z_k; uniform cross-entropy = the mean over all classes
    nll, uniform, terms = [], [], 0.0
    for row, tgt in zip(logits.double().tolist(), target[:, 1:].tolist()):
        for z, y in zip(row, tgt):
            if y == PAD:
                continue  # the padded position (its extreme logits) must not count
            lse = math.log(sum(math.exp(v) for v in z))
            nll.append(lse - z[y])
            uniform.append(sum(lse - v for v in z) / len(z))
            terms = max(terms, *(lse - v for v in z))
    n = len(nll)
    assert n == 5
    # float32: each of the ~n * (V + 1) summed terms (none above `terms`) rounds by a few eps of its size
    tol = 4 * n * (len(logits[0, 0]) + 1) * terms * torch.finfo(torch.float32).eps / n
    for eps in (0.0, 0.1, 0.3):
        cfg = load_config(None, _args(tsv, f"task_params.label_smoothing={eps}", "task_params.eval_sentences=0"))
        task = build_task(cfg, load_dataset(cfg.data))
        task.nets["model"] = _FixedLogits(logits)
        out = task.step(batch, lambda name, loss: None)
        want = sum((1 - eps) * a + eps * b for a, b in zip(nll, uniform)) / n
        assert abs(float(out["loss"]) - want) <= tol, (eps, float(out["loss"]), want, tol)
        assert abs(float(out["nll"]) - sum(nll) / n) <= tol  # the reported nll is never smoothed
        if eps:  # the check can tell the two apart
            assert abs(want - sum(nll) / n) > 100 * tol


def test_pipeline_translates_in_order_and_batching_changes_nothing(run):
    pipe = genforge.load(run[0], device="cpu")
    texts = ["the red dog 5.", "a cat", "", "the big green tree sees a small house 12."]
    one = pipe.translate(texts, beam=1, batch_size=1)
    assert pipe.translate(texts, beam=1, batch_size=4) == one
    assert one[2] == "" and all(isinstance(t, str) for t in one)
    assert pipe.translate(texts[0], beam=1) == one[0]
    assert isinstance(pipe.translate(texts[3], beam=3, length_penalty=0.6, max_len=8), str)
    with pytest.raises(GenforgeError, match="beam must be"):
        pipe.translate("a", beam=0)
    with pytest.raises(GenforgeError, match="texts\\[1\\] must be a string"):
        pipe.translate(["a", 3])


def test_cli_translate_text_file_and_stdin(run, cli, tmp_path, monkeypatch):
    out = run[0]
    pipe = genforge.load(out, device="cpu")
    lines = ["the red dog 5.", "", "a green cat 7.", "the house is big 9."]
    want = pipe.translate(lines, beam=2)
    code, text, _ = cli("translate", lines[0], "--model", out, "--beam", "2", "--device", "cpu")
    assert code == 0 and text == want[0] + "\n"
    f = tmp_path / "in.txt"
    f.write_text("\n".join(lines) + "\n", encoding="utf-8")
    code, text, _ = cli("translate", "--file", f, "-m", out, "--beam", "2", "--batch-size", "2",
                        "--device", "cpu")
    assert code == 0 and text.split("\n")[:-1] == want
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(("\n".join(lines)).encode())))
    code, text, _ = cli("translate", "-", "-m", out, "--beam", "2", "--device", "cpu")
    assert code == 0 and text.split("\n")[:-1] == want
    # without --model: the shipped translator, or a one-line way to get one
    import genforge.pipelines as pipelines

    monkeypatch.setattr(pipelines, "ASSETS_DIR", tmp_path / "no-assets")
    code, _, err = cli("translate", "hi", "--device", "cpu")
    assert code == 2 and "no translator is installed" in err and "genforge train translate_en_es" in err
    (tmp_path / "no-assets").mkdir()
    (tmp_path / "no-assets" / "mine").symlink_to(out)
    code, text, _ = cli("translate", lines[0], "--beam", "2", "--device", "cpu")
    assert code == 0 and text == want[0] + "\n"


def test_cli_eval_translate_prints_sacrebleu_signatures(run, cli):
    code, text, _ = cli("eval", "translate", run[0], "-n", "5", "--beam", "2", "--device", "cpu")
    assert code == 0
    assert "BLEU = " in text and "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp" in text
    assert "chrF = " in text and "nc:6|nw:0" in text
    code, text, _ = cli("eval", "translate", run[0], "-n", "5", "--beam", "1", "--json", "--device", "cpu")
    report = json.loads(text)
    assert code == 0 and report["sentences"] == 5 and report["beam"] == 1
    assert set(report) >= {"bleu", "chrf", "bleu_signature", "chrf_signature", "sentences_per_s", "examples"}


def test_bad_input_is_one_line_and_exit_2(run, cli, tmp_path):
    out = run[0]
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"caf\xe9\n")
    cases = [
        (("translate", "x", "-m", out, "--beam", "0"), "beam must be"),
        (("translate", "x", "-m", out, "--file", bad), "either TEXT or --file"),
        (("translate", "-m", out, "--file", bad), "byte offset 3"),
        (("translate", "-m", out, "--file", tmp_path / "none.txt"), "no such file"),
        (("translate", "-m", out), "nothing to translate"),
        (("translate", "x", "-m", tmp_path), "not a genforge run directory"),
        (("eval", "translate", out, "-n", "0"), "-n must be at least 1"),
    ]
    for args, msg in cases:
        code, text, err = cli(*args)
        assert code == 2 and text == "", args
        assert err.startswith("error: ") and msg in err and len(err.strip().splitlines()) == 1, err
    (tmp_path / "en.txt").write_text("a\nb\n")
    (tmp_path / "es.txt").write_text("x\n")
    code, _, err = cli("train", *_args(tmp_path / "en.txt", f"data.target_path={tmp_path / 'es.txt'}"),
                       "--out", tmp_path / "r")
    assert code == 2 and "has 2 lines but data.target_path" in err and len(err.strip().splitlines()) == 1
    tsv = _write_tsv(tmp_path / "ok.tsv", _pairs(60))
    code, _, err = cli("train", *_args(tsv, "task_params.max_len=99"), "--out", tmp_path / "r2")
    assert code == 2 and "task_params.max_len" in err


def test_resume_is_exact(tmp_path):
    from conftest import assert_resume_exact

    tsv = _write_tsv(tmp_path / "p.tsv", _pairs(120))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = load_config(None, _args(tsv, "train.steps=4", "train.log_every=1", "task_params.eval_sentences=0",
                                      "train.ckpt_every=2", "model.params.dropout=0.1"))
        assert_resume_exact(cfg, tmp_path, stop_at=2)
