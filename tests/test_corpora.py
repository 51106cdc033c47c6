"""The default corpora: OSIS stripping, mod2imp parsing, verse alignment, and `genforge data`."""
import json
import shutil

import pytest
from typer.testing import CliRunner

from genforge.cli import app
from genforge.data import corpora
from genforge.data.corpora import align_pairs, parse_imp, strip_osis, web_text

OSIS = ('<w lemma="strong:H0430">In</w> <w>the</w> <w>beginning</w>, <w>God</w><note placement="foot">'
        '<reference type="annotateRef">1:1 </reference>The Hebrew word rendered “God” is Elohim.</note>'
        '<w>created</w> the <title type="psalm">A Psalm &amp; song</title>heavens &amp; earth.<milestone/>')


def test_strip_osis_drops_notes_and_titles_and_keeps_words_apart():
    assert strip_osis(OSIS) == "In the beginning, God created the heavens & earth."
    assert strip_osis('<title level="1"/>Plain') == "Plain"  # a self-closing title drops only itself


DUMP = """$$$[ Module Heading ]
<milestone/>
$$$Genesis 0:0
Preface text
$$$Genesis 1:1
<w>In the beginning</w>
$$$Genesis 1:2
Second
line
$$$Exodus 1:1
<note>only a note</note>
"""


def test_parse_imp_keeps_references_in_order():
    e = parse_imp(DUMP)
    assert list(e) == ["Genesis 0:0", "Genesis 1:1", "Genesis 1:2", "Exodus 1:1"]
    assert e["Genesis 1:2"] == "Second\nline"


def test_web_text_has_chapter_headings_and_one_verse_per_line():
    text, verses = web_text(parse_imp(DUMP))
    assert verses == 2  # the :0 preface and the note-only verse are not verses of text
    assert text == "Genesis 1\nIn the beginning\nSecond line\n"


def test_align_pairs_by_reference_and_length_ratio():
    src = {"A 1:0": "intro", "A 1:1": "one two three", "A 1:2": "four", "A 1:3": "a much longer verse here",
           "A 1:4": "<note>x</note>"}
    tgt = {"A 1:1": "uno dos tres", "A 1:2": "cuatro cuatro cuatro cuatro", "A 1:3": "uno dos tres cuatro",
           "A 1:4": "vacío", "A 1:9": "sólo aquí"}
    pairs, dropped = align_pairs(src, tgt, max_ratio=1.8)
    assert pairs == [("one two three", "uno dos tres"), ("a much longer verse here", "uno dos tres cuatro")]
    assert dropped == {"only_one_side": 2, "empty": 1, "length_ratio": 1}


def test_unknown_corpus_and_pair_are_one_line_errors(tmp_path):
    r = CliRunner().invoke(app, ["data", "text", "--corpus", "nope", "--out", str(tmp_path / "x")])
    assert r.exit_code != 0 and "choose one of: web, python-docs" in str(r.exception or r.output)
    assert not (tmp_path / "x").exists()
    r = CliRunner().invoke(app, ["data", "parallel", "--pair", "en-xx", "--out", str(tmp_path / "y")])
    assert r.exit_code != 0 and not (tmp_path / "y").exists()


def test_missing_mod2imp_names_the_package(monkeypatch, tmp_path):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(Exception, match="libsword-utils"):
        corpora.build_text("web", tmp_path / "web")
    assert not (tmp_path / "web").exists()


needs_sword = pytest.mark.skipif(shutil.which("mod2imp") is None, reason="libsword-utils not installed")


@needs_sword
def test_real_bibles_build_and_align(tmp_path):
    r = CliRunner().invoke(app, ["data", "parallel", "--pair", "en-es", "--out", str(tmp_path / "p")])
    assert r.exit_code == 0, r.output
    meta = json.loads((tmp_path / "p" / "metadata.json").read_text())
    lines = (tmp_path / "p" / "pairs.tsv").read_text(encoding="utf-8").splitlines()
    assert len(lines) == meta["pairs"] > 25_000 and all(line.count("\t") == 1 for line in lines)
    assert "public domain" in meta["license"]
    john = [line for line in lines if line.startswith("For God so loved the world")]
    assert john and "Porque de tal manera amó Dios al mundo" in john[0]
    r = CliRunner().invoke(app, ["data", "text", "--corpus", "web", "--out", str(tmp_path / "t")])
    assert r.exit_code == 0, r.output
    text = (tmp_path / "t" / "web.txt").read_text(encoding="utf-8")
    assert text.startswith("Genesis 1\nIn the beginning, God created the heavens and the earth.\n")
    assert "<" not in text and 4_000_000 < len(text) < 6_000_000
