"""The commands' run options default to TrainConfig's fields: one place for each default."""
from __future__ import annotations

from dataclasses import fields

import pytest

from gradhealth.cli import build_parser
from gradhealth.cli.defaults import TRAIN_DEFAULTS
from gradhealth.cli.diagnose import RUN_DEFAULTS
from gradhealth.cli.train import config_from_args
from gradhealth.train.config import TrainConfig

# options whose command-line default differs from the field's on purpose (seq_len: None tells
# "not given" from "given", since it is refused with data it does not shape)
COMMAND_OWN = {"train": {"model", "out", "seq_len"}, "diagnose": {"model", "data", "steps", "out", "seq_len"},
               "fix": {"model", "data", "steps", "out", "seq_len"}}


def test_defaults_are_read_from_the_dataclass():
    assert TRAIN_DEFAULTS["lr"] == TrainConfig().lr and TRAIN_DEFAULTS["optimizer"] == TrainConfig().optimizer
    assert set(TRAIN_DEFAULTS) == {f.name for f in fields(TrainConfig)}


@pytest.mark.parametrize("command", ["train", "diagnose", "fix"])
def test_every_run_option_defaults_to_its_field(command):
    args = build_parser().parse_args([command, "mlp"] if command == "train" else [command])
    shared = {f.name for f in fields(TrainConfig)} & set(vars(args)) - COMMAND_OWN[command]
    assert shared >= {"lr", "optimizer", "batch_size", "seed"}
    assert {name: getattr(args, name) for name in shared} == {name: TRAIN_DEFAULTS[name] for name in shared}


def test_train_builds_the_config_of_its_defaults():
    args = build_parser().parse_args(["train", "mlp"])
    assert config_from_args(args) == TrainConfig(model="mlp", out="run")
    args = build_parser().parse_args(["train", "mlp", "--no-activations", "--clip", "agc", "--clip-head", "fc",
                                      "--lr", "0.5", "--detail-every", "3"])
    config = config_from_args(args)
    assert (config.activations, config.clip_head, config.lr, config.detail_every) == (False, "fc", 0.5, 3)


def test_diagnose_from_log_refuses_exactly_the_run_options_left_at_their_defaults():
    args = build_parser().parse_args(["diagnose"])
    assert {key: getattr(args, key) for key in RUN_DEFAULTS} == RUN_DEFAULTS
