"""Dataset loaders and transforms; every test builds its own tiny data."""
from __future__ import annotations

import gzip
import json
import random
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from genforge.config import DataConfig
from genforge.data import load_dataset
from genforge.data import shapes as S
from genforge.data.fashion import FASHION_CLASSES, read_idx
from genforge.data.shapes import Obj, Scene
from genforge.data.transforms import (make_grid, match_channels, pil_to_uint8, random_flip,
                                      resize_center_crop, to_float, to_pil_list, to_uint8)
from genforge.errors import GenforgeError

# ---------------------------------------------------------------- transforms


def test_flip_is_deterministic_per_generator():
    x = torch.arange(64 * 3 * 2 * 4, dtype=torch.float32).view(64, 3, 2, 4)
    a = random_flip(x, torch.Generator().manual_seed(1))
    b = random_flip(x, torch.Generator().manual_seed(1))
    c = random_flip(x, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    flipped = [not torch.equal(a[i], x[i]) for i in range(64)]
    assert 10 < sum(flipped) < 54  # about half
    for i in range(64):
        assert torch.equal(a[i], x[i].flip(-1) if flipped[i] else x[i])


def test_float_uint8_round_trip_and_clipping():
    u = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    f = to_float(u)
    assert f.dtype == torch.float32 and f.min() == -1 and f.max() == 1
    assert torch.equal(to_uint8(f), u)
    assert to_uint8(torch.tensor([-3.0, 0.0, 7.0])).tolist() == [0, 128, 255]


def test_make_grid_size_and_placement():
    imgs = torch.zeros(10, 3, 8, 8, dtype=torch.uint8)
    imgs[3] = 200
    g = make_grid(imgs)  # ceil(sqrt(10)) = 4 per row, 3 rows
    assert g.size == (2 + 4 * 10, 2 + 3 * 10) and g.mode == "RGB"
    assert g.getpixel((2 + 3 * 10 + 4, 2 + 4)) == (200, 200, 200)
    assert make_grid(imgs, nrow=5, padding=0).size == (40, 16)
    assert make_grid(torch.zeros(2, 1, 4, 4), nrow=2).mode == "L"  # floats are read as [-1, 1]


def test_to_pil_list_modes():
    grey, rgb = to_pil_list(torch.zeros(2, 1, 5, 6)), to_pil_list(torch.zeros(3, 6, 5, dtype=torch.uint8))
    assert [p.mode for p in grey] == ["L", "L"] and grey[0].size == (6, 5)
    assert len(rgb) == 1 and rgb[0].mode == "RGB"


def test_match_channels_agrees_with_pil():
    arr = np.random.default_rng(0).integers(0, 256, (9, 7, 3), dtype=np.uint8)
    t = torch.from_numpy(arr).permute(2, 0, 1)
    grey = np.asarray(Image.fromarray(arr, "RGB").convert("L"))
    assert np.array_equal(match_channels(t, 1)[0].numpy(), grey)
    assert torch.equal(match_channels(t[None, :1], 3), t[None, :1].repeat(1, 3, 1, 1))
    assert match_channels(t, None) is t


def test_resize_center_crop_keeps_the_middle():
    wide = Image.new("RGB", (40, 20), (255, 0, 0))
    wide.paste((0, 255, 0), (10, 0, 30, 20))  # the centre 20x20 is green, the sides red
    out = resize_center_crop(wide, 8)
    assert out.size == (8, 8)
    inner = pil_to_uint8(out, 3)[:, :, 1:-1]  # LANCZOS reaches one pixel past the crop edge
    assert (inner[1] > 245).all() and (inner[0] < 10).all()
    assert resize_center_crop(Image.new("L", (5, 50)), 16).size == (16, 16)


# ---------------------------------------------------------------- shapes


def _shapes(**kw) -> "object":
    return load_dataset(DataConfig(name="shapes", **kw))


def test_shapes_deterministic_and_prefix_stable():
    a, b = _shapes(num_items=12, seed=3), _shapes(num_items=12, seed=3)
    assert torch.equal(a.images, b.images) and a.captions == b.captions and a.specs == b.specs
    longer, limited = _shapes(num_items=40, seed=3), _shapes(num_items=40, seed=3, limit=5)
    assert torch.equal(longer.images[:12], a.images) and longer.captions[:12] == a.captions
    assert len(limited) == 5 and limited.captions == a.captions[:5]
    assert _shapes(num_items=12, seed=4).captions != a.captions
    assert _shapes(num_items=12, seed=3, split="test").captions != a.captions


def test_shapes_loader_fields():
    ds = _shapes(num_items=20, image_size=32)
    assert ds.images.shape == (20, 3, 32, 32) and ds.images.dtype == torch.uint8
    assert ds.class_names == list(S.SHAPES)
    assert ds.labels.tolist() == [S.SHAPES.index(s.objects[0].shape) for s in ds.specs]
    assert ds.captions == [s.caption() for s in ds.specs]
    assert torch.equal(ds.images[0], torch.from_numpy(np.array(S.render(ds.specs[0], 32))).permute(2, 0, 1))
    grey = _shapes(num_items=4, image_size=16, channels=1)
    assert grey.images.shape == (4, 1, 16, 16)


def test_captions_by_hand():
    c = Obj(shape="circle", color="red", size="large", row=0, col=1)
    sq = Obj(shape="square", color="blue", size="small", row=2, col=1)
    star = Obj(shape="star", color="green", size="small", row=2, col=2)
    assert Scene(objects=(c, sq)).caption() == "a large red circle above a small blue square"
    assert Scene(objects=(sq, c)).caption() == "a small blue square below a large red circle"
    assert Scene(objects=(sq, star)).caption() == "a small blue square to the left of a small green star"
    assert Scene(objects=(c, star), background="grey").caption() == (
        "a large red circle to the upper left of a small green star on a grey background")
    assert Scene(objects=(c, sq, star)).caption() == (
        "a large red circle above a small blue square, which is to the left of a small green star")
    assert Scene(objects=(star, c)).caption() == "a small green star to the lower right of a large red circle"
    assert Scene(objects=(Obj(shape="ring", color="white", size="small", row=1, col=1),)).caption() == (
        "a small white ring in the centre")
    assert Scene(objects=(Obj(row=0, col=0),), background="pink").caption() == (
        "a large red circle at the top left on a pink background")
    assert Scene(objects=(Obj(row=2, col=2),)).caption() == "a large red circle at the bottom right"


def test_scene_dict_round_trip():
    rng = random.Random(0)
    for _ in range(50):
        sc = S.random_scene(rng, max_objects=4, background_prob=0.5)
        d = json.loads(json.dumps(sc.to_dict()))
        assert Scene.from_dict(d) == sc
    obj = Obj(row=np.int64(2), col=0)
    assert type(obj.row) is int and hash(obj) == hash(Obj(row=2, col=0))


@pytest.mark.parametrize("make, words", [
    (lambda: Obj(shape="hexagon"), ["hexagon", "circle", "ring"]),
    (lambda: Obj(color="teal"), ["teal", "red", "black"]),
    (lambda: Obj(size="huge"), ["small", "large"]),
    (lambda: Obj(row=3), ["row", "0..2"]),
    (lambda: Obj(col=True), ["col"]),
    (lambda: Scene(objects=(Obj(), Obj())), ["distinct"]),
    (lambda: Scene(objects=()), ["non-empty"]),
    (lambda: Scene(objects=(Obj(),), background="plaid"), ["plaid", "grey"]),
    (lambda: Scene(objects=(Obj(color="black"),)), ["black", "grey"]),
    (lambda: Scene.from_dict({"objects": [{"shape": "star", "colour": "red"}]}), ["colour", "color"]),
    (lambda: Scene.from_dict({"objs": []}), ["objects"]),
    (lambda: S.random_scene(0, max_objects=10), ["max_objects"]),
])
def test_scene_validation_messages(make, words):
    with pytest.raises(GenforgeError) as err:
        make()
    for w in words:
        assert w in str(err.value)


def test_random_scene_rules_with_both_generator_kinds():
    for rng in (random.Random(1), np.random.default_rng(1)):
        counts = set()
        for _ in range(300):
            sc = S.random_scene(rng, max_objects=3)
            counts.add(len(sc.objects))
            assert len({(o.row, o.col) for o in sc.objects}) == len(sc.objects)
            assert sc.background is not None or all(o.color != "black" for o in sc.objects)
        assert counts == {1, 2, 3}
    assert S.random_scene(np.random.default_rng(5)) == S.random_scene(np.random.default_rng(5))


def test_object_weights_set_the_share_of_each_object_count():
    def counts(**kw):
        n = [len(S.scene_for_item(i, max_objects=3, **kw).objects) for i in range(1200)]
        return [n.count(k) / len(n) for k in (1, 2, 3)]
    share = counts(object_weights=[1, 3, 0])
    assert share[2] == 0 and abs(share[1] - 0.75) < 0.05  # binomial sd at n=1200 is 0.0125
    assert counts(object_weights=[0, 0, 2]) == [0, 0, 1]
    # Unweighted items are the stream as it always was; a dataset records its weights.
    assert S.scene_for_item(7, max_objects=3) == S.scene_for_item(7, max_objects=3, object_weights=None)
    ds = load_dataset(DataConfig(name="shapes", num_items=40, max_objects=2, object_weights=[0, 1]))
    assert all(len(sc.objects) == 2 for sc in ds.specs) and ds.meta["object_weights"] == [0, 1]
    # The weights shape training only: the test split is the same for every run, so scores compare.
    test = load_dataset(DataConfig(name="shapes", split="test", num_items=40, max_objects=2, object_weights=[0, 1]))
    plain = load_dataset(DataConfig(name="shapes", split="test", num_items=40, max_objects=2))
    assert test.specs == plain.specs and {len(sc.objects) for sc in test.specs} == {1, 2}


@pytest.mark.parametrize("weights", [[1, 1], [1, -1, 1], [0, 0, 0]])
def test_object_weights_must_give_one_usable_weight_per_count(weights):
    with pytest.raises(GenforgeError, match="object_weights needs 3 non-negative weights"):
        load_dataset(DataConfig(name="shapes", num_items=4, max_objects=3, object_weights=weights))
    with pytest.raises(GenforgeError, match="object_weights needs 3 non-negative weights"):
        S.random_scene(0, max_objects=3, object_weights=[1, float("nan"), 1])


@pytest.mark.parametrize("size", [32, 64])
def test_render_puts_each_object_where_it_belongs(size):
    objs = tuple(Obj(shape=sh, color=co, size=sz, row=r, col=c) for sh, co, sz, r, c in [
        ("circle", "red", "small", 0, 0), ("square", "blue", "large", 0, 2), ("triangle", "yellow", "large", 1, 1),
        ("star", "white", "large", 2, 0), ("ring", "green", "large", 2, 2), ("circle", "black", "small", 1, 2)])
    sc = Scene(objects=objs, background="grey")
    img = S.render(sc, size)
    assert img.size == (size, size) and img.mode == "RGB"
    arr = np.asarray(img).astype(int)
    for o in objs:
        x, y = S.object_center(o, size)
        if o.shape == "ring":  # the hole shows the background; the band shows the colour
            assert np.abs(arr[int(y), int(x)] - S.BACKGROUNDS["grey"]).max() < 40
            x += 0.75 * S.object_radius(o, size)
        assert np.abs(arr[int(y), int(x)] - S.COLORS[o.color]).max() < 40, o
    x, y = S.object_center(Obj(row=1, col=0), size)  # an empty cell
    assert tuple(arr[int(y), int(x)]) == S.BACKGROUNDS["grey"]
    # Anti-aliased: edges hold blended values, not only the two flat colours.
    assert len({tuple(p) for p in arr.reshape(-1, 3)}) > 20


def test_render_large_is_bigger_than_small():
    def coverage(sz):
        return (np.asarray(S.render(Scene(objects=(Obj(size=sz),)), 32)).sum(-1) > 100).sum()
    assert coverage("large") > 2 * coverage("small") > 0


# ---------------------------------------------------------------- fashion (IDX)


def _write_idx(path: Path, arr: np.ndarray, code: int = 0x08) -> None:
    dtype = {0x08: ">u1", 0x0C: ">i4"}[code]
    payload = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(dtype).tobytes()
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)


def _idx_dir(root: Path, n_train: int = 6, n_test: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8)
    labels = np.arange(n_train) % 10
    _write_idx(root / "train-images-idx3-ubyte.gz", train)
    _write_idx(root / "train-labels-idx1-ubyte.gz", labels)
    _write_idx(root / "t10k-images-idx3-ubyte", rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8))
    _write_idx(root / "t10k-labels-idx1-ubyte", np.full(n_test, 7))
    return train, labels


def test_fashion_reads_gz_and_raw_idx(tmp_path):
    train, labels = _idx_dir(tmp_path)
    ds = load_dataset(DataConfig(name="fashion", path=str(tmp_path), image_size=28))
    assert ds.images.shape == (6, 1, 28, 28) and np.array_equal(ds.images[:, 0].numpy(), train)
    assert ds.labels.tolist() == labels.tolist() and ds.class_names == FASHION_CLASSES
    test = load_dataset(DataConfig(name="fashion", path=str(tmp_path), split="test", image_size=32, channels=3))
    assert test.images.shape == (3, 3, 32, 32) and test.labels.tolist() == [7, 7, 7]
    small = load_dataset(DataConfig(name="fashion", path=str(tmp_path), image_size=14, limit=4))
    assert small.images.shape == (4, 1, 14, 14)
    # Antialiased downscaling of a flat image stays flat.
    flat = np.full((1, 28, 28), 77, dtype=np.uint8)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", flat)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(1))
    assert (load_dataset(DataConfig(name="fashion", path=str(tmp_path), split="test", image_size=9)).images == 77).all()


def test_idx_big_endian_int32(tmp_path):
    arr = np.array([[1, -2, 70000], [3, 4, 2**31 - 1]])
    _write_idx(tmp_path / "x.idx", arr, code=0x0C)
    out = read_idx(tmp_path / "x.idx")
    assert out.shape == (2, 3) and out.tolist() == arr.tolist() and out.dtype.isnative


def test_idx_errors(tmp_path):
    _idx_dir(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"\x12\x34\x56\x78" + bytes(100))
    with pytest.raises(GenforgeError, match="magic"):
        load_dataset(DataConfig(name="fashion", path=str(tmp_path), split="test"))
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((3, 28, 28)))
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes((tmp_path / "t10k-images-idx3-ubyte").read_bytes()[:-5])
    with pytest.raises(GenforgeError, match="truncated"):
        load_dataset(DataConfig(name="fashion", path=str(tmp_path), split="test"))
    (tmp_path / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(GenforgeError, match="train-labels-idx1-ubyte"):
        load_dataset(DataConfig(name="fashion", path=str(tmp_path)))
    with pytest.raises(GenforgeError, match="apt-get install dataset-fashion-mnist"):
        load_dataset(DataConfig(name="fashion", path=str(tmp_path / "nope")))
    with pytest.raises(GenforgeError, match="data.path is required"):
        load_dataset(DataConfig(name="mnist"))


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="dataset-fashion-mnist not installed")
def test_fashion_real_files():
    train = load_dataset(DataConfig(name="fashion", image_size=28))
    test = load_dataset(DataConfig(name="fashion", image_size=28, split="test"))
    assert len(train) == 60000 and len(test) == 10000
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    assert train.labels[:3].tolist() == [9, 0, 0]  # ankle boot, T-shirt, T-shirt: the published order


# ---------------------------------------------------------------- digits


def test_digits_splits_and_shape():
    train = load_dataset(DataConfig(name="digits", image_size=32))
    test = load_dataset(DataConfig(name="digits", image_size=16, split="test", channels=3))
    assert train.images.shape == (1500, 1, 32, 32) and len(test) == 297 and test.images.shape[1:] == (3, 16, 16)
    assert sorted(set(train.labels.tolist())) == list(range(10)) and train.class_names == [str(d) for d in range(10)]
    assert train.images.max() > 200 and train.images[:, :, 0, 0].max() < 30  # ink in the middle, not at corners
    assert len(load_dataset(DataConfig(name="digits", limit=7))) == 7


# ---------------------------------------------------------------- folder


def _png(path: Path, color=(255, 0, 0), size=(12, 10), mode="RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


def _folder(path, **kw):
    return load_dataset(DataConfig(name="folder", path=str(path), **kw))


def test_folder_class_subfolders_give_labels(tmp_path):
    _png(tmp_path / "dog" / "b.png", (0, 0, 255))
    _png(tmp_path / "cat" / "z.PNG", (255, 0, 0))
    _png(tmp_path / "cat" / "deep" / "a.jpg", (0, 255, 0))
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    ds = _folder(tmp_path, image_size=8)
    assert ds.class_names == ["cat", "dog"] and ds.labels.tolist() == [0, 0, 1]
    assert ds.meta["files"] == ["cat/deep/a.jpg", "cat/z.PNG", "dog/b.png"]
    assert ds.images.shape == (3, 3, 8, 8) and ds.images[2, 2].min() > 250


def test_folder_flat_has_no_labels_and_honours_limit(tmp_path):
    for i in range(5):
        _png(tmp_path / f"{i}.png", (i * 50, 0, 0))
    ds = _folder(tmp_path, image_size=8)
    assert ds.labels is None and ds.class_names is None and len(ds) == 5
    assert ds.images[:, 0, 0, 0].tolist() == [0, 50, 100, 150, 200]
    assert _folder(tmp_path, image_size=8, limit=2).images[:, 0, 0, 0].tolist() == [0, 50]


def test_folder_skips_unreadable_files_with_one_warning(tmp_path, monkeypatch):
    _png(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (tmp_path / "c.jpg").write_bytes(b"")
    _png(tmp_path / "d.png", size=(64, 64))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # d.png (4096 px) is now a "bomb"
    with pytest.warns(UserWarning, match=r"skipped 3 unreadable images of 4 in") as rec:
        ds = _folder(tmp_path, image_size=8)
    assert len(ds) == 1 and ds.meta["skipped"] == 3
    assert sum("unreadable" in str(w.message) for w in rec) == 1


def test_folder_errors(tmp_path):
    with pytest.raises(GenforgeError, match="data.path is required for the folder dataset"):
        load_dataset(DataConfig(name="folder"))
    with pytest.raises(GenforgeError, match="does not exist"):
        _folder(tmp_path / "missing")
    _png(tmp_path / "one.png")
    with pytest.raises(GenforgeError, match="is a file"):
        _folder(tmp_path / "one.png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(GenforgeError, match="no images"):
        _folder(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"nope")
    with pytest.warns(UserWarning), pytest.raises(GenforgeError, match="could be read"):
        _folder(tmp_path / "bad")


def test_folder_channel_conversion(tmp_path):
    _png(tmp_path / "g.png", 90, mode="L")
    _png(tmp_path / "h.png", (200, 100, 50, 0), mode="RGBA")  # fully transparent -> white
    rgb = _folder(tmp_path, image_size=8)
    assert rgb.images.shape == (2, 3, 8, 8)
    assert (rgb.images[0] == 90).all() and (rgb.images[1] == 255).all()
    _png(tmp_path / "h.png", (200, 100, 50))
    grey = _folder(tmp_path, image_size=8, channels=1)
    expected = Image.new("RGB", (1, 1), (200, 100, 50)).convert("L").getpixel((0, 0))
    assert grey.images.shape == (2, 1, 8, 8) and (grey.images[1] == expected).all()


def test_folder_crops_non_square_to_the_centre(tmp_path):
    tall = Image.new("RGB", (20, 60), (255, 0, 0))
    tall.paste((0, 0, 255), (0, 20, 20, 40))  # blue middle third, red top and bottom
    tall.save(tmp_path / "tall.png")
    img = _folder(tmp_path, image_size=10).images[0]
    inner = img[:, 1:-1]  # LANCZOS reaches one pixel past the crop edge
    assert img.shape == (3, 10, 10) and (inner[2] > 245).all() and (inner[0] < 10).all()


def test_folder_train_test_subfolders(tmp_path):
    _png(tmp_path / "train" / "a.png")
    _png(tmp_path / "train" / "b.png")
    _png(tmp_path / "test" / "c.png")
    assert len(_folder(tmp_path)) == 2 and len(_folder(tmp_path, split="test")) == 1


def test_fashion_with_an_image_folder_suggests_the_folder_dataset_and_expands_home(tmp_path, monkeypatch):
    pics = tmp_path / "pictures" / "cats"
    pics.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(pics / "a.png")
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(GenforgeError, match=r"holds image files.*data\.name=folder"):
        load_dataset(DataConfig(name="fashion", path="~/pictures"))
    # '~' is the user's home for the IDX loaders too, not a folder named '~'
    with pytest.raises(GenforgeError, match=f"{tmp_path}/nothing does not exist"):
        load_dataset(DataConfig(name="fashion", path="~/nothing"))


def test_run_directories_expand_home(tmp_path, monkeypatch):
    from genforge.pipelines import resolve_run_dir

    (tmp_path / "runs" / "r").mkdir(parents=True)
    (tmp_path / "runs" / "r" / "config.json").write_text("{}")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_run_dir("~/runs/r") == tmp_path / "runs" / "r"
