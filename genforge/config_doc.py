"""Human-readable views of the run config, generated from the pydantic models in config.py so they
cannot drift from what ``validate_config`` accepts: an annotated YAML of an effective config
(``genforge config RECIPE``) and a Markdown table of every key (``genforge config --reference``).
"""
from __future__ import annotations

import math
import types
from typing import Any, Iterator, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from .config import RunConfig

_BOUNDS = (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))


def _section(field: FieldInfo) -> type[BaseModel] | None:
    ann = field.annotation
    return ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None


def _type_name(ann: Any) -> str:
    origin, args = get_origin(ann), get_args(ann)
    if origin is Literal:
        return " or ".join(str(a) for a in args)
    if origin in (Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        name = " or ".join(_type_name(a) for a in inner)
        return f"{name} or null" if len(inner) < len(args) else name
    if origin is tuple:
        return "[" + ", ".join(_type_name(a) for a in args) + "]"
    if origin is list:
        return f"list of {_type_name(args[0])}"
    if origin is dict:
        return "mapping"
    return getattr(ann, "__name__", str(ann))


def type_text(field: FieldInfo) -> str:
    """The field's type with its bounds, e.g. ``int >= 8, <= 512``."""
    bounds = [f"{sym} {getattr(m, attr):g}" for m in field.metadata for attr, sym in _BOUNDS
              if getattr(m, attr, None) is not None]
    name = _type_name(field.annotation)
    if not bounds:
        return name
    base, nullable = (name[:-len(" or null")], True) if name.endswith(" or null") else (name, False)
    return f"{base} {', '.join(bounds)}" + (" or null" if nullable else "")


def _flow(value: Any) -> str:
    """One value as single-line YAML (strings quoted only where YAML needs it)."""
    text = yaml.safe_dump({"v": value}, default_flow_style=True, width=math.inf, sort_keys=False,
                          allow_unicode=True).strip()
    return text[len("{v: "):-1]


def default_text(field: FieldInfo) -> str:
    value = field.get_default(call_default_factory=True)
    return _flow(value.model_dump(mode="json") if isinstance(value, BaseModel) else value)


def iter_fields(model: type[BaseModel] = RunConfig, prefix: str = "") -> Iterator[tuple[str, FieldInfo]]:
    """(dotted key, field) for every leaf key, in declaration order."""
    for name, field in model.model_fields.items():
        sub = _section(field)
        if sub is not None:
            yield from iter_fields(sub, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", field


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def reference_table() -> str:
    """Markdown: one row per config key with its type, default and meaning."""
    rows = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for key, field in iter_fields():
        rows.append(f"| `{key}` | {_cell(type_text(field))} | `{_cell(default_text(field))}` | "
                    f"{_cell(field.description or '')} |")
    return "\n".join(rows) + "\n"


def annotated_yaml(cfg: RunConfig) -> str:
    """The whole config as YAML that loads back to ``cfg``, each key preceded by a comment with its
    meaning, type and default."""
    lines: list[str] = []

    def emit(model: BaseModel, indent: str) -> None:
        for name, field in type(model).model_fields.items():
            value = getattr(model, name)
            kind = "section" if _section(field) else f"{type_text(field)}; default {default_text(field)}"
            lines.append(f"{indent}# {field.description} ({kind})")
            if isinstance(value, BaseModel):
                lines.append(f"{indent}{name}:")
                emit(value, indent + "  ")
            else:
                lines.append(f"{indent}{name}: {_flow(model.model_dump(mode='json', include={name})[name])}")

    emit(cfg, "")
    return "\n".join(lines) + "\n"
