"""Opt-in compiled sampling: the per-step forward (a denoiser's UNet, a GAN's generator) through
``torch.compile``, with the batch padded up to a fixed bucket.

Our models are small enough that a forward is bound by kernel launches and Python, not arithmetic, so
compiling pays: inductor fuses the elementwise work on CPU, and on CUDA ``reduce-overhead`` replays the
whole forward as one CUDA graph. Both want static shapes (a CUDA graph is recorded for one shape), so
each batch is padded to the next bucket and the result sliced: a handful of graphs serve any batch.

Compilation is lazy and can fail at the first call of a bucket (no C compiler, an unsupported op); the
wrapper then warns once and runs eager from there on, so ``--compile`` never turns a working command
into a crash.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

BUCKETS = (1, 2, 4, 8, 16, 32, 64)
log = logging.getLogger("genforge")


def inductor_cache_dir() -> Path:
    return Path.home() / ".cache" / "genforge" / "inductor"


def use_inductor_cache() -> str:
    """Keep inductor's compiled graphs where a restart finds them (a user's own setting wins)."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(inductor_cache_dir()))
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = True
    return os.environ["TORCHINDUCTOR_CACHE_DIR"]


def bucket_for(n: int, buckets: Sequence[int] = BUCKETS) -> Optional[int]:
    """The smallest bucket that holds ``n`` rows, or None when ``n`` is above the largest."""
    return next((b for b in buckets if b >= n), None)


def _pad(a, n: int, b: int):
    if not isinstance(a, torch.Tensor) or b == n:
        return a
    # repeating the last row keeps the padding a valid input (class indices stay in range)
    return torch.cat([a, a[-1:].expand(b - n, *a.shape[1:])])


def _slice(a, i: int, j: int):
    return a[i:j] if isinstance(a, torch.Tensor) else a


class BucketedForward:
    """``fn(x, *rest)`` compiled once per bucket of ``x.shape[0]``: rows are padded up to the bucket
    and the output sliced back; batches beyond the largest bucket run in chunks of it."""

    def __init__(self, fn: Callable[..., torch.Tensor], device: torch.device, buckets: Sequence[int] = BUCKETS,
                 name: str = "model", compiler: Optional[Callable[..., Callable]] = None):
        self.eager, self.name, self.buckets = fn, name, tuple(sorted(buckets))
        self.cuda = torch.device(device).type == "cuda"
        self.mode = "reduce-overhead" if self.cuda else None
        self.ready: set[int] = set()  # buckets whose first (compiling) call succeeded
        self.failed: Optional[str] = None
        self.compile_seconds: dict[int, float] = {}
        self.cache_dir = use_inductor_cache()
        import torch._dynamo.config as dynamo_config

        # one static-shape graph per bucket, times the few argument variants (labels or none): the
        # default limit of 8 would silently fall back to eager after the eighth
        dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 4 * len(self.buckets))
        self._compiled = (compiler or torch.compile)(fn, mode=self.mode, dynamic=False)

    def __call__(self, x: torch.Tensor, *rest) -> torch.Tensor:
        if self.failed:
            return self.eager(x, *rest)
        n = x.shape[0]
        b = bucket_for(n, self.buckets)
        if b is None:
            top = self.buckets[-1]
            return torch.cat([self(_slice(x, i, i + top), *(_slice(a, i, i + top) for a in rest))
                              for i in range(0, n, top)])
        args = [_pad(a, n, b) for a in (x, *rest)]
        if b in self.ready:
            return self._run(args, n)
        start = time.perf_counter()
        try:
            out = self._run(args, n)
        except Exception as e:  # compilation failed: eager decides whether the input itself was bad
            out = self.eager(x, *rest)
            self._fall_back(e)
            return out
        self.compile_seconds[b] = time.perf_counter() - start
        self.ready.add(b)
        return out

    def _run(self, args: list, n: int) -> torch.Tensor:
        if self.cuda:  # each call is a new step: CUDA graph outputs of the last replay may be reused
            torch.compiler.cudagraph_mark_step_begin()
        out = self._compiled(*args)[:n]
        # a CUDA graph's output lives in memory the next replay overwrites
        return out.clone() if self.cuda else out

    def _fall_back(self, e: Exception) -> None:
        # dynamo wraps the compiler's own error (BackendCompilerFailed); that inner one says what broke
        e = getattr(e, "inner_exception", None) or e
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        first = first if len(first) <= 200 else first[:197] + "..."
        self.failed = f"{type(e).__name__}: {first}" if first else type(e).__name__
        msg = (f"warning: --compile: compiling {self.name} failed ({self.failed}); running it uncompiled "
               "(is a C compiler installed?)")
        log.warning(msg)  # with no logging set up, Python's last-resort handler prints it to stderr

    def warm_up(self, make_args: Callable[[int], tuple], max_batch: int) -> dict[int, float]:
        """Compile every bucket up to the one holding ``max_batch``; seconds per bucket compiled."""
        top = bucket_for(max_batch, self.buckets) or self.buckets[-1]
        for b in self.buckets:
            if b > top or self.failed:
                break
            with torch.no_grad():
                self(*make_args(b))
        return dict(self.compile_seconds)
