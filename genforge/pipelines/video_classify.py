"""What a clip shows, from a ``video_classify`` run: ``pipe(clips)`` -> per clip, the attribute words
it predicts by group (shape, color, motion, size, background); also the FVD feature net's model."""
from __future__ import annotations

import torch

from ..errors import GenforgeError
from . import Pipeline


class VideoClassifierPipeline(Pipeline):
    @property
    def kind(self) -> str:
        return "video_classify"

    @property
    def frames(self) -> int:
        return int(self.model.frames)

    @property
    def image_size(self) -> int:
        return int(self.model.image_size)

    def features(self, clips: torch.Tensor) -> torch.Tensor:
        """(N, feature_dim) penultimate features of uint8 clips of any length and size."""
        from ..eval.fvd import VideoClassifierFeatures

        return VideoClassifierFeatures(self.model, name=self.run_dir.name).features(clips)

    @torch.no_grad()
    def probabilities(self, clips: torch.Tensor) -> torch.Tensor:
        """(N, len(ATTRIBUTES)) sigmoid probabilities of uint8 clips (N, T, C, H, W), resampled to the
        net's frames and size."""
        from ..eval.fvd import VideoClassifierFeatures

        prepared = VideoClassifierFeatures(self.model, name=self.run_dir.name).prepare(clips)
        return torch.cat([torch.sigmoid(self.model(prepared[i:i + 64].to(self.device)).float()).cpu()
                          for i in range(0, len(prepared), 64)]) if len(prepared) else \
            torch.zeros(0, self.model.num_outputs)

    def __call__(self, clips: torch.Tensor) -> list[dict[str, list[str]]]:
        from ..tasks.video_classify import ATTRIBUTES, GROUPS

        if isinstance(clips, torch.Tensor) and clips.dim() == 4:
            clips = clips[None]  # one clip (T, C, H, W)
        probs = self.probabilities(clips)
        if probs.shape[1:] != (len(ATTRIBUTES),):
            raise GenforgeError(f"{self.run_dir.name} predicts {probs.shape[1]} attributes, this genforge knows "
                                f"{len(ATTRIBUTES)}; retrain it with this version")
        out = []
        for p in probs:
            found: dict[str, list[str]] = {g: [] for g in GROUPS}
            for a, v in zip(ATTRIBUTES, p.tolist()):
                if v > 0.5:
                    group, word = a.split(":", 1)
                    found[group].append(word)
            out.append(found)
        return out
