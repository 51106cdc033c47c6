"""nn.Modules only, no I/O. Each model registers by name so configs can build it."""
from ..registry import MODELS


def build_model(name: str, **params):
    return MODELS.build(name, **params)
