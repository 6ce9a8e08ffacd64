"""Model specs from the command line, read but not checked against any model.

* ``"mlp:depth=30,width=64,activation=sigmoid,init=normal(1),residual=false"``: a registered
  name and ``key=value`` text; ``create_model`` types and checks the values against the builder;
* ``"path/to/file.py:factory"``: a function (or class) in a user's file that returns an nn.Module.

Whatever a user's file prints while it is imported or called goes to stderr (:func:`user_code`), so
``--json`` output on stdout stays one JSON document.

The grammar itself lives in ``gradhealth.vocabulary``, which the torch-free side reads too.
"""
from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from torch import nn

from gradhealth.errors import ConfigError
from gradhealth.vocabulary import FILE_SPEC, is_file_spec, parse_value, split_spec, split_top_level

__all__ = ["split_spec", "parse_value", "is_file_spec", "load_factory", "split_top_level", "user_code"]


@contextlib.contextmanager
def user_code() -> Iterator[None]:
    """Run a user's code with its ``print`` output sent to stderr: stdout carries only our results."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def load_factory(spec: str, kind: str = "model") -> Callable[..., nn.Module]:
    """The callable named in ``path/to/file.py:factory`` (``kind`` names the file in errors: model, data).

    The file is imported as a module by its stem, with its folder on ``sys.path``, so that pickled
    references to it (DataLoader workers started with spawn, torch.multiprocessing) resolve in
    child processes, which inherit ``sys.path``.
    """
    match = FILE_SPEC.match(str(spec))
    if not match:
        raise ConfigError(f"{spec!r} is not of the form path/to/file.py:factory.")
    path = Path(match.group("path")).expanduser().resolve()
    if not path.is_file():
        raise ConfigError(f"{kind} file {str(path)!r} does not exist.")
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    module_name = path.stem
    loaded = sys.modules.get(module_name)
    if loaded is not None and Path(getattr(loaded, "__file__", "") or "").resolve() != path:
        raise ConfigError(f"a module named {module_name!r} is already imported from elsewhere; rename {path.name}.")
    try:
        with user_code():
            module = importlib.import_module(module_name)
    except (Exception, SystemExit) as exc:  # the user's file failed to import: say where, not a traceback
        raise ConfigError(f"could not import {path.name}: {type(exc).__name__}: {exc}.") from exc
    target: Any = module
    for part in match.group("attr").split("."):
        target = getattr(target, part, None)
        if target is None:
            raise ConfigError(f"{path.name} has no {match.group('attr')!r}.")
    if not callable(target):
        raise ConfigError(f"{match.group('attr')!r} in {path.name} is not callable.")
    return target
