"""Image recognition: cross-entropy training, accuracy on the held-out split."""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from ..data import load_dataset
from ..data.transforms import to_float
from ..registry import register_task
from . import Task


@torch.no_grad()
def accuracy(model, images_uint8: torch.Tensor, labels: torch.Tensor, batch_size: int = 512) -> float:
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    correct = 0
    for i in range(0, len(labels), batch_size):
        x = to_float(images_uint8[i:i + batch_size]).to(device)
        correct += (model(x).argmax(1).cpu() == labels[i:i + batch_size]).sum().item()
    model.train(was)
    return correct / max(1, len(labels))


@register_task("classify")
class ClassifyTask(Task):
    models = ("cnn",)
    needs = ("image", "label")

    def __init__(self, cfg, data=None, run_dir=None, label_smoothing: float = 0.0):
        super().__init__(cfg, data, run_dir)
        self.label_smoothing = label_smoothing

    def step(self, batch, optimize):
        logits = self.nets["model"](batch["image"])
        loss = F.cross_entropy(logits, batch["label"], label_smoothing=self.label_smoothing)
        optimize("model", loss)
        acc = (logits.detach().argmax(1) == batch["label"]).float().mean()
        return {"loss": loss.detach(), "acc": acc}

    def evaluate(self, model):
        test = load_dataset(self.cfg.data.model_copy(update={"split": "test", "flip": False}))
        if not test.meta.get("held_out", True):
            warnings.warn("the 'test' images are the training images (data.val_fraction=0), so the accuracy "
                          "below says how well the net memorised them; reported as train_accuracy")
            return {"train_accuracy": accuracy(model, test.images, test.labels)}
        return {"test_accuracy": accuracy(model, test.images, test.labels)}
