"""The FID Inception v3 network in plain torch, loadable from pytorch-fid's standard weights.

Layout and state-dict key names follow pytorch-fid's ``fid_inception_v3`` (torchvision's Inception3
with aux_logits=False, a 1008-class fc and the FIDInceptionA/C/E_1/E_2 patches) so that
``pt_inception-2015-12-05-6726825d.pth`` loads with ``strict=True``; torchvision is not imported so
that it is not a dependency. Only the 2048-d pool3 features are computed; fc exists for the keys.
Preprocessing is clean-fid's "clean" mode: per-channel float PIL bicubic resize to 299x299.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import GenforgeError
from ..registry import register_feature_net
from ..device import pick_device
from .fid import check_uint8_images

STANDARD_WEIGHTS = "pt_inception-2015-12-05-6726825d.pth"
INPUT_SIZE = 299


class BasicConv2d(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, **kwargs):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)  # TF's epsilon, which the weights were trained with

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


def _avg_pool_tf(x: torch.Tensor) -> torch.Tensor:
    # TensorFlow's average pool leaves the zero padding out of the mean (pytorch-fid's FID patch)
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):  # pytorch-fid FIDInceptionA
    def __init__(self, in_channels: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(_avg_pool_tf(x))
        return torch.cat([b1, b5, b3, bp], 1)


class InceptionB(nn.Module):  # torchvision InceptionB, unpatched (Mixed_6a)
    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, bd, bp], 1)


class InceptionC(nn.Module):  # pytorch-fid FIDInceptionC
    def __init__(self, in_channels: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            bd = layer(bd)
        bp = self.branch_pool(_avg_pool_tf(x))
        return torch.cat([b1, b7, bd, bp], 1)


class InceptionD(nn.Module):  # torchvision InceptionD, unpatched (Mixed_7a)
    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, b7, bp], 1)


class InceptionE(nn.Module):
    """pytorch-fid FIDInceptionE_1 (pool="avg", Mixed_7b) and FIDInceptionE_2 (pool="max", Mixed_7c).

    The TF graph the weights come from max-pools in the last block (likely a bug there, but the
    weights expect it), so FID has to reproduce it.
    """

    def __init__(self, in_channels: int, pool: str = "avg"):
        super().__init__()
        self.pool = pool
        self.branch1x1 = BasicConv2d(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        if self.pool == "max":
            bp = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        else:
            bp = _avg_pool_tf(x)
        return torch.cat([b1, b3, bd, self.branch_pool(bp)], 1)


class FIDInceptionV3(nn.Module):
    """Input: (N, 3, 299, 299) in [-1, 1]. Output: (N, 2048) pool3 features."""

    def __init__(self, num_classes: int = 1008):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.maxpool1 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.maxpool2 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, pool="avg")
        self.Mixed_7c = InceptionE(2048, pool="max")
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(2048, num_classes)  # unused for features; present so the keys match

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1",
                     "Conv2d_4a_3x3", "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a",
                     "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c",
                     "avgpool"):
            x = getattr(self, name)(x)
        return torch.flatten(x, 1)


# ------------------------------------------------------------------------------------------ loading


def _fail(path: Path, what: str) -> GenforgeError:
    return GenforgeError(
        f"{path}: {what}; the standard pt_inception-2015-12-05 file ({STANDARD_WEIGHTS}, pytorch-fid's "
        "FID Inception weights, as .pth or converted to .safetensors) is expected"
    )


def read_state_dict(path: Union[str, Path]) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise _fail(path, "no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path), device="cpu")
        else:
            # weights_only: a .pth is a pickle, and a pickle from elsewhere must not run code
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # any unreadable / non-tensor file ends up here
        first = (str(e).strip().splitlines() or [""])[0][:160]
        raise _fail(path, f"cannot be read as a state dict ({type(e).__name__}: {first})") from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise _fail(path, "does not hold a flat name -> tensor state dict")
    return dict(sd)


def check_state_dict(sd: dict[str, torch.Tensor], net: nn.Module, path: Union[str, Path] = "weights"
                     ) -> dict[str, torch.Tensor]:
    """Same keys and shapes as ``net`` or a one-line GenforgeError; returns a dict ready for strict load.

    BatchNorm's num_batches_tracked counters are optional: files saved before torch 0.4.1 lack them
    and they play no part in eval-mode inference, so missing ones are filled with 0.
    """
    path = Path(path)
    want = net.state_dict()
    sd = {k: v for k, v in sd.items()}
    for k, v in want.items():
        if k.endswith("num_batches_tracked") and k not in sd:
            sd[k] = torch.zeros((), dtype=torch.long)
    missing = [k for k in want if k not in sd]
    unexpected = [k for k in sd if k not in want]
    wrong = [f"{k} is {tuple(sd[k].shape)}, want {tuple(want[k].shape)}"
             for k in want if k in sd and sd[k].shape != want[k].shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
    if wrong:
        problems.append(f"{len(wrong)} wrong shapes (e.g. {wrong[0]})")
    if problems:
        raise _fail(path, "not the FID Inception state dict: " + ", ".join(problems))
    return {k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in sd.items()}


def load_fid_inception(path: Union[str, Path]) -> FIDInceptionV3:
    sd = read_state_dict(path)
    # built on the meta device: random init of 24M weights is wasted work when all are overwritten
    with torch.device("meta"):
        net = FIDInceptionV3()
    net.load_state_dict(check_state_dict(sd, net, path), strict=True, assign=True)
    return net.eval()


# ------------------------------------------------------------------------------------ preprocessing


def clean_resize(images: torch.Tensor, size: int = INPUT_SIZE) -> torch.Tensor:
    """uint8 (N, 1|3, H, W) -> float32 (N, 3, size, size) in [0, 255], as clean-fid's "clean" mode.

    Each channel is resized as a float image with PIL bicubic (proper antialiasing, no uint8
    rounding), then clipped to [0, 255]; grey is resized once and repeated to RGB.
    """
    from PIL import Image

    images = check_uint8_images(images)
    n, c, h, w = images.shape
    arr = images.numpy()
    out = np.empty((n, 3, size, size), dtype=np.float32)
    for i in range(n):
        for ch in range(c):
            plane = arr[i, ch].astype(np.float32)
            if (h, w) != (size, size):
                img = Image.fromarray(plane).resize((size, size), resample=Image.Resampling.BICUBIC)
                plane = np.asarray(img, dtype=np.float32).clip(0.0, 255.0)
            out[i, ch] = plane
        if c == 1:
            out[i, 1:] = out[i, 0]
    return torch.from_numpy(out)


@register_feature_net("inception")
class InceptionFeatures:
    """2048-d pool3 features of the FID Inception network; needs the standard weights file."""

    name = "inception"
    dim = 2048

    def __init__(self, weights: Optional[Union[str, Path]] = None, net: Optional[nn.Module] = None,
                 device: str = "auto"):
        if net is None:
            if weights is None:
                raise GenforgeError(
                    f"the inception feature net needs weights: pass the standard {STANDARD_WEIGHTS} "
                    "file (pytorch-fid's FID Inception weights); it cannot be downloaded here"
                )
            net = load_fid_inception(weights)
        self.device = pick_device(device)
        self.net = net.to(self.device).eval()

    @classmethod
    def from_weights(cls, path: Union[str, Path], device: str = "auto") -> "InceptionFeatures":
        return cls(weights=path, device=device)

    def features(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        images = check_uint8_images(images)
        self.net.eval()
        out = []
        with torch.no_grad():
            for s in range(0, images.shape[0], batch_size):
                x = clean_resize(images[s:s + batch_size]).to(self.device)
                x = x / 255.0 * 2.0 - 1.0  # pytorch-fid's normalize_input: [0, 1] -> [-1, 1]
                out.append(self.net(x).float().cpu())
        if not out:
            return torch.zeros(0, self.dim)
        return torch.cat(out)
