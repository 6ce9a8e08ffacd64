"""What a data set is to the training loop: two splits and what a model needs to know about them."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from torch import Tensor
from torch.utils.data import DataLoader, Dataset

__all__ = ["INPUT_KINDS", "DataBundle", "first_examples"]

# what a model's input is: float vectors (N, F), sequences (N, C, L), images (N, C, H, W), or integer token ids (N, T)
INPUT_KINDS = ("vectors", "sequences", "images", "tokens")
_KIND_OF_RANK = {1: "vectors", 2: "sequences", 3: "images"}


@dataclass(frozen=True)
class DataBundle:
    """A train and a validation split plus what a model builder needs to know about them.

    ``task`` is ``classify`` (one integer label per example) or ``lm`` (one next-token id per input
    token); ``input_kind`` one of :data:`INPUT_KINDS` (from the input's rank unless given);
    ``vocab_size`` the number of token ids for token inputs.
    """

    name: str
    train: Dataset
    val: Dataset
    input_shape: tuple[int, ...]
    num_classes: int
    normalisation: str
    input_kind: str | None = None
    task: str = "classify"
    vocab_size: int | None = None

    def __post_init__(self) -> None:
        if self.input_kind is None:
            object.__setattr__(self, "input_kind", _KIND_OF_RANK.get(len(self.input_shape), "tensors"))

    @property
    def seq_len(self) -> int | None:
        """Tokens per example, for token inputs."""
        return self.input_shape[0] if self.input_kind == "tokens" else None

    def describe_examples(self) -> str:
        """The examples in words, for the error that says a model does not fit them."""
        if self.input_kind == "tokens":
            return f"sequences of {self.seq_len} token ids from a vocabulary of {self.vocab_size}"
        return f"each of shape {self.input_shape}"

    def model_kwargs(self) -> dict[str, Any]:
        """Builder arguments implied by the data; the caller passes on only those a builder accepts.

        Token data sizes a language model by the ecosystem's words: ``vocab_size``, and the context
        length as ``seq_len``, ``block_size`` (nanoGPT's name) and ``max_len`` (the transformer and
        recurrent families'); ``task`` is ``lm`` or ``classify``.
        """
        if self.input_kind == "tokens":
            kwargs: dict[str, Any] = {"vocab_size": self.vocab_size, "seq_len": self.seq_len,
                                      "block_size": self.seq_len, "max_len": self.seq_len, "task": self.task}
            if self.task == "classify":
                kwargs["num_classes"] = self.num_classes
            return kwargs
        if len(self.input_shape) == 1:
            return {"in_features": self.input_shape[0], "num_classes": self.num_classes}
        # dims picks Conv1d for sequences (C, L) and Conv2d for images (C, H, W); in_features is for
        # builders that flatten their input (the MLP)
        return {"in_chans": self.input_shape[0], "dims": len(self.input_shape) - 1, "num_classes": self.num_classes,
                "in_features": math.prod(self.input_shape)}


def first_examples(dataset: Dataset, n: int) -> tuple[Tensor, Tensor]:
    """The first ``n`` examples of any map-style data set as one batch, collated as the DataLoader does."""
    return next(iter(DataLoader(dataset, batch_size=min(n, len(dataset)), shuffle=False)))
