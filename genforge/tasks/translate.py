"""Translation: label-smoothed cross-entropy on teacher-forced target sentences, sacreBLEU BLEU and
chrF on held-out pairs.

One tokenizer is trained on both sides of the training pairs (a joint vocabulary for the
seq2seq model's shared embedding) and kept as tokenizer.json in the run directory. The trainer
picks a step's pairs by count; the task sorts them by length and runs them as ``buckets`` slices,
each padded only to its own longest sentence, with one backward pass over the sum of their token
losses: verse lengths vary about 10x, and one batch padded to its longest verse spent about two
thirds of its compute on padding. Sentences longer than ``max_len`` tokens are cut; how many is
warned once and logged per step (``truncated``).
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F

from ..data import Examples, load_dataset
from ..errors import GenforgeError
from ..registry import register_task
from ..text.tokenizer import BOS, EOS, FILENAME, KINDS, PAD, TextTokenizer, tokenizer_for
from . import Task

MAX_BEAM = 16


def check_decoding(beam: Any, length_penalty: Any = 1.0, max_len: Any = None, batch_size: Any = 32) -> None:
    """One-line errors for decoding settings that cannot be used."""
    if isinstance(beam, bool) or not isinstance(beam, int) or not 1 <= beam <= MAX_BEAM:
        raise GenforgeError(f"beam must be an integer from 1 (greedy) to {MAX_BEAM}, got {beam!r}")
    if isinstance(length_penalty, bool) or not isinstance(length_penalty, (int, float)) \
            or not 0 <= length_penalty <= 5:
        raise GenforgeError(f"length_penalty must be a number from 0 (rank beams by total log-probability) "
                            f"to 5, got {length_penalty!r}")
    if max_len is not None and (isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 2):
        raise GenforgeError(f"max_len must be an integer of at least 2 tokens ([BOS] and one more), got "
                            f"{max_len!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise GenforgeError(f"batch_size must be a positive integer, got {batch_size!r}")


def pad_rows(rows: Sequence[Sequence[int]]) -> torch.Tensor:
    out = torch.full((len(rows), max(map(len, rows), default=1)), PAD, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, :len(r)] = torch.tensor(r, dtype=torch.long)
    return out


def source_rows(tokenizer: TextTokenizer, texts: Sequence[str], max_len: int) -> tuple[list[list[int]], int]:
    """Source ids ending in [EOS], cut to ``max_len`` tokens, and how many were cut."""
    rows, cut = [], 0
    for enc in tokenizer.tok.encode_batch(list(texts), add_special_tokens=False):
        ids = enc.ids
        if len(ids) > max_len - 1:
            ids, cut = ids[:max_len - 1], cut + 1
        rows.append(ids + [EOS])
    return rows, cut


@torch.no_grad()
def translate_texts(model, tokenizer: TextTokenizer, texts: Sequence[str], beam: int = 4,
                    length_penalty: float = 1.0, max_len: Optional[int] = None,
                    batch_size: int = 32) -> list[str]:
    """Translations of ``texts``, in order. Sentences are decoded ``batch_size`` at a time in order of
    length, so a batch holds similar lengths. Without ``max_len`` a translation may be up to twice
    its source's tokens (rounded up to a multiple of 8) plus 10, within the model's max_len, so an
    untrained model ends quickly; a batch then holds one such length class only, so a sentence's
    translation never depends on the other sentences decoded with it."""
    check_decoding(beam, length_penalty, max_len, batch_size)
    device = next(model.parameters()).device
    rows, cut = source_rows(tokenizer, texts, model.max_len)
    if cut:
        warnings.warn(f"{cut} source sentence(s) longer than the model's {model.max_len}-token context were "
                      f"cut to fit")
    def limit(i: int) -> int:
        return max_len if max_len is not None else min(model.max_len, 2 * -(-len(rows[i]) // 8) * 8 + 10)

    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    batches: list[list[int]] = []
    for i in order:
        if not batches or len(batches[-1]) == batch_size or limit(batches[-1][0]) != limit(i):
            batches.append([])
        batches[-1].append(i)
    out: list[str] = [""] * len(rows)
    was = model.training
    model.eval()
    try:
        for part in batches:
            src = pad_rows([rows[j] for j in part]).to(device)
            ids = model.generate(src, beam=beam, max_len=limit(part[0]), length_penalty=float(length_penalty))
            for j, row in zip(part, ids.cpu()):
                out[j] = tokenizer.decode(row)
    finally:
        model.train(was)
    return out


def translation_metrics(hyps: Sequence[str], refs: Sequence[str]) -> dict[str, Any]:
    """sacreBLEU's corpus BLEU and chrF (default settings: 13a tokenisation, chrF with n=6, beta=2),
    with their signature strings, so the numbers can be put next to published ones."""
    from sacrebleu.metrics import BLEU, CHRF

    bleu, chrf = BLEU(), CHRF()
    b, c = bleu.corpus_score(list(hyps), [list(refs)]), chrf.corpus_score(list(hyps), [list(refs)])
    return {"bleu": round(float(b.score), 2), "chrf": round(float(c.score), 2),
            "bleu_signature": str(bleu.get_signature()), "chrf_signature": str(chrf.get_signature())}


def held_out_pairs(data_cfg, n: int = 0) -> Examples:
    """The run's test pairs (its data.path with split=test); ``n`` > 0: the first n of them."""
    if data_cfg.val_fraction == 0:
        raise GenforgeError("the run held no pairs out (data.val_fraction=0): there is nothing unseen to score")
    return load_dataset(data_cfg.model_copy(update={"split": "test", "limit": n or None}))


def translation_report(model, tokenizer: TextTokenizer, data_cfg, n: int = 500, beam: int = 4,
                       length_penalty: float = 1.0, batch_size: int = 32,
                       pairs: Optional[Examples] = None) -> dict[str, Any]:
    """BLEU and chrF of ``model`` on up to ``n`` held-out pairs, the decoding speed and 3 examples."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise GenforgeError(f"-n must be at least 1 held-out pair, got {n!r}")
    check_decoding(beam, length_penalty, None, batch_size)
    data = pairs if pairs is not None else held_out_pairs(data_cfg, n)
    src, refs = list(data.column("source"))[:n], list(data.column("target"))[:n]
    t0 = time.perf_counter()
    hyps = translate_texts(model, tokenizer, src, beam=beam, length_penalty=length_penalty, batch_size=batch_size)
    seconds = time.perf_counter() - t0
    return {"beam": beam, "length_penalty": length_penalty, "sentences": len(src),
            **translation_metrics(hyps, refs), "sentences_per_s": round(len(src) / max(seconds, 1e-9), 2),
            "examples": [{"source": s, "translation": h, "reference": r}
                         for s, h, r in list(zip(src, hyps, refs))[:3]]}


@register_task("translate")
class TranslateTask(Task):
    models = ("seq2seq",)
    needs = ("source", "target")

    def __init__(self, cfg, data=None, run_dir=None, tokenizer: str = "bpe", max_len: Optional[int] = None,
                 label_smoothing: float = 0.1, eval_sentences: int = 500, eval_beam: int = 1,
                 lowercase: bool = False, buckets: int = 4):
        super().__init__(cfg, data, run_dir)
        if tokenizer not in KINDS:
            raise GenforgeError(f"task_params.tokenizer={tokenizer!r} is unknown; choose one of: {', '.join(KINDS)}")
        model_len = int(self.model.max_len)
        if max_len is not None and (isinstance(max_len, bool) or not isinstance(max_len, int)
                                    or not 3 <= max_len <= model_len):
            raise GenforgeError(f"task_params.max_len must be an integer from 3 to model.params.max_len="
                                f"{model_len}, got {max_len!r}")
        if not isinstance(label_smoothing, (int, float)) or not 0 <= label_smoothing < 1:
            raise GenforgeError(f"task_params.label_smoothing must be in [0, 1), got {label_smoothing!r}")
        if isinstance(eval_sentences, bool) or not isinstance(eval_sentences, int) or eval_sentences < 0:
            raise GenforgeError(f"task_params.eval_sentences must be 0 (no evaluation) or more, got "
                                f"{eval_sentences!r}")
        check_decoding(eval_beam)
        if isinstance(buckets, bool) or not isinstance(buckets, int) or buckets < 1:
            raise GenforgeError(f"task_params.buckets must be a positive integer, got {buckets!r}")
        self.buckets = buckets
        self.max_len = max_len or model_len
        self.label_smoothing, self.eval_sentences, self.eval_beam = float(label_smoothing), eval_sentences, eval_beam
        self._ids: tuple[int, Any] = (-1, None)
        fresh = data is not None and (run_dir is None or not (Path(run_dir) / FILENAME).is_file())
        texts = None if data is None else list(data.column("source")) + list(data.column("target"))
        # trained, not yet written: a run refused by a check below leaves no file behind
        self.tokenizer: Optional[TextTokenizer] = tokenizer_for(
            texts, None if fresh else run_dir, kind=tokenizer, vocab_size=self.model.vocab_size,
            lowercase=lowercase)
        self.held_out: Optional[Examples] = None
        if data is not None and eval_sentences and cfg.data.val_fraction > 0:
            # loaded now, so a corpus too small to hold pairs out fails before training, not after
            self.held_out = held_out_pairs(cfg.data, eval_sentences)
        if data is not None:
            src, tgt = self.ids(data)
            cut = sum(len(s) > self.max_len - 1 for s in src) + sum(len(t) > self.max_len - 2 for t in tgt)
            if cut:
                warnings.warn(f"{cut} of {2 * len(src)} training sentences are longer than task_params.max_len="
                              f"{self.max_len} tokens and will be cut")
        if fresh and run_dir is not None:
            Path(run_dir).mkdir(parents=True, exist_ok=True)
            self.tokenizer.save(Path(run_dir) / FILENAME)

    def ids(self, data: Examples) -> tuple[list[list[int]], list[list[int]]]:
        if self._ids[0] != id(data):  # tokenised once per dataset, not per step
            enc = self.tokenizer.tok.encode_batch
            self._ids = (id(data), tuple([e.ids for e in enc(list(data.column(c)), add_special_tokens=False)]
                                         for c in ("source", "target")))
        return self._ids[1]

    def collate(self, data, idx, generator):
        src_all, tgt_all = self.ids(data)
        # longest first (the order is a pure function of the pairs, so a resumed run replays it)
        order = sorted(idx.tolist(), key=lambda i: (-max(len(src_all[i]), len(tgt_all[i])), i))
        src, tgt, cut = [], [], 0
        for i in order:
            s, t = src_all[i], tgt_all[i]
            cut += (len(s) > self.max_len - 1) + (len(t) > self.max_len - 2)
            src.append(s[:self.max_len - 1] + [EOS])
            tgt.append([BOS] + t[:self.max_len - 2] + [EOS])
        n = len(order)
        bounds = sorted({round(k * n / self.buckets) for k in range(self.buckets + 1)})
        # each slice's widths, so step() trims its padding without reading tensors back from the device
        widths = [(max(len(r) for r in src[a:b]), max(len(r) for r in tgt[a:b]))
                  for a, b in zip(bounds, bounds[1:])]
        return {"source": pad_rows(src), "target": pad_rows(tgt), "truncated": torch.tensor(float(cut)),
                "slices": [(a, b, ws, wt) for (a, b), (ws, wt) in zip(zip(bounds, bounds[1:]), widths)]}

    def step(self, batch, optimize):
        from torch.nn.parallel import DistributedDataParallel

        net, loss, nll, hits = self.nets["model"], 0, 0, 0
        tokens = (batch["target"][:, 1:] != PAD).sum().clamp(min=1)
        slices = batch.get("slices")
        if not slices or isinstance(net, DistributedDataParallel):
            # DDP readies its gradient reduction once per forward: one forward per backward there
            slices = [(0, len(batch["source"]), None, None)]
        for a, b, ws, wt in slices:
            src, tgt = batch["source"][a:b, :ws], batch["target"][a:b, :wt]
            logits = net(src, tgt[:, :-1])
            flat, target = logits.reshape(-1, logits.shape[-1]).float(), tgt[:, 1:].reshape(-1)
            loss = loss + F.cross_entropy(flat, target, ignore_index=PAD, label_smoothing=self.label_smoothing,
                                          reduction="sum")
            with torch.no_grad():
                nll = nll + F.cross_entropy(flat, target, ignore_index=PAD, reduction="sum")
                hits = hits + ((flat.argmax(-1) == target) & (target != PAD)).sum()
        loss = loss / tokens
        optimize("model", loss)
        return {"loss": loss.detach(), "nll": nll / tokens, "token_acc": hits / tokens,
                "truncated": batch["truncated"]}

    def evaluate(self, model):
        if self.held_out is None:
            return {}
        report = translation_report(model, self.tokenizer, self.cfg.data, n=self.eval_sentences,
                                    beam=self.eval_beam, pairs=self.held_out)
        return {"bleu": float(report["bleu"]), "chrf": float(report["chrf"]),
                "eval_sentences": float(report["sentences"])}
