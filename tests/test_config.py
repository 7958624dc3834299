"""Tests for common.config.RunConfig: validation messages, coercion and defaults."""

from __future__ import annotations

import tomllib
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest

from common.config import RunConfig
from common.data import load_splits, split_pools
from common.models import MODEL_NAMES

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_defaults_validate_and_equal_an_empty_mapping():
    # Execute
    config = RunConfig.from_mapping({})

    # Assert
    assert config == RunConfig()
    RunConfig().validate()


def test_pyproject_run_config_defaults_are_exactly_the_runconfig_defaults():
    # Prepare: the Flower app's run config in pyproject.toml.
    with open(PYPROJECT, "rb") as handle:
        pyproject_defaults = tomllib.load(handle)["tool"]["flwr"]["app"]["config"]

    # Execute
    runconfig_defaults = RunConfig().to_dict()

    # Assert: same keys, same values and same types (1 == 1.0 == True would hide a mismatch).
    assert list(pyproject_defaults) == list(runconfig_defaults)
    typed_pyproject = {key: (type(v).__name__, v) for key, v in pyproject_defaults.items()}
    typed_runconfig = {key: (type(v).__name__, v) for key, v in runconfig_defaults.items()}
    assert typed_pyproject == typed_runconfig


def test_every_field_has_a_type_the_coercion_knows_and_a_doc():
    for field in fields(RunConfig):
        assert str(field.type) in ("int", "float", "bool", "str"), field.name
        assert field.metadata.get("doc"), f"{field.name} has no doc"


def test_from_mapping_coerces_cli_strings_to_field_types():
    # Execute: values as `--set key=value` delivers them.
    config = RunConfig.from_mapping(
        {"rounds": "3", "temperature": "2.5", "allow_public_labels": "True", "seed": "-1"}
    )

    # Assert
    assert (config.rounds, config.temperature, config.allow_public_labels, config.seed) == (
        3,
        2.5,
        True,
        -1,
    )
    assert type(config.rounds) is int and type(config.temperature) is float


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (
            {"tempreature": 2.0},
            ["unknown config key(s) ['tempreature']; did you mean 'tempreature' → 'temperature'?"],
        ),
        ({"temperature": 0}, ["temperature must be > 0, got 0.0"]),
        ({"temperature": -1.5}, ["temperature must be > 0, got -1.5"]),
        ({"dirichlet_alpha": 0}, ["dirichlet_alpha must be > 0, got 0.0"]),
        ({"dirichlet_alpha": -0.1}, ["dirichlet_alpha must be > 0, got -0.1"]),
        ({"num_clients": 1}, ["num_clients must be >= 2, got 1"]),
        ({"public_fraction": 0.0}, ["public_fraction must be in (0, 1), got 0.0"]),
        ({"public_fraction": 1.0}, ["public_fraction must be in (0, 1), got 1.0"]),
        ({"test_fraction": 1.2}, ["test_fraction must be in (0, 1), got 1.2"]),
        ({"dataset": "imagenet"}, ["unknown dataset 'imagenet'", "'mnist1d'", "npz:PATH"]),
        ({"student_model": "vit"}, ["unknown model 'vit'", "'cnn1d-m'"]),
        ({"teacher_models": "mlp-s,gpt"}, ["unknown model 'gpt'", "'mlp-s'"]),
        ({"teacher_models": " , "}, ["teacher_models must name at least one model"]),
        ({"rounds": "abc"}, ["rounds must be an integer, got 'abc'"]),
        ({"rounds": "1.5"}, ["rounds must be an integer, got '1.5'"]),
        ({"rounds": True}, ["rounds must be an integer, got True"]),
        ({"rounds": 0}, ["rounds must be >= 1, got 0"]),
        ({"secagg_epoch_rounds": 0}, ["secagg_epoch_rounds must be in [1, 64], got 0"]),
        ({"secagg_epoch_rounds": 65}, ["secagg_epoch_rounds must be in [1, 64], got 65"]),
        ({"local_lr": "fast"}, ["local_lr must be a number, got 'fast'"]),
        ({"allow_public_labels": "yes"}, ["allow_public_labels must be true or false, got 'yes'"]),
        ({"partitioner": "shards"}, ["partitioner must be one of", "'dirichlet'", "'shards'"]),
        ({"ensemble": "median"}, ["ensemble must be one of", "'weighted'", "'median'"]),
        ({"student_loss": "rkd"}, ["student_loss must be one of", "'kd+rkd'", "'rkd'"]),
        ({"local_optimizer": "lion"}, ["local_optimizer must be one of", "'adam'", "'lion'"]),
        ({"device": "tpu"}, ["device must be one of", "'cuda'", "'tpu'"]),
        ({"fraction": 0.0}, ["fraction must be in (0, 1], got 0.0"]),
        ({"era_temperature": 0}, ["era_temperature must be > 0, got 0.0"]),
        ({"method": "fedavg"}, ["method must be one of", "'fedmd'", "'selective'", "'fedavg'"]),
        ({"selective_quantile": 1.0}, ["selective_quantile must be in (0, 1), got 1.0"]),
        ({"ambiguity_threshold": 0}, ["ambiguity_threshold must be in (0, 1], got 0.0"]),
        ({"min_row_weight": -0.5}, ["min_row_weight must be >= 0, got -0.5"]),
        ({"public_warmup_epochs": -1}, ["public_warmup_epochs must be >= 0, got -1"]),
        (
            {"method": "certainty", "dp_noise_multiplier": 1.0},
            ["dp_noise_multiplier > 0 is not supported with method='certainty'", "per-row"],
        ),
        ({"num_samples": 50}, ["num_samples must be >= 100, got 50"]),
        ({"distill_epochs": 0}, ["distill_epochs must be >= 1, got 0"]),
        (
            {"hard_label_weight": 0.5},
            ["hard_label_weight=0.5", "set allow_public_labels=true"],
        ),
    ],
)
def test_bad_values_raise_value_error_naming_value_and_what_is_allowed(values, expected):
    with pytest.raises(ValueError) as error:
        RunConfig.from_mapping(values)

    message = str(error.value)
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"


def test_unknown_model_message_lists_every_model():
    with pytest.raises(ValueError) as error:
        RunConfig.from_mapping({"student_model": "vit"})

    assert str(MODEL_NAMES) in str(error.value)


def test_missing_npz_file_is_named_when_the_dataset_is_loaded(tmp_path):
    missing = tmp_path / "nowhere" / "mine.npz"
    config = RunConfig.from_mapping({"dataset": f"npz:{missing}", "data_dir": str(tmp_path)})

    with pytest.raises(ValueError) as error:
        load_splits(config)

    assert f"dataset file {str(missing)!r}" in str(error.value)
    assert "does not exist" in str(error.value)


def test_existing_npz_file_validates(tmp_path):
    path = tmp_path / "mine.npz"
    np.savez(path, x=np.zeros((4, 2)), y=np.arange(4))

    config = RunConfig.from_mapping({"dataset": f"npz:{path}"})

    assert config.dataset == f"npz:{path}"


def test_hard_label_weight_is_allowed_with_allow_public_labels():
    config = RunConfig.from_mapping({"hard_label_weight": 0.5, "allow_public_labels": True})

    assert config.hard_label_weight == 0.5


def test_replace_validates_the_changed_config():
    with pytest.raises(ValueError, match=r"temperature must be > 0, got -2.0"):
        RunConfig().replace(temperature=-2)


def test_empty_public_pool_passes_config_validation_but_is_caught_at_split_time():
    # Prepare: public_fraction is inside (0, 1), but 1e-4 of 80 non-test samples rounds to 0.
    config = RunConfig.from_mapping({"public_fraction": 1e-4, "test_fraction": 0.2})
    x = np.zeros((100, 3), dtype=np.float32)
    y = np.arange(100) % 2

    # Execute / Assert: the split names every pool size and says what is required.
    with pytest.raises(ValueError) as error:
        split_pools(x, y, config.seed, config.public_fraction, config.test_fraction)
    assert "100 samples cannot be split into test (20), public (0)" in str(error.value)
    assert "every pool must be non-empty" in str(error.value)
