"""TrainConfig: YAML round trip, notebook parameters, and a table of bad configs with one-line errors."""
from __future__ import annotations

import argparse

import pytest
import torch

from sam3_lora_kit.train.config import ConfigError, TrainConfig


def test_yaml_round_trip(tmp_path):
    config = TrainConfig.from_dict({"dataset_dir": "d", "rank": 4, "target_modules": ["qkv"], "epochs": 2})
    path = config.to_yaml(tmp_path / "run.yaml")
    assert TrainConfig.from_yaml(path) == config
    assert config.steps is None and config.epochs == 2.0


def test_overrides_replace_yaml_values(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("rank: 4\nepochs: 3\nlr: 1.0e-3\ngrad_clip: 2.0\n")
    config = TrainConfig.from_yaml(path, {"steps": 7, "grad_clip": None, "output_dir": "o"})
    assert (config.steps, config.epochs, config.rank, config.output_dir, config.lr, config.grad_clip) == (7, None, 4, "o", 1e-3, None)


@pytest.mark.parametrize("argv,expected", [
    (["--set", "grad_clip=null", "--set", "checkpoint=null"], (None, None, 2)),  # null is a value: it replaces the file's
    (["--steps", "9"], (1.0, "weights.pt", 9)),  # flags left out keep the file's values
])
def test_command_line_overrides_on_a_config_file(tmp_path, argv, expected):
    from sam3_lora_kit.train.commands import overrides_from_args, register

    path = tmp_path / "cfg.yaml"
    path.write_text("grad_clip: 1.0\ncheckpoint: weights.pt\nsteps: 2\n")
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["train", "--config", str(path), *argv])
    config = TrainConfig.from_yaml(path, overrides_from_args(args))
    assert (config.grad_clip, config.checkpoint, config.steps) == expected


def test_int_is_accepted_where_a_float_is_wanted():
    assert TrainConfig.from_dict({"alpha": 16, "lr": 1}).alpha == 16.0


BAD = [
    ({"rnak": 4}, "unknown key 'rnak' (did you mean rank?)"),
    ({"rank": 4, "lerning_rate": 1.0, "zzz": 1}, "unknown keys 'lerning_rate'"),
    ({"rank": "8"}, "rank must be an integer, got '8'"),
    ({"rank": 4.5}, "rank must be an integer"),
    ({"rank": True}, "rank must be an integer"),
    ({"rank": 0}, "rank must be >= 1, got 0"),
    ({"alpha": 0}, "alpha must be > 0"),
    ({"lr": -1e-4}, "lr must be > 0"),
    ({"lr": "fast"}, "lr must be a number"),
    ({"lr": float("nan")}, "lr must be a finite number"),
    ({"dropout": 1.0}, "dropout must be in [0, 1)"),
    ({"flip_prob": 1.5}, "flip_prob must be in [0, 1]"),
    ({"model_size": "huge"}, "model_size must be one of 'auto', 'tiny', 'full'"),
    ({"precision": "bf61"}, "did you mean 'bf16'?"),
    ({"qkv": "joined"}, "qkv must be one of 'fused', 'split'"),
    ({"frozen_dtype": "int8"}, "frozen_dtype must be one of 'auto', 'float32', 'bfloat16', 'float16'"),
    ({"steps": 0}, "steps must be >= 1"),
    ({"steps": 10, "epochs": 2}, "give exactly one of them"),
    ({"steps": None}, "give exactly one of them"),
    ({"warmup_steps": -1}, "warmup_steps must be >= 0"),
    ({"batch_size": 0}, "batch_size must be >= 1"),
    ({"grad_accum": -2}, "grad_accum must be >= 1"),
    ({"image_size": 10}, "image_size must be >= 14"),
    ({"target_modules": "qkv", "rank": 4, "dropout": -0.1}, "dropout must be in [0, 1)"),
    ({"target_modules": [1, 2]}, "target_modules must be a list of strings or null"),
    ({"target_modules": []}, "target_modules is empty"),
    ({"activation_checkpointing": "yes"}, "activation_checkpointing must be true, false or 'auto', got 'yes'"),
    ({"activation_checkpointing": 3}, "activation_checkpointing must be true or false or a string"),
    ({"text_cache": "yes"}, "text_cache must be true or false, got 'yes' (str)"),
    ({"save_every": 0}, "save_every must be >= 1"),
    ({"output_dir": "  "}, "output_dir must not be empty"),
    ({"resume": 3}, "resume must be a string or null"),
    ({"preset": "vision-atn"}, "did you mean 'vision-attn'?"),
    ({"preset": None}, "both are null"),
]


@pytest.mark.parametrize("params, message", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_parameters_name_the_source_and_key(params, message):
    with pytest.raises(ConfigError) as caught:
        TrainConfig.from_dict(params)
    text = str(caught.value)
    assert text.startswith("parameters: ") and message in text and "\n" not in text


BAD_FILES = [
    ("rank: [1, 2\n", "not valid YAML at line"),
    ("- rank\n- alpha\n", "the top level must be a mapping"),
    ("rank: 8\nrnak: 4\n", "unknown key 'rnak'"),
    ("precision: half\n", "precision must be one of"),
    ("batch_size: two\n", "batch_size must be an integer, got 'two'"),
]


@pytest.mark.parametrize("text, message", BAD_FILES, ids=[str(i) for i in range(len(BAD_FILES))])
def test_bad_yaml_files_name_the_file(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        TrainConfig.from_yaml(path)
    assert str(caught.value).startswith(f"{path}: ") and message in str(caught.value) and "\n" not in str(caught.value)


def test_missing_and_undecodable_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        TrainConfig.from_yaml(tmp_path / "nope.yaml")
    (tmp_path / "latin.yaml").write_bytes(b"rank: \xff\xfe\n")
    with pytest.raises(ConfigError, match="cannot read the config file"):
        TrainConfig.from_yaml(tmp_path / "latin.yaml")


def test_cli_overrides_and_one_line_errors(tmp_path, capsys):
    from sam3_lora_kit.cli import main
    from sam3_lora_kit.train.commands import overrides_from_args, register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["train", "--steps", "5", "--resume", "--set", "flip_prob=0", "--set", "target_modules=[qkv, proj]"])
    assert overrides_from_args(args) == {"steps": 5, "resume": "latest", "flip_prob": 0, "target_modules": ["qkv", "proj"]}
    (tmp_path / "bad.yaml").write_text("rnak: 4\n")
    assert main(["train", "--config", str(tmp_path / "bad.yaml")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("sam3-lora train: error: ") and "unknown key 'rnak'" in err and "\n" not in err and "Traceback" not in err


@pytest.mark.parametrize("device", ["cpu", "cuda", "mps"])
def test_auto_model_size_follows_the_checkpoint_on_every_device(device):
    """SAM 3's weights only load into the full architecture, so a checkpoint means full wherever it runs."""
    from sam3_lora_kit.train.trainer import resolve_model_size

    assert resolve_model_size(TrainConfig(checkpoint="sam3.pt"), torch.device(device)) == "full"
    assert resolve_model_size(TrainConfig(), torch.device(device)) == "tiny"
    assert resolve_model_size(TrainConfig(checkpoint="sam3.pt", model_size="tiny"), torch.device(device)) == "tiny"
