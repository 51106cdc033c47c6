"""Diffusion training step: the DDPM noise-prediction objective (Ho et al. 2020).

With ``cond_drop`` > 0 (class-conditional models) labels are replaced by the null class at that
rate, which is what lets classifier-free guidance work at sample time.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..registry import register_task
from . import Task


@register_task("diffusion")
class DiffusionTask(Task):
    models = ("diffusion",)

    def __init__(self, cfg, data=None, run_dir=None, cond_drop: float = 0.1, sample_steps: int = 20,
                 sample_sampler: str = "dpm++"):
        super().__init__(cfg, data, run_dir)
        self.cond_drop, self.sample_steps, self.sample_sampler = cond_drop, sample_steps, sample_sampler

    def step(self, batch, optimize):
        x0 = batch["image"]
        net, sched = self.nets["model"], self.model.train_scheduler
        noise = torch.randn_like(x0)
        t = torch.randint(0, sched.config.num_train_timesteps, (x0.shape[0],), device=x0.device)
        xt = sched.add_noise(x0, noise, t)
        labels = None
        if self.model.num_classes:
            labels = batch["label"].clone()
            drop = torch.rand(labels.shape[0], device=labels.device) < self.cond_drop
            labels[drop] = self.model.null_class
        pred = net(xt, t, labels)
        target = noise if sched.config.prediction_type == "epsilon" else sched.get_velocity(x0, noise, t)
        loss = F.mse_loss(pred.float(), target.float())
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
