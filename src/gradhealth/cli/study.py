"""``gradhealth study NAME [--quick] [--out DIR] [--data D] [--seeds K] [--gallery DIR]``.

Runs a study of the material (or ``all`` of them), writes ``DIR/results.json``, ``DIR/report.html``
and ``DIR/figures/NAME.svg``, and prints whether each claim held.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from gradhealth.cli.checks import writable_folder
from gradhealth.cli.outputs import claim_folder
from gradhealth.errors import ConfigError
from gradhealth.validate import positive_int

SIZES = ("tiny", "quick", "full")


def add_parser(sub: argparse._SubParsersAction) -> None:
    from gradhealth.studies import list_studies

    names = ", ".join([*list_studies(), "all"])
    p = sub.add_parser("study", help="reproduce the material's claims: train, measure, report",
                       description=f"Run a study ({names}): train small networks, check each claim of the "
                                   "material against the measured numbers, and write results.json and report.html.")
    p.add_argument("name", metavar="NAME", help=names)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_const", const="quick", dest="size",
                      help="the quick size: minutes on a laptop CPU (all nine studies: about 6)")
    size.add_argument("--size", choices=SIZES, help="tiny (seconds, for tests), quick, or full (the default: deeper "
                      "nets, more steps, 3 seeds; an hour or more on a CPU)")
    p.add_argument("--out", type=Path, metavar="DIR", help="output folder (default: study/NAME, or study for all)")
    p.add_argument("--data", metavar="D", help="data set for every run instead of each study's own (digits, mnist1d, "
                   "cifar10:DIR ...); with cifar10 the full residual study runs He et al.'s recipe")
    p.add_argument("--seeds", type=int, metavar="K", help="seeds per configuration (default: 1, full size 3)")
    p.add_argument("--gallery", type=Path, metavar="DIR", help="also write each study's key figure to DIR/NAME.svg")
    p.add_argument("--overwrite", action="store_true", help="replace the results DIR already holds")
    p.set_defaults(run=run, size=None)


def run(args: argparse.Namespace) -> int:
    from gradhealth.studies import get_study, list_studies, run_all
    from gradhealth.studies.gallery import write_gallery
    from gradhealth.studies.page import write_outputs

    names = list_studies() if args.name == "all" else [args.name]
    for name in names:
        get_study(name)  # unknown names fail here, before anything trains
    if args.seeds is not None:
        positive_int("--seeds", args.seeds)
    size = args.size or "full"
    out = args.out if args.out is not None else Path("study") / ("" if args.name == "all" else args.name)
    writable_folder(out)
    if args.gallery is not None:
        writable_folder(args.gallery, flag="--gallery")
    claim_folder(out, overwrite=args.overwrite)
    started = time.perf_counter()

    def announce(name: str) -> None:
        print(f"study {name} ({size}) … {time.perf_counter() - started:.0f}s so far", file=sys.stderr, flush=True)

    results = run_all(size, data=args.data, seeds=args.seeds, names=names, on_start=announce)
    seconds = round(time.perf_counter() - started, 1)
    title = "gradhealth studies" if args.name == "all" else f"gradhealth study: {results[0].title}"
    subtitle = f"size {size} · data {args.data or 'each study’s own'} · {seconds:.0f} s"
    try:
        json_path, html_path = write_outputs(out, results, title=title, subtitle=subtitle, size=size, data=args.data,
                                             seeds=args.seeds, seconds=seconds)
        gallery = write_gallery(results, args.gallery) if args.gallery is not None else []
    except OSError as exc:
        raise ConfigError(f"cannot write the study's files ({exc.strerror or exc}: "
                          f"{exc.filename or out}); pass writable folders with --out and --gallery.") from None
    _print_claims(results)
    print(f"wrote {json_path}, {html_path}" + (f" and {len(gallery)} figures in {args.gallery}" if gallery else ""),
          file=sys.stderr)
    return 0


def _print_claims(results) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title="Claims", title_justify="left", show_lines=False, expand=False)
    table.add_column("Result", no_wrap=True)
    table.add_column("Study", no_wrap=True)
    table.add_column("Claim", overflow="fold")
    for study in results:
        for claim in study.claims:
            table.add_row(Text("holds", style="bold green") if claim.holds else Text("FAILS", style="bold red"),
                          Text(study.name), Text(claim.text))
    console = Console()
    console.print(table)
    held = sum(c.holds for s in results for c in s.claims)
    total = sum(len(s.claims) for s in results)
    console.print(Text(f"{held} of {total} claims hold."))
