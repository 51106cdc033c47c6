"""Text-to-image diffusion: diffusers' UNet2DConditionModel cross-attending to a text encoder's
token states, trained and sampled with the noise schedule and samplers of ``models/diffusion.py``.

The model takes token ids and a keep-mask; which tokenizer made the ids depends on the encoder
(the run's own for ``transformer``, MiniLM's WordPiece for ``minilm``), and the task or pipeline
that owns the tokenizer makes them. The empty text is the unconditional input: the task trains on
it at rate ``cond_drop``, which is what classifier-free guidance at sample time needs.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from torch import nn

from ..registry import register_model
from ..text.encoders import ENCODERS, MINILM_DIM, TransformerTextEncoder, minilm_states
from .diffusion import DiffusionModel

Tokens = tuple[torch.Tensor, torch.Tensor]  # (ids, mask), both (B, L)


class TextToImageModel(nn.Module):
    # the same schedule-to-sampler mapping as unconditional diffusion, so both train and sample alike
    make_scheduler = DiffusionModel.make_scheduler
    _spacing = DiffusionModel._spacing

    def __init__(
        self,
        channels: int = 3,
        image_size: int = 32,
        widths: tuple[int, ...] = (32, 64, 64),
        layers_per_block: int = 1,
        cross_attention: tuple[bool, ...] = (False, True, True),
        attention_heads: int = 4,
        text_encoder: str = "transformer",
        vocab_size: int = 256,
        context: int = 32,
        text_dim: int = 64,
        text_layers: int = 2,
        text_heads: int = 4,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "squaredcos_cap_v2",
        prediction_type: str = "v_prediction",
        extra_inputs: int = 0,
    ):
        """``extra_inputs``: channels the UNet reads beside the image (a subclass's conditioning
        planes, such as the video model's frame position); it still predicts ``channels``."""
        super().__init__()
        widths, cross_attention = tuple(widths), tuple(cross_attention)
        if len(widths) != len(cross_attention):
            raise ValueError("widths and cross_attention need one entry per resolution level")
        if text_encoder not in ENCODERS:
            raise ValueError(f"unknown text_encoder {text_encoder!r}; choose one of: {', '.join(ENCODERS)}")
        if image_size % 2 ** (len(widths) - 1):
            raise ValueError(f"image_size {image_size} must be divisible by {2 ** (len(widths) - 1)} "
                             f"for {len(widths)} resolution levels")
        self.text_encoder_name, self.context = text_encoder, context
        if text_encoder == "transformer":
            self.text = TransformerTextEncoder(vocab_size, text_dim, text_layers, text_heads, context)
        else:
            # the frozen encoder is fetched per call (encoders.minilm_model), never stored here;
            # only this projection to the UNet's cross-attention width is trained
            self.text_proj = nn.Linear(MINILM_DIM, text_dim)
        down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in cross_attention)
        up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cross_attention))
        self.unet = UNet2DConditionModel(
            sample_size=image_size, in_channels=channels + extra_inputs, out_channels=channels,
            block_out_channels=widths, layers_per_block=layers_per_block,
            down_block_types=down, up_block_types=up, mid_block_type="UNetMidBlock2DCrossAttn",
            norm_num_groups=min(32, min(widths)), cross_attention_dim=text_dim,
            # diffusers reads this legacy name as the number of heads
            attention_head_dim=attention_heads,
        )
        self.scheduler_config = dict(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule,
                                     prediction_type=prediction_type)
        self.train_scheduler = DDPMScheduler(**self.scheduler_config)
        self.channels, self.image_size = channels, image_size

    @property
    def token_tables(self) -> tuple[str, ...]:
        """Weights indexed by the run tokenizer's ids (matched by token text when warm-starting)."""
        return ("text.tokens.weight",) if self.text_encoder_name == "transformer" else ()

    def noise_like(self, x0: torch.Tensor) -> torch.Tensor:
        """Training noise for images ``x0``: standard normal (the video model shares part across frames)."""
        return torch.randn_like(x0)

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Per-token states (B, L, text_dim) the UNet attends to."""
        if self.text_encoder_name == "transformer":
            return self.text(ids, mask)
        return self.text_proj(minilm_states(ids, mask))

    def denoise(self, x: torch.Tensor, t: torch.Tensor, states: torch.Tensor, mask: torch.Tensor):
        return self.unet(x, t, encoder_hidden_states=states, encoder_attention_mask=mask).sample

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
    ) -> torch.Tensor:
        """Denoise ``noise`` into images in [-1, 1] that match ``cond`` (ids, mask per image).

        With ``guidance`` != 1 each step predicts for ``cond`` and ``uncond`` (the empty prompt or a
        negative prompt, same length as ``cond``) in one batched forward and moves ``guidance``
        times the difference past the unconditional prediction. The text is encoded once: its states
        do not depend on the step.
        """
        return self.denoise_loop(noise, cond, uncond, guidance, steps, sampler, generator, progress).clamp(-1, 1)

    @torch.no_grad()
    def sample_regions(
        self,
        noise: torch.Tensor,
        regions: Tokens,
        masks: torch.Tensor,
        uncond: Tokens,
        cond: Tokens,
        guidance: float = 1.0,
        steps: int = 12,
        sampler: str = "dpm++",
        generator: Optional[torch.Generator] = None,
        progress: Optional[Callable[[int, int], None]] = None,
        region_steps: Optional[int] = None,
    ) -> torch.Tensor:
        """Images drawn region by region, each region from its own text (layout-planned sampling,
        ``pipelines/layout.py``). ``regions``: ids and keep-masks (B, K, L), K texts per image;
        ``masks`` (B, K, 1, H, W) in [0, 1], where each text applies (all zeros: an unused slot).
        The first ``region_steps`` steps (default: half) predict for ``uncond`` and each region's
        text in one batched forward; a region's guided prediction counts inside its mask (averaged
        where masks overlap) and the mean of the image's regions everywhere outside them, where
        every region's text asks for background. By then the layout is set, and the remaining steps
        are plain guided sampling of the whole text ``cond`` (ids, mask (B, L)): predictions stitched
        from several texts left visible noise when used to the end."""
        ids, keep = regions
        b, k = ids.shape[:2]
        width = max(ids.shape[2], uncond[0].shape[1], cond[0].shape[1])
        all_ids = torch.cat([_pad(uncond[0], width), _pad(ids.flatten(0, 1), width)])
        all_keep = torch.cat([_pad(uncond[1], width), _pad(keep.flatten(0, 1), width)])
        states = self.encode_text(all_ids, all_keep)
        whole_keep = torch.cat([_pad(cond[1], width), _pad(uncond[1], width)])
        whole = self.encode_text(torch.cat([_pad(cond[0], width), _pad(uncond[0], width)]), whole_keep)
        region_steps = (steps + 1) // 2 if region_steps is None else region_steps
        masks = masks.to(noise)
        cover = masks.sum(1)
        used = (masks.flatten(2).amax(2) > 0).to(noise)
        share = (used / used.sum(1, keepdim=True).clamp_min(1)).view(b, k, 1, 1, 1)

        def predict(inp: torch.Tensor, t: torch.Tensor, i: int) -> torch.Tensor:
            if i >= region_steps:
                return self._guided(inp, t, whole, whole_keep, guidance)
            both = torch.cat([inp, inp.repeat_interleave(k, 0)])
            out = self.denoise(both, t.expand(both.shape[0]), states, all_keep)
            u, c = out[:b].unsqueeze(1), out[b:].view(b, k, *out.shape[1:])
            guided = u + guidance * (c - u)
            inside = (masks * guided).sum(1) / cover.clamp_min(1e-6)
            return torch.where(cover > 0, inside, (share * guided).sum(1))

        return self._loop(noise, predict, steps, sampler, generator, progress).clamp(-1, 1)

    def denoise_loop(self, noise: torch.Tensor, cond: Tokens, uncond: Optional[Tokens], guidance: float,
                     steps: int, sampler: str, generator: Optional[torch.Generator],
                     progress: Optional[Callable[[int, int], None]],
                     before_step: Optional[Callable[[torch.Tensor, torch.Tensor], None]] = None,
                     edit_x0: Optional[Callable[[torch.Tensor, int], torch.Tensor]] = None,
                     init: Optional[tuple[torch.Tensor, int]] = None) -> torch.Tensor:
        """``sample``'s loop, unclamped; ``before_step(x, t)`` may edit ``x`` in place before each step;
        ``edit_x0(x0, i)`` returns an edited copy of step i's (guided) estimate of the clean sample,
        which the step then moves towards instead. ``init=(x0, k)`` starts from the clean guess ``x0``
        noised to the level of step ``k`` and runs only steps k, k+1, ... (SDEdit)."""
        ids, mask = cond
        guided = guidance != 1.0
        if guided:
            if uncond is None:
                raise ValueError("guidance needs the unconditional tokens")
            width = max(ids.shape[1], uncond[0].shape[1])
            ids = torch.cat([_pad(ids, width), _pad(uncond[0], width)])
            mask = torch.cat([_pad(mask, width), _pad(uncond[1], width)])
        states = self.encode_text(ids, mask)

        def predict(inp: torch.Tensor, t: torch.Tensor, i: int) -> torch.Tensor:
            if not guided:
                out = self.denoise(inp, t.expand(inp.shape[0]), states, mask)
            else:
                out = self._guided(inp, t, states, mask, guidance)
            return out if edit_x0 is None else self._with_x0(inp, t, out, lambda x0: edit_x0(x0, i))

        return self._loop(noise, predict, steps, sampler, generator, progress, before_step, init)

    def _with_x0(self, inp: torch.Tensor, t: torch.Tensor, out: torch.Tensor,
                 edit: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """The model output ``out`` for the variance-preserving sample ``inp`` at timestep ``t``,
        changed so that the clean sample it implies is ``edit(x0)`` instead of x0 (the noise it
        implies changes with it; the sample ``inp`` stays as it is)."""
        abar = self.train_scheduler.alphas_cumprod.to(inp.device)[int(round(float(t)))].to(inp.dtype)
        a, s = abar.sqrt(), (1 - abar).sqrt()
        kind = self.scheduler_config["prediction_type"]
        x0 = a * inp - s * out if kind == "v_prediction" else (inp - s * out) / a if kind == "epsilon" else out
        new = edit(x0)
        if kind == "v_prediction":
            return out + (x0 - new) / s
        if kind == "epsilon":
            return out + a * (x0 - new) / s
        return new

    def _guided(self, inp: torch.Tensor, t: torch.Tensor, states: torch.Tensor, mask: torch.Tensor,
                guidance: float) -> torch.Tensor:
        """Classifier-free guidance in one batched forward: ``states`` and ``mask`` hold the
        conditional texts, then the unconditional ones, one of each per row of ``inp``."""
        c, u = self.denoise(torch.cat([inp, inp]), t.expand(2 * inp.shape[0]), states, mask).chunk(2)
        return u + guidance * (c - u)

    def _loop(self, noise, predict, steps, sampler, generator, progress, before_step=None,
              init: Optional[tuple[torch.Tensor, int]] = None) -> torch.Tensor:
        """The sampler's steps over ``predict(model_input, t, step_index)``; ``init``: as in
        ``denoise_loop``."""
        sched = self.make_scheduler(sampler)
        sched.set_timesteps(steps, device=noise.device)
        first = 0
        if init is None:
            x = noise * sched.init_noise_sigma
        else:
            guess, first = init
            x = noised(self.train_scheduler, guess, noise, sched.timesteps[first])
        for i, t in enumerate(sched.timesteps):
            if i < first:
                continue
            if before_step is not None:
                before_step(x, t)
            x = sched.step(predict(sched.scale_model_input(x, t), t, i), t, x, generator=generator).prev_sample
            if progress is not None:
                progress(i + 1, len(sched.timesteps))
        return x


def noised(sched: DDPMScheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``x0`` noised with ``noise`` to timestep ``t`` (one for the whole batch): the variance-preserving
    x_t every sampler here (ddpm, ddim, dpm++) steps."""
    return sched.add_noise(x0, noise, t.long().view(1).expand(x0.shape[0]).cpu()).to(x0)


def _pad(t: torch.Tensor, width: int) -> torch.Tensor:
    """Right-pad (B, L) ids or masks with zeros (PAD, masked out) to ``width``."""
    return torch.nn.functional.pad(t, (0, width - t.shape[1])) if t.shape[1] < width else t


@register_model("text2image")
def text2image(channels: int = 3, image_size: int = 32, widths: tuple[int, ...] = (32, 64, 64),
               layers_per_block: int = 1, cross_attention: tuple[bool, ...] = (False, True, True),
               attention_heads: int = 4, text_encoder: str = "transformer", vocab_size: int = 256,
               context: int = 32, text_dim: int = 64, text_layers: int = 2, text_heads: int = 4,
               num_train_timesteps: int = 1000, beta_schedule: str = "squaredcos_cap_v2",
               prediction_type: str = "v_prediction") -> TextToImageModel:
    return TextToImageModel(channels, image_size, widths, layers_per_block, cross_attention, attention_heads,
                            text_encoder, vocab_size, context, text_dim, text_layers, text_heads,
                            num_train_timesteps, beta_schedule, prediction_type)
