"""Image recognition with a trained CNN; also provides the features used by FID-<featurenet>."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from ..data.transforms import pil_to_uint8, resize_center_crop, to_float
from . import Pipeline


class ClassifierPipeline(Pipeline):
    @property
    def image_size(self) -> int:
        return int(self.cfg.model.params.get("image_size", 32))

    @property
    def channels(self) -> int:
        return int(self.cfg.model.params.get("in_channels", 1))

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return torch.stack([pil_to_uint8(resize_center_crop(im, self.image_size), self.channels)
                            for im in images])

    @torch.no_grad()
    def predict_uint8(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        probs = []
        for i in range(0, len(images), batch_size):
            x = to_float(images[i:i + batch_size]).to(self.device)
            probs.append(F.softmax(self.model(x).float(), dim=1).cpu())
        return torch.cat(probs)

    def __call__(self, images: Image.Image | Sequence[Image.Image], top_k: int = 3) -> list[list[dict]]:
        if isinstance(images, Image.Image):
            images = [images]
        probs = self.predict_uint8(self.preprocess(images))
        names = self.class_names or [str(i) for i in range(probs.shape[1])]
        out = []
        for p in probs:
            vals, idx = p.topk(min(top_k, len(names)))
            out.append([{"label": names[i], "index": int(i), "score": float(v)} for v, i in zip(vals, idx)])
        return out
