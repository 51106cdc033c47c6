"""Captioned image data (metadata.jsonl, COCO JSON) and the shapes compositional hold-out."""
from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import pytest
from PIL import Image

from genforge.config import DataConfig, load_config
from genforge.data import load_dataset
from genforge.data import shapes as S
from genforge.data.folder import held_out_file
from genforge.data.shapes import Obj, Scene
from genforge.errors import GenforgeError


def _png(path: Path, color=(200, 30, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (10, 12), color).save(path)


def _jsonl(path: Path, lines) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines))


def _captions(path, **kw):
    return load_dataset(DataConfig(name="captions", path=str(path), image_size=8, val_fraction=0, **kw))


def _by_file(ds):
    return dict(zip(ds.meta["files"], ds.captions))


# ---------------------------------------------------------------- metadata.jsonl


def test_metadata_jsonl_reads_captions_from_subfolders_with_every_text_key(tmp_path):
    _png(tmp_path / "a.png", (255, 0, 0))
    _png(tmp_path / "birds" / "b.png", (0, 255, 0))
    _png(tmp_path / "birds" / "c.png", (0, 0, 255))
    _png(tmp_path / "more" / "d.png")
    _jsonl(tmp_path / "metadata.jsonl", [
        {"file_name": "a.png", "text": "a red square"},
        {"file_name": "birds/b.png", "caption": "green"},
        {"file_name": "birds/b.png", "caption": "all green"},  # a second line adds a caption
        {"file_name": "birds/c.png", "captions": ["blue", " all blue ", ""], "extra": 1},
    ])
    # a nested metadata file names its images relative to its own folder
    _jsonl(tmp_path / "more" / "metadata.jsonl", [{"file_name": "d.png", "text": "another red one"}])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # clean data warns about nothing
        ds = _captions(tmp_path)
    assert _by_file(ds) == {"a.png": "a red square", "birds/b.png": ["green", "all green"],
                            "birds/c.png": ["blue", "all blue"], "more/d.png": "another red one"}
    assert ds.images.shape == (4, 3, 8, 8) and ds.images[1, 1].min() > 250
    assert ds.meta["format"] == "metadata.jsonl" and ds.meta["skipped"] == 0 and not ds.meta["held_out"]
    assert "user's" in ds.meta["license"]
    assert len(_captions(tmp_path, limit=2)) == 2
    # a single file is accepted too
    assert len(_captions(tmp_path / "metadata.jsonl")) == 4


def test_bad_entries_are_skipped_and_counted_in_one_warning(tmp_path):
    _png(tmp_path / "ok.png")
    _png(tmp_path / "notext.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    _png(tmp_path.parent / "outside.png")
    _jsonl(tmp_path / "metadata.jsonl", [
        {"file_name": "ok.png", "text": "fine"},
        '{"file_name": "x.png", "text": ',  # cut-off line
        "[1, 2]",
        {"file_name": "notext.png", "text": "   "},
        {"file_name": "notext.png"},
        {"file_name": "gone.png", "text": "no such file"},
        {"file_name": "broken.png", "text": "corrupt"},
        {"file_name": "../outside.png", "text": "escapes the folder"},
        "",
    ])
    with pytest.warns(UserWarning) as rec:
        ds = _captions(tmp_path)
    assert ds.meta["files"] == ["ok.png"] and ds.captions == ["fine"]
    assert ds.meta["skipped_by_reason"] == {
        "bad JSON lines": 1, "entries without a file_name inside the folder": 2, "entries without text": 2,
        "missing files": 1, "unreadable images": 1}
    assert ds.meta["skipped"] == 7
    msgs = [str(w.message) for w in rec]
    assert len(msgs) == 1 and "\n" not in msgs[0]
    assert msgs[0].startswith("skipped 7 of 8 caption entries") and "metadata.jsonl line 2" in msgs[0]


def test_hf_train_and_test_folders_are_the_splits(tmp_path):
    for split, n in (("train", 3), ("test", 2)):
        for i in range(n):
            _png(tmp_path / split / f"{i}.png")
        _jsonl(tmp_path / split / "metadata.jsonl", [{"file_name": f"{i}.png", "text": f"{split} {i}"}
                                                     for i in range(n)])
    (tmp_path / "README.md").write_text("---\nlicense: cc-by-4.0\npretty_name: tiny\n---\n# Tiny\n")
    train = load_dataset(DataConfig(name="captions", path=str(tmp_path), image_size=8))
    test = load_dataset(DataConfig(name="captions", path=str(tmp_path), image_size=8, split="test"))
    assert train.captions == ["train 0", "train 1", "train 2"] and test.captions == ["test 0", "test 1"]
    assert test.meta["held_out"] and not train.meta["held_out"]
    assert train.meta["license"] == "cc-by-4.0"


def test_val_fraction_holds_out_by_file_name_as_folder_does(tmp_path):
    names = [f"img{i:02d}.png" for i in range(40)]
    for n in names:
        _png(tmp_path / n)
    _jsonl(tmp_path / "metadata.jsonl", [{"file_name": n, "text": n} for n in names])
    cfg = DataConfig(name="captions", path=str(tmp_path), image_size=8, val_fraction=0.3)
    train, test = load_dataset(cfg), load_dataset(cfg.model_copy(update={"split": "test"}))
    assert set(test.meta["files"]) == {n for n in names if held_out_file(Path(n), 0.3)}
    assert set(train.meta["files"]) | set(test.meta["files"]) == set(names)
    assert test.meta["held_out"] and not train.meta["held_out"] and 0 < len(test) < 40


def test_nothing_usable_is_an_error_naming_the_fix(tmp_path):
    with pytest.raises(GenforgeError, match="data.path is required for the captions dataset"):
        load_dataset(DataConfig(name="captions"))
    with pytest.raises(GenforgeError, match="does not exist"):
        _captions(tmp_path / "nope")
    _png(tmp_path / "plain" / "a.png")
    with pytest.raises(GenforgeError, match=r"no metadata.jsonl or captions_\*.json found.*data.name=folder"):
        _captions(tmp_path / "plain")
    _jsonl(tmp_path / "bad" / "metadata.jsonl", ["not json", {"file_name": "a.png", "text": "missing"}])
    with pytest.warns(UserWarning), pytest.raises(GenforgeError, match=r"no usable captioned images.*"
                                                   r"1 bad JSON lines, 1 missing files"):
        _captions(tmp_path / "bad")
    (tmp_path / "coco.json").write_text("{not json")
    with pytest.raises(GenforgeError, match="not readable COCO JSON"):
        _captions(tmp_path / "coco.json")
    (tmp_path / "other.json").write_text('{"images": []}')
    with pytest.raises(GenforgeError, match="not COCO captions JSON"):
        _captions(tmp_path / "other.json")


# ---------------------------------------------------------------- COCO


def _coco(json_path: Path, image_dir: Path, n: int, caps_per_image: int = 2, extra=()) -> None:
    images = [{"id": 100 + i, "file_name": f"{i:012d}.jpg", "width": 10, "height": 12} for i in range(n)]
    anns = [{"id": k, "image_id": 100 + i, "caption": f"picture {i} caption {c}"}
            for k, (i, c) in enumerate((i, c) for i in range(n) for c in range(caps_per_image))]
    for i in range(n):
        image_dir.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (10, 12), (100 * i, 0, 0)).save(image_dir / f"{i:012d}.jpg", quality=95)
    doc = {"info": {}, "licenses": [{"id": 1, "name": "Attribution License", "url": "http://x/by/2.0/"}],
           "images": images, "annotations": anns + list(extra)}
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(doc))


def test_coco_layout_with_annotations_folder_and_split_files(tmp_path):
    _coco(tmp_path / "annotations" / "captions_train2017.json", tmp_path / "train2017", 3)
    _coco(tmp_path / "annotations" / "captions_val2017.json", tmp_path / "val2017", 2, caps_per_image=1)
    train = load_dataset(DataConfig(name="captions", path=str(tmp_path), image_size=8))
    assert train.meta["format"] == "coco" and train.meta["files"] == [f"{i:012d}.jpg" for i in range(3)]
    assert train.captions[1] == ["picture 1 caption 0", "picture 1 caption 1"]
    assert train.meta["license"] == ["Attribution License"] and not train.meta["held_out"]
    test = load_dataset(DataConfig(name="captions", path=str(tmp_path), image_size=8, split="test"))
    assert test.captions == ["picture 0 caption 0", "picture 1 caption 0"] and test.meta["held_out"]
    # pointing at the JSON file itself finds the images in the folder above annotations/
    direct = _captions(tmp_path / "annotations" / "captions_val2017.json")
    assert direct.captions == test.captions


def test_coco_json_beside_the_images_skips_and_counts_bad_annotations(tmp_path):
    bad = [{"image_id": 999, "caption": "of nothing"}, {"image_id": 101, "caption": ""}]
    _coco(tmp_path / "captions.json", tmp_path, 3, caps_per_image=1, extra=bad)
    (tmp_path / f"{2:012d}.jpg").unlink()
    with pytest.warns(UserWarning, match=r"skipped 3 of 5 caption entries.*1 captions of unknown images, "
                                         r"1 entries without text, 1 missing files"):
        ds = _captions(tmp_path / "captions.json")
    assert ds.captions == ["picture 0 caption 0", "picture 1 caption 0"]


# ---------------------------------------------------------------- shapes compositional hold-out


def _scenes(n, **kw):
    return [S.scene_for_item(i, **kw) for i in range(n)]


def test_is_heldout_by_hand():
    green_triangle = Obj(shape="triangle", color="green", row=0, col=0)
    star_low, ring_high = Obj(shape="star", row=2, col=1), Obj(shape="ring", color="blue", row=0, col=1)
    assert S.is_heldout(Scene(objects=(green_triangle,)))
    assert not S.is_heldout(Scene(objects=(Obj(shape="triangle", color="red"),)))
    # the relation is held out whichever way round the caption names it
    assert S.is_heldout(Scene(objects=(star_low, ring_high)))
    assert S.is_heldout(Scene(objects=(ring_high, star_low)))
    assert not S.is_heldout(Scene(objects=(Obj(shape="star", row=2, col=0), ring_high)))  # lower left
    assert not S.is_heldout(Scene(objects=(green_triangle,)), holdout="none")
    with pytest.raises(GenforgeError, match="unknown relation"):
        S.Holdout(relations=(("star", "beneath", "ring"),))


def test_training_never_shows_a_heldout_combination_and_the_test_split_can_show_only_them():
    train = _scenes(4000, holdout="default", heldout=False)
    assert not any(S.is_heldout(s) for s in train)
    shown = {p for s in _scenes(1500, split="test", holdout="default", heldout=True)
             for p in S.HOLDOUTS["default"].matches(s)}
    assert shown == {"green triangle", "orange ring", "star below ring"}
    assert all(S.is_heldout(s) for s in _scenes(1500, split="test", holdout="default", heldout=True))
    # every held-out part still appears in training in other combinations
    pairs = {(o.color, o.shape) for s in train for o in s.objects}
    assert ("red", "triangle") in pairs and ("green", "circle") in pairs
    assert ("orange", "square") in pairs and ("blue", "ring") in pairs
    stars_below = {y.shape for s in train for x in s.objects for y in s.objects
                   if x.shape == "star" and x != y and S.relation(x, y) == "below"}
    assert "square" in stars_below and "ring" not in stars_below


def test_holdout_config_through_the_loader():
    cfg = load_config(None, ["data.name=shapes", "data.num_items=300", "data.image_size=8",
                             "data.holdout=default"]).data
    train = load_dataset(cfg)
    assert not any(S.is_heldout(s) for s in train.specs)
    assert train.meta["held_out_combinations"]["objects"][0] == {"color": "green", "shape": "triangle"}
    held = load_dataset(cfg.model_copy(update={"split": "test", "compositions": "heldout"}))
    seen = load_dataset(cfg.model_copy(update={"split": "test", "compositions": "seen"}))
    mixed = load_dataset(cfg.model_copy(update={"split": "test"}))
    assert all(S.is_heldout(s) for s in held.specs) and not any(S.is_heldout(s) for s in seen.specs)
    assert 0 < sum(map(S.is_heldout, mixed.specs)) < 300
    # an item depends only on (seed, split, i): a prefix is the same whatever the size
    assert load_dataset(cfg.model_copy(update={"num_items": 40})).specs == train.specs[:40]
    with pytest.raises(GenforgeError, match="set data.holdout=default"):
        load_dataset(cfg.model_copy(update={"holdout": "none", "split": "test", "compositions": "seen"}))
    with pytest.raises(GenforgeError, match="use data.split=test"):
        load_dataset(cfg.model_copy(update={"compositions": "heldout"}))


def test_default_shapes_stream_is_unchanged():
    # sha256 of the first 500 scenes of each split as the loader made them before hold-outs existed
    expected = {"train": "95640ea8f1a9adfab7953b05599a22f6cffa1ad0460904229fd78970a9544ffd",
                "test": "f1ea5c4c989e328dc17e45d64b42593ee52af44d4466cf3c0a71b73befe383e7"}
    for split, digest in expected.items():
        ds = load_dataset(DataConfig(name="shapes", num_items=500, image_size=8, split=split))
        text = "\n".join(s.caption() + repr(s.to_dict()) for s in ds.specs)
        assert hashlib.sha256(text.encode()).hexdigest() == digest
        assert ds.meta["holdout"] == "none" and ds.meta["held_out_combinations"] == {"objects": [], "relations": []}
        assert ds.meta["license"].startswith("none: generated")


def test_coco_json_above_its_image_folder_is_found_among_other_folders(tmp_path):
    _png(tmp_path / "aaa_thumbs" / "unrelated.png")  # sorts first, holds none of the named files
    _coco(tmp_path / "captions_mini.json", tmp_path / "mini", 2, caps_per_image=3)
    ds = load_dataset(DataConfig(name="captions", path=str(tmp_path), image_size=8, val_fraction=0))
    assert ds.meta["files"] == [f"{i:012d}.jpg" for i in range(2)] and ds.meta["skipped"] == 0
    assert ds.captions[0] == [f"picture 0 caption {c}" for c in range(3)]
    assert ds.images[1, 0].min() > 80 and ds.images[0, 0].max() < 20  # each caption is with its own image
