"""Diffusion: diffusers' UNet2DModel trained with the DDPM objective, sampled with DDPM, DDIM,
DPM-Solver++ or its SDE variant (chosen at sample time; all share the training noise schedule).

Class conditioning uses the UNet's class embedding. When ``cond_drop`` > 0 the last class index is
reserved as the "no class" token, so classifier-free guidance works at sample time.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, UNet2DModel
from torch import nn

from ..errors import GenforgeError
from ..registry import register_model

SAMPLERS = ("ddpm", "ddim", "dpm++", "dpm++sde")


class DiffusionModel(nn.Module):
    def __init__(
        self,
        channels: int = 1,
        image_size: int = 32,
        widths: tuple[int, ...] = (32, 64, 64),
        layers_per_block: int = 1,
        attention: tuple[bool, ...] = (False, False, True),
        num_classes: int = 0,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "squaredcos_cap_v2",
        prediction_type: str = "epsilon",
        scale_shift: bool = False,
    ):
        super().__init__()
        widths, attention = tuple(widths), tuple(attention)
        if len(widths) != len(attention):
            raise ValueError("widths and attention need one entry per resolution level")
        if image_size % 2 ** (len(widths) - 1):
            raise ValueError(f"image_size {image_size} must be divisible by {2 ** (len(widths) - 1)} "
                             f"for {len(widths)} resolution levels")
        down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention)
        up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention))
        self.num_classes = num_classes
        self.unet = UNet2DModel(
            sample_size=image_size,
            in_channels=channels,
            out_channels=channels,
            block_out_channels=widths,
            layers_per_block=layers_per_block,
            down_block_types=down,
            up_block_types=up,
            norm_num_groups=min(32, min(widths)),
            attention_head_dim=min(32, widths[-1]),
            # one extra class: the "unconditional" token for classifier-free guidance
            num_class_embeds=num_classes + 1 if num_classes else None,
            # "default" adds the time/class embedding before GroupNorm, which removes it wherever a group
            # holds one channel (width 16 under 16 groups); scale_shift applies it after the norm (FiLM)
            resnet_time_scale_shift="scale_shift" if scale_shift else "default",
        )
        self.scheduler_config = dict(
            num_train_timesteps=num_train_timesteps,
            beta_schedule=beta_schedule,
            prediction_type=prediction_type,
        )
        self.train_scheduler = DDPMScheduler(**self.scheduler_config)
        self.channels, self.image_size = channels, image_size

    @property
    def null_class(self) -> int:
        return self.num_classes

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: Optional[torch.Tensor] = None):
        if self.num_classes and labels is None:
            labels = torch.full((x.shape[0],), self.null_class, device=x.device, dtype=torch.long)
        return self.unet(x, t, class_labels=labels).sample

    def _spacing(self) -> str:
        return "trailing" if self.scheduler_config["prediction_type"] == "v_prediction" else "leading"

    def make_scheduler(self, sampler: str):
        if sampler == "ddpm":
            return DDPMScheduler(**self.scheduler_config)
        if sampler == "ddim":
            return DDIMScheduler(**self.scheduler_config, clip_sample=True, timestep_spacing=self._spacing())
        if sampler in ("dpm++", "dpm++sde"):
            # The cosine schedule ends at alpha_bar ~ 1e-9, where an epsilon model's data prediction
            # x0 = (x - sigma eps) / alpha explodes; DDPM/DDIM clip x0 to [-1, 1], so DPM-Solver++
            # thresholds it the same way and, for epsilon models, starts one stride below t=T
            # ("leading" spacing). A v-prediction model's x0 = alpha x - sigma v stays bounded, so
            # it starts at t=T ("trailing"), as Lin et al. 2023 recommend.
            return DPMSolverMultistepScheduler(
                **self.scheduler_config, solver_order=2,
                # the SDE variant re-injects noise each step, which forgives an imperfect model more
                algorithm_type="sde-dpmsolver++" if sampler == "dpm++sde" else "dpmsolver++",
                thresholding=True, sample_max_value=1.0, timestep_spacing=self._spacing(),
            )
        raise GenforgeError(f"unknown sampler {sampler!r}; choose one of: {', '.join(SAMPLERS)}")

    @torch.no_grad()
    def sample(
        self,
        noise: torch.Tensor,
        steps: int = 25,
        sampler: str = "dpm++",
        labels: Optional[torch.Tensor] = None,
        guidance: float = 1.0,
        generator: Optional[torch.Generator] = None,
        progress: Optional[Callable[[int, int], None]] = None,
        denoiser: Optional[Callable[..., torch.Tensor]] = None,
    ) -> torch.Tensor:
        """Denoise ``noise`` into images in [-1, 1]. ``guidance`` > 1 applies classifier-free
        guidance between ``labels`` and the null class. ``denoiser`` stands in for ``self`` in each
        step's forward (a compiled copy of it, say); the scheduler stays eager."""
        net = denoiser or self
        sched = self.make_scheduler(sampler)
        sched.set_timesteps(steps, device=noise.device)
        x = noise * sched.init_noise_sigma
        guided = labels is not None and guidance != 1.0
        for i, t in enumerate(sched.timesteps):
            inp = sched.scale_model_input(x, t)
            tt = t.expand(x.shape[0]).to(x.device)
            if guided:
                null = torch.full_like(labels, self.null_class)
                both = net(torch.cat([inp, inp]), torch.cat([tt, tt]), torch.cat([labels, null]))
                cond, uncond = both.chunk(2)
                eps = uncond + guidance * (cond - uncond)
            else:
                eps = net(inp, tt, labels)
            x = sched.step(eps, t, x, generator=generator).prev_sample
            if progress is not None:
                progress(i + 1, len(sched.timesteps))
        return x.clamp(-1, 1)


@register_model("diffusion")
def diffusion(channels: int = 1, image_size: int = 32, widths: tuple[int, ...] = (32, 64, 64),
              layers_per_block: int = 1, attention: tuple[bool, ...] = (False, False, True),
              num_classes: int = 0, num_train_timesteps: int = 1000,
              beta_schedule: str = "squaredcos_cap_v2", prediction_type: str = "epsilon",
              scale_shift: bool = False) -> DiffusionModel:
    return DiffusionModel(channels, image_size, widths, layers_per_block, attention, num_classes,
                          num_train_timesteps, beta_schedule, prediction_type, scale_shift)
