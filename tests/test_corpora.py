"""The default corpora: OSIS stripping, mod2imp parsing, verse alignment, and `genforge data`."""
import json
import shutil

import pytest
from typer.testing import CliRunner

from genforge.cli import app
from genforge.config import DataConfig, load_config
from genforge.data import corpora, load_dataset
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


SPA_DUMP = """$$$Genesis 0:0
Prefacio
$$$Genesis 1:1
<w>En el principio</w>
$$$Genesis 1:2
Segundo <note>nota</note>versículo
$$$Exodus 1:1
vacío en inglés
$$$Exodus 1:2
sólo aquí
"""


@pytest.fixture
def fake_bibles(monkeypatch):
    """The two SWORD modules as the small dumps above, so no Debian package is needed."""
    modules = {corpora.WEB_MODULE: parse_imp(DUMP), corpora.SPARV_MODULE: parse_imp(SPA_DUMP)}
    monkeypatch.setattr(corpora, "sword_module", lambda module: modules[module])


def _build_pair(pair, out):
    r = CliRunner().invoke(app, ["data", "parallel", "--pair", pair, "--out", str(out)])
    assert r.exit_code == 0, r.output
    rows = [tuple(line.split("\t")) for line in (out / "pairs.tsv").read_text(encoding="utf-8").splitlines()]
    return rows, json.loads((out / "metadata.json").read_text(encoding="utf-8"))


def test_es_en_is_en_es_with_the_sides_swapped(fake_bibles, tmp_path):
    en_es, meta_en = _build_pair("en-es", tmp_path / "en-es")
    es_en, meta_es = _build_pair("es-en", tmp_path / "es-en")
    assert en_es == [("In the beginning", "En el principio"), ("Second line", "Segundo versículo")]
    assert es_en == [(t, s) for s, t in en_es]  # every pair reversed, nothing added or dropped
    assert (meta_en["source_lang"], meta_en["target_lang"]) == ("en", "es")
    assert (meta_es["pair"], meta_es["source_lang"], meta_es["target_lang"]) == ("es-en", "es", "en")
    for key in ("source", "license", "pairs", "dropped", "max_length_ratio"):
        assert meta_es[key] == meta_en[key], key
    assert "public domain" in meta_es["license"] and "Reina-Valera 1909" in meta_es["source"]
    # the parallel dataset reads it Spanish first and carries the pair and licence into the run
    data = load_dataset(DataConfig(name="parallel", path=str(tmp_path / "es-en"), val_fraction=0.0))
    assert data.column("source") == ["En el principio", "Segundo versículo"]
    assert data.meta["pair"] == "es-en" and data.meta["license"] == meta_es["license"]


def test_es_en_recipe_mirrors_en_es():
    en, es = load_config("translate_en_es"), load_config("translate_es_en")
    assert es.data.path == "data/parallel-es-en" and en.data.path == "data/parallel-en-es"
    assert es.model_dump(exclude={"data"}) == en.model_dump(exclude={"data"})
    assert es.data.model_dump(exclude={"path"}) == en.data.model_dump(exclude={"path"})


def _docs_tree(root):
    (root / "_sources" / "library").mkdir(parents=True)
    (root / "_sources" / "index.rst.txt").write_text("Python Docs\n===========\n\n", encoding="utf-8")
    (root / "_sources" / "library" / "os.rst.txt").write_text("\ufeff:mod:`os`\n----\n", encoding="utf-8")
    (root / "_sources" / "library" / "notes.txt").write_text("not a source", encoding="utf-8")
    (root / "_sources" / "a.rst.txt").write_bytes(b"caf\xe9\n")


def test_python_docs_builds_from_a_folder(tmp_path):
    _docs_tree(tmp_path / "html")
    out = tmp_path / "out"
    for source in (tmp_path / "html", tmp_path / "html" / "_sources"):  # the html folder or _sources
        r = CliRunner().invoke(app, ["data", "text", "--corpus", "python-docs", "--source", str(source),
                                     "--out", str(out)])
        assert r.exit_code == 0, r.output
        text = (out / "python-docs.txt").read_text(encoding="utf-8")
        # files in path order, each stripped, one blank line between them; other files are not read
        # a byte-order mark is dropped, bytes that are not UTF-8 become U+FFFD
        assert text == "caf\ufffd\n\n\nPython Docs\n===========\n\n\n:mod:`os`\n----\n"
        meta = json.loads((out / "metadata.json").read_text(encoding="utf-8"))
        assert meta["corpus"] == "python-docs" and meta["file"] == "python-docs.txt"
        assert meta["license"] == "PSF License Agreement (Python Software Foundation)"
        assert "Python documentation" in meta["source"]
        assert meta["files"] == 3 and meta["characters"] == len(text)
        assert meta["sources"] == str(tmp_path / "html" / "_sources")
    # the text dataset carries the licence into a run
    data = load_dataset(DataConfig(name="text", path=str(out), val_fraction=0.0))
    assert data.meta["license"] == meta["license"] and "Python Docs" in "".join(data.column("text"))


def test_python_docs_source_errors_are_one_line(tmp_path):
    cases = [(["--corpus", "python-docs", "--source", str(tmp_path / "none")], "is not a folder"),
             (["--corpus", "python-docs", "--source", str(tmp_path)], "no *.rst.txt files under"),
             (["--corpus", "web", "--source", str(tmp_path)], "--source applies to --corpus python-docs only")]
    for args, msg in cases:
        r = CliRunner().invoke(app, ["data", "text", *args, "--out", str(tmp_path / "x")])
        assert r.exit_code != 0 and msg in str(r.exception), (args, r.exception)
        assert not (tmp_path / "x").exists()


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
