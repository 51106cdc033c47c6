"""ONNX export of speech runs: an acoustic (``tts``) run becomes ``acoustic.onnx`` (phoneme ids -> log-mel),
a vocoder run ``vocoder.onnx`` (log-mel -> waveform); an acoustic run that names its vocoder
(``task_params.vocoder``) writes both, with the phoneme inventory, so text -> speech runs on onnxruntime
alone. ``genforge.export`` dispatches here; the exporter settings and tolerance are its own.

Two parts of inference have no ONNX form as PyTorch writes them, so the graphs restate them with ops that
trace with free lengths (each checked against the PyTorch original at other lengths than the trace's):

* the length regulator (``repeat_interleave`` per item, a Python loop): frame ``t`` of item ``b`` takes
  phoneme ``#{n : cumsum(durations[b])[n] <= t}``, a comparison against the cumulative durations and a
  gather, for all items at once;
* ``torch.istft``: one ConvTranspose1d whose (2 * bins, 1, n_fft) kernel is the inverse real DFT times the
  synthesis window. Striding by the hop overlap-adds the frames; dividing by the overlap-added squared
  window (a second ConvTranspose1d over ones) and trimming n_fft // 2 samples at each end is what istft
  does with ``center=True``. That is n_fft * (n_fft + 2) multiply-adds a frame where an FFT takes
  ~n_fft log n_fft (about 40% of the vocoder_joe-sized graph's work), but it is one GEMM: measured on one
  thread of a busy 2-core box, onnxruntime ran that whole vocoder as fast as PyTorch with torch.istft
  (0.23-0.37 s for 4.6 s of audio, each), and the acoustic model 1.5x faster than PyTorch. The inverse
  STFT's share, 125 ms of that for 400 frames, did not shrink enough to pay for a longer graph with
  onnxruntime's DFT op (90 ms, after a Hermitian expansion) or a 32 x 32 Cooley-Tukey factoring (95 ms).
"""
from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import __version__
from .errors import GenforgeError
from .export import ONNX_OPSET, _meta, _write_json, check_onnx, onnx_tolerance

ACOUSTIC_FILE, VOCODER_FILE = "acoustic.onnx", "vocoder.onnx"


# ---- graphs -------------------------------------------------------------------------------------
def _attention(attn: nn.MultiheadAttention, h, mask):
    """``attn(h, h, h, key_padding_mask=~mask)`` in eval mode. nn.MultiheadAttention's own forward
    traces with the batch x heads reshape baked in as a constant, so it is restated with free sizes."""
    heads = attn.num_heads
    q, k, v = F.linear(h, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2) for t in (q, k, v))
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    out = (scores.softmax(-1) @ v).transpose(1, 2)
    return attn.out_proj(out.reshape(out.shape[0], out.shape[1], -1))


def _block(blk, x, mask):
    """``FFTBlock.forward`` in eval mode (dropout off), with the attention above."""
    x = (x + _attention(blk.attn, blk.n1(x), mask)) * mask[..., None]
    h = blk.n2(x).transpose(1, 2)
    h = blk.conv2(F.relu(blk.conv1(h))).transpose(1, 2)
    return (x + h) * mask[..., None]


def _sinusoids(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """``models.tts.sinusoids`` of a (T,) float position tensor (its slice assignment of an
    arange(length) buffer would trace with the trace's length)."""
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    angle = positions[:, None] * freq
    return torch.stack([torch.sin(angle), torch.cos(angle)], -1).reshape(positions.shape[0], dim)


class AcousticGraph(nn.Module):
    """``FastSpeech.infer`` as one graph: (ids (B, N) int64 with 0 padding, rate, pitch_shift scalars
    [, speaker (B,)]) -> (mel (B, n_mels, T), frames per item (B,))."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.m = model

    def forward(self, ids, rate, pitch_shift, speaker=None):
        m = self.m
        mask = ids != 0
        emb = m.embed(ids)
        x = emb + _sinusoids(torch.cumsum(torch.ones_like(ids[0], dtype=torch.float32), 0) - 1, emb.shape[-1])
        for blk in m.encoder:
            x = _block(blk, x, mask)
        if m.speaker is not None:
            x = x + m.speaker(speaker)[:, None]
        dur = torch.round(torch.exp(m.duration(x, mask)) - 1).clamp(min=1, max=m.max_duration)
        dur = torch.round(dur / rate).clamp(min=1).long() * mask
        pitch = m.pitch(x, mask) + (pitch_shift * math.log(2) / 12 / m.pitch_stats[1]) * mask
        h = m._prosody(x, pitch, m.energy(x, mask), mask)
        # the length regulator: frame t of row b shows the phoneme whose cumulative end first passes t
        lens = dur.sum(1)
        ends = torch.cumsum(dur, 1)  # (B, N)
        frames = torch.arange(lens.max(), device=ids.device)  # (T,)
        which = (ends[:, None, :] <= frames[None, :, None]).sum(-1).clamp(max=ids.shape[1] - 1)  # (B, T)
        mel_mask = frames[None] < lens[:, None]
        h = torch.gather(h, 1, which[..., None].expand(-1, -1, h.shape[-1])) * mel_mask[..., None]
        # FastSpeech.decode with the attention above
        h = h + _sinusoids(frames.float(), h.shape[-1])[None] * mel_mask[..., None]
        for blk in m.decoder:
            h = _block(blk, h, mel_mask)
        mean, std = m.mel_stats
        return (m.to_mel(h) * std + mean).transpose(1, 2) * mel_mask[:, None], lens


class VocoderGraph(nn.Module):
    """``VocosGenerator.forward`` (default length) with the inverse STFT as fixed convolutions."""

    def __init__(self, generator: nn.Module):
        super().__init__()
        self.g = generator
        n, hop = generator.n_fft, generator.hop_length
        bins = n // 2 + 1
        window = torch.hann_window(n, dtype=torch.float64)
        k = torch.arange(bins, dtype=torch.float64)[:, None]
        t = torch.arange(n, dtype=torch.float64)[None]
        # irfft: DC and Nyquist once, the other bins twice (their conjugates); 1 / n ("backward" norm)
        scale = torch.full((bins, 1), 2.0, dtype=torch.float64)
        scale[0] = 1.0
        if n % 2 == 0:
            scale[-1] = 1.0
        angle = 2 * math.pi * k * t / n
        basis = torch.cat([scale * torch.cos(angle), -scale * torch.sin(angle)]) / n * window  # (2 bins, n)
        self.register_buffer("basis", basis[:, None].float(), persistent=False)
        self.register_buffer("window_sq", (window ** 2)[None, None].float(), persistent=False)
        self.hop, self.n_fft = hop, n

    def forward(self, mel):
        g = self.g
        x = g.norm(g.embed(mel).transpose(1, 2)).transpose(1, 2)
        for blk in g.blocks:
            x = blk(x)
        h = g.head(g.final(x.transpose(1, 2))).transpose(1, 2).float()
        log_mag, phase = h.chunk(2, dim=1)
        mag = torch.exp(log_mag.clamp(max=6.0))
        spec = torch.cat([mag * torch.cos(phase), mag * torch.sin(phase)], 1)  # (B, 2 bins, T)
        wav = F.conv_transpose1d(spec, self.basis, stride=self.hop)[:, 0]  # (B, (T - 1) hop + n_fft)
        env = F.conv_transpose1d(torch.ones_like(spec[:1, :1]), self.window_sq, stride=self.hop)[:, 0]
        half = self.n_fft // 2
        wav = wav[:, half:wav.shape[1] - half] / env[:, half:env.shape[1] - half]
        return wav.clamp(-1.0, 1.0)


# ---- example inputs -----------------------------------------------------------------------------
def acoustic_inputs(model, lengths: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random phoneme-id rows (BOS ... EOS, zero-padded to the longest) of the given lengths."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    for b, n in enumerate(lengths):
        ids[b, :n] = torch.randint(4, model.vocab_size, (n,), generator=gen)
        ids[b, 0], ids[b, n - 1] = 1, 2
    inputs = {"ids": ids, "rate": torch.tensor(1.0), "pitch_shift": torch.tensor(0.0)}
    if model.speaker is not None:
        inputs["speaker"] = torch.arange(len(lengths)) % model.num_speakers
    return inputs


def mel_inputs(n_mels: int, batch: int, frames: int, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {"mel": torch.randn(batch, n_mels, frames, generator=gen) - 4.0}  # about log-mel's range


# ---- export + check -----------------------------------------------------------------------------
def _export(module: nn.Module, inputs: dict, outputs: list[str], axes: dict, path: Path) -> None:
    import warnings

    with warnings.catch_warnings():
        # the exporter's deprecation notice and tracer notes on the shape arithmetic, which the checks
        # at other lengths than the trace's cover
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), tuple(inputs.values()), str(path), dynamo=False,
                          input_names=list(inputs), output_names=outputs, opset_version=ONNX_OPSET,
                          dynamic_axes=axes)


def export_acoustic(model: nn.Module, path: Path) -> dict:
    """Write ``acoustic.onnx``; check it at another batch and length; its genforge.json entry."""
    import onnx
    import onnxruntime as ort

    graph = AcousticGraph(model).eval()
    inputs = acoustic_inputs(model, [12, 9])
    axes = {"ids": {0: "batch", 1: "phonemes"}, "mel": {0: "batch", 2: "frames"}, "mel_lengths": {0: "batch"}}
    if "speaker" in inputs:
        axes["speaker"] = {0: "batch"}
    _export(graph, inputs, ["mel", "mel_lengths"], axes, path)
    onnx.checker.check_model(str(path))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    # three rows of other lengths, and one row alone, each at other controls than the trace's
    for lengths, rate, shift in (([7, 20, 15], 1.3, 2.0), ([5], 0.8, -3.0)):
        check = acoustic_inputs(model, lengths, seed=1)
        check["rate"], check["pitch_shift"] = torch.tensor(rate), torch.tensor(shift)
        mel, lens = sess.run(None, {k: v.numpy() for k, v in check.items()})
        with torch.no_grad():
            ref, ref_lens = model.infer(check["ids"], rate=rate, pitch_shift=shift, speaker=check.get("speaker"))
        if mel.shape != tuple(ref.shape) or not np.array_equal(lens, ref_lens.numpy()):
            raise GenforgeError(f"the ONNX export of {path.name} makes {tuple(mel.shape)} mels where PyTorch makes "
                                f"{tuple(ref.shape)}; please report it")
        diff = float((torch.from_numpy(mel) - ref).abs().max())
        if not diff <= onnx_tolerance(ref):
            raise GenforgeError(f"the ONNX export of {path.name} disagrees with PyTorch (max difference "
                                f"{diff:.3g}); please report it")
        worst = max(worst, diff)
    io = {"inputs": {"ids": {"shape": ["N", "phonemes"], "dtype": "int64",
                             "about": "phoneme ids: 1 (BOS), the phonemes.json ids, 2 (EOS); 0 pads shorter rows"},
                     "rate": {"shape": [], "dtype": "float32", "about": "speed: >1 faster (0.25-4)"},
                     "pitch_shift": {"shape": [], "dtype": "float32", "about": "semitones (-12-12)"}},
          "outputs": {"mel": "(N, n_mels, frames) float32 natural-log mel magnitudes, zero past mel_lengths",
                      "mel_lengths": "(N,) int64 frames of each row"},
          "n_mels": model.n_mels, "checked": {"lengths": [[7, 20, 15], [5]], "max_abs_diff_vs_pytorch": worst}}
    if "speaker" in inputs:
        io["inputs"]["speaker"] = {"shape": ["N"], "dtype": "int64", "about": "speaker index (speakers.json)"}
    return io


def export_vocoder(vocos: nn.Module, path: Path) -> dict:
    """Write ``vocoder.onnx``; check it at other batches and lengths; its genforge.json entry."""
    gen = vocos.generator.eval()
    _export(VocoderGraph(gen), mel_inputs(vocos.n_mels, 2, 40), ["wav"],
            {"mel": {0: "batch", 2: "frames"}, "wav": {0: "batch", 1: "samples"}}, path)
    # the reference is VocosGenerator.forward itself (torch.istft), not the graph's restatement of it
    diff = max(check_onnx(path, gen, mel_inputs(vocos.n_mels, 3, 23, seed=1)),
               check_onnx(path, gen, mel_inputs(vocos.n_mels, 1, 61, seed=2)))
    return {"inputs": {"mel": {"shape": ["N", vocos.n_mels, "frames"], "dtype": "float32",
                               "about": "natural-log mel magnitudes (the acoustic model's output)"}},
            "outputs": {"wav": f"(N, (frames - 1) * {vocos.hop_length}) float32 in [-1, 1]"},
            "hop_length": vocos.hop_length, "n_fft": vocos.n_fft,
            "checked": {"batch_frames": [[3, 23], [1, 61]], "max_abs_diff_vs_pytorch": diff}}


def write_speech_onnx(pipe, dest: Path, final: Path, step: Optional[int]) -> str:
    """Fill ``dest`` with the speech export of ``pipe``'s run; a phrase for export_run's summary."""
    meta = {**_meta(pipe, "onnx", step), "opset": ONNX_OPSET, "sample_rate": pipe.sample_rate, "files": {}}
    meta.pop("class_names")
    if pipe.cfg.task == "vocoder":
        meta["files"][VOCODER_FILE] = export_vocoder(pipe.model, dest / VOCODER_FILE)
        _write_json(dest / "genforge.json", meta)
        (dest / "README.md").write_text(readme(pipe, final, None))
        return f"{VOCODER_FILE}: log-mel -> wav"
    vocoder = pipe.vocoder  # raises if the run names a vocoder that is missing
    meta["files"][ACOUSTIC_FILE] = export_acoustic(pipe.model, dest / ACOUSTIC_FILE)
    shutil.copy(Path(pipe.run_dir) / "phonemes.json", dest / "phonemes.json")
    if pipe.speakers:
        shutil.copy(Path(pipe.run_dir) / "speakers.json", dest / "speakers.json")
    if vocoder is not None:
        meta["vocoder_run"] = str(vocoder.run_dir)
        meta["files"][VOCODER_FILE] = export_vocoder(vocoder.model, dest / VOCODER_FILE)
    _write_json(dest / "genforge.json", meta)
    (dest / "README.md").write_text(readme(pipe, final, vocoder))
    return (f"{ACOUSTIC_FILE} + {VOCODER_FILE}: phoneme ids -> mel -> wav" if vocoder is not None else
            f"{ACOUSTIC_FILE}: phoneme ids -> mel (the run names no vocoder: export one separately)")


# ---- README -------------------------------------------------------------------------------------
_FRONTEND = """import json

import numpy as np
import onnxruntime as ort
import soundfile as sf
from phonemizer.backend import EspeakBackend
from phonemizer.separator import Separator

path = {path!r}
# text -> IPA -> ids, as genforge's front end does it (genforge also spells out numbers and splits long
# text into sentences first: genforge.speech.frontend.text_to_ids gives one id list per sentence)
symbols = json.load(open(f"{{path}}/phonemes.json", encoding="utf-8"))["symbols"]
id_of = {{s: i + 4 for i, s in enumerate(symbols)}}  # 0 pad, 1 BOS, 2 EOS, 3 unknown
espeak = EspeakBackend("en-us", preserve_punctuation=True, with_stress=True, language_switch="remove-flags")
ipa = espeak.phonemize(["The quick brown fox jumps over the lazy dog."],
                       separator=Separator(phone="", word=" "), strip=True)[0]
ids = np.array([[1, *(id_of.get(c, 3) for c in " ".join(ipa.split())), 2]], np.int64)

acoustic = ort.InferenceSession(f"{{path}}/{acoustic}", providers=["CPUExecutionProvider"])
feed = {{"ids": ids, "rate": np.array(1.0, np.float32), "pitch_shift": np.array(0.0, np.float32){speaker}}}
mel, lengths = acoustic.run(None, feed)  # rate > 1 speaks faster; pitch_shift in semitones
"""

_VOCODE = """vocoder = ort.InferenceSession(f"{{path}}/{vocoder}", providers=["CPUExecutionProvider"])
{cut}wav = vocoder.run(None, {{"mel": {mel}}})[0][0]  # float32 in [-1, 1]
sf.write("speech.wav", wav, {sr})
"""


def readme(pipe, path: Path, vocoder) -> str:
    """How to run the export with onnxruntime alone (a test runs this code)."""
    name, sr = Path(pipe.run_dir).name, pipe.sample_rate
    head = f"# {name} (speech, ONNX opset {ONNX_OPSET}, exported by genforge {__version__})\n\n"
    if pipe.cfg.task == "vocoder":
        hop = pipe.model.hop_length
        return head + (
            f"`{VOCODER_FILE}` turns a log-mel `mel` (N, {pipe.model.n_mels}, frames; float32 natural-log mel "
            f"magnitudes as `genforge.audio.features.log_mel` computes them) into `wav` (N, (frames - 1) * {hop}) "
            f"at {sr} Hz. Batch and frames are free. `genforge.json` describes it.\n\n```python\n"
            "import numpy as np\nimport onnxruntime as ort\nimport soundfile as sf\n\n"
            f"path = {str(path)!r}\nmel = np.full((1, {pipe.model.n_mels}, 100), -6.0, np.float32)  # your mel here\n"
            + _VOCODE.format(vocoder=VOCODER_FILE, sr=sr, cut="", mel="mel") + "```\n")
    speaker = ', "speaker": np.array([0], np.int64)' if pipe.speakers else ""
    text = (f"`{ACOUSTIC_FILE}` turns phoneme ids (`ids`: N, phonemes; int64, BOS = 1 ... EOS = 2, 0 pads "
            "shorter rows) and two float32 scalars, `rate` and `pitch_shift`, into a log-mel `mel` (N, "
            f"{pipe.model.n_mels}, frames) and `mel_lengths` (N,); `phonemes.json` lists the IPA characters "
            "of ids 4, 5, ...")
    if pipe.speakers:
        text += "; `speaker` (N,) picks a voice by its index in `speakers.json`"
    if vocoder is not None:
        text += (f". `{VOCODER_FILE}` (the vocoder run {Path(vocoder.run_dir).name}) turns a mel into {sr} Hz "
                 "audio")
    else:
        text += (". The run names no vocoder: export a vocoder run too (`genforge export VOCODER_RUN OUT`) and "
                 "give its `vocoder.onnx` the mel")
    text += ". `genforge.json` describes the inputs and outputs.\n\n"
    code = _FRONTEND.format(path=str(path), acoustic=ACOUSTIC_FILE, speaker=speaker)
    if vocoder is not None:
        cut = "# one row at a time, cut to its length: padding frames are not silence to a vocoder\n"
        code += _VOCODE.format(vocoder=VOCODER_FILE, sr=sr, mel="mel[:1, :, :lengths[0]]", cut=cut)
    return head + text + "```python\n" + code + "```\n"
