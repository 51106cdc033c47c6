"""Diffusion training step: the DDPM noise-prediction objective (Ho et al. 2020).

With ``cond_drop`` > 0 (class-conditional models) labels are replaced by the null class at that
rate, which is what lets classifier-free guidance work at sample time.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..registry import register_task
from . import Task


def denoising_loss(sched, x0: torch.Tensor, predict: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                   noise_like: Callable[[torch.Tensor], torch.Tensor] = torch.randn_like):
    """The DDPM training loss of one batch: noise ``x0`` to random timesteps and compare
    ``predict(xt, t)`` with the noise (epsilon models) or the velocity (v-prediction).
    Noise and timesteps are drawn before ``predict`` runs, so a conditioning dropout drawn inside
    it keeps the random stream's order. ``noise_like``: the model's noise prior (video: frames
    share part of their noise), standard normal by default."""
    noise = noise_like(x0)
    t = torch.randint(0, sched.config.num_train_timesteps, (x0.shape[0],), device=x0.device)
    pred = predict(sched.add_noise(x0, noise, t), t)
    target = noise if sched.config.prediction_type == "epsilon" else sched.get_velocity(x0, noise, t)
    return F.mse_loss(pred.float(), target.float())


@register_task("diffusion")
class DiffusionTask(Task):
    models = ("diffusion",)

    def __init__(self, cfg, data=None, run_dir=None, cond_drop: float = 0.1, sample_steps: int = 20,
                 sample_sampler: str = "dpm++"):
        super().__init__(cfg, data, run_dir)
        self.cond_drop, self.sample_steps, self.sample_sampler = cond_drop, sample_steps, sample_sampler

    def step(self, batch, optimize):
        net = self.nets["model"]

        def predict(xt, t):
            labels = None
            if self.model.num_classes:
                labels = batch["label"].clone()
                drop = torch.rand(labels.shape[0], device=labels.device) < self.cond_drop
                labels[drop] = self.model.null_class
            return net(xt, t, labels)

        loss = denoising_loss(self.model.train_scheduler, batch["image"], predict)
        optimize("model", loss)
        return {"loss": loss.detach()}

    @torch.no_grad()
    def sample_images(self, model, n=64, seed=0):
        gen = torch.Generator().manual_seed(seed)
        device = next(model.parameters()).device
        labels = None
        if model.num_classes:  # one class per grid row
            n = model.num_classes * self.grid_columns
            labels = torch.arange(model.num_classes, device=device).repeat_interleave(self.grid_columns)
        noise = torch.randn(n, model.channels, model.image_size, model.image_size, generator=gen)
        was = model.training
        model.eval()
        x = model.sample(noise.to(device), steps=self.sample_steps, sampler=self.sample_sampler,
                         labels=labels, generator=gen)
        model.train(was)
        return x
