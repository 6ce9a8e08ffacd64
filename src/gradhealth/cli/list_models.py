"""``gradhealth list-models [PATTERN] [--json]``: the registered networks and their options."""
from __future__ import annotations

import argparse
import inspect
import json

from gradhealth.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list-models", help="list the registered networks",
                       description="List registered networks; a spec string sets their options: "
                                   "'mlp:depth=30,activation=sigmoid,residual=true'.")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'resnet*'")
    p.add_argument("--json", action="store_true", help="print JSON: name, summary, options with defaults")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from gradhealth.models import get_entry, list_models

    names = list_models(args.pattern)
    if not names:
        raise ConfigError(f"no model matches {args.pattern!r}; `gradhealth list-models` lists them all.")
    entries = [get_entry(n) for n in names]
    if args.json:
        print(json.dumps([
            {"name": e.name, "summary": e.summary,
             "options": {k: None if p.default is inspect.Parameter.empty else p.default
                         for k, p in e.options().items()}}
            for e in entries
        ], indent=2, default=str))
        return 0
    width = max((len(n) for n in names), default=0)
    for entry in entries:
        print(f"{entry.name:<{width}}  {entry.summary}")
    return 0
