"""Who may write into an output folder: nothing already written is replaced without ``--overwrite``,
no command writes over a file it reads, and one process writes into a folder at a time."""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path

from gradhealth.errors import ConfigError
from gradhealth.runlock import lock_folder

__all__ = ["RUN_OUTPUTS", "claim_folder", "claim_file", "refuse_input_as_output"]

# every file or folder a gradhealth command writes into its --out folder: a folder holding one of
# them holds a run or another command's results
RUN_OUTPUTS = ("metrics.jsonl", "summary.json", "checkpoints/last.pt", "checkpoints/best.pt", "tensorboard",
               "findings.json", "report.html", "trials.json", "results.json", "figures")


def _rank0() -> bool:
    return int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 writes


def claim_folder(folder: Path, *, overwrite: bool, keeps: Iterable[Path] = (), flag: str = "--out") -> None:
    """Refuse ``folder`` if it holds gradhealth outputs that are not among ``keeps`` (the inputs this
    command continues or reads), unless ``overwrite``; then take its one-writer lock.

    With ``overwrite`` the files found are removed first (folders such as tensorboard/ are left to
    the user), so the folder never mixes two runs' files.
    """
    held = [name for name in RUN_OUTPUTS if (folder / name).exists()
            and not any(_same(folder / name, kept) for kept in keeps)]
    if held and not overwrite:
        raise ConfigError(f"{str(folder)!r} already holds {held[0]} of another run or command; pass another "
                          f"{flag}, or --overwrite to replace what is there.")
    if _rank0():
        lock_folder(folder)
        if overwrite:
            for name in held:
                with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                    (folder / name).unlink()


def claim_file(target: Path, *, overwrite: bool, flag: str = "--out") -> None:
    """Refuse a single output file that exists (unless ``overwrite``), is a link or is not a regular
    file; then take the lock of its folder."""
    if target.is_symlink():
        raise ConfigError(f"{flag} {str(target)!r} is a symbolic link; pass the path of a plain file.")
    if target.exists() and not target.is_file():
        raise ConfigError(f"{flag} {str(target)!r} is not a regular file; pass the path of a plain file.")
    if target.exists() and not overwrite:
        raise ConfigError(f"{str(target)!r} already exists; pass another {flag}, or --overwrite to replace it.")
    if _rank0():
        lock_folder(target.parent if str(target.parent) else Path("."))


def refuse_input_as_output(outputs: Iterable[Path], inputs: Iterable[Path]) -> None:
    """No command writes over a file it reads: compared by the files themselves, not their spelling."""
    inputs = list(inputs)
    for out in outputs:
        for source in inputs:
            if _same(out, source):
                raise ConfigError(f"{str(out)!r} is also the input {str(source)!r}; writing it would destroy what "
                                  "is being read: pass another output path.")


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False
