"""Name -> constructor registries for models, tasks, datasets and feature nets.

Configs and the CLI look names up here; an unknown name is a GenforgeError listing the known ones.
"""
from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable

from .errors import GenforgeError


class Registry:
    """``modules``: where the entries are defined, imported on first lookup, so a caller never has to
    import a module only for its registrations (one list per registry, here)."""

    def __init__(self, kind: str, modules: tuple[str, ...] = ()):
        self.kind = kind
        self._items: dict[str, Callable[..., Any]] = {}
        self._modules, self._loaded = modules, not modules

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            for module in self._modules:
                importlib.import_module(module)

    def register(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def deco(obj: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._items[name] = obj
            return obj

        return deco

    def names(self) -> list[str]:
        self._load()
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._items

    def get(self, name: str) -> Callable[..., Any]:
        self._load()
        if name not in self._items:
            raise GenforgeError(
                f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}"
            )
        return self._items[name]

    def build(self, name: str, **kwargs: Any) -> Any:
        """Construct ``name`` with ``kwargs``; unknown keyword arguments are a one-line error."""
        fn = self.get(name)
        check_kwargs(fn, kwargs, f"{self.kind} {name!r}")
        try:
            return fn(**kwargs)
        except (ValueError, TypeError) as e:  # a constructor's own check of its arguments' values
            shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
            raise GenforgeError(f"{self.kind} {name!r} rejects its options ({shown}): {e}") from None


def check_kwargs(fn: Callable[..., Any], kwargs: dict[str, Any], what: str) -> None:
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    valid = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = [k for k in kwargs if k not in valid]
    if unknown:
        raise GenforgeError(
            f"{what} has no option {unknown[0]!r}; valid options: {', '.join(valid)}"
        )


def _in(package: str, *names: str) -> tuple[str, ...]:
    return tuple(f"genforge.{package}.{n}" for n in names)


MODELS = Registry("model", _in("models", "cnn", "diffusion", "gan", "recognizer", "text2image", "captioner",
                               "textgan", "clip", "gpt", "seq2seq", "video", "video_classifier", "tts",
                               "vocoder"))
TASKS = Registry("task", _in("tasks", "classify", "diffusion", "gan", "recognize", "text2image", "caption",
                             "textgan", "contrastive", "lm", "translate", "video", "video_classify", "tts",
                             "vocoder"))
DATASETS = Registry("dataset", _in("data", "captions", "digits", "fashion", "folder", "shapes", "text",
                                   "parallel", "video", "video_folder", "speech"))
FEATURE_NETS = Registry("feature net", _in("eval", "fid", "inception", "fvd"))

register_model = MODELS.register
register_task = TASKS.register
register_dataset = DATASETS.register
register_feature_net = FEATURE_NETS.register
