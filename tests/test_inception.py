"""The plain-torch FID Inception: pytorch-fid key names, weight loading, preprocessing, plumbing.

The real weights cannot be downloaded here, so a seeded random init stands in for them.
"""
import math
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from genforge.errors import GenforgeError
from genforge.eval import InceptionFeatures, compute_metrics, fid_from_features
from genforge.eval.inception import BasicConv2d, FIDInceptionV3, clean_resize

# Keys (and shapes) of pytorch-fid's pt_inception-2015-12-05-6726825d.pth, read off its
# fid_inception_v3 (torchvision Inception3, aux_logits=False, num_classes=1008, FID blocks).
KNOWN_KEYS = {
    "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
    "Conv2d_1a_3x3.bn.weight": (32,),
    "Conv2d_1a_3x3.bn.bias": (32,),
    "Conv2d_1a_3x3.bn.running_mean": (32,),
    "Conv2d_1a_3x3.bn.running_var": (32,),
    "Conv2d_2a_3x3.conv.weight": (32, 32, 3, 3),
    "Conv2d_2b_3x3.conv.weight": (64, 32, 3, 3),
    "Conv2d_3b_1x1.conv.weight": (80, 64, 1, 1),
    "Conv2d_4a_3x3.conv.weight": (192, 80, 3, 3),
    "Mixed_5b.branch1x1.conv.weight": (64, 192, 1, 1),
    "Mixed_5b.branch5x5_2.conv.weight": (64, 48, 5, 5),
    "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
    "Mixed_5d.branch_pool.conv.weight": (64, 288, 1, 1),
    "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
    "Mixed_6a.branch3x3dbl_3.bn.running_var": (96,),
    "Mixed_6b.branch7x7_2.conv.weight": (128, 128, 1, 7),
    "Mixed_6e.branch7x7dbl_5.conv.weight": (192, 192, 1, 7),
    "Mixed_7a.branch7x7x3_4.conv.weight": (192, 192, 3, 3),
    "Mixed_7b.branch3x3_2a.conv.weight": (384, 384, 1, 3),
    "Mixed_7c.branch3x3dbl_3b.bn.bias": (384,),
    "Mixed_7c.branch_pool.conv.weight": (192, 2048, 1, 1),
    "fc.weight": (1008, 2048),
    "fc.bias": (1008,),
}
N_CONV_BLOCKS = 94  # 5 stem + 3x7 (A) + 4 (B) + 4x10 (C) + 6 (D) + 2x9 (E)
N_TENSORS = 5 * N_CONV_BLOCKS + 2  # conv.weight + 4 bn tensors each, plus fc; num_batches_tracked aside
N_PARAMS = 23_850_960  # torchvision inception_v3 without aux (23,834,568) + 8 more fc classes


def _random_init(net: nn.Module, seed: int = 0) -> nn.Module:
    # variance-preserving weights and non-trivial BN statistics, so a key mix-up would change outputs
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * math.sqrt(2.0 / fan_in))
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) * 0.5 + 0.75)
    return net.eval()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # on a shared 2-core box, 2 intra-op threads run this net ~10x slower than 1 (spin-waits)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def net(one_thread):
    return _random_init(FIDInceptionV3())


@pytest.fixture(scope="module")
def weights(net, tmp_path_factory):
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("inception")
    sd = net.state_dict()
    torch.save(sd, d / "pt_inception.pth")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(d / "pt_inception.safetensors"))
    return d


def test_key_names_match_pytorch_fid(net):
    sd = net.state_dict()
    for key, shape in KNOWN_KEYS.items():
        assert tuple(sd[key].shape) == shape, key
    assert sum(isinstance(m, BasicConv2d) for m in net.modules()) == N_CONV_BLOCKS
    assert len([k for k in sd if not k.endswith("num_batches_tracked")]) == N_TENSORS
    assert sum(p.numel() for p in net.parameters()) == N_PARAMS
    assert all(m.eps == 0.001 for m in net.modules() if isinstance(m, nn.BatchNorm2d))
    assert not any(k.startswith("AuxLogits") for k in sd)


@pytest.mark.parametrize("name", ["pt_inception.pth", "pt_inception.safetensors"])
def test_from_weights_round_trip(net, weights, name):
    feats = InceptionFeatures.from_weights(weights / name, device="cpu")
    assert feats.net.state_dict().keys() == net.state_dict().keys()
    for k, v in net.state_dict().items():
        assert torch.equal(feats.net.state_dict()[k], v), k
    x = torch.rand(2, 3, 96, 96) * 2 - 1  # Inception runs at any size >= 75; small keeps this fast
    with torch.no_grad():
        want = net(x)
    got = feats.net(x)
    assert got.shape == (2, 2048)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)  # weights equal; oneDNN may vary by alignment


def test_old_file_without_num_batches_tracked_loads(net, tmp_path):
    # the 2018-era file format: legacy (non-zip) serialization, BN counters possibly absent
    sd = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(sd, tmp_path / "old.pth", _use_new_zipfile_serialization=False)
    feats = InceptionFeatures.from_weights(tmp_path / "old.pth", device="cpu")
    assert torch.equal(feats.net.fc.weight, net.fc.weight)


def test_bad_weights_are_one_line_genforge_errors(net, tmp_path):
    sd = net.state_dict()
    cases = {}
    missing = dict(sd)
    del missing["Mixed_6c.branch7x7_1.conv.weight"]
    cases["missing.pth"] = (missing, "1 missing keys")
    wrong = dict(sd)
    wrong["fc.weight"] = torch.zeros(1000, 2048)  # torchvision's 1000-class head
    cases["wrong.pth"] = (wrong, "wrong shapes")
    extra = dict(sd)
    extra["AuxLogits.fc.weight"] = torch.zeros(1008, 768)
    cases["extra.pth"] = (extra, "unexpected keys")
    for fname, (state, msg) in cases.items():
        torch.save(state, tmp_path / fname)
        with pytest.raises(GenforgeError, match=msg) as e:
            InceptionFeatures.from_weights(tmp_path / fname)
        assert "pt_inception-2015-12-05" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(GenforgeError, match="no such file.*pt_inception-2015-12-05"):
        InceptionFeatures.from_weights(tmp_path / "nope.pth")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(GenforgeError, match="cannot be read"):
        InceptionFeatures.from_weights(tmp_path / "junk.safetensors")
    with pytest.raises(GenforgeError, match="needs weights"):
        InceptionFeatures()


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickle_with_code_is_refused(tmp_path, capsys):
    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"fc.weight": _Evil()}, f, protocol=2)
    with pytest.raises(GenforgeError, match="cannot be read"):
        InceptionFeatures.from_weights(tmp_path / "evil.pth")
    assert "must never run" not in capsys.readouterr().out


def test_clean_resize_is_per_channel_float_pil_bicubic():
    from PIL import Image

    img = torch.randint(0, 256, (1, 3, 20, 24), dtype=torch.uint8)
    out = clean_resize(img, size=299)
    assert out.shape == (1, 3, 299, 299) and out.dtype == torch.float32
    plane = img[0, 1].numpy().astype(np.float32)
    want = np.asarray(Image.fromarray(plane).resize((299, 299), Image.Resampling.BICUBIC)).clip(0, 255)
    np.testing.assert_array_equal(out[0, 1].numpy(), want)
    grey = clean_resize(img[:, :1])
    assert torch.equal(grey[0, 0], grey[0, 2]) and torch.equal(grey[0, 0], out[0, 0])
    native = torch.randint(0, 256, (1, 3, 299, 299), dtype=torch.uint8)
    assert torch.equal(clean_resize(native), native.float())


def test_features_dim_and_fid_plumbing(net):
    from genforge.registry import FEATURE_NETS

    assert FEATURE_NETS.get("inception") is InceptionFeatures
    feats = InceptionFeatures(net=net, device="cpu")
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8, generator=g)
    b = torch.randint(0, 120, (4, 3, 32, 32), dtype=torch.uint8, generator=g)
    fa, fb = feats.features(a, batch_size=3), feats.features(b)
    assert fa.shape == fb.shape == (4, feats.dim) == (4, 2048)
    assert torch.isfinite(fa).all() and fa.std() > 0
    # batching does not change the features
    torch.testing.assert_close(feats.features(a[:2]), fa[:2], rtol=1e-4, atol=1e-5)
    assert fid_from_features(fa, fa) < 1e-6 * float(fa.var(0).sum())
    m = compute_metrics(fa, fb, kid_subsets=3)
    assert m["fid"] > 0 and all(math.isfinite(v) for v in m.values())
