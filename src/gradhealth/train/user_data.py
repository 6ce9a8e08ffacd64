"""A user's own data: ``--data path/to/file.py:loader``.

The loader is a function (keyword arguments ``seed`` and ``seq_len`` are passed if it takes them)
that returns ``(train, val)``, each either a pair of tensors ``(inputs, targets)`` or a
``torch.utils.data.Dataset`` whose items are ``(input, target)`` pairs. Targets are integers:

* class labels, one per example (shape ``(N,)``): classification, cross-entropy on ``(B, C)`` scores;
* token ids, one per input token (inputs and targets both ``(N, T)`` integers): next-token
  prediction, cross-entropy on ``(B, T, V)`` logits.

The number of classes (or the vocabulary) is the largest label plus one over both splits, unless a
Dataset says it itself with a ``num_classes`` or ``vocab_size`` attribute or a ``classes`` list.
"""
from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset

from gradhealth.errors import ConfigError
from gradhealth.models.spec import load_factory, user_code
from gradhealth.train.bundle import DataBundle, first_examples

__all__ = ["LOADER_SIGNATURE", "load_user_data", "loader_takes_seq_len"]

LOADER_SIGNATURE = ("def loader(seed=0, seq_len=64) -> (train, val), each a pair of tensors (inputs, integer "
                    "targets) or a torch Dataset of (input, target) pairs")
# labels of a Dataset without a class count are counted by reading it through once, in batches of this size
_SCAN_BATCH = 1024


def _wrong(spec: str, what: str) -> ConfigError:
    return ConfigError(f"the data loader {spec} returned {what}; it must be {LOADER_SIGNATURE}.")


def _as_dataset(spec: str, split: str, value: Any) -> Dataset:
    if isinstance(value, Dataset):
        if not hasattr(value, "__len__") or not hasattr(value, "__getitem__"):
            raise _wrong(spec, f"a {split} Dataset without __len__ and __getitem__ (an iterable one)")
        if len(value) == 0:
            raise _wrong(spec, f"an empty {split} split")
        return value
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(t, Tensor) for t in value):
        inputs, targets = value
        if inputs.dim() == 0 or targets.dim() == 0 or len(inputs) != len(targets):
            raise _wrong(spec, f"{split} inputs and targets of shapes {tuple(inputs.shape)} and "
                               f"{tuple(targets.shape)}, not one target row per input")
        if len(inputs) == 0:
            raise _wrong(spec, f"an empty {split} split")
        return TensorDataset(inputs, targets)
    raise _wrong(spec, f"a {type(value).__name__} as its {split} split")


def _declared(dataset: Dataset, attribute: str) -> int | None:
    """A count the dataset states itself: ``vocab_size``, ``num_classes``, or the length of ``classes``."""
    if attribute == "classes":
        classes = getattr(dataset, "classes", None)
        return len(classes) if isinstance(classes, (list, tuple)) and classes else None
    value = getattr(dataset, attribute, None)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _largest_ids(dataset: Dataset, tokens: bool) -> tuple[int, int]:
    """The largest input id (0 unless the inputs are tokens) and the largest target in ``dataset``."""
    if isinstance(dataset, TensorDataset):
        x, y = dataset.tensors[:2]
        return int(x.max()) if tokens else 0, int(y.max())
    largest_x = largest_y = 0
    for x, y in DataLoader(dataset, batch_size=_SCAN_BATCH, shuffle=False):
        largest_x, largest_y = max(largest_x, int(x.max()) if tokens else 0), max(largest_y, int(y.max()))
    return largest_x, largest_y


def _counts(train: Dataset, val: Dataset, tokens: bool, task: str) -> tuple[int, int | None]:
    """(number of classes, vocabulary or None): as the train Dataset declares them, else the largest id plus one."""
    vocab = _declared(train, "vocab_size") if tokens else None
    classes = vocab if task == "lm" else _declared(train, "num_classes") or _declared(train, "classes")
    if classes is None or (tokens and vocab is None):
        (x_train, y_train), (x_val, y_val) = _largest_ids(train, tokens), _largest_ids(val, tokens)
        if tokens and vocab is None:
            # next-token targets are tokens too
            vocab = 1 + max(x_train, x_val, *((y_train, y_val) if task == "lm" else ()))
        if classes is None:
            classes = vocab if task == "lm" else 1 + max(y_train, y_val)
    return classes, vocab


def loader_takes_seq_len(spec: str) -> bool:
    """Whether the loader of ``path/to/file.py:loader`` has a ``seq_len`` argument to be given."""
    return "seq_len" in inspect.signature(load_factory(spec, kind="data")).parameters


def load_user_data(spec: str, *, seed: int, seq_len: int):
    """The DataBundle of ``path/to/file.py:loader``: what the loader returned, checked and described."""
    loader = load_factory(spec, kind="data")
    accepted = inspect.signature(loader).parameters
    kwargs = {k: v for k, v in {"seed": seed, "seq_len": seq_len}.items() if k in accepted}
    try:
        with user_code():
            returned = loader(**kwargs)
    except (Exception, SystemExit) as exc:  # the user's loader failed: say which, not a traceback
        raise ConfigError(f"calling the data loader {spec} failed: {type(exc).__name__}: {exc}.") from exc
    if not isinstance(returned, (tuple, list)) or len(returned) != 2:
        raise _wrong(spec, f"a {type(returned).__name__}" + (f" of {len(returned)} items"
                                                             if isinstance(returned, (tuple, list)) else ""))
    train, val = (_as_dataset(spec, split, value) for split, value in zip(("train", "val"), returned))
    try:
        with user_code():
            x, y = first_examples(train, 2)
            x_val, y_val = first_examples(val, 2)
    except (Exception, SystemExit) as exc:
        raise _wrong(spec, f"items that do not batch into (inputs, targets) ({type(exc).__name__}: {exc})") from exc
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise _wrong(spec, "items that are not (input, target) pairs of tensors or numbers")
    if x.shape[1:] != x_val.shape[1:] or y.shape[1:] != y_val.shape[1:]:
        raise _wrong(spec, f"train and val examples of different shapes ({tuple(x.shape[1:])} and "
                           f"{tuple(x_val.shape[1:])})")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise _wrong(spec, f"{y.dtype} targets; targets are integer class labels or token ids")
    # integer (N, T) inputs are token ids, for an embedding
    tokens = not x.is_floating_point() and x.dim() == 2
    if y.dim() == 1:
        task = "classify"
    elif tokens and x.shape == y.shape:
        task = "lm"
    else:
        raise _wrong(spec, f"targets of shape {tuple(y.shape[1:])} per example for inputs of shape "
                           f"{tuple(x.shape[1:])}; targets are one class label per example, or one next-token id "
                           "per input token")
    if int(y.min()) < 0 or (tokens and int(x.min()) < 0):
        raise _wrong(spec, "negative class labels or token ids")
    with user_code():
        classes, vocab = _counts(train, val, tokens, task)
    if classes < 2:
        raise _wrong(spec, "targets of a single class")
    return DataBundle(spec, train, val, tuple(x.shape[1:]), classes, "as the loader returned them, not rescaled.",
                      input_kind="tokens" if tokens else None, task=task, vocab_size=vocab)
