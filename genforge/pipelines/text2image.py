"""Text-to-image generation from a ``text2image`` run directory.

``pipe(prompt="a small red circle above a large blue square", n=8)`` -> list of PIL images.
An empty prompt draws unconditional samples (with a warning saying so); a prompt longer than the
model's context is cut, and words the run's tokenizer never saw in training are named, both as
warnings, because the picture will not follow those parts of the prompt.
"""
from __future__ import annotations

import re
import warnings
from typing import Callable, Optional, Sequence

import torch
from PIL import Image

from ..data.transforms import to_pil_list, to_uint8
from ..errors import GenforgeError
from ..models.diffusion import SAMPLERS
from ..tasks.text2image import tokenize_prompts
from ..text.encoders import minilm_tokenizer
from ..text.tokenizer import FILENAME, TextTokenizer
from . import Pipeline
from .image import ImagePipeline
from .layout import LAYOUTS, plan, region_masks

MAX_PROMPT_CHARS = 2000  # far beyond any context; longer input is refused, not tokenised


class TextToImagePipeline(Pipeline):
    """Images from prompts; same prompt and seed, same images.

    Not an ImagePipeline: callers that batch class labels or raw noise across requests do not apply.
    It borrows that class's seed and guidance checks and its noise drawing, which are the same here.
    """

    draw_noise = ImagePipeline.draw_noise

    def __init__(self, cfg, model, run_dir, device):
        super().__init__(cfg, model, run_dir, device)
        self.params = dict(cfg.model.params)
        self.encoder = self.params.get("text_encoder", "transformer")
        self.context = int(self.params.get("context", 32))
        self.tokenizer: Optional[TextTokenizer] = None
        if self.encoder == "transformer":
            if not (run_dir / FILENAME).is_file():
                raise GenforgeError(f"{run_dir} has no {FILENAME}; a text2image run needs the tokenizer "
                                    "it was trained with (copy it from the training run directory)")
            self.tokenizer = TextTokenizer.load(run_dir / FILENAME)
            self._vocab = set(self.tokenizer.tok.get_vocab())
        tp = cfg.task_params or {}
        self.default_steps = int(tp.get("sample_steps", 12))
        self.default_guidance = float(tp.get("sample_guidance", 2.0))
        # layout-planned sampling (pipelines/layout.py) reads the shapes grammar, so it is the
        # default only for models trained on shapes captions
        self.default_layout = "grid" if cfg.data.name == "shapes" else "off"

    @property
    def kind(self) -> str:
        return "text2image"

    @property
    def conditional(self) -> bool:
        return False  # conditioned on prompts, not class labels

    def compile(self, buckets=None) -> "TextToImagePipeline":
        warnings.warn(f"{self.run_dir.name}: compiled sampling is not available for text2image models; "
                      "sampling eagerly")
        return self

    # ---- prompts ------------------------------------------------------------------------------
    def _length(self, text: str) -> int:
        if self.tokenizer is not None:
            return len(self.tokenizer.encode(text)) + 2  # with begin and end markers
        return len(minilm_tokenizer()(text)["input_ids"])

    def unknown_words(self, text: str) -> list[str]:
        """Words of ``text`` the model never read in training (its tokenizer has no whole token for
        them), so the picture cannot follow them; MiniLM knows most English words."""
        if self.tokenizer is None:
            tok = minilm_tokenizer()
            return [w for w in re.findall(r"[^\W\d_]+", text) if tok.unk_token in tok.tokenize(w)]
        words = []
        for w in re.findall(r"[^\W\d_]+", text.lower()):
            if self.tokenizer.unknown_words(w) or ("\u2581" + w not in self._vocab and w not in self._vocab):
                words.append(w)
        return list(dict.fromkeys(words))

    def prompt_list(self, prompt, negative_prompt, n: int, things: str) -> list[str]:
        """One prompt per output (a str is repeated ``n`` times), after one-line errors for the wrong
        types or count."""
        if not isinstance(prompt, (str, list, tuple)):
            raise GenforgeError(f"prompt must be a string or a list of strings, got {type(prompt).__name__}")
        prompts = [prompt] * n if isinstance(prompt, str) else list(prompt)
        if len(prompts) != n:
            raise GenforgeError(f"got {len(prompts)} prompts for n={n} {things}; give one prompt or exactly n")
        if negative_prompt is not None and not isinstance(negative_prompt, str):
            raise GenforgeError(f"negative_prompt must be a string, got {type(negative_prompt).__name__}")
        return prompts

    def read_texts(self, prompt: str, layout: str = "off") -> list[str]:
        """What the model reads for ``prompt``: where the layout plans it, each object's own caption
        and then the prompt (the last steps draw from the whole text), else the prompt."""
        regions = plan(prompt, 0, self.model.image_size) if layout == "grid" else None
        return [r.prompt for r in regions] + [prompt] if regions else [prompt]

    def warn_prompts(self, prompts: list[str], negative_prompt, things: str, layout: str = "off") -> None:
        """A warning for each note ``check_prompt`` has on the texts the model reads for the prompts
        or the negative prompt."""
        texts = [t for p in dict.fromkeys(prompts) for t in self.read_texts(p, layout)]
        for note in self.check_prompt(texts + ([negative_prompt] if negative_prompt else [])):
            warnings.warn(note.replace("these images are", f"these {things} are")
                          .replace("the image will", f"the {things[:-1]} will"))

    def check_prompt(self, prompt: str | Sequence[str]) -> list[str]:
        """Warnings about ``prompt`` (one string or a list); raises GenforgeError for unusable input."""
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(prompts, (list, tuple)) or not all(isinstance(p, str) for p in prompts):
            raise GenforgeError(f"prompt must be a string or a list of strings, got {type(prompt).__name__}")
        notes: list[str] = []
        for p in dict.fromkeys(prompts):
            if len(p) > MAX_PROMPT_CHARS:
                raise GenforgeError(f"prompt of {len(p)} characters is too long; keep it under "
                                    f"{MAX_PROMPT_CHARS} (the model reads {self.context} tokens)")
            shown = repr(p) if len(p) <= 60 else repr(p[:57] + "...")
            if not p.strip():
                notes.append("empty prompt: these images are unconditional samples (no text guidance)")
                continue
            n = self._length(p)
            if n > self.context:
                notes.append(f"prompt {shown} is {n} tokens; the model reads {self.context}, so it was cut")
            unknown = self.unknown_words(p)
            if unknown:
                notes.append(f"prompt {shown}: the model never saw {', '.join(map(repr, unknown))} in training; "
                             "the image will not follow those words")
        return list(dict.fromkeys(notes))

    def _tokens(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return tokenize_prompts(texts, self.params, self.tokenizer, warn_cut=False)

    # ---- sampling -----------------------------------------------------------------------------
    def check_sampling(self, steps, sampler, guidance=1.0, seed=0) -> None:
        ImagePipeline.check_sampling(self, steps, sampler, guidance, seed)
        if sampler not in SAMPLERS:
            raise GenforgeError(f"unknown sampler {sampler!r}; choose one of: {', '.join(SAMPLERS)}")
        if steps < 1:
            raise GenforgeError(f"steps must be at least 1, got {steps}")

    def check_layout(self, layout: Optional[str]) -> str:
        layout = self.default_layout if layout is None else layout
        if layout not in LAYOUTS:
            raise GenforgeError(f"unknown layout {layout!r}; choose one of: {', '.join(LAYOUTS)}")
        return layout

    def sample_rows(self, noise: torch.Tensor, prompts: Sequence[str], negatives: Sequence[str], guidance: float,
                    steps: int, sampler: str, generator: torch.Generator, layout: str, seeds: Sequence[int],
                    progress: Optional[Callable[[int, int], None]] = None) -> torch.Tensor:
        """One denoising run for a batch: one prompt, negative text and seed per row of ``noise``.
        With ``layout="grid"``, rows whose prompt plans into regions (``layout.plan``, drawn with
        the row's seed) are drawn region by region, and the others with their whole prompt in the
        same batch."""
        dev = self.device
        uncond = tuple(t.to(dev) for t in self._tokens(list(negatives)))
        cond = tuple(t.to(dev) for t in self._tokens(list(prompts)))
        plans = [plan(p, s, self.model.image_size) for p, s in zip(prompts, seeds)] if layout == "grid" else []
        if any(plans):
            texts, masks = region_masks(plans, list(prompts), self.model.image_size)
            ids, keep = self._tokens([t for row in texts for t in row])
            regions = (ids.view(len(texts), -1, ids.shape[1]).to(dev), keep.view(len(texts), -1, keep.shape[1]).to(dev))
            return self.model.sample_regions(noise.to(dev), regions, masks.to(dev), uncond, cond, guidance=guidance,
                                             steps=steps, sampler=sampler, generator=generator, progress=progress)
        return self.model.sample(noise.to(dev), cond, uncond, guidance=guidance, steps=steps, sampler=sampler,
                                 generator=generator, progress=progress)

    @torch.no_grad()
    def generate(self, n: int = 1, seed: int = 0, steps: Optional[int] = None, sampler: str = "dpm++",
                 prompt: str | Sequence[str] = "", negative_prompt: Optional[str] = None,
                 guidance: Optional[float] = None, batch_size: int = 64,
                 progress: Optional[Callable[[int, int], None]] = None, labels=None,
                 layout: Optional[str] = None) -> torch.Tensor:
        """Float images in [-1, 1], (n, C, H, W), on the CPU. A list ``prompt`` gives one prompt
        per image; ``negative_prompt`` replaces the empty prompt as what guidance steers away from.
        ``layout``: "grid" plans the places of a multi-object shapes caption's objects before
        drawing (``pipelines/layout.py``), "off" leaves them to the model; default: the run's."""
        if labels:
            raise GenforgeError(f"{self.run_dir.name} takes a prompt, not labels")
        if n < 1:
            raise GenforgeError(f"n must be at least 1, got {n}")
        steps = self.default_steps if steps is None else steps
        guidance = self.default_guidance if guidance is None else guidance
        self.check_sampling(steps, sampler, guidance, seed)
        layout = self.check_layout(layout)
        if batch_size < 1:
            raise GenforgeError(f"batch_size must be at least 1, got {batch_size}")
        prompts = self.prompt_list(prompt, negative_prompt, n, "images")
        self.warn_prompts(prompts, negative_prompt, "images", layout)
        noise = self.draw_noise(n, seed)
        out = []
        # guidance only matters where the prompt differs from what it is steered away from
        guided = guidance != 1.0 and (any(p.strip() for p in prompts) or bool(negative_prompt))
        for i in range(0, n, batch_size):
            chunk = prompts[i:i + batch_size]
            gen = torch.Generator(self.device).manual_seed(seed + i)
            x = self.sample_rows(noise[i:i + batch_size], chunk, [negative_prompt or ""] * len(chunk),
                                 guidance if guided else 1.0, steps, sampler, gen, layout,
                                 [seed + i + j for j in range(len(chunk))], progress)
            out.append(x.float().cpu())
        return torch.cat(out)

    def __call__(self, prompt: str | Sequence[str] = "", n: int = 1, seed: int = 0, **kwargs) -> list[Image.Image]:
        return to_pil_list(to_uint8(self.generate(n=n, seed=seed, prompt=prompt, **kwargs)))
