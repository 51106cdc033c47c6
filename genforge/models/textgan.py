"""Text-conditional GAN (after Reed et al. 2016, GAN-INT-CLS), the baseline beside text-to-image diffusion.

A caption's token ids go through a small text encoder (embeddings + GRU, so word order survives:
"a red circle above a blue square" is not "a blue square above a red circle"). The generator draws
noise + sentence embedding into an image, with the embedding also steering every BatchNorm
(conditional BN as in Miyato & Koyama's cGAN generator, so attributes reach every resolution rather
than only the first layer). The discriminator is the spectral-norm trunk of the landed projection
discriminator, with the class embedding replaced by a projection of the sentence embedding.

The text encoder lives inside the discriminator: it is trained by the discriminator's loss, whose
mismatched-caption term forces it to encode what an image must show; the generator reads the
embedding without training it, so the two optimizers never pull one weight.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm
from torch.nn.utils.rnn import pack_padded_sequence

from ..registry import register_model
from .gan import GAN, ProjectionDiscriminator, _num_doublings, dcgan_init

PAD = 0  # the tokenizer's padding id (genforge.text.tokenizer.PAD); the model itself imports no text code


class TextEncoder(nn.Module):
    """(B, L) padded token ids -> (B, embed_dim) sentence embeddings."""

    def __init__(self, vocab_size: int = 1000, embed_dim: int = 128, hidden: int = 128, max_length: int = 32):
        super().__init__()
        self.vocab_size, self.max_length, self.embed_dim = vocab_size, max_length, embed_dim
        self.tokens = nn.Embedding(vocab_size, hidden, padding_idx=PAD)
        self.rnn = nn.GRU(hidden, hidden, batch_first=True, bidirectional=True)
        self.out = nn.Linear(2 * hidden, embed_dim)
        # a fixed scale keeps the projection term and the generator's input well conditioned however
        # the encoder's weights drift
        self.norm = nn.LayerNorm(embed_dim, elementwise_affine=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.dim() != 2:
            raise ValueError(f"token ids must be (batch, length), got shape {tuple(ids.shape)}")
        if ids.numel() and int(ids.max()) >= self.vocab_size:
            raise ValueError(f"token id {int(ids.max())} is outside the model's vocabulary of {self.vocab_size}")
        ids = ids[:, :self.max_length]
        lengths = (ids != PAD).sum(dim=1).clamp(min=1).cpu()
        packed = pack_padded_sequence(self.tokens(ids), lengths, batch_first=True, enforce_sorted=False)
        _, h = self.rnn(packed)  # (2, B, hidden): the last state of each direction
        return self.norm(self.out(torch.cat([h[0], h[1]], dim=1)))


class CondBatchNorm(nn.Module):
    """BatchNorm whose scale and shift come from the sentence embedding."""

    def __init__(self, channels: int, cond_dim: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, affine=False)
        self.affine = nn.Linear(cond_dim, 2 * channels)
        nn.init.zeros_(self.affine.weight)  # start as plain BN (scale 1, shift 0)
        nn.init.zeros_(self.affine.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.affine(cond).chunk(2, dim=1)
        return self.bn(x) * (1 + gamma[:, :, None, None]) + beta[:, :, None, None]


class TextGenerator(nn.Module):
    """DCGAN-shaped generator of (noise, sentence embedding) with conditional BatchNorm."""

    def __init__(self, z_dim: int = 100, cond_dim: int = 128, channels: int = 3, image_size: int = 32,
                 width: int = 64):
        super().__init__()
        n = _num_doublings(image_size)
        self.z_dim, self.num_classes = z_dim, 0
        ch = width * 2 ** (n - 1)
        self.convs = nn.ModuleList([nn.ConvTranspose2d(z_dim + cond_dim, ch, 4, 1, 0, bias=False)])
        self.norms = nn.ModuleList([CondBatchNorm(ch, cond_dim)])
        for _ in range(n - 1):
            self.convs.append(nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False))
            self.norms.append(CondBatchNorm(ch // 2, cond_dim))
            ch //= 2
        self.to_image = nn.ConvTranspose2d(ch, channels, 4, 2, 1, bias=False)
        # the conditional norms have no BN affine weights to initialise: their scale comes from the text
        self.apply(lambda m: None if isinstance(m, nn.BatchNorm2d) else dcgan_init(m))

    def forward(self, z: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = torch.cat([z, cond], dim=1)[:, :, None, None]
        for conv, norm in zip(self.convs, self.norms):
            h = torch.relu(norm(conv(h), cond))
        return torch.tanh(self.to_image(h))


class TextDiscriminator(nn.Module):
    """logit(image, caption) = psi(h) + <W e, h>: h the image features, e the sentence embedding."""

    def __init__(self, channels: int = 3, image_size: int = 32, width: int = 32, vocab_size: int = 1000,
                 max_length: int = 32, embed_dim: int = 128, text_hidden: int = 128):
        super().__init__()
        self.text = TextEncoder(vocab_size, embed_dim, text_hidden, max_length)
        self.image = ProjectionDiscriminator(channels, image_size, width, num_classes=0)
        feat = self.image.linear.in_features
        self.project = spectral_norm(nn.Linear(embed_dim, feat, bias=False))

    def encode(self, ids: torch.Tensor) -> torch.Tensor:
        return self.text(ids)

    def forward(self, x: torch.Tensor, ids: torch.Tensor,
                wrong_ids: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits of (x, ids); with ``wrong_ids`` also of (x, wrong_ids), sharing one pass over the
        images (the matching-aware term costs a text encoding, not a second image trunk)."""
        h = self.image.trunk(x).sum(dim=(2, 3))
        base = self.image.linear(h).flatten()
        if wrong_ids is None:
            return base + (self.project(self.text(ids)) * h).sum(dim=1)
        width = max(ids.shape[1], wrong_ids.shape[1])
        e = self.project(self.text(torch.cat([_pad_to(ids, width), _pad_to(wrong_ids, width)])))
        right, wrong = e.chunk(2)
        return base + (right * h).sum(dim=1), base + (wrong * h).sum(dim=1)


def _pad_to(ids: torch.Tensor, length: int) -> torch.Tensor:
    return nn.functional.pad(ids, (0, length - ids.shape[1]), value=PAD)


class TextGAN(GAN):
    """Generator + discriminator (with the text encoder) saved together; pipelines use ``generate``."""

    loss, conditional = "hinge", False  # conditioned on text, not on class labels

    @property
    def vocab_size(self) -> int:
        return self.discriminator.text.vocab_size

    @property
    def max_length(self) -> int:
        return self.discriminator.text.max_length

    def encode(self, ids: torch.Tensor) -> torch.Tensor:
        return self.discriminator.encode(ids)

    def generate(self, z: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return self.generator(z, self.encode(ids))


@register_model("textgan")
def textgan(vocab_size: int = 1000, max_length: int = 32, z_dim: int = 100, channels: int = 3,
            image_size: int = 32, width: int = 64, d_width: int = 32, embed_dim: int = 128,
            text_hidden: int = 128) -> TextGAN:
    """Text-conditional GAN: hinge loss, spectral-norm projection discriminator, matching-aware training.
    ``vocab_size`` is an upper bound on the run's tokenizer; ``max_length`` the tokens read per caption."""
    if max_length < 3:
        raise ValueError(f"max_length must leave room for text between the begin/end markers, got {max_length}")
    return TextGAN(TextGenerator(z_dim, embed_dim, channels, image_size, width),
                   TextDiscriminator(channels, image_size, d_width, vocab_size, max_length, embed_dim,
                                     text_hidden))
