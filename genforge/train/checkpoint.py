"""Run-directory I/O: atomic safetensors writes, optimizer state without pickle, resume points.

Layout of a run directory::

    config.json            resolved RunConfig + genforge version
    model.safetensors      weights for inference (EMA weights when EMA is on)
    metrics.jsonl          one JSON object per logged step
    train_state/step_000500/{model,ema,optim}.safetensors + state.json
    train_state/latest     name of the newest complete resume point

Every file is written to a temporary name, fsynced, and renamed into place (then the directory is
fsynced), and a resume point becomes visible only when its directory is renamed, so a kill or a power
cut at any moment leaves either the old or the new checkpoint, never half of one. A failed write (a
full disk) removes its temporary files and raises a GenforgeError that names the space it needed.
"""
from __future__ import annotations

import errno
import io
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from ..errors import GenforgeError

STATE_DIR = "train_state"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_writable(path: Path, hint: str = "") -> None:
    """Fail early, before any work, when ``path`` (or the nearest folder that exists above it)
    cannot be written."""
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK):
        raise GenforgeError(f"cannot write to {path}: {probe} is not a writable directory{hint}")


def _umask() -> int:
    """The process's umask, read without changing it (os.umask can only set it, and setting it even
    for a moment would change the mode of files other threads create then)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def ordinary_mode(path: str | Path) -> None:
    """Give a file made by ``tempfile.mkstemp`` (mode 0600) the mode a plain ``open`` would have given
    it, 0666 less the umask, before it is renamed to the name a user asked for."""
    os.chmod(path, 0o666 & ~_umask())


def _open_tmp(path: Path):
    """The temporary file a write goes to (one place, so tests can make a disk fill up)."""
    return open(path, "wb")


def _write_failed(path: Path, err: OSError, needed: int) -> GenforgeError:
    free = shutil.disk_usage(path.parent).free if path.parent.exists() else 0
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return GenforgeError(
            f"no space left to write {path.name} in {path.parent}: it needs about {needed / 2**20:.1f} MB "
            f"and {free / 2**20:.1f} MB are free; free some space and run again (a training run continues "
            f"with --resume; train.keep_last=1 keeps fewer checkpoints)")
    return GenforgeError(f"cannot write {path}: {err.strerror or err}; fix the directory, then --resume")


def _write_raw(path: Path, data: bytes) -> None:
    """Write, fsync, rename, fsync the directory; on failure the temporary file is removed and the
    OSError propagates."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with _open_tmp(tmp) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    try:
        _write_raw(path, data)
    except OSError as e:
        raise _write_failed(path, e, len(data)) from None


def atomic_write_png(path: Path, image) -> None:
    """A PIL image as a PNG file, written like every other run-directory file."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def _serialise(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    # safetensors refuses shared storage and non-contiguous tensors; clone makes each one standalone.
    # Serialising to bytes lets the one atomic writer fsync and clean up for every file.
    return save({k: v.detach().contiguous().clone().cpu() for k, v in tensors.items()}, metadata=metadata)


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None):
    atomic_write_bytes(Path(path), _serialise(tensors, metadata))


def all_finite(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Names of floating-point tensors holding NaN or inf (empty when all are finite)."""
    return [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]


def read_metrics(path: Path, warn: bool = True) -> tuple[list[dict], int]:
    """The records of a metrics.jsonl, skipping lines a crash or a full disk left torn.

    Returns (records, number of unreadable lines); a warning names the file when any were skipped.
    """
    path = Path(path)
    if not path.is_file():
        return [], 0
    rows, bad = [], 0
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(rec, dict):
            rows.append(rec)
        else:
            bad += 1
    if bad and warn:
        print(f"warning: skipped {bad} unreadable line(s) of {path} (torn by a crash or a full disk)",
              file=sys.stderr)
    return rows, bad


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise GenforgeError(f"{path} not found: the run directory is incomplete")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise GenforgeError(
            f"{path} is not a readable safetensors file ({e}); it may be truncated: retrain or restore it"
        ) from None


def load_weights(module: torch.nn.Module, path: Path) -> None:
    """Load a state dict with a clear error when the checkpoint belongs to another model."""
    state = load_tensors(path)
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        what = f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}"
        raise GenforgeError(
            f"{path} does not match the model in config.json ({what}, {len(missing)} missing, "
            f"{len(unexpected)} unexpected keys): it was saved from a different model"
        )
    for k, v in own.items():
        if v.shape != state[k].shape:
            raise GenforgeError(
                f"{path}: tensor {k!r} has shape {tuple(state[k].shape)} but the model expects "
                f"{tuple(v.shape)}: config.json and the weights come from different models"
            )
    module.load_state_dict(state)


def optimizer_to_tensors(name: str, opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state dict into tensors (safetensors) and plain JSON."""
    sd = opt.state_dict()
    tensors, plain_state = {}, {}
    for idx, st in sd["state"].items():
        plain_state[str(idx)] = {}
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{name}.{idx}.{k}"] = v
            else:
                plain_state[str(idx)][k] = v
    return tensors, {"param_groups": sd["param_groups"], "plain": plain_state}


def optimizer_from_tensors(name: str, opt: torch.optim.Optimizer, tensors: dict, info: dict) -> None:
    state: dict[int, dict] = {}
    for idx, plain in info["plain"].items():
        state[int(idx)] = dict(plain)
    prefix = f"{name}."
    for key, v in tensors.items():
        if key.startswith(prefix):
            idx, k = key[len(prefix):].split(".", 1)
            state.setdefault(int(idx), {})[k] = v
    # which kernel runs the update (foreach, fused, ...) is this machine's choice, not the checkpoint's:
    # a run resumed elsewhere, or saved before these keys were recorded, keeps the optimizer it built
    groups = [{**saved, **{k: own[k] for k in _IMPL_KEYS if k in own}}
              for saved, own in zip(info["param_groups"], opt.param_groups)]
    groups += info["param_groups"][len(groups):]
    opt.load_state_dict({"state": state, "param_groups": groups})


_IMPL_KEYS = ("foreach", "fused", "capturable", "differentiable")


def latest_state(run_dir: Path) -> Path | None:
    """The newest complete resume point, or None when the run never reached one."""
    root = Path(run_dir) / STATE_DIR
    pointer = root / "latest"
    if pointer.is_file():
        cand = root / pointer.read_text().strip()
        if (cand / "state.json").is_file():
            return cand
    done = sorted(p for p in root.glob("step_*") if (p / "state.json").is_file()) if root.is_dir() else []
    return done[-1] if done else None


def state_step(state_dir: Path) -> int:
    return int(json.loads((Path(state_dir) / "state.json").read_text())["step"])


def write_state(run_dir: Path, step: int, files: dict[str, dict[str, torch.Tensor]], info: dict,
                keep_last: int) -> Path:
    root = Path(run_dir) / STATE_DIR
    newest = latest_state(run_dir)
    if newest is not None and state_step(newest) > step:
        # weights of a later step must never be filed under an earlier one
        raise GenforgeError(f"refusing to write a checkpoint for step {step}: {newest} is newer")
    bad = [f"{fname}:{k}" for fname, tensors in files.items() for k in all_finite(tensors)]
    if bad:
        raise GenforgeError(f"refusing to checkpoint step {step}: {bad[0]} (and {len(bad) - 1} more) hold "
                            "NaN or inf")
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:08d}"
    final, tmp = root / name, root / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    blobs = {f"{fname}.safetensors": _serialise(tensors) for fname, tensors in files.items()}
    blobs["state.json"] = (json.dumps(info, indent=2) + "\n").encode()
    try:
        tmp.mkdir()
        for fname, data in blobs.items():
            _write_raw(tmp / fname, data)
        _fsync_dir(tmp)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _write_failed(final, e, sum(map(len, blobs.values()))) from None
    _fsync_dir(root)
    atomic_write_bytes(root / "latest", name.encode())
    for old in sorted(p for p in root.glob("step_*") if p.is_dir())[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final
