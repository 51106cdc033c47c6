"""The caption grammar of ``shapes_video``, both ways: clauses like 'a small red circle moves right'
joined by 'while', an optional ' on a grey background' at the end. Written by ``VideoScene.caption``,
read back by ``parse_video_caption`` into the ``MotionSpec`` that ``genforge.eval.motion`` checks.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional

from ..errors import GenforgeError
from .shapes import BACKGROUNDS, COLORS, SHAPES, SIZES


_MOVE_WORDS = {"left": "moves left", "right": "moves right", "up": "rises", "down": "falls",
               "up-left": "moves up and left", "up-right": "moves up and right",
               "down-left": "moves down and left", "down-right": "moves down and right"}
# Accepted when reading, never written: other natural ways to say the same thing.
_SYNONYMS = {"moves up": "rises", "moves down": "falls", "goes up": "rises", "goes down": "falls",
             "drops": "falls", "moves to the left": "moves left", "moves to the right": "moves right"}
_BOUNCE_WORDS = {"horizontal": "bounces left and right", "vertical": "bounces up and down"}


def verb(o: Any) -> str:
    """The verb phrase of a MovingObj."""
    if o.motion == "move":
        return _MOVE_WORDS[o.direction]
    if o.motion == "bounce":
        return _BOUNCE_WORDS["horizontal" if o.direction in ("left", "right") else "vertical"]
    if o.motion == "turn":
        return f"turns {o.end_color}"
    return o.motion + "s"


_VERB_RE = "|".join(re.escape(v) for v in sorted([*_MOVE_WORDS.values(), *_SYNONYMS, *_BOUNCE_WORDS.values(),
                                                  "grows", "shrinks"], key=len, reverse=True))
_CLAUSE = re.compile(rf"an? ({'|'.join(SIZES)}) ({'|'.join(COLORS)}) ({'|'.join(SHAPES)}) "
                     rf"(?:({_VERB_RE})|turns ({'|'.join(COLORS)}))")


@dataclass(frozen=True)
class MotionSpec:
    """What a clip should show, without positions: what a caption states.

    ``objects``: dicts with shape, color, size (at the start), label (``motion_label``), end_color.
    """

    objects: tuple[dict, ...]
    background: Optional[str] = None


def parse_video_caption(text: str) -> MotionSpec:
    """The spec behind a caption written by ``VideoScene.caption`` (the inverse of that grammar)."""
    if not isinstance(text, str):
        raise GenforgeError(f"a caption must be a string, got {type(text).__name__}")
    body, background = " ".join(text.lower().strip().rstrip(".").split()), None
    m = re.fullmatch(rf"(.*) on an? ({'|'.join(BACKGROUNDS)}) background", body)
    if m:
        body, background = m.group(1), m.group(2)
    objects = []
    for clause in re.split(r",? while ", body):
        c = _CLAUSE.fullmatch(clause)
        if c is None:
            raise GenforgeError(f"cannot read video caption {text!r}; expected clauses like 'a small red circle "
                                "moves right' joined by 'while' (verbs: moves left/right, rises, falls, moves "
                                "up and left, bounces left and right, bounces up and down, grows, shrinks, "
                                "turns <colour>)")
        size, color, shape, verb, end = c.groups()
        if end is not None:
            label = "turn"
        else:
            verb = _SYNONYMS.get(verb, verb)
            label = {**{w: f"move {d}" for d, w in _MOVE_WORDS.items()},
                     **{w: f"bounce {a}" for a, w in _BOUNCE_WORDS.items()},
                     "grows": "grow", "shrinks": "shrink"}[verb]
        objects.append({"shape": shape, "color": color, "size": size, "label": label, "end_color": end})
    return MotionSpec(objects=tuple(objects), background=background)
