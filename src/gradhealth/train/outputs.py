"""How a model is called and where its loss comes from, for any output a model gives.

The rule, decided once from the model's ``forward`` signature:

* ``forward(..., targets=None)`` (nanoGPT, minGPT): called as ``model(x, targets=y)``; the targets
  are aligned with the outputs (already shifted for next-token data).
* ``forward(..., labels=None)`` (Hugging Face): called as ``model(x, labels=...)`` with
  the class labels for classification, and with the inputs themselves for next-token data, since a
  Hugging Face model shifts its labels by one itself. The inputs go first, by position, as a
  Hugging Face model names them after its modality (``input_ids``, ``pixel_values``).
* otherwise ``model(x)``. A second positional parameter under another name is not passed: in Hugging
  Face models it is ``past_key_values`` or ``attention_mask``, not the targets.

The output may be a tensor of logits, a tuple (the logits are its first tensor of two or more
dimensions, a loss its scalar tensor: ``(logits, loss)`` and ``(loss, logits)`` both read), or a
mapping with a ``logits`` entry and maybe a ``loss`` (a dict, a Hugging Face ``ModelOutput``).
When the model was given the targets and returns a loss, that loss is trained on ("the model's
own"); otherwise it is cross-entropy on the logits: ``(B, C)`` class scores for classification,
``(B, T, V)`` next-token logits flattened over the positions for next-token data.
"""
from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from gradhealth.errors import ConfigError

__all__ = ["CallRule", "call_rule", "read_output", "check_logits", "cross_entropy", "correct", "loss_description",
           "OUTPUT_FORMS", "OWN_LOOP"]

OUTPUT_FORMS = "a tensor of logits, a (logits, loss) tuple, or a dict or ModelOutput with 'logits' (and 'loss')"
# where a model or data set that gradhealth cannot train still gets its gradients diagnosed
OWN_LOOP = ("for any other model or data, train in your own loop with GradientMonitor(model, "
            "jsonl='run/metrics.jsonl') and run gradhealth diagnose --from-log run/metrics.jsonl")


@dataclass(frozen=True)
class CallRule:
    """How the training loop calls a model: ``keyword`` is ``targets``, ``labels`` or None (inputs only)."""

    keyword: str | None
    task: str

    def call(self, net: nn.Module, x: Tensor, y: Tensor) -> Any:
        if self.keyword == "targets":
            return net(x, targets=y)
        if self.keyword == "labels":
            return net(x, labels=x if self.task == "lm" else y)
        return net(x)

    def form(self) -> str:
        """The call in words, for the summary."""
        if self.keyword == "targets":
            return "forward(x, targets=y)"
        if self.keyword == "labels":
            return "forward(x, labels=x), shifted by the model" if self.task == "lm" else \
                "forward(x, labels=y)"
        return "forward(x)"


def call_rule(model: nn.Module, task: str) -> CallRule:
    """The rule of the module docstring for ``model`` (unwrapped from DDP by the caller)."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # a forward without a readable signature takes the inputs alone
        return CallRule(None, task)
    for keyword in ("targets", "labels"):
        if keyword in params and params[keyword].kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                          inspect.Parameter.KEYWORD_ONLY):
            return CallRule(keyword, task)
    return CallRule(None, task)


def _is_loss(value: Any) -> bool:
    return isinstance(value, Tensor) and value.dim() == 0 and value.is_floating_point()


def read_output(output: Any, model_name: str) -> tuple[Tensor, Tensor | None]:
    """(logits, the model's loss or None) from whatever ``forward`` returned."""
    if isinstance(output, Tensor):
        return output, None
    if isinstance(output, Mapping):  # a dict, or a Hugging Face ModelOutput (an OrderedDict)
        logits, loss = output.get("logits"), output.get("loss")
        if isinstance(logits, Tensor):
            return logits, loss if _is_loss(loss) else None
        raise ConfigError(f"model {model_name} returns a {type(output).__name__} without a 'logits' tensor "
                          f"(its keys: {', '.join(map(str, output)) or 'none'}); training reads {OUTPUT_FORMS}; "
                          f"{OWN_LOOP}.")
    if isinstance(output, (tuple, list)):
        logits = next((v for v in output if isinstance(v, Tensor) and v.dim() >= 2), None)
        if logits is not None:
            return logits, next((v for v in output if _is_loss(v)), None)
    raise ConfigError(f"model {model_name} returns a {type(output).__name__} with no logits in it; training "
                      f"reads {OUTPUT_FORMS}; {OWN_LOOP}.")


def check_logits(logits: Tensor, y: Tensor, bundle: Any, model_name: str, data_name: str) -> None:
    """The logits must give one score per class (classification) or per token and vocabulary entry."""
    if bundle.task == "lm":
        seq_len, vocab = y.shape[1], bundle.num_classes
        if logits.dim() != 3 or logits.shape[1] != seq_len or logits.shape[2] < vocab:
            raise ConfigError(
                f"model {model_name} gives outputs of shape {tuple(logits.shape[1:])} per example, and --data "
                f"{data_name} is next-token prediction: the model needs logits of shape ({seq_len}, {vocab}), one "
                f"score per vocabulary entry at each of the {seq_len} positions (vocab_size={vocab}, "
                f"block_size={seq_len}); {OWN_LOOP}.")
        return
    if logits.dim() != 2 or logits.shape[1] < bundle.num_classes:
        raise ConfigError(f"model {model_name} gives outputs of shape {tuple(logits.shape[1:])} per example, and "
                          f"--data {data_name} has {bundle.num_classes} classes: the model needs one score per class "
                          f"(num_classes={bundle.num_classes}); {OWN_LOOP}.")


def cross_entropy(logits: Tensor, y: Tensor, reduction: str = "mean") -> Tensor:
    """Cross-entropy of (B, C) class scores or (B, T, V) next-token logits, in float32."""
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1), reduction=reduction)


def correct(logits: Tensor, y: Tensor) -> Tensor:
    """How many predictions (examples, or tokens for next-token data) are right."""
    return (logits.detach().argmax(-1) == y).sum()


def loss_description(own: bool, rule: CallRule) -> str:
    """The loss of the run in words, for its summary: "the model's own ..." or "cross-entropy over ..."."""
    if own:
        return f"the model's own ({rule.form()})"
    return "cross-entropy over next-token logits" if rule.task == "lm" else "cross-entropy over class scores"

