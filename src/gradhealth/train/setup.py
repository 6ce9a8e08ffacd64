"""From a TrainConfig to live objects: device, data, model, optimizer, scheduler, clipper, scaler."""
from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from gradhealth.errors import ConfigError
from gradhealth.models import create_model, get_entry
from gradhealth.models.spec import is_file_spec, load_factory, split_spec
from gradhealth.train.config import TrainConfig
from gradhealth.train.outputs import OWN_LOOP

__all__ = ["pick_device", "data_kwargs_for", "build_model", "input_mismatch", "autocast_dtype"]


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for, but no CUDA device is available here.")
    return device


def data_kwargs_for(spec: str, implied: dict[str, Any]) -> dict[str, Any]:
    """The shape arguments the data implies (in_features, in_chans, num_classes) that the model
    accepts and the spec did not set itself."""
    if is_file_spec(spec):
        params = inspect.signature(load_factory(spec)).parameters
        accepted = set(params)
        set_by_user: set[str] = set()
    else:
        name, set_by_user_kwargs = split_spec(spec)
        accepted = set(get_entry(name).options())
        set_by_user = set(set_by_user_kwargs)
    return {k: v for k, v in implied.items() if k in accepted and k not in set_by_user}


def build_model(config: TrainConfig, implied: dict[str, Any], init_batch: torch.Tensor | None) -> nn.Module:
    """The model of ``config.model`` sized for the data, initialized from ``config.seed``."""
    torch.manual_seed(config.seed)
    kwargs = data_kwargs_for(config.model, implied)
    # the batch is used only by data-driven init (LSUV), whether named in the config or the spec
    return create_model(config.model, init=config.init, init_data=init_batch, **kwargs)


def input_mismatch(exc: Exception, data: Any, model_name: str, data_name: str) -> ConfigError:
    """The sentence for a first forward pass that failed: most often a model built for other inputs."""
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0].rstrip(".")
    return ConfigError(
        f"model {model_name} cannot take the examples of --data {data_name} ({data.describe_examples()}): "
        f"{reason}. Pick data of the shape the model expects: vectors (digits, mnist1d, synthetic) for mlp, "
        "images (digits-image, synthetic-image, cifar10:DIR) for convnet and the ResNets, sequences "
        "(mnist1d-seq) for convnet:dims=1, token sequences (text, text:PATH, file.py:loader) for language "
        f"models; {OWN_LOOP}.")


def autocast_dtype(amp: str) -> torch.dtype | None:
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
