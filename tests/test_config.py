import pytest

from genforge.config import RECIPES_DIR, load_config
from genforge.errors import GenforgeError


def test_overrides_are_typed():
    cfg = load_config(None, ["train.lr=1e-3", "train.betas=[0.9, 0.99]", "data.flip=true",
                             "model.params.width=16"])
    assert cfg.train.lr == 1e-3 and cfg.train.betas == (0.9, 0.99) and cfg.data.flip is True
    assert cfg.model.params == {"width": 16}


def test_unknown_key_lists_valid_keys():
    with pytest.raises(GenforgeError, match=r"unknown config key 'train.lrr'.*valid keys here: steps"):
        load_config(None, ["train.lrr=1"])
    with pytest.raises(GenforgeError, match=r"unknown config key 'foo'.*task"):
        load_config(None, ["foo=1"])


def test_bad_values_name_the_key():
    with pytest.raises(GenforgeError, match=r"train.lr"):
        load_config(None, ["train.lr=-1"])
    with pytest.raises(GenforgeError, match=r"data.split"):
        load_config(None, ["data.split=validation"])
    with pytest.raises(GenforgeError, match="KEY=VALUE"):
        load_config(None, ["train.lr"])


def test_unknown_recipe_lists_recipes():
    with pytest.raises(GenforgeError, match="dcgan_fashion"):
        load_config("no_such_recipe")


@pytest.mark.parametrize("path", sorted(RECIPES_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_recipes_validate(path):
    from genforge.tasks import preflight

    preflight(load_config(path))  # a registered task, its options, and a model that builds from them


def test_unknown_names_list_choices():
    from genforge.models import build_model

    with pytest.raises(GenforgeError, match="dcgan"):
        build_model("dcgann")
    with pytest.raises(GenforgeError, match="has no option 'widht'.*width"):
        build_model("dcgan", widht=3)


def test_model_option_values_a_constructor_rejects_are_a_one_line_cli_error(cli, tmp_path):
    # widths has two levels but attention keeps the default's count: the UNet's own check says so
    code, out, err = cli("train", "task=diffusion", "model.name=diffusion", "model.params.widths=[16,32]",
                         "data.name=digits", "data.image_size=16", "data.limit=64", "train.steps=1",
                         "--out", tmp_path / "run")
    assert code == 2 and err.count("\n") == 1
    assert "model 'diffusion'" in err and "widths" in err and "one entry per resolution level" in err


def test_config_is_checked_before_the_data_is_loaded(cli, tmp_path, monkeypatch):
    import genforge.train.trainer as trainer_mod

    def no_data(cfg):
        raise AssertionError("the dataset was loaded before the config was checked")

    monkeypatch.setattr(trainer_mod, "load_dataset", no_data)
    for args, words in [(["data.image_size=48"], ["data.image_size=48", "power of two"]),
                        (["model.params.widht=8"], ["model 'dcgan' has no option 'widht'", "width"]),
                        (["task_params.nope=1"], ["task 'gan' has no option 'nope'"])]:
        code, out, err = cli("train", "dcgan_fashion", *args, "--out", tmp_path / "run")
        assert code == 2 and err.count("\n") == 1, err
        assert all(w in err for w in words), err
    assert not (tmp_path / "run").exists()
    # the diffusion UNet halves the image once per level below the first: 30 px does not halve twice
    code, out, err = cli("train", "diffusion_shapes", "data.image_size=30", "--out", tmp_path / "run")
    assert code == 2 and err.count("\n") == 1 and "data.image_size=30" in err and "divisible by 4" in err, err
    assert not (tmp_path / "run").exists()
