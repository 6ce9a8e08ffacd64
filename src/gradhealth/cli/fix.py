"""``gradhealth fix [MODEL]``: try each applicable remedy in a short forked run and rank them."""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from gradhealth.cli.checks import given_or, seq_len_for, writable_folder
from gradhealth.cli.defaults import TRAIN_DEFAULTS
from gradhealth.cli.outputs import claim_folder
from gradhealth.errors import ConfigError
from gradhealth.io import write_json_atomic
from gradhealth.validate import positive_int


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fix", help="rank remedies by forking short runs (default: the deep sigmoid MLP)",
                       description="Fork one short run per applicable remedy (activation, init, norm, residual "
                                   "for built-in specs; re-init, clipping, lower lr, warm-up, weight decay for any "
                                   "model) from the same seed and data order, and rank them by a health score.")
    p.add_argument("model", nargs="?", help="registered name, spec string or file.py:factory")
    p.add_argument("--data", default=None, help="data set, as gradhealth list-data lists them (default: digits)")
    p.add_argument("--seq-len", type=int,
                   help=f"tokens per example of text data (default {TRAIN_DEFAULTS['seq_len']})")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per trial (default 60)")
    p.add_argument("--only", default="", help="comma-separated remedy keys to try (default: all that apply)")
    p.add_argument("--workers", type=int, default=None, help="trials side by side (default: CPU cores)")
    p.add_argument("--lr", type=float, default=TRAIN_DEFAULTS["lr"])
    p.add_argument("--optimizer", default=TRAIN_DEFAULTS["optimizer"])
    p.add_argument("--batch-size", type=int, default=TRAIN_DEFAULTS["batch_size"])
    p.add_argument("--init")
    p.add_argument("--clip-head", help="the classifier head the AGC trial leaves unclipped, by module name "
                                       "(for models without get_classifier())")
    p.add_argument("--seed", type=int, default=TRAIN_DEFAULTS["seed"])
    p.add_argument("--json", action="store_true")
    p.add_argument("--out", type=Path, help="folder for trials.json and report.html")
    p.add_argument("--overwrite", action="store_true", help="replace the outputs OUT already holds")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from gradhealth.checkup import DEFAULT_DATA, DEFAULT_MODEL, DEFAULT_STEPS
    from gradhealth.trials import plan_trials, run_trials
    from gradhealth.train.config import TrainConfig

    if args.workers is not None:
        positive_int("--workers", args.workers)
    if args.out is not None:
        writable_folder(args.out)
        claim_folder(args.out, overwrite=args.overwrite)
    config = TrainConfig(model=given_or(args.model, DEFAULT_MODEL), data=given_or(args.data, DEFAULT_DATA),
                         steps=given_or(args.steps, DEFAULT_STEPS), lr=args.lr, optimizer=args.optimizer,
                         batch_size=args.batch_size, init=args.init, seed=args.seed,
                         seq_len=seq_len_for(given_or(args.data, DEFAULT_DATA), args.seq_len,
                                             TRAIN_DEFAULTS["seq_len"]),
                         on_nonfinite="stop",
                         clip_head=args.clip_head)
    from gradhealth.models.spec import user_code

    with user_code():
        trials = plan_trials(config)
    if args.only:
        wanted = {k.strip() for k in args.only.split(",") if k.strip()}
        if not wanted:
            raise ConfigError(f"--only {args.only!r} names no remedy; choose from: {', '.join(t.key for t in trials)}.")
        unknown = sorted(wanted - {t.key for t in trials})
        if unknown:
            raise ConfigError(f"remedy {unknown[0]!r} does not apply here; choose from: "
                              f"{', '.join(t.key for t in trials)}.")
        trials = [t for t in trials if t.key in wanted or t.key == "baseline"]
    config.validate()
    with user_code():  # a user's model may print: stdout carries only the ranking
        results = [r.to_json() for r in run_trials(config, trials, workers=args.workers)]
    baseline = next((r for r in results if r["trial"]["key"] == "baseline"), None)
    if baseline is not None and baseline.get("error"):
        # without the run every remedy is compared with, nothing can be ranked
        raise ConfigError(f"the baseline run failed, so no remedy can be compared with it: "
                          f"{str(baseline['error']).rstrip('.')}.")
    payload = {"model": config.model, "data": config.data, "steps": config.steps, "trials": results}
    if args.out is not None:
        _write(args.out, payload)
    if args.json:
        print(json.dumps(payload, indent=2, default=str))
    else:
        _print(payload)
    return 0


def _write(out: Path, payload: dict) -> None:
    from gradhealth.report.extras import trials_section
    from gradhealth.report.html import render_html, write_report

    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "trials.json", payload)
    page = render_html(f"gradhealth remedy trials: {payload['model']}", [trials_section(payload["trials"])],
                       subtitle=f"{payload['data']} · {payload['steps']} steps per trial")
    write_report(out / "report.html", page)


def _print(payload: dict) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    # escaped: a path such as models/[x].py is text, not rich markup
    table = Table(title=escape(f"Remedy trials: {payload['model']} on {payload['data']}, {payload['steps']} steps each"),
                  title_justify="left")
    for column in ("#", "remedy", "final loss", "vs baseline", "first/last grad", "NaN/Inf", "score"):
        table.add_column(column, justify="right" if column not in ("remedy",) else "left")

    def num(value) -> str:
        return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.3g}"

    for rank, r in enumerate(payload["trials"], 1):
        name = Text(r["trial"]["title"], style="bold" if r["trial"]["key"] == "baseline" else "")
        if r.get("error"):
            name.append(f" ({r['error']})", style="dim")
        table.add_row(str(rank), name, num(r["final_loss"]), num(r["loss_vs_baseline"]), num(r["first_last_ratio"]),
                      "yes" if r["nonfinite"] else "no", num(r["score"]))
    Console().print(table)
