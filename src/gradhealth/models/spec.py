"""Model specs from the command line.

* ``"mlp:depth=30,width=64,activation=sigmoid,init=normal(1),residual=false"``: a registered
  name and keyword values, converted to the types of the builder's defaults;
* ``"path/to/file.py:factory"``: a function (or class) in a user's file that returns an nn.Module.
"""
from __future__ import annotations

import importlib
import inspect
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from gradhealth.errors import ConfigError

__all__ = ["parse_spec", "parse_value", "is_file_spec", "load_factory", "split_top_level"]

_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}
_FILE_SPEC = re.compile(r"^(?P<path>.+\.py):(?P<attr>[A-Za-z_][A-Za-z0-9_.]*)$")


def split_top_level(text: str, sep: str = ",") -> list[str]:
    """Split on ``sep`` outside brackets, so ``init=normal(0.1),depth=3`` keeps ``normal(0.1)``."""
    parts, depth, current = [], 0, []
    for char in text:
        if char in "([":
            depth += 1
        elif char in ")]":
            depth -= 1
        if char == sep and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def parse_value(key: str, raw: str, default: Any) -> Any:
    """Convert ``raw`` to the type of ``default`` (bool, int, float, tuple of ints or str)."""
    text = raw.strip()
    try:
        if isinstance(default, bool):
            low = text.lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
        if isinstance(default, (tuple, list)):
            inner = text.strip("()[]")
            return tuple(int(v) for v in re.split(r"[\s,x\-]+", inner) if v)
    except ValueError:
        kind = type(default).__name__
        raise ConfigError(f"option {key}={raw!r} is not a valid {kind}.") from None
    if default is None and text.lower() in _TRUE | _FALSE:
        return text.lower() in _TRUE
    return text


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"name:key=value,..."`` -> ``(name, {key: typed value})``."""
    from gradhealth.models._registry import get_entry

    name, _, rest = str(spec).partition(":")
    name = name.strip()
    if name.endswith(".py"):
        # a model file whose factory part is missing or malformed, not a registered name
        raise ConfigError(f"{spec!r} names a model file; write path/to/file.py:factory, where factory is the "
                          "name of a function in the file that returns an nn.Module.")
    entry = get_entry(name)
    options = entry.options()
    kwargs: dict[str, Any] = {}
    for item in split_top_level(rest):
        key, eq, raw = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise ConfigError(f"cannot read {item!r} in model spec {spec!r}; write key=value pairs separated by commas.")
        if key in kwargs:
            raise ConfigError(f"model spec {spec!r} sets {key} twice; give it once.")
        if key in ("init", "zero_init_last"):
            kwargs[key] = parse_value(key, raw, False) if key == "zero_init_last" else raw.strip()
            continue
        if key not in options:
            raise ConfigError(f"model {name!r} has no option {key!r}; it accepts: {', '.join(options)}, init, zero_init_last.")
        default = options[key].default
        kwargs[key] = parse_value(key, raw, None if default is inspect.Parameter.empty else default)
    return name, kwargs


def is_file_spec(spec: str) -> bool:
    return bool(_FILE_SPEC.match(str(spec)))


def load_factory(spec: str) -> Callable[..., nn.Module]:
    """The callable named in ``path/to/file.py:factory``.

    The file is imported as a module by its stem, with its folder on ``sys.path``, so that pickled
    references to it (DataLoader workers started with spawn, torch.multiprocessing) resolve in
    child processes, which inherit ``sys.path``.
    """
    match = _FILE_SPEC.match(str(spec))
    if not match:
        raise ConfigError(f"{spec!r} is not of the form path/to/file.py:factory.")
    path = Path(match.group("path")).expanduser().resolve()
    if not path.is_file():
        raise ConfigError(f"model file {str(path)!r} does not exist.")
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    module_name = path.stem
    loaded = sys.modules.get(module_name)
    if loaded is not None and Path(getattr(loaded, "__file__", "") or "").resolve() != path:
        raise ConfigError(f"a module named {module_name!r} is already imported from elsewhere; rename {path.name}.")
    try:
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
