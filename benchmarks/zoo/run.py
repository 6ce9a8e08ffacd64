"""Train every case of the zoo briefly, diagnose its log, score the findings against the labels.

    python benchmarks/zoo/run.py                 # every case (what `make bench` runs)
    python benchmarks/zoo/run.py --quick         # the regression subset tests/test_zoo.py runs
    python benchmarks/zoo/run.py --record        # also rewrite benchmarks/zoo/recorded.json
    python benchmarks/zoo/run.py --markdown BENCHMARKS.md   # and its section there (`make zoo`)
    python benchmarks/zoo/run.py --render-only --markdown BENCHMARKS.md   # the recorded figures, rendered
    python benchmarks/zoo/run.py --case mlp/nan  # one case, its findings printed

Each case trains in an ordinary user loop (``loss.backward(); mon.step(loss=loss); opt.step()``)
with ``GradientMonitor(model, optimizer=opt, jsonl=..., detail_every=1)`` and its log is diagnosed
exactly as ``gradhealth diagnose --from-log`` does. The result goes to
``benchmarks/results/zoo.json``; ``--record`` keeps it, in the repository, as the figures the
regression test compares against.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import harness  # noqa: E402
from zoo import score, tasks  # noqa: E402
from zoo.architectures import ARCHITECTURES  # noqa: E402
from zoo.breakages import inject_nan, kill_relus, scale_init  # noqa: E402
from zoo.cases import (CASES, INIT_LARGE, INIT_SMALL, LR_HIGH_ADAM, LR_HIGH_SGD, LR_LOW_FACTOR, NAN_STEP,  # noqa: E402
                       QUICK, SHALLOW_DEPTH, SHORT_RANGE, STEPS, Case, case, label)

from gradhealth.diagnose.rules import diagnose_log  # noqa: E402
from gradhealth.io import write_text_atomic  # noqa: E402
from gradhealth.monitor import GradientMonitor  # noqa: E402
from gradhealth.monitor.records import read_jsonl  # noqa: E402

RECORDED = HERE / "recorded.json"
# layers of a finding kept in the result (the label needs one of them; the rest is noise in a diff)
KEEP_LAYERS = 8


def make_optimizer(kind: str, model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=lr)
    return torch.optim.Adam(params, lr=lr)


def optimizer_for(c: Case, default: tuple[str, float]) -> tuple[str, float]:
    if c.cause == "lr_high_sgd":
        return "sgd", LR_HIGH_SGD
    if c.cause == "lr_high_adam":
        return "adam", LR_HIGH_ADAM
    if c.cause == "lr_low":
        return default[0], default[1] * LR_LOW_FACTOR
    return default


def train(c: Case, options: dict[str, Any], path: Path, seed: int) -> tuple[list[str] | None, str, float]:
    """Build, break and train one configuration into the log at ``path``; returns the layers the
    label names (None: anywhere), the optimizer as words and the seconds the training took."""
    arch = ARCHITECTURES[c.arch]
    options = dict(options)
    warmup = options.pop("warmup", 0)
    length = options.pop("length", SHORT_RANGE)
    torch.manual_seed(seed)
    model = arch.build(**options)
    where, remove = None, None
    if c.cause in ("init_small", "init_large", "recurrent_init_small", "recurrent_init_large"):
        scale_init(arch, model, INIT_SMALL if c.cause.endswith("init_small") else INIT_LARGE)
    elif c.cause == "dead_relu":
        where = kill_relus(arch, model)
    elif c.cause == "nan":
        units = arch.units(model)
        unit = units[len(units) // 2]
        _, remove = inject_nan(model, unit, NAN_STEP)
        where = [unit]
    kind, lr = optimizer_for(c, (arch.optimizer, arch.lr))
    opt = make_optimizer(kind, model, lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup)) if warmup else None
    path.unlink(missing_ok=True)  # a kept log of an earlier run is replaced, not appended to
    start = time.perf_counter()
    batches = tasks.batches(arch.task, seed, length)
    with GradientMonitor(model, optimizer=opt, jsonl=path, detail_every=1) as mon:
        for _, (x, y) in zip(range(STEPS), batches):
            loss = tasks.loss(model, x, y)
            loss.backward()
            mon.step(loss=loss)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if schedule is not None:
                schedule.step()
    if remove is not None:
        remove()
    words = f"{kind} lr {lr:g}" + (f", {warmup} warm-up steps" if warmup else "")
    return where, words, time.perf_counter() - start


def run_case(c: Case, folder: Path, seed: int = 0) -> dict[str, Any]:
    """Train and diagnose one case (a deep plain net together with its shallow plain twin); what it
    found and what its label asks for."""
    arch = ARCHITECTURES[c.arch]
    options = {**arch.defaults, **c.options}
    path = folder / (c.name.replace("/", "__") + ".jsonl")
    where, words, seconds = train(c, options, path, seed)
    compare = []
    if c.cause == "no_skip":
        twin = folder / (c.name.replace("/", "__") + "__shallow.jsonl")
        seconds += train(c, {**options, "depth": SHALLOW_DEPTH}, twin, seed)[2]
        compare = [read_jsonl(twin)]
    log = read_jsonl(path)
    diagnosis = diagnose_log(log, compare=compare).to_json()
    losses = [r.loss for r in log.records if r.loss is not None]
    cov = diagnosis.get("coverage") or {}
    matrices, acts = cov.get("weight_matrices") or {}, cov.get("activations") or {}
    return {
        "arch": c.arch, "family": arch.family, "half": arch.half, "cause": c.cause,
        "label": label(c.cause, where, saturating=options.get("activation") in ("tanh", "sigmoid")),
        "verdict": diagnosis["verdict"],
        "findings": [{"kind": f["kind"], "severity": f["severity"], "layers": f["layers"][:KEEP_LAYERS],
                      "step": f["step"]} for f in diagnosis["findings"]],
        "coverage": {"weight_matrices": [matrices.get("measured"), matrices.get("total")],
                     "unmeasured": matrices.get("unmeasured", []), "frozen": matrices.get("frozen"),
                     "activations": [acts.get("hooked"), acts.get("total")],
                     "unhooked": acts.get("unhooked", [])},
        "optimizer": words,
        "steps": STEPS,
        "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
        "seconds": round(seconds, 2),
    }


def run_cases(names: list[str] | None, seed: int = 0, logs: Path | None = None) -> dict[str, dict]:
    """Run the cases (all by default); their logs go to ``logs`` when given, else to a temporary folder."""
    chosen = [case(n) for n in names] if names else CASES
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(logs) if logs is not None else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for c in chosen:
            result = run_case(c, folder, seed)
            out[c.name] = result
            verdicts = score.case_outcome(result)
            print(f"{c.name}: {result['verdict']} {[(f['kind'], f['severity']) for f in result['findings']]}"
                  f" {verdicts['status']} ({result['seconds']} s)", file=sys.stderr, flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the regression subset")
    parser.add_argument("--case", action="append", help="only this case (repeatable), e.g. mlp/nan")
    parser.add_argument("--seed", type=int, default=0, help="seed of the models' init and the data (recorded: 0)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the figures repeat)")
    parser.add_argument("--record", action="store_true", help="also write benchmarks/zoo/recorded.json")
    parser.add_argument("--out", type=Path, default=None, help="JSON result file")
    parser.add_argument("--logs", type=Path, default=None,
                        help="keep every case's JSONL log in this folder (for gradhealth report / diagnose --from-log)")
    parser.add_argument("--markdown", type=Path, default=None,
                        help="rewrite the zoo section of this file (BENCHMARKS.md), leaving the rest as it is")
    parser.add_argument("--render-only", action="store_true",
                        help="run nothing: render the recorded figures (into --markdown when given)")
    args = parser.parse_args(argv)
    if args.render_only:
        section = score.markdown_section(json.loads(RECORDED.read_text()))
        if args.markdown:
            write_text_atomic(args.markdown, score.splice_section(args.markdown.read_text(), section))
        print(section)
        return 0
    threads = harness.set_threads(args.threads)
    names = args.case or (list(QUICK) if args.quick else None)
    start = time.perf_counter()
    cases = run_cases(names, seed=args.seed, logs=args.logs)
    result = {"cases": cases, "quick": args.quick or bool(args.case), "seed": args.seed,
              "seconds": round(time.perf_counter() - start),
              "command": harness.command_line(), "date": harness.now(),
              "machine": {**harness.machine_info(torch.device("cpu")), "threads": threads}}
    result["scores"] = score.scores(cases)
    if args.case:
        print(score.markdown_section(result))
        return 0
    harness.write_result("zoo", result, args.out)
    if args.record:
        harness.write_result("zoo", result, RECORDED)
    section = score.markdown_section(result)
    if args.markdown:
        write_text_atomic(args.markdown, score.splice_section(args.markdown.read_text(), section))
        print(f"wrote {args.markdown}", file=sys.stderr)
    print(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
