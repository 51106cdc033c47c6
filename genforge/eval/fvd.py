"""FVD-<name>: the Fréchet distance between feature statistics of generated and real clips, with the
features of a genforge video classifier (a ``video_classify`` run; ``genforge train videoclass_shapes``).

The standard FVD uses an I3D network trained on Kinetics; its weights cannot be downloaded here, so
the figure is always named after the feature net that produced it (``FVD-videoclass-shapes``) and is
only comparable between runs measured with the same net, clip count and reference clips. The distance
itself is the image FID's (``fid.fid_from_features``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import GenforgeError
from ..registry import register_feature_net
from .fid import fid_from_features

SHIPPED = "videoclass-shapes"  # the shipped video feature net's name, when one is shipped
HOW_TO_TRAIN = ("train one with `genforge train videoclass_shapes --out runs/videoclass-shapes` "
                "(a few minutes on one CPU thread) and pass --feature-net runs/videoclass-shapes")


def check_uint8_clips(clips: Any) -> torch.Tensor:
    if not isinstance(clips, torch.Tensor) or clips.dtype != torch.uint8 or clips.dim() != 5:
        got = f"{clips.dtype} {tuple(clips.shape)}" if isinstance(clips, torch.Tensor) else type(clips).__name__
        raise GenforgeError(f"video feature nets take uint8 clips (N, T, C, H, W), got {got}; convert float "
                            "clips in [-1, 1] with genforge.data.transforms.to_uint8")
    return clips.detach().cpu()


def frame_indices(total: int, k: int) -> list[int]:
    """``k`` frame indices spread evenly over ``total`` (first and last kept; repeats when k > total)."""
    if k == 1 or total == 1:
        return [0] * k
    return [round(i * (total - 1) / (k - 1)) for i in range(k)]


@register_feature_net("video_classifier")
class VideoClassifierFeatures:
    """Penultimate features of a trained ``video_cnn``; clips of another length or size are resampled
    to the net's (evenly spread frames, antialiased bilinear resize), as image feature nets resize."""

    def __init__(self, model: nn.Module, name: str = "video_classifier"):
        if not hasattr(model, "features") or not hasattr(model, "frames"):
            raise GenforgeError(f"{type(model).__name__} is not a video classifier; pass a video_cnn model")
        self.model, self.name = model, name
        self.frames, self.image_size, self.channels = int(model.frames), int(model.image_size), int(model.channels)
        self.dim = int(model.feature_dim)

    def prepare(self, clips: torch.Tensor) -> torch.Tensor:
        """uint8 clips (N, T, C, H, W) -> float (N, frames, channels, size, size) in [-1, 1]."""
        clips = check_uint8_clips(clips)
        n, t, c, h, w = clips.shape
        if c != self.channels:
            raise GenforgeError(f"feature net {self.name} reads {self.channels}-channel clips, got {c} channels")
        if t != self.frames:
            clips = clips[:, frame_indices(t, self.frames)]
        x = clips.float() / 127.5 - 1.0  # the inverse of to_uint8
        if (h, w) != (self.image_size, self.image_size):
            x = F.interpolate(x.flatten(0, 1), size=(self.image_size, self.image_size), mode="bilinear",
                              align_corners=False, antialias=True).view(n, self.frames, c, self.image_size,
                                                                        self.image_size)
        return x

    @torch.no_grad()
    def features(self, clips: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        clips = check_uint8_clips(clips)
        device = next(self.model.parameters()).device
        was = self.model.training
        self.model.eval()  # batch-norm batch statistics would make a clip's features depend on its batch
        out = []
        try:
            for s in range(0, clips.shape[0], batch_size):
                out.append(self.model.features(self.prepare(clips[s:s + batch_size]).to(device)).float().cpu())
        finally:
            self.model.train(was)
        return torch.cat(out) if out else torch.zeros(0, self.dim)


def video_feature_net(spec: str, device: str = "auto") -> VideoClassifierFeatures:
    """The feature net of a video_classify run directory or shipped name."""
    from ..pipelines import load_pipeline
    from ..pipelines.video_classify import VideoClassifierPipeline

    pipe = load_pipeline(spec, device=device)
    if not isinstance(pipe, VideoClassifierPipeline):
        raise GenforgeError(f"feature net {spec!r} is a {pipe.cfg.task!r} run; FVD needs a video_classify run; "
                            + HOW_TO_TRAIN)
    return VideoClassifierFeatures(pipe.model, name=Path(str(pipe.run_dir)).name)


def default_video_feature_net(device: str = "auto") -> Optional[VideoClassifierFeatures]:
    """The shipped video feature net, or None when none is shipped (callers then skip FVD and say so)."""
    from ..pipelines import shipped_models

    return video_feature_net(SHIPPED, device) if SHIPPED in shipped_models() else None


def no_feature_net_note() -> str:
    return f"FVD skipped: no video feature net given and none shipped; {HOW_TO_TRAIN}"


def fvd(net: VideoClassifierFeatures, real: torch.Tensor, fake: torch.Tensor) -> dict[str, Any]:
    """``{"metric": "FVD-<net>", "value": ..., "n_real", "n_fake"}`` of two sets of uint8 clips."""
    return fvd_from_features(net.features(real), net.features(fake), net.name)


def fvd_from_features(real_feats: Any, fake_feats: Any, feature_net_name: str) -> dict[str, Any]:
    """The Fréchet distance of two (n, d) feature sets, named FVD-<feature net> so nobody reads it as
    I3D-FVD."""
    return {"metric": f"FVD-{feature_net_name}", "value": fid_from_features(real_feats, fake_feats),
            "n_real": int(len(real_feats)), "n_fake": int(len(fake_feats)), "feature_net": feature_net_name}
