"""Atomic file writes: every file gradhealth writes appears whole or not at all.

The bytes go to a temp file ``.NAME.XXXX.tmp`` beside NAME, which is then renamed over NAME
(``os.replace`` is atomic within a folder), so a reader, or a run killed mid-write, sees the old
file or the new one, never half of one. On any failure the temp file is removed.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import tempfile
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write", "signals_deferred", "write_text_atomic", "write_json_atomic", "strict_json", "temp_prefix"]


def temp_prefix(path: Path) -> str:
    """The name every temp file for ``path`` starts with (a writer may sweep stale ones by it)."""
    return f".{path.name}."


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", *, newline: str | None = None,
                 durable: bool = False) -> Iterator[IO[Any]]:
    """A handle on a temp file beside ``path`` (``mode`` "w" for text, "wb" for bytes) that replaces
    ``path`` when the block ends without an error.

    ``durable`` fsyncs the file before the rename and the folder after it, for files worth a crash
    (checkpoints): then the rename survives a power cut too, not only a killed process.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with signals_deferred():
        with _atomic_write(target, mode, newline=newline, durable=durable) as handle:
            yield handle


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM arriving inside the block are answered when it ends, so a second Ctrl-C
    cannot cut a checkpoint in half; the signal then reaches whatever handler was there before."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []

    def hold(signum: int, frame: Any) -> None:
        caught.append(signum)

    # a handler installed outside Python (getsignal gives None) cannot be put back, so it is left alone
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    previous = {sig: handler for sig, handler in previous.items() if handler is not None}
    for sig in previous:
        signal.signal(sig, hold)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(caught):
            signal.raise_signal(sig)


@contextlib.contextmanager
def _atomic_write(target: Path, mode: str, *, newline: str | None, durable: bool) -> Iterator[IO[Any]]:
    # a replaced file keeps its mode; a new one gets what open() would give it (mkstemp's is private)
    file_mode = target.stat().st_mode & 0o777 if target.exists() else 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=temp_prefix(target), suffix=".tmp")
    try:
        text = {} if "b" in mode else {"encoding": "utf-8", "newline": newline}
        with os.fdopen(fd, mode, **text) as handle:
            yield handle
            if durable:
                handle.flush()
                os.fsync(handle.fileno())  # the bytes are on disk before the name points at them
        os.chmod(tmp, file_mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        _fsync_dir(target.parent)  # makes the rename itself durable


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_write(path) as handle:
        handle.write(text)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, obj: Any, *, indent: int | None = 2, strict: bool = False) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically; values JSON cannot hold are written with ``str``.

    ``strict`` turns NaN/Inf into null first, so the file is strict JSON that any reader takes.
    """
    if strict:
        text = json.dumps(strict_json(obj), indent=indent, allow_nan=False, default=str)
    else:
        text = json.dumps(obj, indent=indent, default=str)
    return write_text_atomic(path, text)


def strict_json(value: Any) -> Any:
    """A copy that ``json.dumps(..., allow_nan=False)`` accepts: NaN/Inf become null, tuples lists,
    numpy and torch scalars plain numbers, anything else its ``str``."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    if hasattr(value, "item"):  # numpy and torch scalars
        return strict_json(value.item())
    return str(value)


def _umask() -> int:
    """The process umask, read without setting it (os.umask would briefly change it for all threads)."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as status:
        for line in status:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return 0o022


def _fsync_dir(folder: Path) -> None:
    # not possible on every platform (Windows) or file system; the data itself is already synced
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
