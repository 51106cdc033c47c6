"""Text-to-video diffusion: a pseudo-3D UNet, diffusers' UNet2DConditionModel run on every frame with
a temporal convolution after each of its ResNet blocks (the factorised space-time design of
Make-A-Video / AnimateDiff, at toy size).

Why not diffusers' UNet3DConditionModel: at 16 frames of 32x32 on one CPU thread it took ~6 s per
batch of 4 clips (its temporal convs are four Conv3d layers per ResNet and its input temporal
transformer is fixed at 8 heads), and it has no text attention mask. Here the spatial work is the
text2image UNet on B*T frames, plus one (3,1,1) conv per ResNet (~2.6 s for the same batch, measured the
same way minutes later on the same busy 2-core box); frame order reaches the network
through that conv (zero-padded at the clip's ends) and an extra input channel holding each frame's
position in the clip (-1 first .. +1 last), so "moving left" has a direction to learn.

Each temporal layer is a residual branch whose last conv starts at zero, so an untrained model is
the per-frame image model, and is attached as a forward hook on the ResNet it follows (a bound
method, so ``copy.deepcopy`` for EMA copies hook and layer together).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from torch import nn

from ..registry import register_model
from ..text.encoders import ENCODERS, MINILM_DIM, TransformerTextEncoder, minilm_states
from .diffusion import DiffusionModel
from .text2image import Tokens, _pad


class TemporalConv(nn.Module):
    """x + conv_t(silu(norm(x))) over the frame axis of (B*T, C, H, W) features."""

    def __init__(self, channels: int, groups: int, kernel: int = 3):
        super().__init__()
        self.frames = 1  # set by VideoModel before each forward
        self.norm = nn.GroupNorm(groups, channels)
        self.conv = nn.Conv3d(channels, channels, (kernel, 1, 1), padding=(kernel // 2, 0, 0))
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bt, c, h, w = x.shape
        t = self.frames
        y = nn.functional.silu(self.norm(x))
        y = y.view(bt // t, t, c, h, w).transpose(1, 2)  # (B, C, T, H, W)
        y = self.conv(y).transpose(1, 2).reshape(bt, c, h, w)
        return x + y

    def hook(self, module: nn.Module, args, output: torch.Tensor) -> torch.Tensor:
        return self(output)


class VideoModel(nn.Module):
    make_scheduler = DiffusionModel.make_scheduler
    _spacing = DiffusionModel._spacing

    def __init__(
        self,
        channels: int = 3,
        image_size: int = 32,
        frames: int = 16,
        widths: tuple[int, ...] = (32, 64, 64),
        layers_per_block: int = 1,
        cross_attention: tuple[bool, ...] = (False, True, True),
        attention_heads: int = 4,
        temporal_kernel: int = 3,
        text_encoder: str = "transformer",
        vocab_size: int = 256,
        context: int = 32,
        text_dim: int = 64,
        text_layers: int = 2,
        text_heads: int = 4,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "squaredcos_cap_v2",
        prediction_type: str = "v_prediction",
    ):
        super().__init__()
        widths, cross_attention = tuple(widths), tuple(cross_attention)
        if len(widths) != len(cross_attention):
            raise ValueError("widths and cross_attention need one entry per resolution level")
        if text_encoder not in ENCODERS:
            raise ValueError(f"unknown text_encoder {text_encoder!r}; choose one of: {', '.join(ENCODERS)}")
        if image_size % 2 ** (len(widths) - 1):
            raise ValueError(f"image_size {image_size} must be divisible by {2 ** (len(widths) - 1)} "
                             f"for {len(widths)} resolution levels")
        if not 1 <= frames <= 64:
            raise ValueError(f"frames must be in 1..64, got {frames}")
        if temporal_kernel < 1 or temporal_kernel % 2 == 0:
            raise ValueError(f"temporal_kernel must be odd and positive, got {temporal_kernel}")
        self.text_encoder_name, self.context = text_encoder, context
        if text_encoder == "transformer":
            self.text = TransformerTextEncoder(vocab_size, text_dim, text_layers, text_heads, context)
        else:  # as in text2image: the frozen MiniLM is shared per process, only the projection trains
            self.text_proj = nn.Linear(MINILM_DIM, text_dim)
        down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in cross_attention)
        up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cross_attention))
        groups = min(32, min(widths))
        self.unet = UNet2DConditionModel(
            sample_size=image_size, in_channels=channels + 1, out_channels=channels,
            block_out_channels=widths, layers_per_block=layers_per_block,
            down_block_types=down, up_block_types=up, mid_block_type="UNetMidBlock2DCrossAttn",
            norm_num_groups=groups, cross_attention_dim=text_dim, attention_head_dim=attention_heads,
        )
        resnets = [r for b in [*self.unet.down_blocks, self.unet.mid_block, *self.unet.up_blocks]
                   for r in b.resnets]
        self.temporal = nn.ModuleList(TemporalConv(r.out_channels, groups, temporal_kernel) for r in resnets)
        for r, layer in zip(resnets, self.temporal):
            r.register_forward_hook(layer.hook)
        self.scheduler_config = dict(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule,
                                     prediction_type=prediction_type)
        self.train_scheduler = DDPMScheduler(**self.scheduler_config)
        self.channels, self.image_size, self.frames = channels, image_size, frames

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.text_encoder_name == "transformer":
            return self.text(ids, mask)
        return self.text_proj(minilm_states(ids, mask))

    def denoise(self, x: torch.Tensor, t: torch.Tensor, states: torch.Tensor, mask: torch.Tensor):
        """Prediction for clips ``x`` (B, T, C, H, W) at timesteps ``t`` (B,)."""
        b, frames, c, h, w = x.shape
        for layer in self.temporal:
            layer.frames = frames
        where = torch.linspace(-1, 1, frames, device=x.device, dtype=x.dtype) if frames > 1 else \
            torch.zeros(1, device=x.device, dtype=x.dtype)
        pos = where.view(1, frames, 1, 1, 1).expand(b, frames, 1, h, w)
        flat = torch.cat([x, pos], 2).reshape(b * frames, c + 1, h, w)
        out = self.unet(flat, t.repeat_interleave(frames), encoder_hidden_states=states.repeat_interleave(frames, 0),
                        encoder_attention_mask=mask.repeat_interleave(frames, 0)).sample
        return out.view(b, frames, c, h, w)

    def forward(self, x: torch.Tensor, t: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor):
        return self.denoise(x, t, self.encode_text(ids, mask), mask)

    @torch.no_grad()
    def sample(
        self,
        noise: torch.Tensor,
        cond: Tokens,
        uncond: Optional[Tokens] = None,
        guidance: float = 1.0,
        steps: int = 12,
        sampler: str = "dpm++",
        generator: Optional[torch.Generator] = None,
        progress: Optional[Callable[[int, int], None]] = None,
        first_frame: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Denoise ``noise`` (B, T, C, H, W) into clips in [-1, 1] that match ``cond``, with
        classifier-free guidance as in ``TextToImageModel.sample``. ``first_frame`` (B, C, H, W) in
        [-1, 1] fixes frame 0 (image-to-video by replacement: at every step frame 0 is set to the
        given image noised to the step's level, so the other frames are drawn consistent with it)."""
        ids, mask = cond
        guided = guidance != 1.0
        if guided:
            if uncond is None:
                raise ValueError("guidance needs the unconditional tokens")
            width = max(ids.shape[1], uncond[0].shape[1])
            ids = torch.cat([_pad(ids, width), _pad(uncond[0], width)])
            mask = torch.cat([_pad(mask, width), _pad(uncond[1], width)])
        states = self.encode_text(ids, mask)
        sched = self.make_scheduler(sampler)
        sched.set_timesteps(steps, device=noise.device)
        x = noise * sched.init_noise_sigma
        if first_frame is not None:
            known = first_frame.to(x)
            fixed = self.train_scheduler  # its add_noise gives the variance-preserving x_t of any step
        for i, t in enumerate(sched.timesteps):
            if first_frame is not None:
                x[:, 0] = _noised(fixed, known, noise[:, 0], t)
            inp = sched.scale_model_input(x, t)
            if guided:
                both = self.denoise(torch.cat([inp, inp]), t.expand(2 * x.shape[0]), states, mask)
                c, u = both.chunk(2)
                pred = u + guidance * (c - u)
            else:
                pred = self.denoise(inp, t.expand(x.shape[0]), states, mask)
            x = sched.step(pred, t, x, generator=generator).prev_sample
            if progress is not None:
                progress(i + 1, len(sched.timesteps))
        if first_frame is not None:
            x[:, 0] = known
        return x.clamp(-1, 1)


def _noised(sched: DDPMScheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    # every sampler here (ddpm, ddim, dpm++) steps the variance-preserving x_t itself
    return sched.add_noise(x0, noise, t.long().view(1).expand(x0.shape[0]).cpu()).to(x0)


@register_model("video_unet")
def video_unet(channels: int = 3, image_size: int = 32, frames: int = 16, widths: tuple[int, ...] = (32, 64, 64),
               layers_per_block: int = 1, cross_attention: tuple[bool, ...] = (False, True, True),
               attention_heads: int = 4, temporal_kernel: int = 3, text_encoder: str = "transformer",
               vocab_size: int = 256, context: int = 32, text_dim: int = 64, text_layers: int = 2,
               text_heads: int = 4, num_train_timesteps: int = 1000, beta_schedule: str = "squaredcos_cap_v2",
               prediction_type: str = "v_prediction") -> VideoModel:
    return VideoModel(channels, image_size, frames, widths, layers_per_block, cross_attention, attention_heads,
                      temporal_kernel, text_encoder, vocab_size, context, text_dim, text_layers, text_heads,
                      num_train_timesteps, beta_schedule, prediction_type)
