"""User code (a model file, its factory, its forward, a data loader) may print; the commands'
stdout is theirs alone (``--json`` output must parse), so what user code prints goes to stderr."""
from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

__all__ = ["user_output_to_stderr"]


@contextlib.contextmanager
def user_output_to_stderr() -> Iterator[None]:
    """Send everything printed to ``sys.stdout`` inside the block to ``sys.stderr`` instead."""
    with contextlib.redirect_stdout(sys.stderr):
        yield
