"""``gradhealth diagnose [MODEL]``: what is wrong with a model's gradients, where, why, and what fixes it.

With no MODEL it examines the embedded default (a deep plain sigmoid MLP on the digits data).
``--from-log run.jsonl`` diagnoses a finished run without importing torch. Exit status 3 when a
``--fail-on`` kind is found (or, with ``--fail-on inconclusive``, when the verdict is inconclusive),
for CI gates.
"""
from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

from gradhealth.diagnose.findings import FINDING_KINDS
from gradhealth.cli.checks import agc_head, given_or, seq_len_for, writable_folder
from gradhealth.cli.defaults import TRAIN_DEFAULTS
from gradhealth.cli.outputs import claim_folder, refuse_input_as_output
from gradhealth.errors import ConfigError
from gradhealth.io import write_json_atomic

EXIT_FOUND = 3
# not a finding kind: the verdict when too little of the model was measured to call it healthy
INCONCLUSIVE = "inconclusive"

# the files of a training run, beside which --from-log may write the run's diagnosis
RUN_FILES = ("metrics.jsonl", "summary.json", "checkpoints/last.pt", "checkpoints/best.pt", "tensorboard")

# How a MODEL is run (option -> default): the parser's defaults, and what --from-log must leave alone
# (data, steps and seq_len default to None: a MODEL run falls back on checkup's and the loop's defaults)
RUN_DEFAULTS = {"data": None, "steps": None, "seq_len": None,
                **{key: TRAIN_DEFAULTS[key] for key in ("lr", "optimizer", "batch_size", "init", "clip",
                                                        "clip_value", "clip_head", "seed")}}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("diagnose", help="diagnose vanishing/exploding gradients (default: a deep sigmoid MLP)",
                       description="Run MODEL for a few monitored steps (or read --from-log) and report what is "
                                   "wrong with its gradients, in which layers, why, and the ranked remedies.")
    p.add_argument("model", nargs="?", help="registered name, spec string or file.py:factory "
                                            "(default: a 20-layer plain sigmoid MLP)")
    p.add_argument("--from-log", type=Path, help="diagnose a run's metrics.jsonl instead of running a model")
    p.add_argument("--data", default=None, help="data set, as gradhealth list-data lists them: digits, mnist1d, "
                                                "text, text:PATH, file.py:loader, ... (default: digits)")
    p.add_argument("--seq-len", type=int, default=RUN_DEFAULTS["seq_len"],
                   help=f"tokens per example of text data (default {TRAIN_DEFAULTS['seq_len']})")
    p.add_argument("--steps", type=int, default=None, help="monitored optimizer steps (default 60)")
    p.add_argument("--lr", type=float, default=RUN_DEFAULTS["lr"])
    p.add_argument("--optimizer", default=RUN_DEFAULTS["optimizer"])
    p.add_argument("--batch-size", type=int, default=RUN_DEFAULTS["batch_size"])
    p.add_argument("--init", help="re-initialize the model first (he, xavier, normal(0.02), ...)")
    p.add_argument("--clip", default=RUN_DEFAULTS["clip"])
    p.add_argument("--clip-value", type=float)
    p.add_argument("--clip-head", help="agc: the classifier head by module name (models without get_classifier())")
    p.add_argument("--seed", type=int, default=RUN_DEFAULTS["seed"])
    p.add_argument("--json", action="store_true", help="print the diagnosis as JSON")
    p.add_argument("--out", type=Path, help="folder for findings.json and report.html (and the run's files)")
    p.add_argument("--overwrite", action="store_true", help="replace the outputs OUT already holds")
    p.add_argument("--fail-on", default="", help="comma-separated finding kinds that make the exit status 3; "
                                                   "'inconclusive' also fails a run the diagnosis could not see whole")
    p.set_defaults(run=run)


def _fail_kinds(text: str) -> set[str]:
    kinds = {k.strip() for k in text.split(",") if k.strip()}
    unknown = sorted(kinds - {*FINDING_KINDS, INCONCLUSIVE})
    if unknown:
        raise ConfigError(f"unknown finding kind {unknown[0]!r} in --fail-on; choose from: "
                          f"{', '.join(FINDING_KINDS)}, or {INCONCLUSIVE}.")
    return kinds


def run(args: argparse.Namespace) -> int:
    fail_on = _fail_kinds(args.fail_on)
    if args.from_log is not None:
        if args.model:
            raise ConfigError("give either a MODEL to run or --from-log, not both.")
        ignored = [key for key, default in RUN_DEFAULTS.items() if getattr(args, key) != default]
        if ignored:
            flag = "--" + ignored[0].replace("_", "-")
            raise ConfigError(f"{flag} sets how a MODEL is run and does nothing with --from-log; drop it.")
    if args.out is not None:
        _claim_out(args)
    if args.from_log is not None:
        from gradhealth.diagnose.rules import diagnose_log
        from gradhealth.monitor.records import read_jsonl

        log = read_jsonl(args.from_log)
        diagnosis = diagnose_log(log)
    else:
        from gradhealth.checkup import DEFAULT_DATA, DEFAULT_MODEL, DEFAULT_STEPS, checkup
        from gradhealth.models.spec import user_code

        # a user's model or loader may print while it is built or run: stdout carries only the diagnosis
        with user_code():
            result = checkup(given_or(args.model, DEFAULT_MODEL), given_or(args.data, DEFAULT_DATA),
                             given_or(args.steps, DEFAULT_STEPS),
                             out=str(args.out) if args.out else None, lr=args.lr, optimizer=args.optimizer,
                             batch_size=args.batch_size, init=args.init, clip=args.clip,
                             seq_len=seq_len_for(given_or(args.data, DEFAULT_DATA), args.seq_len,
                                                 TRAIN_DEFAULTS["seq_len"]),
                             clip_value=args.clip_value, clip_head=agc_head(args.clip, args.clip_head), seed=args.seed)
        log, diagnosis = result.log, result.diagnosis
    if args.out is not None:
        write_outputs(args.out, log, diagnosis)
    if args.json:
        print(json.dumps(diagnosis.to_json(), indent=2, default=str))
    else:
        from gradhealth.report.console import print_diagnosis

        print_diagnosis(diagnosis, log)
        if diagnosis.extra.get("loss"):
            print(f"loss: {diagnosis.extra['loss']}")
        _print_theory(diagnosis.extra.get("theory"))
        if diagnosis.findings and not args.from_log:
            print(f"To see which remedy works on this model: gradhealth fix {shlex.quote(given_or(args.model, DEFAULT_MODEL))}"
                  + (f" --data {shlex.quote(args.data)}" if args.data else "")
                  + (f" --seq-len {args.seq_len}" if args.seq_len != RUN_DEFAULTS["seq_len"] else ""))
        if args.out is not None:
            print(f"wrote {args.out / 'report.html'} and {args.out / 'findings.json'}")
    found = {f.kind for f in diagnosis.findings if f.severity in ("warning", "error")} & fail_on
    if INCONCLUSIVE in fail_on and diagnosis.verdict == INCONCLUSIVE:
        found.add(INCONCLUSIVE)
    return EXIT_FOUND if found else 0


def _claim_out(args: argparse.Namespace) -> None:
    writable_folder(args.out)
    keeps = []
    if args.from_log is not None:
        refuse_input_as_output([args.out / "findings.json", args.out / "report.html"], [args.from_log])
        keeps = [args.from_log]
        if args.from_log.parent.resolve() == args.out.resolve():
            # the diagnosis of a run may go beside it, in the run's own folder
            keeps += [args.out / name for name in RUN_FILES]
    claim_folder(args.out, overwrite=args.overwrite, keeps=keeps)


def write_outputs(out: Path, log, diagnosis) -> None:
    """findings.json and report.html in ``out``, both written atomically."""
    from gradhealth.report.extras import theory_section
    from gradhealth.report.html import run_page, write_report

    out.mkdir(parents=True, exist_ok=True)
    extra = [s for s in [theory_section(diagnosis.extra.get("theory") or {})] if s is not None]
    write_report(out / "report.html", run_page(log, diagnosis, f"gradhealth diagnosis: {diagnosis.model or 'run'}", extra))
    write_json_atomic(out / "findings.json", diagnosis.to_json())


def _print_theory(theory) -> None:
    if not theory or not theory.get("applies"):
        return
    p = theory["prediction"]
    line = (f"Theory at init: {p['regime']}, chi_1 = {p['chi_1']:.3g}, predicted per-layer factor "
            f"{p['per_layer_factor']:.3g}")
    comparison = theory.get("comparison")
    if comparison:
        line += (f"; measured {comparison['measured_factor']:.3g} "
                 f"({'agrees' if comparison['agree'] else 'differs'})")
    print(line)
