"""Checks of command-line paths and values made before anything trains, so a mistake costs a
sentence, not a finished run whose results cannot be written."""
from __future__ import annotations

import os
from pathlib import Path

from gradhealth.errors import ConfigError

__all__ = ["writable_folder", "writable_file", "given_or", "agc_head", "seq_len_for"]


def writable_folder(path: str | os.PathLike, flag: str = "--out") -> Path:
    """``path`` as a folder that exists (created if need be) and can be written to."""
    if not str(path).strip():
        raise ConfigError(f"{flag} is empty; pass a folder name.")
    folder = Path(path)
    try:
        is_file = folder.exists() and not folder.is_dir()
    except OSError as exc:  # a name longer than the file system allows, a loop of links, ...
        raise ConfigError(f"{flag} {_shown(folder)} cannot be used as a folder ({exc.strerror or exc}); "
                          "pass another folder.") from None
    if is_file:
        raise ConfigError(f"{flag} {str(folder)!r} is a file, not a folder; pass a folder.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the folder {_shown(folder)} for {flag} ({exc.strerror or exc}); "
                          "pass a writable folder.") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"the folder {str(folder)!r} of {flag} is not writable; pass a writable folder.")
    return folder


def writable_file(path: str | os.PathLike, flag: str = "--out") -> Path:
    """``path`` as a file whose folder exists (created if need be) and can be written to."""
    if not str(path).strip():
        raise ConfigError(f"{flag} is empty; pass a file name.")
    target = Path(path)
    try:
        is_dir = target.is_dir()
    except OSError as exc:
        raise ConfigError(f"{flag} {_shown(target)} cannot be used as a file ({exc.strerror or exc}); "
                          "pass another path.") from None
    if is_dir:
        raise ConfigError(f"{flag} {str(target)!r} is a folder; pass a file name.")
    writable_folder(target.parent if str(target.parent) else ".", flag=f"the folder of {flag}")
    return target


def _shown(path: Path) -> str:
    """The path for a sentence: a name of hundreds of characters is cut to its start."""
    text = str(path)
    return repr(text) if len(text) <= 80 else repr(text[:60]) + f"… ({len(text)} characters)"


def given_or(value, default):
    """``value`` unless it was not given (None): 0 or an empty string stay, to be checked as given."""
    return default if value is None else value


def agc_head(clip: str, clip_head: str | None) -> str | None:
    """``--clip-head``, which names the head AGC leaves unclipped: meaningless with another clip mode."""
    if clip_head is not None and clip != "agc":
        raise ConfigError(f"--clip-head names the head AGC leaves unclipped; it does nothing with --clip {clip}.")
    return clip_head


def seq_len_for(data: str, seq_len: int | None, default: int) -> int:
    """``--seq-len`` as given (None: not given, so ``default``); refused with data it does not shape,
    as ``--clip-head`` is with a clip mode that has no head, rather than silently ignored."""
    if seq_len is None:
        return default
    from gradhealth.train.data import takes_seq_len

    if not takes_seq_len(data):
        raise ConfigError(f"--seq-len sets the tokens per example of text data (text, text:PATH, or a file.py:loader "
                          f"that takes seq_len); it does nothing with --data {data}, so drop it.")
    return seq_len
