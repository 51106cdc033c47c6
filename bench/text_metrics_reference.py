"""genforge.eval.text_metrics against the COCO caption evaluation code itself, on random caption sets.

pycocoevalcap is not a genforge dependency (its PTB tokenizer and METEOR need Java); its BLEU and
CIDEr scorers are pure Python, so a copy installed anywhere will do:

    pip install --target /tmp/pce --no-deps pycocoevalcap
    PYTHONPATH=/tmp/pce .venv/bin/python bench/text_metrics_reference.py [--trials 200]

Both sides get the same normalised text (ours: lowercase, punctuation dropped), so any difference is
in the scoring. Writes bench/results/text_metrics_reference.json.
"""
from __future__ import annotations

import argparse
import random
import sys

from common import save


def random_corpus(rng: random.Random) -> tuple[list[str], list[list[str]]]:
    from genforge.data.shapes import scene_for_item

    words = "a the red blue small large circle square above below on grey background left of".split()
    hyps, refs = [], []
    for _ in range(rng.randint(1, 12)):
        if rng.random() < 0.5:  # shapes captions, sometimes with the hypothesis among the references
            scene = scene_for_item(rng.randrange(10**6))
            hyps.append(scene.caption())
            refs.append([scene_for_item(rng.randrange(10**6)).caption() for _ in range(rng.randint(1, 3))]
                        + [scene.caption()] * rng.randint(0, 1))
        else:  # word salad of assorted lengths: partial overlaps, repeats, one-word captions
            hyps.append(" ".join(rng.choice(words) for _ in range(rng.randint(1, 10))))
            refs.append([" ".join(rng.choice(words) for _ in range(rng.randint(1, 12)))
                         for _ in range(rng.randint(1, 4))])
    return hyps, refs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=200)
    args = ap.parse_args()
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
    except ImportError:
        sys.exit("pycocoevalcap is not importable; see this script's docstring")
    from genforge.eval.text_metrics import cider_d_scores, corpus_bleu, normalize

    rng = random.Random(0)
    worst_bleu = worst_cider = 0.0
    for _ in range(args.trials):
        hyps, refs = random_corpus(rng)
        gts = {i: [normalize(r) for r in rs] for i, rs in enumerate(refs)}
        res = {i: [normalize(h)] for i, h in enumerate(hyps)}
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        _, cider = Cider().compute_score(gts, res)
        ours = corpus_bleu(hyps, refs)
        worst_bleu = max(worst_bleu, *(abs(bleu[k] - ours[f"bleu_{k + 1}"]) for k in range(4)))
        worst_cider = max(worst_cider, *(abs(a - b) for a, b in zip(cider, cider_d_scores(hyps, refs))))
    save("text_metrics_reference", {"trials": args.trials, "max_abs_diff_bleu_1_to_4": worst_bleu,
                                     "max_abs_diff_cider_d_per_image": worst_cider})


if __name__ == "__main__":
    main()
