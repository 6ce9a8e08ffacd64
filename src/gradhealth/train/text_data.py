"""Byte-level next-token prediction on local text: ``text`` (this Python's own standard library
sources) or ``text:PATH`` (a text file, or a folder of them). Nothing is downloaded.

The vocabulary is the 256 byte values, so no tokenizer is needed and every file is readable. The
text is cut once: the last 10% is the validation split, the rest the training split, whatever the
seed. Each example is a window of ``seq_len + 1`` bytes: the input is its first ``seq_len``, the
target the ``seq_len`` after them (the input shifted by one). Windows start every ``seq_len``
bytes, so an epoch sees each byte of the split once as a target.
"""
from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from gradhealth.errors import ConfigError, DataError
from gradhealth.train.bundle import DataBundle

__all__ = ["TEXT_VOCAB", "VAL_FRACTION", "STDLIB_BYTES", "TokenWindows", "load_text", "stdlib_files",
           "text_problem", "describe_stdlib"]

TEXT_VOCAB = 256
VAL_FRACTION = 0.1
# enough text for a small model to learn real structure, small enough to read in a blink
STDLIB_BYTES = 1 << 20
# a text file may hold a few stray control bytes (an ANSI colour, a form feed); a binary one is full of them
MAX_CONTROL_FRACTION = 0.01
_CONTROL_BYTES = np.array([b for b in range(32) if b not in b"\t\n\r\f"] + [127])


class TokenWindows(Dataset):
    """Windows of ``seq_len + 1`` bytes of ``tokens`` every ``seq_len`` bytes, as (input, target) pairs
    of int64 token ids; indexing by a slice gives a batch, as a TensorDataset does."""

    def __init__(self, tokens: Tensor, seq_len: int) -> None:
        self.tokens, self.seq_len = tokens, int(seq_len)
        # a view into the uint8 bytes, not a copy: row i is tokens[i*seq_len : i*seq_len + seq_len + 1]
        self.windows = tokens.unfold(0, self.seq_len + 1, self.seq_len)

    def __len__(self) -> int:
        return self.windows.shape[0]

    def __getitem__(self, index: int | slice) -> tuple[Tensor, Tensor]:
        window = self.windows[index].long()
        return window[..., :-1], window[..., 1:]


def text_problem(data: bytes) -> str | None:
    """Why ``data`` is not text (None when it is): more than 1% NUL or control bytes besides \\t\\n\\r\\f."""
    if not data:
        return "it is empty"
    counts = np.bincount(np.frombuffer(data, dtype=np.uint8), minlength=256)
    control = int(counts[_CONTROL_BYTES].sum())
    if control > MAX_CONTROL_FRACTION * len(data):
        return f"{control / len(data):.0%} of its bytes are NUL or control bytes"
    return None


def stdlib_files() -> list[Path]:
    """The standard library's top-level ``*.py`` files, sorted by name: the default corpus's source."""
    return sorted(Path(os.path.dirname(os.__file__)).glob("*.py"), key=lambda p: p.name)


def describe_stdlib() -> str:
    return (f"the first {STDLIB_BYTES / 2**20:g} MiB of the sorted *.py files of this Python's standard library "
            f"({os.path.dirname(os.__file__)}, Python {sys.version.split()[0]})")


def _stdlib_text() -> bytes:
    parts, size = [], 0
    for path in stdlib_files():
        data = path.read_bytes()
        if text_problem(data) is None:
            parts.append(data)
            size += len(data)
        if size >= STDLIB_BYTES:
            break
    return b"".join(parts)[:STDLIB_BYTES]


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read the text file {str(path)!r} ({exc.strerror or exc}); "
                        "check that it exists and is readable.") from None


def _folder_text(folder: Path) -> tuple[bytes, str]:
    """The text files under ``folder`` (recursively, sorted by path, hidden ones left out), joined."""
    files = sorted(p for p in folder.rglob("*")
                   if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    texts = [data for data in map(_read_file, files) if text_problem(data) is None]
    if not texts:
        raise ConfigError(f"the folder {str(folder)!r} holds no text to read tokens from ({len(files)} files, "
                          "none of them a non-empty text file); pass a folder of text files, or a text file.")
    skipped = len(files) - len(texts)
    return b"".join(texts), (f"{len(texts)} text files under {folder}"
                             + (f" ({skipped} empty or binary files left out)" if skipped else ""))


def _source(path_text: str) -> tuple[str, bytes, str]:
    """(name, bytes, where they come from) for ``text`` or ``text:PATH``."""
    if path_text is None:
        return "text", _stdlib_text(), describe_stdlib()
    if not path_text:
        raise ConfigError("text: needs a path: write text:PATH (a text file or a folder of them), "
                          "or text alone for the standard library's sources.")
    path = Path(path_text).expanduser()
    if path.is_dir():
        data, where = _folder_text(path)
    elif path.is_file():
        data = _read_file(path)
        if not data:
            raise ConfigError(f"the text file {str(path)!r} is empty; pass a file with text in it.")
        problem = text_problem(data)
        if problem:
            raise ConfigError(f"{str(path)!r} is not a text file ({problem}); "
                              "--data text:PATH reads a text file or a folder of text files.")
        where = str(path)
    else:
        raise ConfigError(f"the text path {str(path)!r} does not exist; pass a text file or a folder of them.")
    return f"text:{path_text}", data, where


def _validation_bytes(n: int, seq_len: int) -> int:
    """The last 10% of the text, or one window if that is more."""
    return max(math.ceil(n * VAL_FRACTION), seq_len + 1)


def _longest_seq_len(n: int) -> int:
    """The longest seq_len that leaves a window of seq_len + 1 bytes in each split of ``n`` bytes."""
    tenth = math.ceil(n * VAL_FRACTION)
    within_tenth = min(n - tenth - 1, tenth - 1)  # the validation split stays the last 10%
    halves = (n - 2) // 2  # the validation split grows to one window
    return max(within_tenth, halves if halves + 1 > tenth else -1, 0)


def load_text(path_text: str | None, seq_len: int):
    """The DataBundle of ``text`` (``path_text`` None) or ``text:PATH`` in windows of ``seq_len`` tokens."""
    name, data, where = _source(path_text)
    n_val = _validation_bytes(len(data), seq_len)
    if len(data) - n_val < seq_len + 1:
        longest = _longest_seq_len(len(data))
        advice = f"use --seq-len {longest} or less" if longest >= 1 else "use a longer text"
        raise ConfigError(f"--seq-len {seq_len} is too long for {where}: its {len(data)} bytes do not give one "
                          f"window of {seq_len + 1} bytes to train on and one to validate on; {advice}.")
    tokens = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    train, val = TokenWindows(tokens[:-n_val], seq_len), TokenWindows(tokens[-n_val:], seq_len)
    note = (f"bytes of {where} as tokens (vocabulary 256), last {VAL_FRACTION:.0%} held out for validation, "
            f"windows of {seq_len} inputs and the {seq_len} next bytes as targets.")
    return DataBundle(name, train, val, (seq_len,), TEXT_VOCAB, note, input_kind="tokens", task="lm",
                      vocab_size=TEXT_VOCAB)
