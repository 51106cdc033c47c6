"""Speech synthesis: alignment, pitch, the acoustic model and vocoder, their tasks, the speech
pipeline and `genforge speak`. The runs are tiny and trained on synthetic tones (speech_runs.py)."""
from __future__ import annotations

import itertools
import math
import os
import shutil
import stat
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from speech_runs import HOP, SR, TTS, data_overrides, speech_runs, synth_examples  # noqa: E402,F401

from genforge.audio.align import batch_mas, beta_binomial_prior, mas, phoneme_average  # noqa: E402
from genforge.audio.features import log_mel  # noqa: E402
from genforge.audio.pitch import yin_f0  # noqa: E402
from genforge.errors import GenforgeError  # noqa: E402
from genforge.models.tts import FastSpeech, length_regulate  # noqa: E402
from genforge.models.vocoder import Vocos, griffin_lim  # noqa: E402
from genforge.tasks.tts import forward_sum_loss  # noqa: E402


def _espeak() -> bool:
    try:
        from genforge.speech.frontend import phonemize

        return bool(phonemize(["hi"])[0])
    except Exception:  # noqa: BLE001 - no phonemizer or espeak-ng: the text tests are skipped
        return False


needs_espeak = pytest.mark.skipif(not _espeak(), reason="espeak-ng / phonemizer not installed")


# ---- alignment and prosody targets --------------------------------------------------------------
def test_mas_hand_checked():
    p = np.log(np.array([[.9, .8, .1, .1, .1],
                         [.1, .2, .8, .2, .1],
                         [.1, .1, .1, .7, .9]]))
    assert mas(p).tolist() == [2, 1, 2]
    # one frame per phoneme is the only path when frames == phonemes
    assert mas(np.zeros((3, 3))).tolist() == [1, 1, 1]
    assert mas(np.zeros((1, 4))).tolist() == [4]
    with pytest.raises(ValueError, match="every phoneme needs a frame"):
        mas(np.zeros((4, 3)))


def _brute_force(logp: np.ndarray) -> float:
    n, t = logp.shape
    best = -math.inf
    for cuts in itertools.combinations(range(1, t), n - 1):  # where phonemes 1..n-1 start
        starts = (0, *cuts, t)
        best = max(best, sum(logp[i, starts[i]:starts[i + 1]].sum() for i in range(n)))
    return best


def test_mas_finds_the_best_path():
    rng = np.random.default_rng(0)
    for n, t in ((2, 5), (3, 7), (4, 8)):
        logp = rng.normal(size=(n, t))
        d = mas(logp)
        assert d.sum() == t and (d >= 1).all()
        ends = np.cumsum(d)
        score = sum(logp[i, ends[i] - d[i]:ends[i]].sum() for i in range(n))
        assert score == pytest.approx(_brute_force(logp), abs=1e-9)
    lp = torch.tensor(rng.normal(size=(2, 4, 9)))
    d = batch_mas(lp, torch.tensor([4, 2]), torch.tensor([9, 5]))
    assert d.sum(1).tolist() == [9, 5] and d[1, 2:].tolist() == [0, 0]


def test_prior_and_phoneme_average():
    prior = beta_binomial_prior(4, 12).exp()
    assert torch.allclose(prior.sum(0), torch.ones(12), atol=1e-5)  # a distribution per frame
    assert prior.argmax(0).tolist() == sorted(prior.argmax(0).tolist())  # moves down the diagonal
    assert prior[:, 0].argmax() == 0 and prior[:, -1].argmax() == 3
    v = torch.tensor([[1., 2, 3, 0, 5]])
    assert phoneme_average(v, torch.tensor([[2, 3]])).tolist() == [[1.5, pytest.approx(8 / 3)]]
    assert phoneme_average(v, torch.tensor([[2, 3]]), voiced_only=True).tolist() == [[1.5, 4.0]]
    assert phoneme_average(v, torch.tensor([[4, 1]]) * 0 + torch.tensor([[1, 0]]), True)[0, 1] == 0


def test_forward_sum_prefers_the_true_alignment():
    d = torch.tensor([2, 3, 1])
    path = torch.repeat_interleave(torch.arange(3), d)
    good = torch.full((1, 3, 6), -8.0)
    good[0, path, torch.arange(6)] = 0.0
    bad = good.flip(1)  # the phonemes in reverse order
    lens = (torch.tensor([3]), torch.tensor([6]))
    g, b = forward_sum_loss(good.log_softmax(1), *lens), forward_sum_loss(bad.log_softmax(1), *lens)
    assert g < 1.0 < b


def test_yin_tracks_a_tone_and_silence():
    t = torch.arange(SR) / SR
    for f in (110.0, 220.0, 400.0):
        f0 = yin_f0(0.5 * torch.sin(2 * math.pi * f * t) + 0.2 * torch.sin(4 * math.pi * f * t))
        assert len(f0) == log_mel(t).shape[-1]  # one value per mel frame
        assert f0[4:-4].median().item() == pytest.approx(f, rel=0.01)
    assert (yin_f0(torch.zeros(4000)) == 0).all()
    with pytest.raises(ValueError):
        yin_f0(torch.zeros(2, 100))


# ---- models -------------------------------------------------------------------------------------
def test_length_regulator():
    x = torch.arange(6.).view(1, 3, 2)
    out = length_regulate(x, torch.tensor([[2, 0, 1]]))
    assert out.tolist() == [[[0., 1.], [0., 1.], [4., 5.]]]
    assert length_regulate(x, torch.tensor([[1, 1, 1]]), max_len=5).shape == (1, 5, 2)


def _tiny_fastspeech(**kw):
    torch.manual_seed(0)
    return FastSpeech(vocab_size=16, dim=16, heads=2, enc_layers=1, dec_layers=1, ffn=16, predictor_hidden=8,
                      **kw).eval()


def test_fastspeech_shapes_and_controls():
    m = _tiny_fastspeech()
    ids = torch.tensor([[1, 5, 6, 7, 2], [1, 8, 9, 2, 0]])
    mel = torch.randn(2, 80, 20)
    out = m(ids, mel, torch.tensor([20, 14]))
    assert out["mel"].shape == (2, 80, 20) and out["durations"].sum(1).tolist() == [20, 14]
    assert out["logp"].shape == (2, 5, 20)
    with torch.no_grad():
        m.duration.out.weight.zero_()
        m.duration.out.bias.fill_(math.log(9))  # every phoneme 8 frames before rate
    mel1, n1 = m.infer(ids[:1])
    mel2, n2 = m.infer(ids[:1], rate=2.0)
    assert mel1.shape == (1, 80, int(n1)) and int(n1) == 40
    assert int(n2) == 20  # twice as fast, half the frames
    assert int(m.infer(ids[:1], rate=0.5)[1]) == 80
    shifted, _ = m.infer(ids[:1], pitch_shift=5.0)
    assert torch.isfinite(shifted).all() and not torch.allclose(shifted, mel1)
    with pytest.raises(ValueError, match="heads"):
        FastSpeech(dim=30, heads=4)


def test_speaker_embedding():
    m = _tiny_fastspeech(num_speakers=3)
    ids = torch.tensor([[1, 5, 6, 2]])
    a, _ = m.infer(ids, speaker=torch.tensor([0]))
    b, _ = m.infer(ids, speaker=torch.tensor([2]))
    assert a.shape[0] == 1 and not torch.allclose(a[..., :min(a.shape[-1], b.shape[-1])],
                                                  b[..., :min(a.shape[-1], b.shape[-1])])


def test_vocoder_shapes_and_griffin_lim():
    torch.manual_seed(0)
    v = Vocos(dim=16, hidden=32, layers=1, disc_width=4, disc_ffts=(256, 512))
    wav = 0.3 * torch.sin(2 * math.pi * 220 * torch.arange(4096) / SR)
    mel = log_mel(wav)
    assert mel.shape == (80, 4096 // HOP + 1)
    out = v(mel[None])
    assert out.shape == (1, 4096) and torch.isfinite(out).all() and out.abs().max() <= 1
    assert v(mel[None], length=4000).shape == (1, 4000)
    scores = v.discriminate(out)
    assert len(scores) == 2 and all(s.shape[0] == 1 for s, _ in scores)
    gl = griffin_lim(mel, iters=8)
    assert gl.shape == (4096,) and torch.isfinite(gl).all()
    # Griffin-Lim keeps the tone: the rebuilt mel is close to the original in the loud bins
    rebuilt = log_mel(gl)
    loud = mel > mel.max() - 4
    assert (rebuilt[loud] - mel[loud]).abs().mean() < 1.0


# ---- tasks through the trainer --------------------------------------------------------------------
def test_runs_train_and_write_their_files(speech_runs):
    import json

    tts, voc = speech_runs["tts"], speech_runs["vocoder"]
    for d in (tts, voc):
        assert (d / "model.safetensors").is_file() and (d / "config.json").is_file()
    assert (tts / "phonemes.json").is_file()
    records = [json.loads(line) for line in (tts / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "mel_l1" in r][-1]
    for k in ("mel_l1", "dur", "pitch", "energy", "align"):
        assert math.isfinite(train[k])
    held = [r for r in records if "val_mel_l1" in r][-1]  # the final evaluation on held-out clips
    assert math.isfinite(held["val_align"]) and held["val_length_ratio"] > 0
    last = [json.loads(line) for line in (voc / "metrics.jsonl").read_text().splitlines()][-1]
    assert all(math.isfinite(last[k]) for k in ("stft", "mel_l1", "loss_d", "adv", "fm"))


def test_tts_resume_continues(speech_runs, tmp_path):
    from genforge.config import load_config
    from genforge.train.trainer import Trainer

    run = tmp_path / "tts"
    shutil.copytree(speech_runs["tts"], run)
    cfg = load_config(None, TTS + data_overrides() + ["train.steps=4"])
    assert Trainer(cfg, run, resume=True).fit()["step"] == 4


def test_task_errors(tmp_path):
    from genforge.config import load_config
    from genforge.train.trainer import Trainer

    bad = TTS + data_overrides() + ["model.params.vocab_size=6"]
    with pytest.raises(GenforgeError, match="vocab_size"):
        Trainer(load_config(None, bad), tmp_path / "a").fit()
    assert not (tmp_path / "a" / "phonemes.json").exists()
    voc = ["task=vocoder", "model.name=vocos", "task_params.segment=1000", "train.batch_size=4", *data_overrides()]
    with pytest.raises(GenforgeError, match="segment"):
        Trainer(load_config(None, voc), tmp_path / "b").fit()
    with pytest.raises(GenforgeError, match="cannot train model"):
        Trainer(load_config(None, ["task=tts", "model.name=vocos", "train.batch_size=4", *data_overrides()]),
                tmp_path / "c").fit()
    from genforge.data import Examples
    from genforge.registry import DATASETS, register_dataset

    if "speech_too_short" not in DATASETS:  # 40 phonemes said in 2 frames cannot be aligned
        register_dataset("speech_too_short")(lambda cfg: Examples(
            phonemes=["abcd" * 10] * 4, mel=[torch.zeros(80, 2)] * 4, meta={"sample_rate": SR}))
    with pytest.raises(GenforgeError, match="too short to align"):
        Trainer(load_config(None, TTS + ["data.name=speech_too_short"]), tmp_path / "e").fit()
    assert not (tmp_path / "e" / "phonemes.json").exists()
    with pytest.raises(GenforgeError, match="phonemes"):
        Trainer(load_config(None, ["task=tts", "model.name=fastspeech", "data.name=digits", "data.limit=8",
                                   "train.batch_size=4"]), tmp_path / "d").fit()


# ---- pipeline and CLI -----------------------------------------------------------------------------
def test_pipeline_audio(speech_runs):
    from genforge.pipelines.speech import SpeechPipeline, load_speech

    pipe = load_speech(speech_runs["tts"], device="cpu")
    assert isinstance(pipe, SpeechPipeline) and pipe.vocoder is not None
    ids = [[1, 4, 5, 6, 2], [1, 7, 2]]
    chunks = list(pipe.speak_ids(ids))
    assert len(chunks) == 2 and all(c.dtype == np.float32 and np.isfinite(c).all() for c in chunks)
    for c, seq in zip(chunks, ids):  # at most max_duration frames per phoneme, at least one
        frames = len(c) / HOP + 1
        assert len(seq) <= frames <= len(seq) * pipe.model.max_duration
    slow = list(pipe.speak_ids(ids[:1], rate=0.5))[0]
    assert len(slow) > len(chunks[0])
    pipe.set_vocoder("griffin-lim")
    assert pipe.vocoder is None and np.isfinite(list(pipe.speak_ids(ids[:1]))[0]).all()
    with pytest.raises(GenforgeError, match="rate"):
        list(pipe.speak_ids(ids, rate=0))
    with pytest.raises(GenforgeError, match="semitones"):
        pipe.stream("hello", pitch_shift=40)
    with pytest.raises(GenforgeError, match="speaker"):
        pipe.stream("hello", speaker="nobody")
    with pytest.raises(GenforgeError, match="not a vocoder"):
        pipe.set_vocoder(speech_runs["tts"])
    with pytest.raises(GenforgeError, match="not an acoustic model"):
        load_speech(speech_runs["vocoder"], device="cpu")
    import genforge

    voc = genforge.load(speech_runs["vocoder"], device="cpu")
    mel = log_mel(torch.from_numpy(synth_examples(1)[0][1]))
    assert voc(mel).shape == ((mel.shape[-1] - 1) * HOP,)


@needs_espeak
def test_pipeline_text_and_stream(speech_runs):
    from genforge.pipelines.speech import load_speech

    pipe = load_speech(speech_runs["tts"], device="cpu")
    wav, sr = pipe("A bad cab. Faded beads!")
    assert sr == SR and wav.dtype == np.float32 and np.isfinite(wav).all() and len(wav) > HOP
    chunks = list(pipe.stream("A bad cab. Faded beads!"))
    assert len(chunks) == 2
    made = []  # the first chunk comes after the first sentence's synthesis, not the whole text's
    mel = pipe.mel
    pipe.mel = lambda ids, *a, **k: (made.append(len(ids)), mel(ids, *a, **k))[1]
    it = pipe.stream("A bad cab. Faded beads! Bad bees.")
    assert made == []
    next(it)
    assert len(made) == 1
    assert len(list(it)) == 2 and len(made) == 3
    with pytest.raises(GenforgeError, match="empty"):
        pipe("   ")
    with pytest.raises(GenforgeError, match="nothing to speak"):
        pipe("?!")


@needs_espeak
def test_speak_cli(speech_runs, tmp_path, cli):
    import soundfile as sf

    out = tmp_path / "out.wav"
    code, stdout, err = cli("speak", "A bad cab.", "--model", speech_runs["tts"], "--out", out, "--rate", "1.2",
                            "--pitch", "2", "--device", "cpu")
    assert code == 0, err
    wav, sr = sf.read(out)
    assert sr == SR and len(wav) > HOP and np.isfinite(wav).all() and "wrote" in stdout
    text = tmp_path / "t.txt"
    text.write_text("Faded beads.", encoding="utf-8")
    code, _, err = cli("speak", "--file", text, "--model", speech_runs["tts"], "--out", out,
                       "--vocoder", "griffin-lim", "--format", "float", "--device", "cpu")
    assert code == 0, err
    assert sf.info(str(out)).subtype == "FLOAT"


def test_speak_reads_stdin_and_writes_the_pipelines_audio_sentence_by_sentence(speech_runs, tmp_path, cli,
                                                                                 monkeypatch):
    """The WAV is written a sentence at a time (never the whole text's audio in memory) and holds
    exactly what the pipeline says for the text, gaps included."""
    import io

    import soundfile as sf

    from genforge.pipelines.speech import load_speech

    text = "A bad cab. Faded beads! A dab."
    monkeypatch.setattr("sys.stdin", io.StringIO(text))
    out = tmp_path / "s.wav"
    code, stdout, err = cli("speak", "-", "--model", speech_runs["tts"], "--out", out, "--format", "float",
                            "--device", "cpu")
    assert code == 0, err
    wav, sr = sf.read(out, dtype="float32")
    mask = os.umask(0o022)
    os.umask(mask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~mask  # as a plain open makes it, not mkstemp's 0600
    want, want_sr = load_speech(speech_runs["tts"], device="cpu")(text)
    assert sr == want_sr and len(wav) == len(want)
    # the same model on the same text: equal up to float32 rounding of the same sums
    assert np.abs(wav - want).max() <= 1e-5 * max(1.0, np.abs(want).max())


@needs_espeak
def test_speak_uses_the_shipped_voice_by_default(speech_runs, tmp_path, cli, monkeypatch):
    import genforge.pipelines as pipelines

    assets = tmp_path / "assets"
    assets.mkdir()
    monkeypatch.setattr(pipelines, "ASSETS_DIR", assets)
    out = tmp_path / "out.wav"
    code, _, err = cli("speak", "Hi.", "--out", out, "--device", "cpu")
    assert code == 2 and "no voice is installed" in err and "genforge train tts_joe" in err and not out.exists()
    (assets / "a-vocoder").symlink_to(speech_runs["vocoder"])  # not a voice: passed over
    (assets / "b-voice").symlink_to(speech_runs["tts"])
    code, stdout, err = cli("speak", "Hi.", "--out", out, "--device", "cpu")
    assert code == 0 and out.is_file(), err


def test_speak_cli_errors(speech_runs, tmp_path, cli):
    out = tmp_path / "o.wav"
    cases = [(["hi", "--model", speech_runs["tts"], "--out", out, "--rate", "9"], "rate"),
             (["hi", "--model", tmp_path / "nope", "--out", out], "no run directory"),
             (["hi", "--model", speech_runs["vocoder"], "--out", out], "not an acoustic model"),
             (["hi", "--model", speech_runs["tts"], "--vocoder", speech_runs["tts"], "--out", out],
              "not a vocoder"),
             (["hi", "--model", speech_runs["tts"], "--out", out, "--format", "mp3"], "--format"),
             (["  ", "--model", speech_runs["tts"], "--out", out], "empty"),
             (["hi", "--model", speech_runs["tts"], "--file", tmp_path / "missing.txt", "--out", out], "both"),
             (["--model", speech_runs["tts"], "--file", tmp_path / "missing.txt", "--out", out], "not found"),
             (["hi", "--model", speech_runs["tts"], "--out", tmp_path / "no" / "o.wav"], "does not exist")]
    for args, msg in cases:
        code, _, err = cli("speak", *args, "--device", "cpu")
        assert code == 2 and msg in err and err.count("\n") == 1, (args, err)
    assert not out.exists() and not list(tmp_path.glob(".speak-*"))


def test_multi_speaker_voice(tmp_path):
    import json

    from genforge.config import load_config
    from genforge.data import Examples
    from genforge.pipelines.speech import load_speech
    from genforge.registry import DATASETS, register_dataset
    from genforge.train.trainer import Trainer

    if "speech_two_voices" not in DATASETS:
        def two_voices(cfg):
            items = synth_examples(8)
            audio = [torch.from_numpy(a) for _, a, _ in items]
            return Examples(phonemes=[p for p, _, _ in items], audio=audio, mel=[log_mel(a) for a in audio],
                            speaker=["ann", "bob"] * 4, meta={"sample_rate": SR})
        register_dataset("speech_two_voices")(two_voices)
    base = [o for o in TTS if not o.startswith("train.steps")] + ["train.steps=1", "train.tensorboard=false",
                                                                    "data.name=speech_two_voices"]
    with pytest.raises(GenforgeError, match="num_speakers"):
        Trainer(load_config(None, base), tmp_path / "one").fit()
    Trainer(load_config(None, base + ["model.params.num_speakers=2"]), tmp_path / "two").fit()
    assert json.loads((tmp_path / "two" / "speakers.json").read_text()) == ["ann", "bob"]
    pipe = load_speech(tmp_path / "two", "griffin-lim", device="cpu")
    ann, bob = (list(pipe.speak_ids([[1, 4, 5, 2]], speaker=s))[0] for s in ("ann", "bob"))
    assert np.isfinite(ann).all() and np.isfinite(bob).all()
    with pytest.raises(GenforgeError, match="ann, bob"):
        pipe.stream("hi", speaker="carl")
