"""Text-to-video diffusion training: the text2image objective on whole clips.

A batch is clips (B, T, C, H, W) in [-1, 1] and one caption each, dropped to the empty string at
rate ``cond_drop`` for classifier-free guidance; one noise level per clip (every frame of a clip is
noised alike, which is what the sampler later undoes); an autoregressive model (``context_frames``)
learns every frame at once from its clean predecessors instead. Caption picking, tokenising, the tokenizer
and the grid prompts are text2image's (this task subclasses it); what differs is the batch, the
grids (one clip per row, frames left to right) and the evaluation (the motion verifier).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from ..data import Examples
from ..data.transforms import to_uint8
from ..errors import GenforgeError
from ..registry import register_task
from .diffusion import denoising_loss
from .text2image import TextToImageTask, tokenize_prompts


def pick_frames(total: int, k: int) -> list[int]:
    """``k`` frame indices spread evenly over ``total`` frames, first and last included."""
    if k >= total:
        return list(range(total))
    return [round(i * (total - 1) / (k - 1)) for i in range(k)] if k > 1 else [0]


@register_task("video")
class VideoTask(TextToImageTask):
    models = ("video_unet",)
    needs = ("frames", "caption")
    pixels = "frames"  # batches of (B, T, C, H, W) clips; collate and step are text2image's

    def __init__(self, cfg, data: Examples | None = None, run_dir: Path | None = None,
                 cond_drop: float = 0.1, tokenizer: str = "bpe", sample_steps: int = 12,
                 sample_sampler: str = "dpm++", sample_guidance: float = 2.0, eval_prompts: int = 16,
                 first_frame_model: str | None = None):
        super().__init__(cfg, data, run_dir, cond_drop=cond_drop, tokenizer=tokenizer,
                         sample_steps=sample_steps, sample_sampler=sample_sampler,
                         sample_guidance=sample_guidance, eval_prompts=eval_prompts)
        # read by the pipeline, not in training: a text2image run (path or shipped name) drawing
        # each planned object's first frame (pipelines/video_layout.py)
        if first_frame_model is not None and (not isinstance(first_frame_model, str) or not first_frame_model):
            raise GenforgeError(f"task_params.first_frame_model must be a text2image run directory or shipped "
                                f"model name, got {first_frame_model!r}")
        if data is not None:
            clips = data.column("frames")
            if clips.dim() != 5:
                raise GenforgeError(f"the frames field must be (N, T, C, H, W), got shape {tuple(clips.shape)}")
            if clips.shape[1] != self.model.frames:
                raise GenforgeError(f"model.params.frames={self.model.frames} but the dataset's clips have "
                                    f"{clips.shape[1]} frames; set data.frames instead")

    def step(self, batch, optimize):
        if not self.model.context_frames:
            return super().step(batch, optimize)
        # autoregressive model: every frame of every clip is one denoising example, conditioned on
        # its clean predecessors (teacher forcing), each frame with its own noise and timestep
        net = self.nets["model"]
        clips = batch["image"]
        planes = self.model.planes(clips, self.model.context_noise).flatten(0, 1)
        loss = denoising_loss(self.model.train_scheduler, clips.flatten(0, 1),
                              lambda xt, t: net(xt, t, batch["ids"], batch["mask"], planes))
        optimize("model", loss)
        return {"loss": loss.detach()}

    # ---- progress grids and evaluation --------------------------------------------------------
    def preview(self, data: Examples, n: int = 64) -> torch.Tensor | None:
        clips = data.column("frames")[: max(1, n // self.grid_columns)]
        return _as_grid(clips, self.grid_columns)

    def _generate(self, model, prompts: Sequence[str], seed: int, guidance: float) -> torch.Tensor:
        params = self.cfg.model.params
        device = next(model.parameters()).device
        gen = torch.Generator().manual_seed(seed)
        noise = model.noise((len(prompts), model.frames, model.channels, model.image_size, model.image_size),
                            generator=gen)
        cond = tokenize_prompts(prompts, params, self.tokenizer)
        uncond = tokenize_prompts([""] * len(prompts), params, self.tokenizer)
        was = model.training
        model.eval()
        try:
            return model.sample(noise.to(device), tuple(t.to(device) for t in cond),
                                tuple(t.to(device) for t in uncond), guidance=guidance, steps=self.sample_steps,
                                sampler=self.sample_sampler, generator=gen)
        finally:
            model.train(was)

    @torch.no_grad()
    def sample_images(self, model, n=64, seed=0):
        """One clip per prompt row, ``grid_columns`` of its frames left to right (first .. last)."""
        if not self.prompts:
            return None
        rows = self.prompts[: max(1, n // self.grid_columns)]
        if self.run_dir is not None:  # what each grid row was asked to show, top to bottom
            from ..train.checkpoint import atomic_write_bytes

            (Path(self.run_dir) / "samples").mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(Path(self.run_dir) / "samples" / "prompts.txt", ("\n".join(rows) + "\n").encode())
        clips = self._generate(model, rows, seed, self.sample_guidance)
        return _as_grid(clips, self.grid_columns)

    @torch.no_grad()
    def evaluate(self, model) -> dict[str, float]:
        """The motion verifier's scores of clips drawn for the first ``eval_prompts`` test captions
        (shapes_video only: the motion verifier reads nothing else)."""
        if self.cfg.data.name != "shapes_video" or self.eval_prompts < 1:
            return {}
        from ..eval.motion import verify_clips

        if self._eval_set is None:
            self._eval_set = self._test_set(self.eval_prompts) or []
        if not self._eval_set:
            return {}
        clips = self._generate(model, self._eval_set, seed=self.cfg.train.seed, guidance=self.sample_guidance)
        report = verify_clips(to_uint8(clips.cpu()), self._eval_set)
        report.pop("n", None)
        return flat_scores(report, "motion")


def flat_scores(report: dict, prefix: str) -> dict[str, float]:
    """The numbers of a (nested) report as flat ``prefix_key_subkey`` floats, for metrics.jsonl."""
    out: dict[str, float] = {}
    for k, v in report.items():
        if isinstance(v, dict):
            out.update(flat_scores(v, f"{prefix}_{k}"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"{prefix}_{k}"] = float(v)
    return out


def _as_grid(clips: torch.Tensor, columns: int) -> torch.Tensor:
    """(B, T, C, H, W) clips -> (B * columns, C, H, W): each clip's evenly spread frames in a row."""
    keep = pick_frames(clips.shape[1], columns)
    rows = clips[:, keep]
    if len(keep) < columns:  # short clips: pad the row with its last frame so rows stay aligned
        rows = torch.cat([rows, rows[:, -1:].expand(-1, columns - len(keep), *rows.shape[2:])], 1)
    return rows.reshape(-1, *clips.shape[2:])
