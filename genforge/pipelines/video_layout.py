"""Path-planned sampling for captions in the ``shapes_video`` grammar.

The shipped text-to-video model draws one moving object often right, but a clip of two objects
asks it to keep each colour and shape bound to its own object frame after frame, which it mostly
fails at (attributes swap between the objects), and a bounce, a growth, a shrink or a colour change
asks it to get a whole path right from a caption. With ``layout="paths"`` the pipeline plans first
and draws second, as layout-guided video diffusion does (LLM-grounded video diffusion, Peekaboo,
TrailBlazer) and as factorised text-to-video does (Emu Video: an image first, then a video from it):

1. The caption is read back into its objects and motions (``data.video.parse_video_caption``) and a
   path is drawn for each (``data.video.plan_scene``: start places seeded per clip, the motion laws
   of the data): where it is and how big in every frame.
2. Each object becomes a layer, a one-object clip of its own caption; an object that changes colour
   becomes two, one per colour, split where the data changes colour (half-way), each from a
   caption starting in its colour and guided away from the other's (``Layer.avoid``).
3. With ``task_params.first_frame_model`` (a text2image run; the shipped ``video-shapes`` names
   ``text2image-shapes``), a layer's first frame is drawn by that model from a still caption of
   the object at its nearest grid cell and moved to the planned start; without one the video
   model draws frame 0 itself.
4. The video model draws the rest of each layer frame by frame, its estimate of every frame moved
   to the planned place (and scaled to the planned size where that changes) and flattened to its
   own background outside the planned box (``models.video.keep_to``). A layer whose object stays
   put and keeps its size over the frames it shows (``Layer.held``: each colour of a colour
   change) is that first frame held, when a first-frame model drew it: the video model, which
   reads no clock, would otherwise change the colour where its caption's "turns" tells it to
   rather than where the plan does (measured: back to the old colour in the last frames, or the
   new one from the second frame, in 9 of 16 test clips with a colour change).
5. The layers are composited, frame by frame: the first layer showing a frame, whole, plus what
   each later one draws inside its box (boxes never overlap: the plan keeps objects apart).

The objects' look, each colour and the background are the models' drawing; where each object is,
how big, and when a colour changes come from the plan, so a direction, a bounce, a growth or the
timing of a colour change holds by plan, not by the model's reading of the caption.

Captions the grammar does not cover are drawn as usual.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, Optional, get_args

import torch

from ..data.shapes import GRID, Obj, Scene
from ..data.video import MovingObj, VideoScene, parse_video_caption, plan_scene
from ..errors import GenforgeError
from ..models.video import background_of, box_masks

VideoLayout = Literal["paths", "off"]
VIDEO_LAYOUTS: tuple[str, ...] = get_args(VideoLayout)


@dataclass(frozen=True)
class Layer:
    """One object over a span of the clip: its own caption; where it is planned to be in each
    frame of its own clip ((T, 3): x, y, bounding radius in px); a still caption of its first
    frame in the ``shapes`` grammar (the object at the grid cell nearest its start), for a
    text-to-image model that draws first frames; and the clip frames it shows, ``start`` to
    ``stop`` (its own frames 0, 1, ... land on start, start + 1, ...)."""

    prompt: str
    path: torch.Tensor
    still: str
    start: int
    stop: int
    avoid: Optional[str] = None

    @property
    def held(self) -> bool:
        """The object stays put and the same size over the frames it shows (a colour change's
        layers): all there is to draw is one picture of it, held."""
        shown = self.path[:self.stop - self.start]
        return bool((shown == shown[0]).all())


def paths(scene: VideoScene, size: int) -> list[torch.Tensor]:
    """Per object, its (x, y, bounding radius) in px in every frame: (T, 3)."""
    return [torch.tensor([[s.x * size, s.y * size, s.radius * size] for s in track]) for track in scene.tracks]


def plan_layers(prompt: str, seed: int, frames: int, size: int) -> Optional[list[Layer]]:
    """The layers of one clip for ``prompt``, one per object (two for a colour change, see
    ``object_layers``), in the caption's order; None when the caption is not in the
    shapes_video grammar or no path fits."""
    try:
        spec = parse_video_caption(prompt)
    except GenforgeError:
        return None
    scene = plan_scene(spec, frames, seed)
    if scene is None:
        return None
    return [layer for o, path in zip(scene.objects, paths(scene, size))
            for layer in object_layers(o, path, scene.background, frames)]


def object_layers(o: MovingObj, path: torch.Tensor, background: Optional[str], frames: int) -> list[Layer]:
    """One layer for the whole clip; or, for an object that changes colour, two: up to the change
    (frame ``frames // 2``, as in the data) its own caption, from there a caption of the same object
    starting in the new colour (which the model keeps for the first half of a clip, as it was
    taught), each with a first frame of its own colour. So when the colour changes is planned, as
    where the objects are; each colour is drawn by the models."""
    def caption(obj: MovingObj) -> str:
        return VideoScene(objects=(obj,), frames=frames, background=background).caption()

    if o.motion != "turn":
        return [Layer(caption(o), path, still_caption(o, background), 0, frames)]
    half = frames // 2
    after = replace(o, color=o.end_color, end_color=o.color)
    rest = torch.cat([path[half:], path[-1:].expand(half, 3)])  # its own clip runs on past the end
    return [Layer(caption(o), path, still_caption(o, background), 0, half, caption(after)),
            Layer(caption(after), rest, still_caption(after, background), half, frames, caption(o))]


def still_caption(o: MovingObj, background: Optional[str]) -> str:
    """'a small red star at the top right': the object as it starts, at its nearest grid cell."""
    row, col = (min(GRID - 1, int(v * GRID)) for v in (o.y, o.x))
    return Scene(objects=(Obj(shape=o.shape, color=o.color, size=o.size, row=row, col=col),),
                 background=background).caption()


def composite(clips: torch.Tensor, layers: list[Layer]) -> torch.Tensor:
    """One clip (T, C, H, W) from the clips its layers drew (K, T, C, H, W): each frame is the first
    layer showing it, whole, with what every later layer showing it draws inside its planned box
    (``models.video.box_masks``; its frame less its background, the frame's median) added on. A
    frame led by a layer that starts later (the new colour of a colour change) is that layer's
    drawing inside its box on the first layer's background, so the background does not change
    with the colour."""
    frames, (h, w) = clips.shape[1], clips.shape[-2:]
    out = torch.empty_like(clips[0])
    background = background_of(clips[0, 0])  # the first layer starts at frame 0
    for t in range(frames):
        shown = [(c, layer) for c, layer in zip(clips, layers) if layer.start <= t < layer.stop]
        c, layer = shown[0]
        out[t] = c[t - layer.start]
        if layer.start > 0:  # a later colour's layer leads: its drawing inside its box, on the clip's background
            own = out[t] - background_of(out[t])
            out[t] = torch.where(box_masks(layer.path[t - layer.start], h, w) >= 0.5, background + own, background)
        for c, layer in shown[1:]:
            own = c[t - layer.start]
            drawn = own - background_of(own)  # on the first layer's background
            out[t] = torch.where(box_masks(layer.path[t - layer.start], h, w) >= 0.5, out[t] + drawn, out[t])
    return out.clamp(-1, 1)
