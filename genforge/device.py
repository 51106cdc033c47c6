"""Device choice shared by training, pipelines and evaluation: "auto" takes CUDA when present."""
from __future__ import annotations

import torch

from .errors import GenforgeError


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise GenforgeError(f"device {name!r} requested but CUDA is not available; use cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError:
        raise GenforgeError(f"unknown device {name!r}; use auto, cpu or cuda[:N]") from None
