"""GANs: DCGAN (Radford et al. 2015) and a class-conditional GAN with a projection discriminator.

DCGAN keeps the paper's recipe: generator of ConvTranspose + BatchNorm + ReLU ending in Tanh,
discriminator of strided Conv + LeakyReLU (BatchNorm after the first layer). The conditional GAN
uses spectral norm and a projection discriminator (Miyato & Koyama 2018), trained with hinge loss.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from ..registry import register_model


def _num_doublings(image_size: int) -> int:
    n = math.log2(image_size) - 2
    if n < 1 or n != int(n):
        raise ValueError(f"image_size must be a power of two >= 8, got {image_size}")
    return int(n)


def dcgan_init(m: nn.Module) -> None:
    # The DCGAN paper initialises conv weights from N(0, 0.02) and BN scales from N(1, 0.02).
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


class Generator(nn.Module):
    def __init__(self, z_dim: int = 100, channels: int = 1, image_size: int = 32, width: int = 64,
                 num_classes: int = 0):
        super().__init__()
        n = _num_doublings(image_size)
        self.z_dim, self.num_classes = z_dim, num_classes
        in_dim = z_dim + (z_dim if num_classes else 0)
        self.embed = nn.Embedding(num_classes, z_dim) if num_classes else None
        ch = width * 2 ** (n - 1)
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(in_dim, ch, 4, 1, 0, bias=False), nn.BatchNorm2d(ch), nn.ReLU(True)
        ]
        for _ in range(n - 1):
            layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ch // 2),
                       nn.ReLU(True)]
            ch //= 2
        layers += [nn.ConvTranspose2d(ch, channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.apply(dcgan_init)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None:
            if labels is None:
                raise ValueError("this generator is class-conditional: pass labels")
            z = torch.cat([z, self.embed(labels)], dim=1)
        return self.net(z[:, :, None, None])


class Discriminator(nn.Module):
    """DCGAN discriminator: returns one logit per image."""

    def __init__(self, channels: int = 1, image_size: int = 32, width: int = 64):
        super().__init__()
        n = _num_doublings(image_size)
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 4, 2, 1, bias=False),
                                   nn.LeakyReLU(0.2, True)]
        ch = width
        for _ in range(n - 1):
            layers += [nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ch * 2),
                       nn.LeakyReLU(0.2, True)]
            ch *= 2
        layers += [nn.Conv2d(ch, 1, 4, 1, 0, bias=False)]
        self.net = nn.Sequential(*layers)
        self.apply(dcgan_init)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(x).flatten()


class ProjectionDiscriminator(nn.Module):
    """Spectral-norm conv trunk; logit = psi(h) + <embed(y), h> (the projection trick). With
    ``num_classes=0`` it is the unconditional SNGAN discriminator: logit = psi(h)."""

    def __init__(self, channels: int = 1, image_size: int = 32, width: int = 64, num_classes: int = 10):
        super().__init__()
        n = _num_doublings(image_size)
        layers: list[nn.Module] = []
        cin, ch = channels, width
        for _ in range(n):
            layers += [spectral_norm(nn.Conv2d(cin, ch, 3, 1, 1)), nn.LeakyReLU(0.1, True),
                       spectral_norm(nn.Conv2d(ch, ch * 2, 4, 2, 1)), nn.LeakyReLU(0.1, True)]
            cin, ch = ch * 2, ch * 2
        self.trunk = nn.Sequential(*layers)
        self.linear = spectral_norm(nn.Linear(cin, 1))
        self.embed = spectral_norm(nn.Embedding(num_classes, cin)) if num_classes else None

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        h = self.trunk(x).sum(dim=(2, 3))
        out = self.linear(h).flatten()
        if self.embed is None:
            return out
        if labels is None:
            raise ValueError("the projection discriminator is class-conditional: pass labels")
        return out + (self.embed(labels) * h).sum(dim=1)


class GAN(nn.Module):
    """A generator and a discriminator saved together; pipelines only use the generator. A shipped
    model is built with ``discriminator=False`` (None here): training weights only, half the file."""

    loss = "bce"
    conditional = False

    def __init__(self, generator: nn.Module, discriminator: nn.Module | None):
        super().__init__()
        self.generator = generator
        self.discriminator = discriminator

    @property
    def z_dim(self) -> int:
        return self.generator.z_dim

    @property
    def num_classes(self) -> int:
        return self.generator.num_classes


@register_model("dcgan")
def dcgan(z_dim: int = 100, channels: int = 1, image_size: int = 32, width: int = 64,
          d_width: int = 64, discriminator: bool = True) -> GAN:
    return GAN(Generator(z_dim, channels, image_size, width),
               Discriminator(channels, image_size, d_width) if discriminator else None)


@register_model("sngan")
def sngan(z_dim: int = 100, channels: int = 1, image_size: int = 32, width: int = 64,
          d_width: int = 32, discriminator: bool = True) -> GAN:
    """Unconditional: the DCGAN generator against a spectral-norm discriminator, hinge loss (Miyato
    et al. 2018). Steadier than DCGAN's BatchNorm discriminator on sparse, flat-coloured scenes."""
    model = GAN(Generator(z_dim, channels, image_size, width),
                ProjectionDiscriminator(channels, image_size, d_width, num_classes=0) if discriminator else None)
    model.loss = "hinge"
    return model


@register_model("cgan")
def cgan(z_dim: int = 100, channels: int = 1, image_size: int = 32, width: int = 64,
         d_width: int = 32, num_classes: int = 10, discriminator: bool = True) -> GAN:
    model = GAN(Generator(z_dim, channels, image_size, width, num_classes),
                ProjectionDiscriminator(channels, image_size, d_width, num_classes) if discriminator else None)
    model.loss, model.conditional = "hinge", True
    return model
