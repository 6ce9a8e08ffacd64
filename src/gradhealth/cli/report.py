"""``gradhealth report RUN.jsonl [--out report.html] [--title T]``: a self-contained HTML report of a run.

Reads the log, runs the diagnosis rules and draws the figures from the records alone: no model
is built and torch is never imported.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from gradhealth.cli.checks import writable_file
from gradhealth.cli.outputs import claim_file
from gradhealth.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="write an HTML report (figures, verdict, remedies) from a run's JSONL log",
                       description="Diagnose a run from its JSONL metrics log and write one self-contained HTML "
                                   "page: gradient norm vs depth, heatmap, loss, update size, findings and remedies.")
    p.add_argument("log", type=Path, help="the run's JSONL metrics log")
    p.add_argument("--out", type=Path, help="where to write the page (default: report.html next to the log)")
    p.add_argument("--title", help="page title (default: the log's file name)")
    p.add_argument("--overwrite", action="store_true", help="replace a report already at the output path")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from gradhealth.diagnose.rules import diagnose_log
    from gradhealth.monitor.records import read_jsonl
    from gradhealth.report.html import run_page, write_report

    out = args.out if args.out is not None else args.log.parent / "report.html"
    if _same_file(out, args.log):
        raise ConfigError(f"the report would be written to {str(out)!r}, which is the log itself: "
                          "pass another path with --out.")
    writable_file(out)
    log = read_jsonl(args.log)
    claim_file(out, overwrite=args.overwrite)
    diagnosis = diagnose_log(log)
    title = args.title or f"gradhealth report: {args.log.name}"
    try:
        path = write_report(out, run_page(log, diagnosis, title))
    except OSError as exc:
        raise ConfigError(f"cannot write the report to {str(out)!r} ({exc.strerror or exc}); "
                          "pass a writable path with --out.") from None
    print(path)
    return 0


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))
    except OSError:
        return False
