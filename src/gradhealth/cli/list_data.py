"""``gradhealth list-data [--json]``: the data sets ``--data`` takes, and what each one is."""
from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list-data", help="list the data sets --data takes",
                       description="List the data sets --data takes; none is downloaded. Text data is "
                                   "byte-level next-token prediction for sequence models.")
    p.add_argument("--json", action="store_true", help="print JSON: spec and summary of each")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from gradhealth.train.data import DATA_SUMMARIES
    from gradhealth.train.text_data import describe_stdlib
    from gradhealth.train.user_data import LOADER_SIGNATURE

    # the default text corpus depends on this Python, so its source is said in full here
    details = {"text": f"{describe_stdlib()}.", "file.py:loader": f"{LOADER_SIGNATURE}."}
    if args.json:
        print(json.dumps([{"spec": spec, "summary": summary, **({"details": details[spec]} if spec in details else {})}
                          for spec, summary in DATA_SUMMARIES.items()], indent=2))
        return 0
    width = max(len(spec) for spec in DATA_SUMMARIES)
    for spec, summary in DATA_SUMMARIES.items():
        print(f"{spec:<{width}}  {summary}")
        if spec in details:
            print(f"{'':<{width}}    {details[spec]}")
    return 0
