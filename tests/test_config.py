"""Run configs: defaults → YAML → --set, and errors naming the key and the value."""

import pytest
import yaml

from kerastl.app.config import ConfigError, RunConfig, load_config, to_yaml
from kerastl.training.finetune import Stage


def test_layers_apply_in_order_and_the_resolved_yaml_loads_back(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "mine",
                "model": {"image_size": 96},
                "stages": [{"epochs": 2}, {"epochs": 1, "train": "block6", "lr": 1e-4}],
            }
        )
    )
    config = load_config(path, ["model.image_size=64", "stages.1.lr_mult=3", "data.augment=[flip]"])
    assert config.name == "mine" and config.model.image_size == 64
    assert config.model.backbone == RunConfig().model.backbone  # untouched default
    assert config.stages == (Stage(2), Stage(1, train="block6", lr=1e-4, lr_mult=3.0))
    assert config.data.augment == ("flip",)
    resolved = tmp_path / "resolved.yaml"
    resolved.write_text(to_yaml(config))
    assert load_config(resolved) == config


def test_yaml_exponent_without_a_dot_is_a_number():
    assert load_config(None, ["stages.0.lr=1e-4"]).stages[0].lr == pytest.approx(1e-4)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.limt=3", "Unknown config key 'data.limt'. Did you mean 'limit'?"),
        ("stages.1.lrr=1", "Unknown config key 'stages.1.lrr'. Did you mean 'lr'?"),
        ("nmae=x", "Did you mean 'name'?"),
        ("model.image_size=big", "model.image_size: expected an integer. Received: 'big'"),
        ("train.seed=1.5", "train.seed: expected an integer. Received: 1.5"),
        ("data.strict=maybe", "data.strict: expected true or false. Received: 'maybe'"),
        ("stages.0.epochs=0", "stages.0: `epochs` must be a positive integer. Received: epochs=0"),
        ("stages.0.optimizer=rmsprop", "Received: optimizer='rmsprop'"),
        ("stages.7.lr=1", "stages.7.lr: '7' is not an index of a list of 2"),
        ("model.image_size", "--set expects key=value. Received: 'model.image_size'"),
    ],
)
def test_bad_keys_and_values_name_what_was_received(override, message):
    with pytest.raises(ConfigError) as error:
        load_config(None, [override])
    assert message in str(error.value)


def test_unknown_key_in_a_yaml_file_names_the_nearest(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  backbon: resnet50\n")
    with pytest.raises(ConfigError, match=r"'model\.backbon'\. Did you mean 'backbone'"):
        load_config(path)


def test_a_recipe_reads_its_own_yaml_or_the_one_given_with_config(tmp_path):
    from kerastl.app.config import recipe_command_line

    own, other = tmp_path / "recipe.yaml", tmp_path / "recipe_full.yaml"
    own.write_text("name: short\n")
    other.write_text("name: full\nmodel: {image_size: 260}\n")
    assert recipe_command_line(own, ["--quiet"]) == (load_config(own), 0)
    config, verbose = recipe_command_line(own, ["--config", str(other), "--set", "data.limit=8"])
    assert (config.name, config.model.image_size, config.data.limit) == ("full", 260, 8)
    assert verbose == "auto"
