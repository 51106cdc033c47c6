"""CPU allocator tuning applied by the CLI at start-up.

glibc's default malloc returns large tensor buffers to the OS after every free and maps them again
on the next allocation; raising the mmap/trim thresholds keeps them in the heap, which roughly
doubles matmul-heavy training throughput on small CPUs (the effect PyTorch's CPU tuning guide gets
by swapping in jemalloc/tcmalloc). Environment variables of the same name, when set, win.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_SETTINGS = {
    "MALLOC_MMAP_THRESHOLD_": (_M_MMAP_THRESHOLD, 32 * 1024 * 1024),
    "MALLOC_TRIM_THRESHOLD_": (_M_TRIM_THRESHOLD, 16 * 1024 ** 3),
    "MALLOC_TOP_PAD_": (_M_TOP_PAD, 1024 ** 3),
}


def tune_malloc() -> bool:
    """Apply the thresholds via mallopt; returns False where glibc is not available."""
    if os.environ.get("GENFORGE_NO_MALLOC_TUNING"):
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = True
    for env, (param, value) in _SETTINGS.items():
        if env in os.environ:
            continue
        ok &= bool(mallopt(ctypes.c_int(param), ctypes.c_int(min(value, 2**31 - 1))))
    return ok


def malloc_trim() -> bool:
    """Give freed heap memory back to the OS now. The thresholds above keep freed buffers for reuse,
    which suits training's same-sized tensors; a server that just decoded a large upload would
    otherwise keep that peak for good (each worker thread holds its own malloc arena)."""
    libc = _libc()
    trim = getattr(libc, "malloc_trim", None)
    return bool(trim(ctypes.c_size_t(0))) if trim is not None else False


@functools.lru_cache(maxsize=1)
def _libc():
    name = ctypes.util.find_library("c")  # runs ldconfig: once per process, not per call
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None
