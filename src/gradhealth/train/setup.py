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

__all__ = ["pick_device", "data_kwargs_for", "build_model", "input_mismatch", "check_outputs", "autocast_dtype"]


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


def input_mismatch(exc: Exception, example_shape: tuple[int, ...], model_name: str, data_name: str) -> ConfigError:
    """The sentence for a first forward pass that failed: most often a model built for other shapes."""
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return ConfigError(
        f"model {model_name} cannot take the examples of --data {data_name} (each of shape {example_shape}): "
        f"{reason}. Pick data of the shape the model expects: vectors (digits, mnist1d, synthetic) for mlp, "
        "images (digits-image, synthetic-image, cifar10:DIR) for convnet and the ResNets, sequences "
        "(mnist1d-seq) for convnet:dims=1.")


def check_outputs(scores: torch.Tensor, num_classes: int, model_name: str, data_name: str) -> None:
    """The model must give one score per class of the data, as cross-entropy reads them."""
    if not isinstance(scores, torch.Tensor):
        raise ConfigError(f"model {model_name} returns a {type(scores).__name__}; training needs a tensor of "
                          f"class scores, one row per example ({num_classes} classes for --data {data_name}).")
    if scores.dim() != 2 or scores.shape[1] < num_classes:
        raise ConfigError(f"model {model_name} gives outputs of shape {tuple(scores.shape[1:])} per example, and "
                          f"--data {data_name} has {num_classes} classes: the model needs one score per class "
                          f"(num_classes={num_classes}).")


def autocast_dtype(amp: str) -> torch.dtype | None:
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
