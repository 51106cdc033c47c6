"""The run's tokenizer: trained with the tokenizers library, kept as tokenizer.json, read back the same."""
import json

import pytest
import torch

from genforge.errors import GenforgeError
from genforge.text import BOS, EOS, PAD, UNK, TextTokenizer, caption_texts, tokenizer_for

CAPTIONS = ["a small red circle at the top left",
            "a large blue square above a small green ring",
            "a small orange triangle to the left of a large green ring, which is below a large white star",
            "a large yellow star in the centre on a grey background"]


@pytest.mark.parametrize("kind,vocab", [("bpe", 300), ("bytebpe", 400), ("char", 100)])
def test_every_kind_round_trips_its_training_text(kind, vocab):
    tok = TextTokenizer.train(CAPTIONS * 3, kind=kind, vocab_size=vocab)
    ids = tok.batch(CAPTIONS, max_length=256)
    assert ids[:, 0].eq(BOS).all()
    for row, text in zip(ids, CAPTIONS):
        assert tok.decode(row) == text
        n = int((row != PAD).sum())
        assert row[n - 1] == EOS and row[n:].eq(PAD).all()


def test_bpe_gives_each_caption_word_one_token_and_flags_unknown_characters():
    tok = TextTokenizer.train(CAPTIONS, kind="bpe", vocab_size=500)
    words = "a small red circle above a large blue square".split()
    assert len(tok.encode(" ".join(words))) == len(words)
    # "x" and "!" never occur in the captions: the only pieces without a token
    assert tok.unknown_words("a crimson box!") == ["x", "!"]
    assert UNK in tok.encode("box")
    # a byte-level vocabulary has a token for every byte: nothing is unknown
    assert TextTokenizer.train(CAPTIONS, kind="bytebpe", vocab_size=400).unknown_words("a crimson box!") == []


def test_long_text_is_cut_to_the_context_with_one_warning():
    tok = TextTokenizer.train(CAPTIONS, kind="bpe", vocab_size=300)
    with pytest.warns(UserWarning, match="cut to fit"):
        ids = tok.batch([CAPTIONS[2], CAPTIONS[0]], max_length=6)
    assert ids.shape == (2, 6)
    assert ids[0, -1] == EOS and ids[0, 0] == BOS
    assert ids.dtype == torch.long


def test_tokenizer_for_trains_once_and_a_resumed_run_reads_the_saved_file(tmp_path):
    first = tokenizer_for(CAPTIONS, tmp_path, vocab_size=300)
    saved = (tmp_path / "tokenizer.json").read_text()
    assert json.loads(saved)["model"]["type"] == "BPE"
    # other texts, same run directory: the saved ids win, so the weights keep meaning the same words
    again = tokenizer_for(["completely different words entirely"], tmp_path, vocab_size=300)
    assert again.encode(CAPTIONS[1]) == first.encode(CAPTIONS[1])
    assert (tmp_path / "tokenizer.json").read_text() == saved


def test_bad_tokenizer_input_is_a_clear_error(tmp_path):
    with pytest.raises(GenforgeError, match="no text"):
        TextTokenizer.train(["", "  "])
    with pytest.raises(GenforgeError, match="unknown tokenizer kind"):
        TextTokenizer.train(CAPTIONS, kind="wordpiece")
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(GenforgeError, match="not a readable tokenizer"):
        TextTokenizer.load(tmp_path)
    with pytest.raises(GenforgeError, match="no tokenizer"):
        TextTokenizer.load(tmp_path / "missing")


def test_caption_columns_with_several_captions_per_image_flatten():
    assert caption_texts(["a", ["b", "c"], "d"]) == ["a", "b", "c", "d"]


def test_tokenizer_for_refuses_more_tokens_than_the_model_reads_before_writing(tmp_path):
    # bpe keeps every character it saw, so its alphabet cannot be cut to the cap: refused, and no
    # file is left to block the next try
    with pytest.raises(GenforgeError, match="raise model.params.vocab_size to at least"):
        tokenizer_for(CAPTIONS, tmp_path / "new", kind="bpe", vocab_size=8)
    assert not (tmp_path / "new" / "tokenizer.json").exists()
    # a saved file from a bigger run is refused too, and left as it was
    tokenizer_for(CAPTIONS, tmp_path, vocab_size=300)
    saved = (tmp_path / "tokenizer.json").read_text()
    with pytest.raises(GenforgeError, match="tokenizer.json has"):
        tokenizer_for(CAPTIONS, tmp_path, vocab_size=20)
    assert (tmp_path / "tokenizer.json").read_text() == saved
    # no text and no saved file (a task built outside a run): no tokenizer
    assert tokenizer_for(None, tmp_path / "empty") is None
