"""Caption metrics (BLEU-1..4, CIDEr-D, exact match) and per-attribute accuracy of ``shapes`` scenes.

BLEU and CIDEr-D follow the COCO caption evaluation code (pycocoevalcap) rather than a textbook
reading, so our numbers can be put next to published captioning results: same corpus-level
aggregation, same smoothing constants, same CIDEr-D length penalty and quirks (noted where they
matter). All functions are pure: lists of strings in, floats out.

``references`` is one entry per image: a string, or a list of strings when an image has several.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any, Sequence, Union

from ..errors import GenforgeError

References = Sequence[Union[str, Sequence[str]]]
Ngrams = Counter  # tuple of words -> count

# pycocoevalcap's BLEU adds these to the clipped counts and the guesses, so that an n-gram order
# with no match gives a tiny precision instead of log(0), and an empty hypothesis no division by 0.
_TINY, _SMALL = 1e-15, 1e-9
_WORD = re.compile(r"[^\W_]+(?:-[^\W_]+)*")


def tokenize(text: str) -> list[str]:
    """Lower-cased words with punctuation dropped, as COCO's PTB tokenizer leaves captions for our
    vocabulary (hyphenated words stay whole; apostrophes split words, a harmless simplification)."""
    if not isinstance(text, str):
        raise GenforgeError(f"a caption must be a string, got {type(text).__name__}")
    return _WORD.findall(text.lower())


def normalize(text: str) -> str:
    return " ".join(tokenize(text))


def _pairs(hypotheses: Sequence[str], references: References) -> list[tuple[list[str], list[list[str]]]]:
    if isinstance(hypotheses, str):
        raise GenforgeError("hypotheses must be a list of captions, one per image, not a single string")
    if len(hypotheses) != len(references):
        raise GenforgeError(f"{len(hypotheses)} hypotheses but {len(references)} reference sets; "
                            "give one hypothesis and one reference set per image")
    out = []
    for i, (hyp, refs) in enumerate(zip(hypotheses, references)):
        refs = [refs] if isinstance(refs, str) else list(refs)
        if not refs:
            raise GenforgeError(f"image {i} has no reference caption; every image needs at least one")
        out.append((tokenize(hyp), [tokenize(r) for r in refs]))
    return out


def ngrams(words: Sequence[str], n: int = 4) -> Ngrams:
    """Counts of every 1..n-gram of ``words``."""
    return Counter(tuple(words[i:i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))


def corpus_bleu(hypotheses: Sequence[str], references: References, n: int = 4) -> dict[str, float]:
    """Corpus BLEU-1..n as pycocoevalcap's ``Bleu(4)`` computes it.

    Clipped n-gram matches (each n-gram counted at most as often as in the reference that has it most)
    and hypothesis n-gram counts are summed over the whole corpus before dividing; BLEU-k is the
    geometric mean of the first k precisions. The brevity penalty compares the corpus's hypothesis
    length with the sum over images of the reference length closest to that image's hypothesis
    (ties: the shorter).

    How it differs from sacreBLEU's ``corpus_bleu``: sacreBLEU tokenises with its 13a tokenizer and
    keeps case and punctuation tokens, smooths orders without matches its own way ('exp' by default)
    instead of adding 1e-15 / 1e-9, reports BLEU-4 only, on a 0-100 scale. Its brevity penalty also
    uses the closest reference length, so on normalised text where every order has a match the two
    agree (up to the factor 100).
    """
    if n < 1:
        raise GenforgeError(f"BLEU needs n >= 1, got {n}")
    correct, guess = [0] * n, [0] * n
    hyp_len = ref_len = 0
    for hyp, refs in _pairs(hypotheses, references):
        hyp_len += len(hyp)
        ref_len += min((abs(len(r) - len(hyp)), len(r)) for r in refs)[1]
        best: Ngrams = Counter()
        for r in refs:
            best |= ngrams(r, n)  # union of Counters keeps the maximum count per n-gram
        for gram, count in ngrams(hyp, n).items():
            correct[len(gram) - 1] += min(count, best[gram])
        for k in range(n):
            guess[k] += max(0, len(hyp) - k)
    scores, product = {}, 1.0
    ratio = (hyp_len + _TINY) / (ref_len + _SMALL)
    penalty = math.exp(1 - 1 / ratio) if ratio < 1 else 1.0
    for k in range(n):
        product *= (correct[k] + _TINY) / (guess[k] + _SMALL)
        scores[f"bleu_{k + 1}"] = product ** (1 / (k + 1)) * penalty
    return scores


def cider_d_scores(hypotheses: Sequence[str], references: References, n: int = 4,
                   sigma: float = 6.0) -> list[float]:
    """CIDEr-D per image, as pycocoevalcap's ``Cider()`` (which is CIDEr-D) computes it.

    For each n-gram order, hypothesis and reference become tf-idf vectors: raw count times
    log(number of images) - log(max(1, images whose references contain the n-gram)), document
    frequencies taken over the references of the evaluated set itself. The similarity is
    sum(min(h, r) * r) / (|h| |r|) (the min clips hypothesis counts by the reference's), times
    exp(-(len_h - len_r)^2 / (2 sigma^2)), where pycocoevalcap measures length in bigrams (words - 1,
    0 for one word). Averaged over orders and references, times 10.
    """
    pairs = _pairs(hypotheses, references)
    if not pairs:
        return []
    ref_counts = [[ngrams(r, n) for r in refs] for _, refs in pairs]
    df: Counter = Counter()
    for counts in ref_counts:
        df.update(set().union(*counts))
    log_docs = math.log(len(pairs))

    def vectors(counts: Ngrams) -> tuple[list[dict], list[float], int]:
        vec: list[dict] = [{} for _ in range(n)]
        for gram, tf in counts.items():
            vec[len(gram) - 1][gram] = tf * (log_docs - math.log(max(1.0, df[gram])))
        norms = [math.sqrt(sum(v * v for v in d.values())) for d in vec]
        bigrams = sum(counts[g] for g in vec[1]) if n > 1 else 0
        return vec, norms, bigrams

    scores = []
    for (hyp, _), counts in zip(pairs, ref_counts):
        hv, hn, hl = vectors(ngrams(hyp, n))
        total = 0.0
        for rc in counts:
            rv, rn, rl = vectors(rc)
            penalty = math.exp(-((hl - rl) ** 2) / (2 * sigma ** 2))
            for k in range(n):
                dot = sum(min(v, rv[k].get(g, 0.0)) * rv[k].get(g, 0.0) for g, v in hv[k].items())
                if hn[k] and rn[k]:
                    dot /= hn[k] * rn[k]
                total += dot * penalty
        scores.append(10.0 * total / n / len(counts))
    return scores


def cider_d(hypotheses: Sequence[str], references: References, n: int = 4, sigma: float = 6.0) -> float:
    """Corpus CIDEr-D: the mean of ``cider_d_scores`` (0 for no images)."""
    scores = cider_d_scores(hypotheses, references, n, sigma)
    return sum(scores) / len(scores) if scores else 0.0


def exact_match(hypotheses: Sequence[str], references: References) -> float:
    """Fraction of images whose normalised hypothesis equals one of its normalised references."""
    pairs = _pairs(hypotheses, references)
    return sum(hyp in refs for hyp, refs in pairs) / len(pairs) if pairs else 0.0


def caption_metrics(hypotheses: Sequence[str], references: References) -> dict[str, float]:
    """BLEU-1..4, CIDEr-D and exact match in one report."""
    return {**corpus_bleu(hypotheses, references), "cider_d": cider_d(hypotheses, references),
            "exact_match": exact_match(hypotheses, references), "n": len(hypotheses)}


# ---------------------------------------------------------------- shapes scenes

def scene_attribute_accuracy(predicted: Sequence[Any], truth: Sequence[Any]) -> dict[str, float]:
    """How well ``predicted`` shapes Scenes read ``truth``, attribute by attribute.

    shape, color, size: over the true objects, whether the prediction has an object in that cell with
    that attribute. position: over all 9 cells of every scene, whether occupied/empty agrees.
    background and count (number of objects): per scene. all_correct: the same set of objects (every
    attribute and cell) and the same background; object order is ignored, since a picture has none.
    """
    from ..data.shapes import GRID

    if len(predicted) != len(truth):
        raise GenforgeError(f"{len(predicted)} predicted scenes but {len(truth)} true ones; give one each")
    hits = Counter()
    n_obj = 0
    for pred, true in zip(predicted, truth):
        by_cell = {(o.row, o.col): o for o in pred.objects}
        for o in true.objects:
            got = by_cell.get((o.row, o.col))
            n_obj += 1
            for attr in ("shape", "color", "size"):
                hits[attr] += got is not None and getattr(got, attr) == getattr(o, attr)
        true_cells = {(o.row, o.col) for o in true.objects}
        hits["position"] += sum(((r, c) in true_cells) == ((r, c) in by_cell) for r in range(GRID) for c in range(GRID))
        hits["background"] += pred.background == true.background
        hits["count"] += len(pred.objects) == len(true.objects)
        hits["all_correct"] += pred.background == true.background and set(pred.objects) == set(true.objects)
    n = len(truth)
    if not n:
        raise GenforgeError("no scenes to score")
    return {"shape": hits["shape"] / n_obj, "color": hits["color"] / n_obj, "size": hits["size"] / n_obj,
            "position": hits["position"] / (n * GRID * GRID), "background": hits["background"] / n,
            "count": hits["count"] / n, "all_correct": hits["all_correct"] / n, "n_scenes": n, "n_objects": n_obj}
