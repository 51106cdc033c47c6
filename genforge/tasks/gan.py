"""GAN training step: DCGAN's non-saturating BCE loss, or hinge loss for the conditional GAN."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import GenforgeError
from ..registry import register_task
from . import Task


@register_task("gan")
class GANTask(Task):
    models = ("dcgan", "sngan", "cgan")

    #: D(fake) below this mean probability means the discriminator tells every fake apart
    WON_BELOW = 0.02

    def __init__(self, cfg, data=None, run_dir=None, won_after: int = 200):
        super().__init__(cfg, data, run_dir)
        if self.model.discriminator is None:
            raise GenforgeError("model.params.discriminator=false builds a generator alone (a shipped model); "
                                "training needs the discriminator: drop that setting")
        self.nets = {"d": self.model.discriminator, "g": self.model.generator}
        self.won_after = won_after  # steps of d_fake < WON_BELOW before the user is told
        self._won_since: int | None = None
        self._told = False

    def monitor(self, step, values):
        d_fake = values.get("d_fake")
        if d_fake is None or d_fake >= self.WON_BELOW:
            self._won_since = None
            return None
        self._won_since = step if self._won_since is None else self._won_since
        if self._told or step - self._won_since < self.won_after:
            return None
        self._told = True
        return (f"the discriminator has won: it has rated the generator's images fake with certainty "
                f"(d_fake < {self.WON_BELOW}) since step {self._won_since}, so the generator learns little "
                "more. A spectral-norm discriminator with hinge loss holds up better (model.name=sngan, or "
                "the diffusion recipes, which cannot collapse this way); more images, data.flip=true or a "
                "smaller model.params.d_width also help")

    def _labels(self, batch):
        return batch["label"] if self.model.conditional else None

    def step(self, batch, optimize):
        real, y = batch["image"], self._labels(batch)
        g, d = self.nets["g"], self.nets["d"]
        z = torch.randn(real.shape[0], self.model.z_dim, device=real.device)
        fake = g(z, y)
        d_real, d_fake = d(real, y), d(fake.detach(), y)
        if self.model.loss == "hinge":
            loss_d = F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()
        else:
            loss_d = (F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real))
                      + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake)))
        optimize("d", loss_d)
        out = d(fake, y)
        if self.model.loss == "hinge":
            loss_g = -out.mean()
        else:
            loss_g = F.binary_cross_entropy_with_logits(out, torch.ones_like(out))
        optimize("g", loss_g)
        return {"loss_d": loss_d.detach(), "loss_g": loss_g.detach(),
                "d_real": torch.sigmoid(d_real.detach()).mean(),
                "d_fake": torch.sigmoid(d_fake.detach()).mean()}

    @torch.no_grad()
    def sample_images(self, model, n=64, seed=0):
        gen = torch.Generator().manual_seed(seed)
        device = next(model.parameters()).device
        y = None
        if model.conditional:  # one class per grid row
            n = model.num_classes * self.grid_columns
            y = torch.arange(model.num_classes, device=device).repeat_interleave(self.grid_columns)
        z = torch.randn(n, model.z_dim, generator=gen).to(device)
        was = model.training
        model.eval()
        x = model.generator(z, y)
        model.train(was)
        return x
