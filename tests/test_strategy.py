"""Which modules FSDP2 shards as units (train/strategy.py), and the single-process case."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import gradhealth
from gradhealth.errors import ConfigError
from gradhealth.distributed import DistInfo
from gradhealth.train.strategy import fsdp_units, spread_model


def _names(model: nn.Module) -> list[str]:
    names = {id(m): n for n, m in model.named_modules()}
    return [names[id(u)] for u in fsdp_units(model)]


def test_units_are_the_blocks_of_the_built_in_models():
    assert _names(gradhealth.create_model("mlp")) == ["stem.fc1", "blocks.0", "blocks.1", "blocks.2", "blocks.3"]
    # a ResNet's units are the residual blocks of each stage, not the stages nor the blocks' insides
    assert _names(gradhealth.create_model("resnet20")) == [f"layer{s}.{b}" for s in (1, 2, 3) for b in range(3)]


def test_a_sequential_model_is_its_own_container_and_parameterless_children_are_no_units():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    assert _names(model) == ["0", "2"]


def test_a_model_may_name_its_own_units():
    class Own(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(2, 2), nn.Linear(2, 2)

        def forward(self, x):
            return self.b(self.a(x))

        def fsdp_units(self):
            return [self.b]

    assert _names(Own()) == ["b"]


def test_one_process_runs_the_model_itself_and_an_unknown_strategy_is_refused():
    model = nn.Linear(2, 2)
    assert spread_model(model, "fsdp", DistInfo(), torch.device("cpu")) is model
    with pytest.raises(ConfigError, match="unknown strategy"):
        spread_model(model, "zero3", DistInfo(), torch.device("cpu"))
