"""genforge: train, evaluate and serve small deep generative models."""
from .errors import GenforgeError

__version__ = "0.1.0"


def load(path, device: str = "auto", step=None, compile: bool = False):
    """Load a run directory and return the pipeline that runs it (see genforge.pipelines);
    ``step=N`` loads the checkpoint kept at training step N instead of the final weights;
    ``compile=True`` samples through torch.compile (faster after a one-off compile)."""
    from .pipelines import load_pipeline

    return load_pipeline(path, device=device, step=step, compile=compile)


def train(config, run_dir, resume: bool = False):
    """Train from a RunConfig (or a YAML path / shipped recipe name) into ``run_dir``."""
    from .config import RunConfig, load_config
    from .train.trainer import Trainer

    cfg = config if isinstance(config, RunConfig) else load_config(config)
    return Trainer(cfg, run_dir, resume=resume).fit()


__all__ = ["GenforgeError", "load", "train", "__version__"]
