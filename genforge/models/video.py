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

A temporal conv mixes each pixel with the same pixel of the neighbouring frames, which carries
appearance along the clip but cannot move it: an object travelling 19 px over 8 frames is in another
place in every frame. So, with ``spacetime_attention`` set (8 for 32 px clips), every ResNet at the
coarsest feature maps is also followed by full space-time self-attention (every position of every frame attends
to every other, as in the joint space-time blocks of video transformers), with a Fourier embedding
of each token's (frame, row, column) place in [-1, 1] added to its queries and keys, so "where was
this object two frames ago, and where does the caption send it" is one attention step. At 8 frames of
8x8 that is 512 tokens per clip: cheap next to the UNet's full-resolution convolutions.

With ``context_frames`` = K > 0 the model is autoregressive instead (frame-conditioned diffusion, as in
MCVD or the game-engine world models): each frame is denoised on its own, reading the K frames
before it, clean, as extra input planes (each with a plane saying whether it exists), so the
network's job at every frame is "draw the previous frame again, moved as the caption and the last
two frames say": a shift of a few pixels, within a few 3x3 convolutions' reach, where the joint
model above must learn where a 19-px journey ends. Training sees every frame of a clip at once
with its true predecessors (teacher forcing; each frame its own noise level), the predecessors
lightly noised (``context_noise``) so that at sampling, where they are the model's own drawings,
small errors do not compound; sampling draws frame 0 from the caption alone, then each next frame
from the caption and the frames already drawn. With ``anchor_frame`` the last context slot holds
frame 0 instead of frame i-K: a frame then reads where the clip began as well as where it just was,
so "grown this far by now" or "this far along its path" is read off the anchor and the frame's
place in the clip rather than summed from small steps (per-step changes of under a pixel, as in a
slow growth, were mostly lost that way). The temporal layers are left out in this mode
(they would read the noisy future frames), and image-to-video is simply starting after the given
first frame.

Each temporal layer is a residual branch whose last projection starts at zero, so an untrained model
is the per-frame image model (and a model grown from a trained one computes what it did), and is
attached as a forward hook on the ResNet it follows (a bound method, so ``copy.deepcopy`` for EMA
copies hook and layer together).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from ..registry import register_model
from .text2image import TextToImageModel, Tokens, noised


def _places(n: int, like: torch.Tensor) -> torch.Tensor:
    """n evenly spaced places from -1 to +1 (one place: 0), in ``like``'s device and dtype."""
    if n == 1:
        return torch.zeros(1, device=like.device, dtype=like.dtype)
    return torch.linspace(-1, 1, n, device=like.device, dtype=like.dtype)


class _FrameLayer(nn.Module):
    """A residual layer over the (B*T, C, H, W) output of the ResNet it is hooked onto; ``frames``
    (T) is set by VideoModel before each forward."""

    frames = 1

    def hook(self, module: nn.Module, args, output: torch.Tensor) -> torch.Tensor:
        return self(output)


class TemporalConv(_FrameLayer):
    """x + conv_t(silu(norm(x))) over the frame axis of (B*T, C, H, W) features."""

    def __init__(self, channels: int, groups: int, kernel: int = 3):
        super().__init__()
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


def _fourier(coords: torch.Tensor, bands: int) -> torch.Tensor:
    """(..., A) coordinates in [-1, 1] -> (..., A * 2 * bands) sin/cos features at frequencies pi*1..bands."""
    freqs = torch.arange(1, bands + 1, device=coords.device, dtype=coords.dtype) * torch.pi
    angles = (coords.unsqueeze(-1) * freqs).flatten(-2)
    return torch.cat([angles.sin(), angles.cos()], -1)


class SpaceTimeAttention(_FrameLayer):
    """x + out(attention over all (frame, row, column) tokens of a clip) for (B*T, C, H, W) features.

    Queries and keys get a learned projection of the Fourier features of each token's place in the
    clip (frame, row and column each in [-1, 1]), so the layer works at any frame count and size."""

    bands = 4

    def __init__(self, channels: int, groups: int, heads: int):
        super().__init__()
        if channels % heads:
            raise ValueError(f"space-time attention: {channels} channels do not split into {heads} heads")
        self.heads = heads
        self.norm = nn.GroupNorm(groups, channels)
        self.place = nn.Linear(3 * 2 * self.bands, channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.out = nn.Linear(channels, channels)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bt, c, h, w = x.shape
        t = self.frames
        b = bt // t
        y = self.norm(x).view(b, t, c, h, w).permute(0, 1, 3, 4, 2).reshape(b, t * h * w, c)
        axes = [_places(n, x) for n in (t, h, w)]
        where = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).view(t * h * w, 3)
        q, k, v = self.qkv(y).chunk(3, -1)
        place = self.place(_fourier(where, self.bands))
        q, k = q + place, k + place
        q, k, v = (z.view(b, t * h * w, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        y = nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t * h * w, c)
        y = self.out(y).view(b, t, h, w, c).permute(0, 1, 4, 2, 3).reshape(bt, c, h, w)
        return x + y


class VideoModel(TextToImageModel):
    """The text-to-image UNet run on every frame (frames folded into the batch), with a temporal
    convolution after each ResNet block, space-time attention after each ResNet whose feature maps
    are at most ``spacetime_attention`` pixels wide (0: none), and the frame's place in the clip as
    an extra input plane."""

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
        shared_noise: float = 0.0,
        spacetime_attention: int = 0,
        context_frames: int = 0,
        context_noise: float = 0.0,
        anchor_frame: bool = False,
    ):
        if not 1 <= frames <= 64:
            raise ValueError(f"frames must be in 1..64, got {frames}")
        if temporal_kernel < 1 or temporal_kernel % 2 == 0:
            raise ValueError(f"temporal_kernel must be odd and positive, got {temporal_kernel}")
        if not 0 <= shared_noise < 1:
            raise ValueError(f"shared_noise must be in [0, 1), got {shared_noise}")
        if not 0 <= context_frames <= 4:
            raise ValueError(f"context_frames must be in 0..4, got {context_frames}")
        if context_frames and (shared_noise or spacetime_attention):
            raise ValueError("context_frames (autoregressive frames) cannot be combined with shared_noise or "
                             "spacetime_attention, which belong to the joint clip model; set them to 0")
        if not 0 <= context_noise < 1:
            raise ValueError(f"context_noise must be in [0, 1), got {context_noise}")
        if anchor_frame and context_frames < 2:
            raise ValueError("anchor_frame gives the last of the context_frames slots to frame 0; it needs "
                             f"context_frames >= 2, got {context_frames}")
        # input planes beside the frame: its place in the clip, then per context frame (C planes + presence)
        super().__init__(channels, image_size, widths, layers_per_block, cross_attention, attention_heads,
                         text_encoder, vocab_size, context, text_dim, text_layers, text_heads,
                         num_train_timesteps, beta_schedule, prediction_type,
                         extra_inputs=1 + context_frames * (channels + 1))
        self.context_frames, self.context_noise = int(context_frames), float(context_noise)
        self.anchor_frame = bool(anchor_frame)
        self._planes: Optional[torch.Tensor] = None  # set while sampling one frame autoregressively
        groups = min(32, min(widths))
        levels = len(widths)
        sized = []  # autoregressive: no layer looks across frames inside the network
        if not context_frames:
            sized = [(r, image_size >> i) for i, b in enumerate(self.unet.down_blocks) for r in b.resnets]
            sized += [(r, image_size >> (levels - 1)) for r in self.unet.mid_block.resnets]
            sized += [(r, image_size >> (levels - 1 - j)) for j, b in enumerate(self.unet.up_blocks)
                      for r in b.resnets]
        self.temporal = nn.ModuleList(TemporalConv(r.out_channels, groups, temporal_kernel) for r, _ in sized)
        for (r, _), layer in zip(sized, self.temporal):
            r.register_forward_hook(layer.hook)
        coarse = [r for r, side in sized if side <= spacetime_attention]
        self.spacetime = nn.ModuleList(SpaceTimeAttention(r.out_channels, groups, attention_heads) for r in coarse)
        for r, layer in zip(coarse, self.spacetime):
            r.register_forward_hook(layer.hook)
        self.frames, self.shared_noise = frames, float(shared_noise)

    def noise(self, shape: tuple[int, ...], generator: Optional[torch.Generator] = None,
              device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Noise of the model's prior for clips of ``shape`` (B, T, C, H, W): each frame's noise is
        ``sqrt(s)`` times one draw shared by the clip's frames plus ``sqrt(1 - s)`` times its own
        (s = ``shared_noise``; the mixed noise prior of PYoCo, Ge et al. 2023). Every element stays
        unit-variance, so the diffusion schedule is unchanged, but frames start out alike: a model
        warm-started from an image model then draws one object across the clip instead of a new
        one per frame. Training and sampling both draw from this prior."""
        own = torch.randn(shape, generator=generator, dtype=dtype).to(device)
        if not self.shared_noise:
            return own
        return self._mix(own, torch.randn((shape[0], 1, *shape[2:]), generator=generator, dtype=dtype).to(device))

    def noise_like(self, x0: torch.Tensor) -> torch.Tensor:
        """Training noise for clips ``x0`` from the global random stream (see ``noise``)."""
        if not self.shared_noise:
            return torch.randn_like(x0)
        own = torch.randn_like(x0)
        return self._mix(own, torch.randn_like(x0[:, :1]))

    def _mix(self, own: torch.Tensor, common: torch.Tensor) -> torch.Tensor:
        """Per-frame noise ``own`` (B, T, ...) mixed with one draw per clip ``common`` (B, 1, ...)."""
        return self.shared_noise ** 0.5 * common + (1 - self.shared_noise) ** 0.5 * own

    # ---- autoregressive mode (context_frames > 0) ------------------------------------------------
    def planes(self, clip: torch.Tensor, noise_std: float = 0.0) -> torch.Tensor:
        """The conditioning planes (B, T, P, H, W) of every frame of clean clips (B, T, C, H, W): its
        place in the clip, then each of the K frames before it (zeros and a 0 presence plane before
        the clip starts); with ``anchor_frame`` the last of the K slots holds frame 0 instead (for
        every frame after it), so the network sees the whole change since the clip began and not
        only the last step's. ``noise_std``: context frames get Gaussian noise of a standard
        deviation drawn uniformly from [0, noise_std] per frame (training; from the global random
        stream)."""
        b, frames, c, h, w = clip.shape
        if noise_std:
            clip = clip + noise_std * torch.rand(b, frames, 1, 1, 1, device=clip.device, dtype=clip.dtype) \
                * torch.randn_like(clip)
        out = [_places(frames, clip).view(1, frames, 1, 1, 1).expand(b, frames, 1, h, w)]
        for k in range(1, self.context_frames + 1):
            prev = torch.zeros_like(clip)
            have = torch.zeros(b, frames, 1, h, w, device=clip.device, dtype=clip.dtype)
            if self.anchor_frame and k == self.context_frames:
                prev[:, 1:] = clip[:, :1]
                have[:, 1:] = 1
            elif k < frames:
                prev[:, k:] = clip[:, :-k]
                have[:, k:] = 1
            out += [prev, have]
        return torch.cat(out, 2)

    def forward(self, x: torch.Tensor, t: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor,
                planes: Optional[torch.Tensor] = None):
        """Clips (B, T, C, H, W) at timesteps (B,); or, autoregressive, frames (B*T, C, H, W) at
        timesteps (B*T,) with their ``planes`` (B*T, P, H, W) and one caption per clip (B, L)."""
        states = self.encode_text(ids, mask)
        if planes is None:
            return self.denoise(x, t, states, mask)
        per_clip = x.shape[0] // ids.shape[0]
        return self._frame_unet(x, t, states.repeat_interleave(per_clip, 0), mask.repeat_interleave(per_clip, 0),
                                planes)

    def _frame_unet(self, x, t, states, mask, planes):
        return self.unet(torch.cat([x, planes], 1), t, encoder_hidden_states=states,
                         encoder_attention_mask=mask).sample

    def denoise(self, x: torch.Tensor, t: torch.Tensor, states: torch.Tensor, mask: torch.Tensor):
        """Prediction for clips ``x`` (B, T, C, H, W) at timesteps ``t`` (B,); while an autoregressive
        sample draws one frame, for frames (B, C, H, W) with that frame's planes."""
        if x.dim() == 4:
            if self._planes is None:
                raise RuntimeError("denoise got single frames outside an autoregressive sample")
            planes = self._planes.repeat(x.shape[0] // self._planes.shape[0], 1, 1, 1)  # guided: cond + uncond
            return self._frame_unet(x, t, states, mask, planes)
        b, frames, c, h, w = x.shape
        for layer in [*self.temporal, *self.spacetime]:
            layer.frames = frames
        pos = _places(frames, x).view(1, frames, 1, 1, 1).expand(b, frames, 1, h, w)
        flat = torch.cat([x, pos], 2).reshape(b * frames, c + 1, h, w)
        out = self.unet(flat, t.repeat_interleave(frames), encoder_hidden_states=states.repeat_interleave(frames, 0),
                        encoder_attention_mask=mask.repeat_interleave(frames, 0)).sample
        return out.view(b, frames, c, h, w)

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
        paths: Optional[torch.Tensor] = None,
        upto: Optional[int] = None,
        refine: float = 0.0,
    ) -> torch.Tensor:
        """Denoise ``noise`` (B, T, C, H, W) into clips in [-1, 1] that match ``cond``, with
        classifier-free guidance as in ``TextToImageModel.sample``. ``first_frame`` (B, C, H, W) in
        [-1, 1] fixes frame 0 (image-to-video by replacement: at every step frame 0 is set to the
        given image noised to the step's level, so the other frames are drawn consistent with it).
        ``paths`` (B, T, 3): where a clip's one object is planned to be in each frame, as (x, y,
        bounding radius) in px (NaN rows: not planned; ``pipelines/video_layout.py``): at every
        step the model's estimate of each clean frame is moved there (``keep_to``). ``upto``: an
        autoregressive model draws only the first ``upto`` frames (as placed in the whole clip) and
        leaves the rest zero. ``refine`` in [0, 1): with ``paths``, an autoregressive model draws
        each frame after the first from the one before it, moved to its planned place and noised
        to the level ``refine`` of the way through the steps, running only the rest of them
        (SDEdit): the frames differ by a small motion, so that is all there is to redraw."""
        edit = None
        if paths is not None:
            paths = paths.to(noise)
            if paths.shape != (*noise.shape[:2], 3):
                raise ValueError(f"paths must be (B, T, 3) for noise {tuple(noise.shape)}, got {tuple(paths.shape)}")
        if not 0 <= refine < 1:
            raise ValueError(f"refine must be in [0, 1), got {refine}")
        if self.context_frames:
            return self._sample_frames(noise, cond, uncond, guidance, steps, sampler, generator, progress,
                                       first_frame, paths, upto, refine)
        if upto is not None:
            raise ValueError("upto: only an autoregressive model (context_frames > 0) draws part of a clip")
        if paths is not None:
            def edit(x0: torch.Tensor, i: int) -> torch.Tensor:
                return keep_to(x0.flatten(0, 1), paths.flatten(0, 1)).view_as(x0)

        fix = None
        if first_frame is not None:
            known = first_frame.to(noise)
            fixed = self.train_scheduler  # its add_noise gives the variance-preserving x_t of any step

            def fix(x: torch.Tensor, t: torch.Tensor) -> None:
                x[:, 0] = noised(fixed, known, noise[:, 0], t)

        x = self.denoise_loop(noise, cond, uncond, guidance, steps, sampler, generator, progress, fix, edit)
        if first_frame is not None:
            x[:, 0] = known
        return x.clamp(-1, 1)

    def _sample_frames(self, noise, cond, uncond, guidance, steps, sampler, generator, progress, first_frame,
                       paths=None, upto=None, refine=0.0):
        """Autoregressive sampling: frame i is a full denoising run with the frames before it (as
        drawn, clamped to [-1, 1]) in its planes; ``first_frame`` is frame 0 as given; ``paths`` as
        in ``sample``, frame by frame."""
        b, frames = noise.shape[:2]
        clip = torch.zeros_like(noise)
        start = 0
        if first_frame is not None:
            clip[:, 0] = first_frame.to(noise)
            start = 1
        upto = frames if upto is None else max(1, min(frames, int(upto)))
        total = upto * steps
        gyration0 = None  # frame 0's drawn size, once it is drawn (paths)
        try:
            for i in range(start, upto):
                self._planes = self.planes(clip)[:, i]  # frames >= i are still zeros; planes of i read < i
                report = None if progress is None else (lambda j, _n, i=i: progress(i * steps + j, total))
                edit = None
                if paths is not None:
                    # frame 0 keeps the size the model draws; a later frame planned at another size
                    # than frame 0 is scaled from frame 0 as drawn by the planned radii's ratio
                    # (while off by more than WARP_MIN: close to it, only moved, so the model
                    # redraws the scaled object sharp)
                    size = None
                    if i:
                        if gyration0 is None:
                            gyration0 = torch.stack([_gyration(f) for f in clip[:, 0]])
                        size = gyration0 * paths[:, i, 2] / paths[:, 0, 2]

                    def edit(x0, j, path=paths[:, i], size=size):
                        return keep_to(x0, path, size)
                init = None
                skip = int(round(refine * steps))
                if paths is not None and i and skip:  # from the frame before, moved to this frame's place
                    init = (keep_to(clip[:, i - 1], paths[:, i], size), skip)
                x = self.denoise_loop(noise[:, i], cond, uncond, guidance, steps, sampler, generator, report,
                                      edit_x0=edit, init=init)
                clip[:, i] = x.clamp(-1, 1)
        finally:
            self._planes = None
        if paths is not None and upto > 1:  # the background stays still: every planned frame's is frame 0's
            clip[:, 1:upto] = on_background(clip[:, 1:upto].flatten(0, 1), paths[:, 1:upto].flatten(0, 1),
                                            background_of(clip[:, 0])[..., 0, 0].repeat_interleave(upto - 1, 0)
                                            ).view_as(clip[:, 1:upto])
        return clip


WARP_MIN = 0.1  # keep_to scales an estimate only when its size is off by more than this share
DRAWN = 0.3  # summed |x0 - background| over the channels (of 2 per channel) where something is drawn
# A planned object's box reaches 1.15 times its bounding radius (a star's points reach 1.05, a
# triangle's 1.15) plus this many px of anti-aliased rim from its centre.
RIM = 1.0


def box_masks(paths: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """0/1 masks (..., 1, h, w) of the boxes around planned objects ``paths`` (..., 3) of (x, y,
    radius) in px; all ones where a path is NaN (not planned)."""
    lead = paths.shape[:-1]
    p = paths.reshape(-1, 3)
    half = 1.15 * p[:, 2] + RIM
    rows = torch.arange(h, device=p.device, dtype=p.dtype) + 0.5
    cols = torch.arange(w, device=p.device, dtype=p.dtype) + 0.5
    inside = ((rows[None, :, None] - p[:, 1, None, None]).abs() <= half[:, None, None]) & \
             ((cols[None, None, :] - p[:, 0, None, None]).abs() <= half[:, None, None])
    inside |= p.isnan().any(-1)[:, None, None]
    return inside.to(paths.dtype).view(*lead, 1, h, w)


def background_of(x: torch.Tensor) -> torch.Tensor:
    """The background of frames ``x`` (..., C, H, W): each channel's median, shaped (..., C, 1, 1) to
    subtract from them."""
    return x.flatten(-2).median(-1).values[..., None, None]


def drawn(x: torch.Tensor) -> tuple[torch.Tensor, Optional[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]:
    """One frame's estimate ``x`` (C, H, W): its background (per-channel median, (C, 1, 1)) and,
    when something stands out from it by more than ``DRAWN``, that object's centre (row, column,
    at pixel centres) and radius of gyration in px, over the pixels standing out by at least half
    the most."""
    bg = background_of(x)
    sal = (x - bg).abs().sum(0)
    peak = sal.max()
    if float(peak) <= DRAWN:
        return bg, None
    wt = (sal - 0.5 * peak).clamp_min(0)
    wt = wt / wt.sum()
    rows = torch.arange(x.shape[1], device=x.device, dtype=x.dtype)[:, None] + 0.5
    cols = torch.arange(x.shape[2], device=x.device, dtype=x.dtype)[None, :] + 0.5
    cy, cx = (wt * rows).sum(), (wt * cols).sum()
    gyration = ((wt * ((rows - cy) ** 2 + (cols - cx) ** 2)).sum()).sqrt().clamp_min(0.5)
    return bg, (cy, cx, gyration)


def keep_to(x0: torch.Tensor, paths: torch.Tensor, size: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``x0`` (B, C, H, W), a model's estimate of clean frames, moved to where ``paths`` (B, 3)
    plans each frame's object: what stands out from a frame's background (``drawn``) is shifted by
    whole pixels so that its centre is the planned one, or, where ``size`` (B,) gives the radius of
    gyration it should have (NaN: keep it) and it is off by more than ``WARP_MIN``, warped there
    (bilinear) and scaled to it; everything
    outside the planned box (``box_masks``) is made that background. A frame not planned (NaN
    path), or with nothing drawn yet, is kept as it is."""
    b, c, h, w = x0.shape
    masks = box_masks(paths, h, w)
    out = []
    for k in range(b):
        found = None if bool(paths[k].isnan().any()) else drawn(x0[k])
        if found is None or found[1] is None:  # not planned, or nothing to move yet: left to the model
            out.append(x0[k])
            continue
        bg, (cy, cx, gyration) = found
        d = x0[k] - bg
        px, py = paths[k, 0], paths[k, 1]
        scale = None if size is None or bool(size[k].isnan()) else (size[k] / gyration).clamp(0.5, 2.0)
        if scale is None or abs(float(scale) - 1) < WARP_MIN:
            d = torch.roll(d, (int(torch.round(py - cy)), int(torch.round(px - cx))), dims=(1, 2))
        else:
            # output pixel centre p reads the estimate at c + (p - planned centre) / scale
            gy = (torch.arange(h, device=x0.device, dtype=x0.dtype) + 0.5 - py) / scale + cy
            gx = (torch.arange(w, device=x0.device, dtype=x0.dtype) + 0.5 - px) / scale + cx
            grid = torch.stack(torch.meshgrid(2 * gy / h - 1, 2 * gx / w - 1, indexing="ij")[::-1], -1)
            d = nn.functional.grid_sample(d[None], grid[None], mode="bilinear", padding_mode="zeros",
                                          align_corners=False)[0]
        out.append(bg + d * masks[k])
    return torch.stack(out)


def on_background(x: torch.Tensor, paths: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """Finished frames ``x`` (B, C, H, W) on ``background`` (B, C): inside each planned box
    (``paths`` (B, 3)) what the frame draws there less its own background (its median), outside
    the background itself; frames not planned (NaN path) are kept. Each frame of a planned clip is
    drawn on its own and its background tint wanders a little; this holds it still."""
    inside = box_masks(paths, *x.shape[-2:])
    out = background[..., None, None] + (x - background_of(x)) * inside
    planned = ~paths.isnan().any(-1)
    return torch.where(planned[:, None, None, None], out, x).clamp(-1, 1)


def _gyration(frame: torch.Tensor) -> torch.Tensor:
    found = drawn(frame)[1]
    return found[2] if found is not None else torch.tensor(1.0, dtype=frame.dtype, device=frame.device)


@register_model("video_unet")
def video_unet(channels: int = 3, image_size: int = 32, frames: int = 16, widths: tuple[int, ...] = (32, 64, 64),
               layers_per_block: int = 1, cross_attention: tuple[bool, ...] = (False, True, True),
               attention_heads: int = 4, temporal_kernel: int = 3, text_encoder: str = "transformer",
               vocab_size: int = 256, context: int = 32, text_dim: int = 64, text_layers: int = 2,
               text_heads: int = 4, num_train_timesteps: int = 1000, beta_schedule: str = "squaredcos_cap_v2",
               prediction_type: str = "v_prediction", shared_noise: float = 0.0,
               spacetime_attention: int = 0, context_frames: int = 0, context_noise: float = 0.0,
               anchor_frame: bool = False) -> VideoModel:
    return VideoModel(channels, image_size, frames, widths, layers_per_block, cross_attention, attention_heads,
                      temporal_kernel, text_encoder, vocab_size, context, text_dim, text_layers, text_heads,
                      num_train_timesteps, beta_schedule, prediction_type, shared_noise, spacetime_attention,
                      context_frames, context_noise, anchor_frame)
