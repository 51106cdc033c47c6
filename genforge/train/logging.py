"""Training output: progress on stderr (a rich bar on a terminal, periodic plain lines otherwise),
metrics.jsonl and TensorBoard scalars/images. stdout is left to the command's result."""
from __future__ import annotations

import json
import math
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ..errors import GenforgeError
from .checkpoint import atomic_write_bytes, read_metrics


def _clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class PlainProgress:
    """Progress for logs and pipes: one line every ``every`` (fraction of the run) or ``period_s``."""

    def __init__(self, label: str, total: int, start: int = 0, every: float = 0.1, period_s: float = 60.0,
                 stream=None):
        self.label, self.total, self.stream = label, total, stream or sys.stderr
        self.every, self.period_s = max(1, int(total * every)), period_s
        self._t0, self._start = time.time(), start
        self._last_step, self._last_t = start, time.time()
        self._shown = False

    def update(self, completed: int, info: str = "", force: bool = False) -> None:
        now = time.time()
        due = completed - self._last_step >= self.every or now - self._last_t >= self.period_s
        if not (force or due or completed >= self.total) or (completed == self._last_step and self._shown):
            return
        pct = 100.0 * completed / max(1, self.total)
        line = f"{self.label} {completed}/{self.total} ({pct:.0f}%)"
        if completed > self._start:  # no rate (or eta) before anything was timed
            rate = (completed - self._start) / max(now - self._t0, 1e-9)
            line += f" {rate:.2f} it/s eta {_clock((self.total - completed) / rate)}"
        print(f"{line} {info}".rstrip(), file=self.stream, flush=True)
        self._last_step, self._last_t, self._shown = completed, now, True


@contextmanager
def step_progress(label: str, n_chunks: int = 1, enabled: bool = True):
    """A ``progress(step, total)`` callback for a sampler that runs ``n_chunks`` times (batches),
    shown on stderr like training's progress; yields None when disabled or progress is off."""
    if not enabled or os.environ.get("GENFORGE_NO_PROGRESS"):
        yield None
        return
    console = Console(stderr=True)
    state = {"chunk": 0, "last": -1, "bar": None}

    def report(step: int, total: int) -> None:
        if state["bar"] is None:
            whole = total * n_chunks
            if console.is_terminal:
                bar = Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(),
                               TimeRemainingColumn(), console=console, transient=True)
                task = bar.add_task(label, total=whole)
                bar.start()
                state["bar"] = ("rich", bar, task)
            else:
                # the clock starts at this first report, so the rate counts only what came after it
                first = state["chunk"] * total + step
                state["bar"] = ("plain", PlainProgress(label, whole, start=first), None)
        if step < state["last"]:
            state["chunk"] += 1
        state["last"] = step
        done = state["chunk"] * total + step  # samplers report steps 1..total
        kind, bar, task = state["bar"]
        bar.update(task, completed=done) if kind == "rich" else bar.update(done)

    try:
        yield report
    finally:
        if state["bar"] is not None and state["bar"][0] == "rich":
            state["bar"][1].stop()


class Logger:
    def __init__(self, run_dir: Path, enabled: bool = True, tensorboard: bool = True, total: int = 0,
                 start: int = 0, progress: bool = True):
        self.run_dir, self.enabled = Path(run_dir), enabled
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.writer = None
        self._t0, self._last_t, self._last_step = time.time(), time.time(), start
        self.progress = self.plain = None
        self._info = ""
        if not enabled:
            return
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # steps after the checkpoint are about to be logged again: TensorBoard drops its copies of
            # them (from start + 1 on, the first step a resumed run logs), not the checkpoint step itself
            self.writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=start + 1 if start else None)
        if not progress or os.environ.get("GENFORGE_NO_PROGRESS"):
            return
        console = Console(stderr=True)
        if console.is_terminal:
            self.progress = Progress(
                TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[rate]:.1f} it/s"), TextColumn("{task.fields[info]}"),
                TimeRemainingColumn(), transient=False, console=console,
            )
            self.bar = self.progress.add_task("train", total=total, completed=start, rate=0.0, info="")
            self.progress.start()
        else:
            self.plain = PlainProgress("train", total, start)

    def truncate_after(self, step: int) -> None:
        """On resume, drop log lines past the checkpoint (those steps are about to be replayed) and
        lines a crash left torn."""
        if not self.enabled or not self.metrics_path.is_file():
            return
        rows, _ = read_metrics(self.metrics_path)
        keep = [r for r in rows if r.get("step", 0) <= step]
        atomic_write_bytes(self.metrics_path, "".join(json.dumps(r) + "\n" for r in keep).encode())
        # the run's clock goes on from where the kept log ends instead of restarting at 0
        last = max((r["time"] for r in keep if isinstance(r.get("time"), (int, float))), default=0.0)
        self._t0 = time.time() - float(last)

    def warn(self, message: str) -> None:
        if not self.enabled:
            return
        if self.progress is not None:
            self.progress.console.print(f"[yellow]warning:[/] {message}", highlight=False)
        else:
            print(f"warning: {message}", file=sys.stderr, flush=True)

    def log(self, step: int, values: dict[str, float], images: int | None = None) -> None:
        if not self.enabled:
            return
        now = time.time()
        # NaN is not JSON: a diverged value is logged as null, so the file stays readable everywhere
        values = {k: (v if math.isfinite(v) else None) for k, v in values.items()}
        rec = {"step": step, "time": round(now - self._t0, 3), **values}
        if images and step > self._last_step:
            rate = (step - self._last_step) / max(now - self._last_t, 1e-9)
            rec["it_per_s"] = round(rate, 3)
            rec["img_per_s"] = round(rate * images, 2)
            self._last_t, self._last_step = now, step
        try:
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(rec) + "\n")
        except OSError as e:
            raise GenforgeError(f"cannot append to {self.metrics_path}: {e.strerror or e}; free space or fix "
                                "the directory, then continue with --resume") from None
        if self.writer is not None:
            for k, v in values.items():
                if v is not None:
                    self.writer.add_scalar(k, v, step)
        info = " ".join(f"{k}={v:.4g}" if v is not None else f"{k}=nan" for k, v in list(values.items())[:3])
        self._info = info
        if self.progress is not None:
            self.progress.update(self.bar, info=info, rate=rec.get("it_per_s", 0.0))

    def advance(self, step: int) -> None:
        if self.progress is not None:
            self.progress.update(self.bar, completed=step)
        elif self.plain is not None:
            self.plain.update(step, self._info)

    def image(self, tag: str, pil_image, step: int) -> None:
        if self.writer is not None:
            self.writer.add_image(tag, np.asarray(pil_image.convert("RGB")), step, dataformats="HWC")

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
        if self.writer is not None:
            self.writer.close()
