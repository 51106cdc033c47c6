"""Caption metrics against values worked out by hand, and shapes attribute accuracy."""
import math
import sys

import pytest

from genforge.data.shapes import Obj, Scene
from genforge.errors import GenforgeError
from genforge.eval.text_metrics import (caption_metrics, cider_d, cider_d_scores, corpus_bleu, exact_match,
                                        scene_attribute_accuracy, tokenize)

# The smoothing constants are added to ratios of small integers, so results agree with the exact
# fractions to about 1e-9 relative; 1e-7 leaves room without hiding a wrong count.
REL = 1e-7
# A CIDEr-D score is a few dozen float operations: logs, square roots, one exp and sums of fewer than
# twenty non-negative terms, so nothing cancels and each step adds at most a few ulp (libm's log and
# exp may differ by one between platforms). 4096 eps (about 9e-13) bounds that with a wide margin and
# is still far below any change a wrong count or weight makes (>= 1e-3 here).
CIDER_ROUNDING = 4096 * sys.float_info.epsilon


def test_tokenize_lowercases_and_drops_punctuation():
    assert tokenize("A small red Circle, above a large-ish square.") == \
        ["a", "small", "red", "circle", "above", "a", "large-ish", "square"]


def test_bleu_one_image_clipped_precisions_and_brevity_penalty():
    hyp = "a red circle above a blue square"                 # 7 words
    ref = "a small red circle above a large blue square"     # 9 words
    # 1-grams: a x2 (ref has 2), red, circle, above, blue, square -> 7 of 7 match
    # 2-grams: a-red, red-circle, circle-above, above-a, a-blue, blue-square -> 4 of 6 in ref
    # 3-grams: red-circle-above, circle-above-a match -> 2 of 5
    # 4-grams: red-circle-above-a matches -> 1 of 4
    # hypothesis shorter than the reference: BP = exp(1 - 9/7)
    bp = math.exp(1 - 9 / 7)
    p = [7 / 7, 4 / 6, 2 / 5, 1 / 4]
    got = corpus_bleu([hyp], [ref])
    for k in range(4):
        want = math.prod(p[:k + 1]) ** (1 / (k + 1)) * bp
        assert got[f"bleu_{k + 1}"] == pytest.approx(want, rel=REL)


def test_bleu_is_corpus_level_with_several_references_and_closest_length():
    hyps = ["a red circle", "blue blue blue square"]
    refs = [["a red circle", "a big red circle at the top"],   # lengths 3, 7: closest to 3 is 3
            ["a blue square", "the blue square on the left"]]  # lengths 3, 6: closest to 4 is 3
    # image 1: 1-grams 3/3, 2-grams 2/2, 3-grams 1/1, no 4-gram
    # image 2: 'blue' x3 clipped to 1 (no reference has it twice) + square -> 2/4;
    #          2-grams blue-blue x2, blue-square -> 1/3; 3-grams 0/2; 4-grams 0/1
    # corpus: correct [5, 3, 1, 0] of guesses [7, 5, 3, 1]; length 7 vs effective reference 6: no penalty
    got = corpus_bleu(hyps, refs)
    assert got["bleu_1"] == pytest.approx(5 / 7, rel=REL)
    assert got["bleu_2"] == pytest.approx((5 / 7 * 3 / 5) ** 0.5, rel=REL)
    assert got["bleu_3"] == pytest.approx((5 / 7 * 3 / 5 * 1 / 3) ** (1 / 3), rel=REL)
    # no 4-gram matched anywhere: pycocoevalcap's precision is (0 + 1e-15) / (1 + 1e-9)
    assert got["bleu_4"] == pytest.approx((5 / 7 * 3 / 5 * 1 / 3 * 1e-15 / (1 + 1e-9)) ** 0.25, rel=1e-6)
    # corpus-level is not the mean of per-image scores (image 1 alone scores BLEU-1 = 1)
    assert got["bleu_1"] != pytest.approx((1 + 2 / 4) / 2)


def test_bleu_closest_reference_length_ties_go_to_the_shorter():
    # refs of 3 and 5 words are both 1 away from 4: the shorter (3) is taken, so no brevity penalty;
    # taking 5 would multiply by exp(1 - 5/4)
    got = corpus_bleu(["a b c d"], [["a b c", "a b c d e"]])
    assert got["bleu_1"] == pytest.approx(1.0, rel=REL)


def test_bleu_longer_hypothesis_is_not_penalised_but_loses_precision():
    # 5 words vs a 3-word reference: no brevity penalty, unigram precision 3/5
    assert corpus_bleu(["a red red red circle"], ["a red circle"])["bleu_1"] == pytest.approx(3 / 5, rel=REL)


def test_bleu_edge_cases():
    # empty hypothesis: the brevity penalty exp(1 - 3/1e-15) is 0
    assert corpus_bleu([""], ["a red circle"]) == {f"bleu_{k}": 0.0 for k in range(1, 5)}
    # no overlap at all: (1e-15) / (2 + 1e-9) per order
    assert corpus_bleu(["green star"], ["red circle"])["bleu_1"] < 1e-12
    # case and punctuation do not count; a 3-word caption has no 4-gram, so BLEU-4 is (1e-15/1e-9)^(1/4)
    got = corpus_bleu(["A red circle."], ["a red circle"])
    assert got["bleu_3"] == pytest.approx(1.0, rel=REL)
    assert got["bleu_4"] == pytest.approx(1e-6 ** 0.25, rel=1e-6)


def test_cider_d_two_images_by_hand():
    # 2 images, so idf = log 2 - log(df). Reference documents: {red, circle, red-circle} and
    # {blue, circle, blue-circle}: 'circle' is in both (idf 0), every other n-gram has idf L = log 2;
    # 'square' is in no reference, and df is floored at 1, so it also weighs L.
    # image 1 'red circle' vs 'red circle': 1-gram vectors {red: L, circle: 0} equal -> cosine 1;
    #   2-grams equal -> 1; no 3- or 4-grams -> 0; equal lengths -> penalty 1. 10 * (1+1+0+0)/4 = 5
    # image 2 'blue square' vs 'blue circle': 1-grams h={blue: L, square: L} (norm L*sqrt2),
    #   r={blue: L, circle: 0} (norm L): sum min(h,r)*r = L^2 -> 1/sqrt2; 2-grams differ -> 0.
    #   10 * (1/sqrt2)/4
    scores = cider_d_scores(["red circle", "blue square"], ["red circle", "blue circle"])
    assert scores == pytest.approx([5.0, 2.5 / math.sqrt(2)], rel=CIDER_ROUNDING)
    assert cider_d(["red circle", "blue square"], ["red circle", "blue circle"]) == \
        pytest.approx((5.0 + 2.5 / math.sqrt(2)) / 2, rel=CIDER_ROUNDING)


def test_cider_d_clipping_length_penalty_and_several_references():
    # every reference n-gram is in one document of 2, so every weight is L = log 2 (L cancels)
    # image 1: hyp 'red circle red circle' against 'red circle' and 'green star'
    #   1-grams h={red: 2L, circle: 2L} (norm 2L*sqrt2), r={red: L, circle: L} (norm L*sqrt2):
    #     clipped sum min(h,r)*r = 2 L^2 -> 2/4 = 0.5 (unclipped it would be 1)
    #   2-grams h={red-circle: 2L, circle-red: L} (norm L*sqrt5), r={red-circle: L}: L^2 -> 1/sqrt5
    #   3-, 4-grams: the reference has none -> 0
    #   lengths in bigrams 3 vs 1: penalty exp(-(3-1)^2 / (2*6^2)) = exp(-1/18)
    #   'green star' shares nothing -> 0; the mean over 2 references and 4 orders, times 10
    # image 2: 'green star' vs 'blue ring' -> 0
    scores = cider_d_scores(["red circle red circle", "green star"], [["red circle", "green star"], ["blue ring"]])
    want = 10 * (0.5 + 1 / math.sqrt(5)) * math.exp(-1 / 18) / 4 / 2
    assert scores == pytest.approx([want, 0.0], rel=CIDER_ROUNDING, abs=CIDER_ROUNDING)


def test_cider_d_edge_cases():
    assert cider_d_scores([""], ["a red circle"]) == [0.0]          # empty hypothesis
    assert cider_d([], []) == 0.0
    # one image: log(1) - log(1) = 0 weights everything to nothing, as in pycocoevalcap
    assert cider_d(["a red circle"], ["a red circle"]) == 0.0


def test_exact_match_and_report():
    hyps = ["A red circle.", "a blue square"]
    refs = [["a red circle", "a circle"], "a green square"]
    assert exact_match(hyps, refs) == 0.5
    report = caption_metrics(hyps, refs)
    assert report["exact_match"] == 0.5 and report["n"] == 2
    assert set(report) >= {"bleu_1", "bleu_4", "cider_d"}


@pytest.mark.parametrize("hyps,refs,needle", [
    (["a"], [], "1 hypotheses but 0"),
    (["a"], [[]], "no reference caption"),
    ("a red circle", ["a red circle"], "not a single string"),
    ([3], ["a"], "must be a string"),
])
def test_bad_inputs_are_clear_errors(hyps, refs, needle):
    with pytest.raises(GenforgeError, match=needle):
        corpus_bleu(hyps, refs)


def test_scene_attribute_accuracy_by_hand():
    truth = [Scene((Obj("circle", "red", "large", 0, 0), Obj("square", "blue", "small", 1, 1))),
             Scene((Obj("star", "green", "small", 2, 2),), background="grey")]
    pred = [Scene((Obj("circle", "red", "small", 0, 0), Obj("square", "blue", "small", 1, 1))),  # size wrong
            Scene((Obj("star", "green", "small", 2, 1),), background="grey")]                    # cell wrong
    got = scene_attribute_accuracy(pred, truth)
    # 3 true objects: the moved star is missing from its cell, so it fails shape, colour and size
    assert got["shape"] == pytest.approx(2 / 3) and got["color"] == pytest.approx(2 / 3)
    assert got["size"] == pytest.approx(1 / 3)
    # cells: scene 1 all 9 agree; scene 2 disagrees on (2,2) and (2,1) -> 16/18
    assert got["position"] == pytest.approx(16 / 18)
    assert (got["background"], got["count"], got["all_correct"]) == (1.0, 1.0, 0.0)
    # object order is not part of a picture
    swapped = Scene(tuple(reversed(truth[0].objects)))
    assert scene_attribute_accuracy([swapped], truth[:1])["all_correct"] == 1.0
