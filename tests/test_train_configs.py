"""Training configs as data: presets, YAML files on a base preset, refused typos and values."""

from __future__ import annotations

from pathlib import Path

import pytest

from model.configs import PRESETS, TrainConfig, from_dict, load_config, parse_override

REPO = Path(__file__).resolve().parents[1]


def test_p3m10k_full_is_the_seed_setup_with_the_paper_optimizer():
    config = load_config("p3m10k_full")
    assert (config.variant, config.init, config.image_size) == ("full", "scratch", 320)
    assert (config.epochs, config.batch_per_replica) == (10, 12)
    assert (config.learning_rate, config.beta_1, config.beta_2, config.epsilon,
            config.weight_decay) == (1e-3, 0.9, 0.999, 1e-8, 0.0)
    assert (config.train_split, config.validation_split) == ("train", "P3M-500-P")


def test_every_preset_is_a_valid_config():
    for name in PRESETS:
        assert isinstance(load_config(name), TrainConfig)


def test_fine_tuning_from_official_weights_freezes_batch_norm():
    assert load_config("humanseg_lite_finetune").freeze_batch_norm
    assert not load_config("smoke").freeze_batch_norm


def test_yaml_file_overrides_its_base_preset(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("base: smoke\nepochs: 3\nlearning_rate: 2.0e-4\n")
    config = load_config(str(path), {"data_root": "/data", "seed": None})
    assert (config.name, config.epochs, config.learning_rate) == ("mine", 3, 2e-4)
    assert config.image_size == PRESETS["smoke"]["image_size"] and config.data_root == "/data"
    assert config.seed == 0  # a None override means "not given"


@pytest.mark.parametrize("name", ["humanseg_lite", "portrait_lite"])
def test_the_shipped_yaml_configs_load(name):
    config = load_config(str(REPO / "configs" / f"{name}.yaml"))
    assert (config.variant, config.init, config.validation_split) == ("lite", "official",
                                                                      "P3M-500-NP")
    assert config.freeze_batch_norm and config.name == name


@pytest.mark.parametrize(("values", "message"), [
    ({"base": "smoke", "epohcs": 3}, "unknown config keys"),
    ({"base": "nope"}, "unknown base preset"),
    ({"name": "x", "image_size": 100}, "image_size"),
    ({"name": "x", "variant": "medium"}, "variant"),
    ({"name": "x", "validation_metric": "accuracy"}, "validation_metric"),
    ({"name": "x", "composite_probability": 1.5}, "composite_probability"),
])
def test_bad_configs_are_refused(values, message):
    with pytest.raises(ValueError, match=message):
        from_dict(values)


def test_config_round_trips_through_its_dict():
    config = load_config("smoke")
    assert from_dict(config.to_dict()) == config


def test_command_line_overrides_are_typed():
    assert parse_override("epochs=2") == ("epochs", 2)
    assert parse_override("validation_split=null") == ("validation_split", None)
    with pytest.raises(ValueError, match="key=value"):
        parse_override("epochs")
