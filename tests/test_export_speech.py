"""ONNX export of speech runs (genforge/export_speech.py): the in-graph length regulator and inverse STFT
against the PyTorch originals, the exported files under onnxruntime at other lengths and batches than
the trace's, the README's code, and the error cases. The runs are the tiny ones of speech_runs.py."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from speech_runs import speech_runs  # noqa: E402,F401

from genforge.errors import GenforgeError  # noqa: E402
from genforge.export import export_run, onnx_tolerance  # noqa: E402
from genforge.export_speech import AcousticGraph, VocoderGraph, acoustic_inputs, mel_inputs  # noqa: E402
from genforge.models.tts import FastSpeech  # noqa: E402
from genforge.models.vocoder import VocosGenerator  # noqa: E402

ort = pytest.importorskip("onnxruntime")


def _session(path: Path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


# ---- the graphs in PyTorch, against the modules they restate -------------------------------------
@pytest.mark.parametrize("n_fft,hop", [(1024, 256), (512, 128), (256, 100)])
def test_vocoder_graph_is_istft(n_fft, hop):
    torch.manual_seed(0)
    gen = VocosGenerator(n_mels=20, dim=8, hidden=16, layers=1, n_fft=n_fft, hop_length=hop).eval()
    mel = torch.randn(2, 20, 17) - 3
    with torch.no_grad():
        ref, got = gen(mel), VocoderGraph(gen)(mel)
    assert got.shape == ref.shape == (2, 16 * hop)
    assert float((got - ref).abs().max()) < 1e-5
    assert float(ref.abs().max()) > 1e-3  # not comparing silence


def test_acoustic_graph_is_infer(tmp_path):
    torch.manual_seed(0)
    model = FastSpeech(vocab_size=12, dim=16, heads=2, enc_layers=1, dec_layers=1, ffn=16,
                       predictor_hidden=8, num_speakers=3).eval()
    with torch.no_grad():
        # durations of 1-5 frames, so the regulator has something to repeat
        model.duration.out.bias.fill_(1.2)
        inputs = acoustic_inputs(model, [6, 11, 3], seed=4)
        for rate, shift in ((1.0, 0.0), (0.7, 5.0)):
            ref, ref_lens = model.infer(inputs["ids"], rate=rate, pitch_shift=shift, speaker=inputs["speaker"])
            mel, lens = AcousticGraph(model)(inputs["ids"], torch.tensor(rate), torch.tensor(shift),
                                             inputs["speaker"])
            assert torch.equal(lens, ref_lens) and mel.shape == ref.shape
            assert float((mel - ref).abs().max()) < 1e-5
    assert int(ref_lens.max()) > 11  # phonemes were repeated
    # exported with the speaker input; export_acoustic checks it against infer at other lengths
    from genforge.export_speech import export_acoustic

    meta = export_acoustic(model, tmp_path / "a.onnx")
    assert "speaker" in meta["inputs"] and meta["checked"]["max_abs_diff_vs_pytorch"] < 1e-4
    feed = {k: v.numpy() for k, v in inputs.items()}
    feed["rate"], feed["pitch_shift"] = np.array(0.7, np.float32), np.array(5.0, np.float32)
    mel, lens = _session(tmp_path / "a.onnx").run(None, feed)
    assert np.array_equal(lens, ref_lens.numpy()) and np.abs(mel - ref.numpy()).max() <= onnx_tolerance(ref)


# ---- exported runs -------------------------------------------------------------------------------
def test_export_tts_run_with_its_vocoder(speech_runs, tmp_path, cli):
    from genforge.pipelines.speech import load_speech

    out = tmp_path / "voice"
    code, stdout, err = cli("export", speech_runs["tts"], out)  # onnx: the default for speech runs
    assert code == 0, err
    assert "acoustic.onnx + vocoder.onnx" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "acoustic.onnx", "genforge.json",
                                                    "phonemes.json", "vocoder.onnx"]
    meta = json.loads((out / "genforge.json").read_text())
    assert meta["task"] == "tts" and meta["sample_rate"] == 22050
    assert set(meta["files"]) == {"acoustic.onnx", "vocoder.onnx"}

    pipe = load_speech(speech_runs["tts"], device="cpu")
    # two rows of other lengths than the trace's (12 and 9), the second padded
    rows = [pipe.inventory.encode(p) for p in ("abcdefgahbc", "hgfe")]
    ids = torch.zeros(2, len(rows[0]), dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, :len(r)] = torch.tensor(r)
    feed = {"ids": ids.numpy(), "rate": np.array(1.1, np.float32), "pitch_shift": np.array(-2.0, np.float32)}
    mel, lens = _session(out / "acoustic.onnx").run(None, feed)
    with torch.no_grad():
        ref, ref_lens = pipe.model.infer(ids, rate=1.1, pitch_shift=-2.0)
    assert np.array_equal(lens, ref_lens.numpy()) and mel.shape == tuple(ref.shape)
    assert np.abs(mel - ref.numpy()).max() <= onnx_tolerance(ref)

    # the vocoder on the second row alone, cut to its length: PyTorch's speech for that sentence
    row = mel[1:, :, :lens[1]]
    wav = _session(out / "vocoder.onnx").run(None, {"mel": row})[0][0]
    ref_wav = pipe.vocode(torch.from_numpy(row[0]))
    assert wav.shape == ref_wav.shape == ((lens[1] - 1) * 256,)
    assert np.abs(wav - ref_wav).max() <= 1e-4


def test_export_vocoder_run(speech_runs, tmp_path):
    import genforge

    out = tmp_path / "voc"
    summary = export_run(speech_runs["vocoder"], out, "onnx")
    assert "vocoder.onnx" in summary
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "genforge.json", "vocoder.onnx"]
    voc = genforge.load(speech_runs["vocoder"], device="cpu")
    mel = mel_inputs(voc.model.n_mels, 4, 33, seed=7)["mel"]
    got = _session(out / "vocoder.onnx").run(None, {"mel": mel.numpy()})[0]
    with torch.no_grad():
        ref = voc.model(mel)  # torch.istft
    assert got.shape == tuple(ref.shape) == (4, 32 * 256)
    assert np.abs(got - ref.numpy()).max() <= onnx_tolerance(ref)
    readme = (out / "README.md").read_text()
    assert "vocoder.onnx" in readme and "(frames - 1) * 256" in readme


def _espeak() -> bool:
    try:
        from genforge.speech.frontend import phonemize

        return bool(phonemize(["hi"])[0])
    except Exception:  # noqa: BLE001 - no phonemizer or espeak-ng
        return False


@pytest.mark.skipif(not _espeak(), reason="espeak-ng / phonemizer not installed")
def test_readme_code_speaks(speech_runs, tmp_path, monkeypatch):
    out = tmp_path / "voice"
    export_run(speech_runs["tts"], out)
    readme = (out / "README.md").read_text()
    code = readme.split("```python\n")[1].split("```")[0]
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})  # noqa: S102 - the code we wrote, run as a user would
    import soundfile as sf

    wav, sr = sf.read(tmp_path / "speech.wav")
    assert sr == 22050 and len(wav) > 256


def test_export_errors(speech_runs, tmp_path, cli):
    code, _, err = cli("export", speech_runs["tts"], tmp_path / "a", "--format", "diffusers")
    assert code == 2 and "diffusion models only" in err and "Traceback" not in err
    assert not (tmp_path / "a").exists()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    with pytest.raises(GenforgeError, match="not an empty directory"):
        export_run(speech_runs["vocoder"], busy)
    # an acoustic run whose named vocoder is gone: an error, and nothing written
    run = tmp_path / "tts"
    shutil.copytree(speech_runs["tts"], run, ignore=shutil.ignore_patterns("train_state"))
    cfg = json.loads((run / "config.json").read_text())
    cfg["task_params"]["vocoder"] = "../missing-vocoder"
    (run / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(GenforgeError, match="does not exist"):
        export_run(run, tmp_path / "b")
    assert not (tmp_path / "b").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".b.tmp")]
    # a run without its phoneme inventory
    (run / "phonemes.json").unlink()
    with pytest.raises(GenforgeError, match="phonemes.json"):
        export_run(run, tmp_path / "c")
    assert not (tmp_path / "c").exists()
