"""Model specs from the command line: typed values, clear errors, user files."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

import gradhealth
from gradhealth.errors import ConfigError
from gradhealth.models import resolve_spec
from gradhealth.models.spec import load_factory, split_spec, split_top_level


def test_spec_values_take_the_builders_types():
    spec = "mlp:depth=30,width=64,activation=sigmoid,init=normal(1.0),residual=false"
    assert split_spec(spec) == ("mlp", {"depth": "30", "width": "64", "activation": "sigmoid", "init": "normal(1.0)",
                                        "residual": "false"})
    name, kwargs = resolve_spec(spec)
    assert name == "mlp"
    assert kwargs == {"depth": 30, "width": 64, "activation": "sigmoid", "init": "normal(1.0)", "residual": False}


def test_spec_builds_the_model_it_describes():
    model = gradhealth.create_model("mlp:depth=5,width=12,activation=tanh,residual=true,init=constant(0.5)")
    assert model.depth == 5 and model.residual
    assert (model.head.weight == 0.5).all()
    assert isinstance(model.stem.act1, torch.nn.Tanh)


def test_tuples_and_split_inside_brackets():
    assert split_top_level("a=normal(0.1),b=(1,2),c=3") == ["a=normal(0.1)", "b=(1,2)", "c=3"]
    _, kwargs = resolve_spec("imagenet_resnet:layers=(1,1,1,1),num_classes=5")
    assert kwargs["layers"] == (1, 1, 1, 1)
    assert gradhealth.create_model("imagenet_resnet:layers=1-1-1-1,num_classes=5")(torch.randn(2, 3, 32, 32)).shape == (2, 5)


@pytest.mark.parametrize("spec, message", [
    ("mlp:depht=3", "no option 'depht'; it accepts: in_features, num_classes, depth"),
    ("mlp:depth=three", "depth='three' is not a valid int"),
    ("mlp:depth=0", "depth must be a positive integer"),
    ("mlp:width=-1", "width must be a positive integer"),
    ("mlp:residual=maybe", "residual='maybe' is not a valid bool"),
    ("mlp:depth", "write key=value pairs"),
    ("mpl:depth=3", "unknown model 'mpl'"),
    ("mlp:init=hee", "unknown init 'hee'"),
])
def test_bad_specs_raise_config_errors(spec, message):
    with pytest.raises(ConfigError, match=message):
        gradhealth.create_model(spec)


def test_file_factory_spec(tmp_path):
    path = tmp_path / "my_user_net.py"
    path.write_text(textwrap.dedent("""
        import torch
        def build(width=4):
            return torch.nn.Sequential(torch.nn.Linear(3, width), torch.nn.ReLU(), torch.nn.Linear(width, 2))
        not_callable = 3
    """))
    model = gradhealth.create_model(f"{path}:build", init="he")
    assert model(torch.randn(2, 3)).shape == (2, 2)
    with pytest.raises(ConfigError, match="does not exist"):
        load_factory(f"{tmp_path}/missing.py:build")
    with pytest.raises(ConfigError, match="has no 'nope'"):
        load_factory(f"{path}:nope")
    with pytest.raises(ConfigError, match="not callable"):
        load_factory(f"{path}:not_callable")
    broken = tmp_path / "broken_user_net.py"
    broken.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(ConfigError, match="could not import broken_user_net.py: RuntimeError: boom"):
        load_factory(f"{broken}:build")


def test_a_file_model_survives_pickling_into_a_spawned_process(tmp_path):
    # DataLoader workers and torch.multiprocessing with spawn re-import what they unpickle
    path = tmp_path / "spawn_user_net.py"
    path.write_text("import torch\nclass Net(torch.nn.Linear):\n    pass\ndef build():\n    return Net(2, 2)\n")
    code = textwrap.dedent(f"""
        import multiprocessing as mp, gradhealth
        def child(model):
            assert type(model).__name__ == "Net"
        if __name__ == "__main__":
            model = gradhealth.create_model({str(path) + ':build'!r})
            p = mp.get_context("spawn").Process(target=child, args=(model,))
            p.start(); p.join()
            raise SystemExit(p.exitcode)
    """)
    script = tmp_path / "run_spawn.py"
    script.write_text(code)
    subprocess.run([sys.executable, str(script)], check=True, timeout=120)
