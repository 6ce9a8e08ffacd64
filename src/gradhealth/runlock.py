"""One writer per run folder (or log file): an exclusive lock held while a process writes there.

The lock is a file (``.gradhealth.lock`` in a folder, ``.NAME.lock`` beside a log) that holds the
owner's pid and host and carries an ``fcntl.flock``. The kernel drops a flock when its process
dies, so a lock file left by a killed run is stale by construction and the next writer takes it
over; a live owner, in this process or another, is refused with one sentence naming it.
Torch-free: the monitor's records and the CLI both use it.
"""
from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import os
import socket
import threading
from pathlib import Path

from gradhealth.errors import ConfigError

__all__ = ["RunLock", "lock_folder", "lock_file", "release_all", "LOCK_NAME"]

LOCK_NAME = ".gradhealth.lock"

_held: list[RunLock] = []
_held_guard = threading.Lock()


class RunLock:
    """An exclusive lock on ``path`` (the lock file itself) guarding ``what`` (said in the error)."""

    def __init__(self, path: str | os.PathLike, what: str):
        self.path = Path(path)
        self.what = what
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        if self._fd is not None:
            return self
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                owner = _read_owner(fd)
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise ConfigError(f"{self.what} is being written by another gradhealth process ({owner}); "
                                      "wait for it to finish, or pass another output path.") from None
                raise
            # the previous owner may have removed the file between our open and our flock: then we
            # hold a lock on a name nobody else sees, and must start over on the current file
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        self._fd = fd
        with _held_guard:
            _held.append(self)
        return self

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with _held_guard:
            if self in _held:
                _held.remove(self)
        with contextlib.suppress(OSError):
            os.unlink(self.path)  # while still locked, so no one can take a file that is going away
        os.close(fd)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_owner(fd: int) -> str:
    with contextlib.suppress(OSError):
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
        if text:
            return text
    return "owner unknown"


def lock_folder(folder: str | os.PathLike) -> RunLock:
    """Take the one-writer lock of a run folder (released by ``release_all`` or at exit)."""
    folder = Path(folder)
    return RunLock(folder / LOCK_NAME, f"the folder {str(folder)!r}").acquire()


def lock_file(path: str | os.PathLike) -> RunLock:
    """Take the one-writer lock of a single file, e.g. a monitor's JSONL log."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return RunLock(path.parent / f".{path.name}.lock", f"{str(path)!r}").acquire()


def release_all() -> None:
    """Release every lock this process holds (the CLI calls it when a command ends)."""
    with _held_guard:
        locks = list(_held)
    for lock in reversed(locks):
        lock.release()


atexit.register(release_all)
