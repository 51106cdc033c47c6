"""Held-out data for image folders, and metrics that say when they are computed on training images."""
import json

import numpy as np
import pytest
from PIL import Image

from conftest import TINY_GAN
from genforge.config import DataConfig, config_from_json
from genforge.data import load_dataset
from genforge.eval.fid import compute_metrics


def _pictures(root, n=60):
    for i in range(n):
        cls = "red" if i % 2 else "blue"
        color = (200, 20, 20) if cls == "red" else (20, 20, 200)
        (root / cls).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (12, 12), color).save(root / cls / f"{i:03d}.png")
    return root


def _files(ds):
    return set(ds.meta["files"])


def test_val_fraction_splits_a_folder_by_file_name_hash(tmp_path):
    root = _pictures(tmp_path / "pics")
    cfg = DataConfig(name="folder", path=str(root), image_size=8, val_fraction=0.25)
    train, test = load_dataset(cfg), load_dataset(cfg.model_copy(update={"split": "test"}))
    assert _files(train).isdisjoint(_files(test)) and len(_files(train) | _files(test)) == 60
    assert 5 <= len(test) <= 25  # ~15 expected; the hash decides, not a random draw
    assert test.meta["held_out"] and not train.meta["held_out"]
    assert train.class_names == test.class_names == ["blue", "red"]
    # the split depends only on names: a new file does not move any old one
    Image.new("RGB", (12, 12)).save(root / "red" / "999.png")
    again = load_dataset(cfg.model_copy(update={"split": "test"}))
    assert _files(test) <= _files(again)
    # val_fraction=0 keeps every file for training, and the 'test' split says it is not held out
    whole = load_dataset(cfg.model_copy(update={"split": "test", "val_fraction": 0.0}))
    assert len(whole) == 61 and not whole.meta["held_out"]


def test_runs_made_before_val_fraction_keep_training_on_every_file(tmp_path):
    conf = {"task": "gan", "data": {"name": "folder", "path": "/x"}}
    (tmp_path / "config.json").write_text(json.dumps(conf))
    assert config_from_json(tmp_path / "config.json").data.val_fraction == 0.0


def test_classifier_on_training_images_reports_train_accuracy_with_a_warning(tmp_path, cli):
    root = _pictures(tmp_path / "pics", n=40)
    args = ["classifier_fashion", "data.name=folder", f"data.path={root}", "data.image_size=16",
            "data.channels=3", "train.steps=2", "train.batch_size=8", "train.tensorboard=false"]
    code, out, err = cli("train", *args, "data.val_fraction=0", "--out", tmp_path / "memo", "--json")
    assert code == 0, err
    metrics = json.loads(out)["metrics"]
    assert "train_accuracy" in metrics and "test_accuracy" not in metrics
    assert "warning: the 'test' images are the training images" in err
    code, out, err = cli("train", *args, "--out", tmp_path / "held", "--json")
    assert code == 0 and "test_accuracy" in json.loads(out)["metrics"] and "training images" not in err


def test_eval_fid_on_a_folder_gives_a_feature_net_command_that_works(tmp_path, cli):
    root = _pictures(tmp_path / "pics", n=60)
    data = [f"data.path={root}", "data.name=folder", "data.channels=3", "data.image_size=16",
            "data.val_fraction=0.3"]
    code, out, err = cli("train", *TINY_GAN, *data, "data.limit=null", "train.steps=1", "--out", tmp_path / "gan")
    assert code == 0, err
    code, out, err = cli("eval", "fid", tmp_path / "gan", "-n", "8")
    assert code == 2
    command = err.split("`")[1]
    assert command.startswith("genforge train classifier_fashion data.name=folder data.path=")
    # exactly as printed (plus a short run), it trains
    words = command.split()[2:]
    words[words.index("--out") + 1] = str(tmp_path / "clf")
    code, out, err = cli("train", *words, "train.steps=2", "train.batch_size=8")
    assert code == 0, err
    code, out, err = cli("eval", "fid", tmp_path / "gan", "-n", "8", "--feature-net", tmp_path / "clf")
    assert code == 0, err
    assert json.loads(out)["reference_held_out"] is True
    code, out, err = cli("eval", "fid", tmp_path / "gan", "-n", "8", "--feature-net", tmp_path / "clf",
                         "--split", "train")
    assert code == 0 and "training images" in err and json.loads(out)["reference_held_out"] is False


def test_kid_std_is_over_distinct_subsets_for_small_sets():
    rng = np.random.default_rng(0)
    real, fake = rng.standard_normal((100, 8)), rng.standard_normal((100, 8)) + 0.3
    m = compute_metrics(real, fake, with_precision_recall=False)
    assert m["kid_subset_size"] == 50
    # subsets of half the set differ, so the spread is sampling spread, not rounding (was ~1e-13)
    assert m["kid_std"] > 1e-3 * abs(m["kid_mean"])


def test_eval_accuracy_on_a_folder_without_held_out_images_warns_and_says_so(tmp_path, cli):
    root = _pictures(tmp_path / "pics", n=40)
    args = ["task=classify", "model.name=cnn", "model.params.width=4", "data.name=folder", f"data.path={root}",
            "data.image_size=8", "data.channels=3", "train.steps=1", "train.batch_size=8",
            "train.tensorboard=false"]
    assert cli("train", *args, "data.val_fraction=0", "--out", tmp_path / "memo")[0] == 0
    code, out, err = cli("eval", "accuracy", tmp_path / "memo")
    assert code == 0, err
    rep = json.loads(out)
    assert rep["held_out"] is False and rep["split"] == "test" and rep["n"] == 40  # every image, trained on
    assert "warning: split 'test' holds training images, so this accuracy measures memorisation" in err
    # with a held-out split the same command scores only unseen images, without the warning
    assert cli("train", *args, "data.val_fraction=0.25", "--out", tmp_path / "held")[0] == 0
    code, out, err = cli("eval", "accuracy", tmp_path / "held")
    assert code == 0, err
    rep = json.loads(out)
    assert rep["held_out"] is True and rep["n"] < 40 and "warning" not in err


def test_tilde_in_a_folder_data_path_and_in_train_out_means_home(tmp_path, cli, monkeypatch):
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    cwd.mkdir()
    _pictures(home / "pics", n=20)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    code, out, err = cli("train", *TINY_GAN, "data.name=folder", "data.path=~/pics", "data.channels=3",
                         "data.limit=null", "data.val_fraction=0", "train.steps=1", "--out", "~/runs/gan", "--json")
    assert code == 0, err
    assert (home / "runs" / "gan" / "model.safetensors").is_file()
    assert json.loads(out)["run_dir"] == str(home / "runs" / "gan")
    assert not (cwd / "~").exists()  # no folder literally named ~
    # the folder behind ~/pics was read: 20 pictures of its two classes
    from genforge.data import load_dataset

    cfg = config_from_json(home / "runs" / "gan" / "config.json")
    assert len(load_dataset(cfg.data)) == 20
    # and the run can be read back through ~ too
    code, out, err = cli("info", "~/runs/gan")
    assert code == 0 and json.loads(out)["run_dir"] == str(home / "runs" / "gan")
