"""Speech synthesis benchmark: speed and quality of an acoustic run + vocoder against the teacher.

    OMP_NUM_THREADS=2 .venv/bin/python bench/tts.py --model runs/tts-joe [--vocoder runs/vocoder-joe] \
        [--n 20] [--threads 2] [--no-whisper] [--voices piper-joe,festival,espeak] [--onnx-rounds 3] \
        [--sentences data/speech-joe/heldout.txt]   # sentences the corpus never had, spoken by --teacher
    OMP_NUM_THREADS=2 .venv/bin/python bench/tts.py --recipe-speed --threads 2   # sizes only, no runs

On the held-out clips of the acoustic run's own data (its test split: the teacher's audio of sentences
it never trained on) it measures:
- real-time factor of the acoustic model, the vocoder and both (synthesis seconds / audio seconds), with
  ``--threads`` PyTorch threads, and the first-chunk latency of ``pipe.stream`` on a 3-sentence text;
- MCD (dB, DTW-aligned, cepstra 1-13) of genforge's speech against the teacher's clip, and of the vocoder
  alone on the teacher's mel (copy synthesis: the vocoder's own share of the distortion);
- Whisper tiny.en WER of genforge's speech and of the teacher's clips (the ASR floor);
- the same voice exported to ONNX (``genforge export``'s acoustic.onnx + vocoder.onnx) under onnxruntime:
  its RTF next to PyTorch's on the same sentences with the same thread count, the two runtimes
  alternating in rounds (as bench/onnx_speed.py does) so machine noise hits both alike;
- the other voices on the same held-out sentences (``--voices``): Piper joe (the teacher, re-synthesised;
  onnxruntime with ``--threads`` threads), Festival HTS (text2wave, cmu_us_slt_arctic_hts) and espeak-ng:
  their RTF and Whisper WER. Festival and espeak-ng run as one process per sentence, as genforge's
  teacher code calls them, so their RTF includes process start and voice loading;
- peak RSS; and writes a PNG of the teacher's mel over genforge's for the first clip.
RTF, MCD and the WERs come from ``genforge.eval.speech_eval.evaluate_speech`` (what ``genforge eval speech``
reports); this script adds the test-split mode, first-chunk latency, ONNX timing, peak RSS and the PNG.
JSON to bench/results/tts.json (``--name`` changes it).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, peak_rss_mb, save  # noqa: E402

PARAGRAPH = ("The quick brown fox jumps over the lazy dog. It was not amused at all. "
             "Then it walked away, slowly, into the woods.")


def mel_png(path: Path, top: np.ndarray, bottom: np.ndarray) -> None:
    """Two log-mels (n_mels, frames) stacked, low frequencies at the bottom of each, as a PNG."""
    from PIL import Image

    lo, hi = min(top.min(), bottom.min()), max(top.max(), bottom.max())
    width = max(top.shape[1], bottom.shape[1])

    def rows(m):
        m = np.pad(m, ((0, 0), (0, width - m.shape[1])), constant_values=lo)
        x = (m[::-1] - lo) / max(hi - lo, 1e-6)
        # a blue -> yellow ramp; a white line separates the two
        return np.stack([x * 255, x * 200 + 30 * (1 - x), (1 - x) * 120], -1).astype(np.uint8)

    img = np.concatenate([rows(top), np.full((2, width, 3), 255, np.uint8), rows(bottom)])
    Image.fromarray(img).resize((width * 2, img.shape[0] * 3), Image.NEAREST).save(path)


@torch.no_grad()
def recipe_speed(threads: int, repeats: int = 5) -> dict:
    """RTF of randomly initialised models at the tts_joe / vocoder_joe recipes' sizes on an 80-id
    sentence at 6 frames per id (about 5.6 s of audio): the speed the recipes were sized by, measurable
    before anything is trained."""
    import math

    from genforge.config import load_config
    from genforge.models import build_model

    ac_cfg, voc_cfg = load_config("tts_joe"), load_config("vocoder_joe")
    torch.manual_seed(0)
    ac = build_model(ac_cfg.model.name, **ac_cfg.model.params).eval()
    voc = build_model(voc_cfg.model.name, **{**voc_cfg.model.params, "discriminator": False}).eval()
    ac.duration.out.weight.zero_()
    ac.duration.out.bias.fill_(math.log(7))  # exp(.) - 1 = 6 frames per phoneme id
    ids = torch.randint(4, 60, (1, 80))
    ids[0, 0], ids[0, -1] = 1, 2
    for _ in range(2):  # warm-up
        voc(ac.infer(ids)[0])
    t_ac = t_voc = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        mel, _ = ac.infer(ids)
        t1 = time.perf_counter()
        wav = voc(mel)
        t_voc += time.perf_counter() - t1
        t_ac += t1 - t0
    seconds = wav.shape[-1] / 22050 * repeats
    return {"mode": "recipe sizes, random weights", "audio_seconds_each": round(seconds / repeats, 2),
            "rtf": round((t_ac + t_voc) / seconds, 4), "rtf_acoustic": round(t_ac / seconds, 4),
            "rtf_vocoder": round(t_voc / seconds, 4),
            "acoustic_params_m": round(sum(p.numel() for p in ac.parameters()) / 1e6, 3),
            "vocoder_params_m": round(sum(p.numel() for p in voc.parameters()) / 1e6, 3),
            "peak_rss_mb": round(peak_rss_mb(), 1),
            # other processes' load changes these numbers several-fold on a small machine: recorded with them
            "load_average_1min": round(__import__("os").getloadavg()[0], 2)}


def onnx_rtf(pipe, sentences: list[list[int]], threads: int, rounds: int) -> dict:
    """RTF (acoustic, vocoder, both) of PyTorch and of the ONNX export on ``sentences`` (phoneme-id
    lists), one sentence at a time as ``pipe.stream`` speaks; medians over alternating rounds."""
    import onnxruntime as ort

    from genforge.export_speech import export_acoustic, export_vocoder

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    with tempfile.TemporaryDirectory() as tmp:
        checks = {"acoustic": export_acoustic(pipe.model, Path(tmp) / "a.onnx")["checked"],
                  "vocoder": export_vocoder(pipe.vocoder.model, Path(tmp) / "v.onnx")["checked"]}
        ac = ort.InferenceSession(str(Path(tmp) / "a.onnx"), opts, providers=["CPUExecutionProvider"])
        voc = ort.InferenceSession(str(Path(tmp) / "v.onnx"), opts, providers=["CPUExecutionProvider"])
    controls = {"rate": np.array(1.0, np.float32), "pitch_shift": np.array(0.0, np.float32)}
    if pipe.speakers:
        controls["speaker"] = np.zeros(1, np.int64)

    def torch_pass():
        t_ac = t_voc = samples = 0
        for ids in sentences:
            t0 = time.perf_counter()
            mel = pipe.mel(ids)
            t1 = time.perf_counter()
            samples += len(pipe.vocode(mel))
            t_voc += time.perf_counter() - t1
            t_ac += t1 - t0
        return t_ac, t_voc, samples

    def ort_pass():
        t_ac = t_voc = samples = 0
        for ids in sentences:
            t0 = time.perf_counter()
            mel, lens = ac.run(None, {"ids": np.array([ids], np.int64), **controls})
            t1 = time.perf_counter()
            samples += voc.run(None, {"mel": mel[:, :, :lens[0]]})[0].shape[-1]
            t_voc += time.perf_counter() - t1
            t_ac += t1 - t0
        return t_ac, t_voc, samples

    sr = pipe.sample_rate
    torch_pass(), ort_pass()  # warm-up: first calls allocate and pick kernels
    runs: dict[str, list] = {"pytorch": [], "onnxruntime": []}
    for _ in range(rounds):
        runs["pytorch"].append(torch_pass())
        runs["onnxruntime"].append(ort_pass())
    out = {"rounds": rounds, "threads_each": threads, "sentences": len(sentences), "checked": checks}
    for name, rs in runs.items():
        out[name] = {"rtf": round(statistics.median((a + v) / (n / sr) for a, v, n in rs), 4),
                     "rtf_acoustic": round(statistics.median(a / (n / sr) for a, _, n in rs), 4),
                     "rtf_vocoder": round(statistics.median(v / (n / sr) for _, v, n in rs), 4),
                     "audio_seconds": round(rs[0][2] / sr, 2)}
    out["ratio_pytorch_over_onnxruntime"] = round(out["pytorch"]["rtf"] / out["onnxruntime"]["rtf"], 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="acoustic (tts) run dir")
    ap.add_argument("--recipe-speed", action="store_true", help="only the RTF of the recipes' model sizes "
                    "(random weights; no run dirs needed)")
    ap.add_argument("--vocoder", default=None, help="vocoder run dir (default: the run's own, else Griffin-Lim)")
    ap.add_argument("--n", type=int, default=20, help="held-out clips to score")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-whisper", action="store_true", help="skip the WER measurement")
    ap.add_argument("--name", default="tts")
    ap.add_argument("--voices", default="piper-joe,festival,espeak",
                    help="other voices to score on the same sentences (comma-separated; '' for none)")
    ap.add_argument("--onnx-rounds", type=int, default=3, help="rounds of the ONNX RTF (0: skip it)")
    ap.add_argument("--sentences", help="a text file of held-out sentences (one per line; e.g. the corpus's "
                    "heldout.txt) that --teacher speaks now, instead of the run's test clips")
    ap.add_argument("--teacher", default="piper-joe", help="the voice that speaks --sentences for MCD and the "
                    "teacher's WER")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.recipe_speed:
        save(args.name if args.name != "tts" else f"tts_recipe_speed_{args.threads}t", recipe_speed(args.threads))
        return
    if not args.model:
        ap.error("--model is required (or --recipe-speed)")

    from genforge.audio.features import log_mel
    from genforge.data import load_dataset
    from genforge.eval.speech_eval import evaluate_speech
    from genforge.pipelines.speech import load_speech

    pipe = load_speech(args.model, args.vocoder, device="cpu")
    if args.sentences:  # sentences the corpus never spoke; the teacher speaks them now
        texts = [t.strip() for t in Path(args.sentences).read_text(encoding="utf-8").splitlines() if t.strip()]
        texts, reference = texts[:args.n], None
    else:  # the run's own test split: the teacher's clips of sentences it never trained on
        held = load_dataset(pipe.cfg.data.model_copy(update={"split": "test", "limit": args.n}))
        texts = list(held.column("text"))
        reference = [np.asarray(a, dtype=np.float32) for a in held.column("audio")]
    names = [v.strip() for v in args.voices.split(",") if v.strip()]
    audio: dict = {}
    result = evaluate_speech(pipe, texts, teacher=args.teacher if args.sentences else None, voices=names,
                             threads=args.threads, reference=reference, whisper=not args.no_whisper,
                             audio=audio)
    result["sentences"] = args.sentences or "the run's test split"

    firsts = []
    for _ in range(3):
        t0 = time.perf_counter()
        it = pipe.stream(PARAGRAPH)
        next(iter(it))
        firsts.append(time.perf_counter() - t0)
    result["first_chunk_s"] = round(float(np.median(firsts)), 4)
    if args.onnx_rounds > 0:
        if pipe.vocoder is None:
            result["onnx"] = {"error": "Griffin-Lim has no ONNX export: give a trained vocoder (--vocoder)"}
        else:
            result["onnx"] = onnx_rtf(pipe, audio["genforge"].ids, args.threads, args.onnx_rounds)
            result["rtf_onnx"] = result["onnx"]["onnxruntime"]["rtf"]
    mels = (log_mel(torch.from_numpy(audio["reference"][0])).numpy(),
            log_mel(torch.from_numpy(audio["genforge"].waves[0])).numpy())
    png = RESULTS / f"{args.name}_mel.png"
    RESULTS.mkdir(parents=True, exist_ok=True)
    mel_png(png, *mels)
    result["mel_png"] = str(png.relative_to(RESULTS.parent.parent))
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    save(args.name, result)


if __name__ == "__main__":
    main()
