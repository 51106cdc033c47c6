"""Request and response bodies. Bounds live here so a bad request is a 422 naming the field."""
from __future__ import annotations

import re
from typing import Annotated, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..pipelines.image import MAX_SEED
from ..pipelines.layout import Layout
Sampler = Literal["ddpm", "ddim", "dpm++", "dpm++sde"]
LayoutParam = Annotated[Optional[Layout], Field(description="Text-to-image diffusion: grid plans where a "
                                                "multi-object shapes caption's objects go before drawing them; "
                                                "off leaves it to the model. Omitted: the model's default.")]
MAX_PROMPT_CHARS = 1000  # a bound on the request; the model's token context cuts far sooner


class _Body(BaseModel):
    # strict: JSON "3" or true is not the integer 3 or 1 (a float field still takes an integer)
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class _Sampling(_Body):
    model: Optional[str] = Field(None, max_length=200, description="A model id from GET /v1/models; "
                                 "optional when one image model is loaded.")
    seed: Optional[int] = Field(None, ge=0, le=MAX_SEED, description="Same seed, same images. "
                                "Omitted: a random seed, returned in the response.")
    steps: int = Field(25, ge=1, le=1000, description="Denoising steps (diffusion models).")
    sampler: Sampler = Field("dpm++", description="Diffusion sampler.")
    guidance: float = Field(1.0, ge=0.0, le=50.0, description="Classifier-free guidance scale "
                            "(class-conditional diffusion): 1 is none, above 1 follows the class more "
                            "closely, 0 draws as if no class were given.")


class ImageGenerationRequest(_Sampling):
    """OpenAI's images/generations shape. ``prompt`` is ignored by unconditional models; a
    class-conditional model takes one of its class names; a text-to-image model draws the text."""
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send quality/style/user: accepted, unused
    prompt: Optional[str] = Field(None, max_length=MAX_PROMPT_CHARS)
    negative_prompt: Optional[str] = Field(None, max_length=MAX_PROMPT_CHARS, description="Text-to-image "
                                           "models: what guidance steers away from.")
    layout: LayoutParam = None
    guidance: Optional[float] = Field(None, ge=0.0, le=50.0, description="Classifier-free guidance scale "
                                      "(class-conditional and text-to-image diffusion; 0 ignores the class or "
                                      "prompt, 1 is plain conditional sampling). Omitted: 1 (none) "
                                      "for class-conditional models, the model's own default for "
                                      "text-to-image ones.")
    n: int = Field(1, ge=1, le=64)
    size: Optional[str] = Field(None, max_length=20, description="WIDTHxHEIGHT; must be the model's size.")
    response_format: Literal["b64_json"] = Field(
        "b64_json", description="Only b64_json: this server keeps no files to link to.")
    output_format: Literal["png", "webp", "jpeg"] = Field(
        "png", description="File format of each image: png (lossless), or webp / jpeg at quality 90.")

    @field_validator("size")
    @classmethod
    def _size_format(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and not re.fullmatch(r"[1-9][0-9]{0,4}x[1-9][0-9]{0,4}", v):
            raise ValueError("size must look like 32x32")
        return v


Label = Union[int, str]


class SamplesRequest(_Sampling):
    n: int = Field(16, ge=1, le=64)
    labels: Optional[list[Label]] = Field(None, max_length=64, description="Class names or indices, "
                                          "repeated to fill n (class-conditional models).")

    @field_validator("labels")
    @classmethod
    def _short_labels(cls, v: Optional[list[Label]]) -> Optional[list[Label]]:
        for x in v or []:
            if isinstance(x, str) and len(x) > 100:
                raise ValueError("a label is at most 100 characters")
            if isinstance(x, int) and not 0 <= x < 1_000_000:
                raise ValueError("a label index is between 0 and 999999")
        return v


class SamplesJobParams(SamplesRequest):
    n: int = Field(16, ge=1, le=1024)
    guidance: Optional[float] = Field(None, ge=0.0, le=50.0, description="As in images/generations: "
                                      "omitted, 1 for class-conditional models, the model's default for "
                                      "text-to-image ones.")
    prompt: Optional[str] = Field(None, max_length=MAX_PROMPT_CHARS, description="Jobs of type "
                                  "text2image: the text to draw.")
    negative_prompt: Optional[str] = Field(None, max_length=MAX_PROMPT_CHARS)
    layout: LayoutParam = None


class JobRequest(_Body):
    type: Literal["samples", "text2image"] = Field("samples", description="samples: an image model "
                                                   "(labels); text2image: a text-to-image model (prompt).")
    params: SamplesJobParams


class ImageData(BaseModel):
    b64_json: str
    revised_prompt: Optional[str] = Field(None, description="Text-to-image models, when the prompt was "
                                          "changed: the text the model read (cut to its context).")


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]
    model: str
    seed: int
    output_format: str = "png"
    warnings: Optional[list[str]] = Field(None, description="Text-to-image models: what was done to the "
                                          "prompt (unknown words, cut to the context, empty).")


class SamplesResponse(BaseModel):
    model: str
    seed: int
    size: str
    images: list[str] = Field(description="base64-encoded PNGs")


class ModelCard(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    object: Literal["model"] = "model"
    owned_by: str = "genforge"
    kind: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Prediction(BaseModel):
    label: str
    index: int
    score: float


class ClassifyResponse(BaseModel):
    model: str
    labels: list[Prediction]


class CaptionResponse(BaseModel):
    model: str
    caption: str
    beam: int = Field(description="The beam width the caption was searched with (1: greedy).")
