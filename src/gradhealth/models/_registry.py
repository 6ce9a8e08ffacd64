"""Models by name: ``create_model("resnet20")``, ``create_model("mlp:depth=30,activation=sigmoid")``.

An entry is a builder plus the arguments that define it (``resnet56`` = CifarResNet with depth 56);
everything else the builder takes can be set by keyword or in a spec string. Each family registers
its entries at the bottom of its own file (``mlp.py``, ``convnet.py``, ``resnet.py``); this module
holds only the registry and ``create_model``, which checks a spec's options against the builder.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from fnmatch import fnmatch
from typing import Any

from torch import Tensor, nn

from gradhealth.errors import ConfigError, unknown_name
from gradhealth.layers import init as layer_init
from gradhealth.models.spec import is_file_spec, load_factory, parse_value, split_spec, user_code

__all__ = ["ModelEntry", "register_model", "create_model", "list_models", "get_entry", "model_options",
           "resolve_spec"]

# what create_model takes for every model, besides the builder's own options
_CREATE_OPTIONS = ("init", "zero_init_last")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., nn.Module]
    fixed: dict[str, Any] = field(default_factory=dict)
    summary: str = ""

    def options(self) -> dict[str, inspect.Parameter]:
        """Keyword arguments a user may set, with their defaults."""
        params = inspect.signature(self.builder).parameters
        return {
            k: p for k, p in params.items()
            if k not in self.fixed and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        }


_MODELS: dict[str, ModelEntry] = {}


def register_model(name: str | Callable[..., nn.Module], builder: Callable[..., nn.Module] | None = None,
                   summary: str = "", **fixed: Any):
    """Add a model to the registry; a name may be registered only once.

    ``register_model("resnet56", CifarResNet, depth=56)``, or as a decorator on a function
    returning an nn.Module (its name is the model's name).
    """
    if callable(name) and builder is None:  # used as a bare decorator
        fn = name
        register_model(fn.__name__, fn)
        return fn
    if builder is None:
        return lambda fn: (register_model(name, fn, summary, **fixed), fn)[1]
    if name in _MODELS:
        raise ConfigError(f"a model named {name!r} is already registered.")
    doc = (inspect.getdoc(builder) or "").split("\n")[0]
    _MODELS[name] = ModelEntry(name, builder, dict(fixed), summary or doc)
    return builder


def list_models(pattern: str = "*") -> list[str]:
    """Registered names matching a shell-style pattern, sorted."""
    return sorted(n for n in _MODELS if fnmatch(n, pattern))


def get_entry(name: str) -> ModelEntry:
    if name not in _MODELS:
        raise unknown_name("model", name, _MODELS)
    return _MODELS[name]


def model_options(name: str) -> dict[str, inspect.Parameter]:
    """What ``create_model(name, ...)`` accepts besides ``init``, ``init_data``, ``zero_init_last``."""
    return get_entry(name).options()


def _typed(entry: ModelEntry, raw: dict[str, str]) -> dict[str, Any]:
    """A spec's value texts as the types of the builder's defaults; unknown keys are left as text."""
    options = entry.options()
    typed: dict[str, Any] = {}
    for key, text in raw.items():
        if key == "zero_init_last":
            typed[key] = parse_value(key, text, False)
        elif key in options:
            default = options[key].default
            typed[key] = parse_value(key, text, None if default is inspect.Parameter.empty else default)
        else:
            typed[key] = text
    return typed


def _check_options(entry: ModelEntry, keys: Any) -> None:
    options = entry.options()
    unknown = [k for k in keys if k not in options and k not in _CREATE_OPTIONS]
    if unknown:
        raise ConfigError(f"model {entry.name!r} has no option {unknown[0]!r}; "
                          f"it accepts: {', '.join([*options, *_CREATE_OPTIONS])}.")


def resolve_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"name:key=value,..."`` -> ``(name, {key: value})``, typed like the builder's defaults and checked."""
    name, raw = split_spec(spec)
    entry = get_entry(name)
    _check_options(entry, raw)
    return name, _typed(entry, raw)


def create_model(
    name: str,
    *,
    init: str | None = None,
    init_data: Tensor | None = None,
    zero_init_last: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered model (or a spec string / ``file.py:factory``) and initialize it.

    ``init`` names a scheme of ``gradhealth.layers.init`` applied after building (the builder's own
    init otherwise); ``init_data`` is the batch LSUV needs; ``zero_init_last`` zeroes the last
    layer of every residual branch.
    """
    if is_file_spec(name):
        factory = load_factory(name)
        try:
            with user_code():
                model = factory(**kwargs)
        except (Exception, SystemExit) as exc:  # the user's factory failed: say which, not a traceback
            raise ConfigError(f"calling {name} failed: {type(exc).__name__}: {exc}.") from exc
    else:
        base, raw = split_spec(name)
        entry = get_entry(base)
        merged = {**_typed(entry, raw), **kwargs}
        _check_options(entry, merged)
        named = merged.pop("init", None)
        if named is not None and init is not None and str(named) != str(init):
            # silently keeping one of the two would train a model other than the one asked for
            raise ConfigError(f"{name!r} names init={named} and init={init} was given as well; give one of them.")
        init = named if named is not None else init
        zero_init_last = bool(merged.pop("zero_init_last", zero_init_last))
        model = entry.builder(**{**entry.fixed, **merged})
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{name!r} did not build an nn.Module but a {type(model).__name__}.")
    if init is not None:
        layer_init.apply_init(model, init, data=init_data, zero_init_last=zero_init_last)
    elif zero_init_last:
        layer_init.zero_init_last(model)
    return model
