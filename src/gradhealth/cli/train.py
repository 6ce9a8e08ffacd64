"""``gradhealth train MODEL --data D ...``: train with the monitor on, write metrics, checkpoints, summary."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from dataclasses import fields

from gradhealth.cli.checks import agc_head, seq_len_for, writable_folder
from gradhealth.cli.defaults import DEFAULT_STEPS, TRAIN_DEFAULTS
from gradhealth.cli.outputs import RUN_OUTPUTS, claim_folder
from gradhealth.errors import ConfigError, GradHealthError

CLIP_MODES = ("none", "norm", "value", "agc", "autoclip")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a model with the monitor on",
        description="Train MODEL (a registered name, a spec like 'mlp:depth=30,activation=sigmoid', or "
                    "path/to/file.py:factory) and record per-layer gradient health. "
                    "Under torchrun, runs data-parallel (gloo on CPU, nccl on GPU).")
    p.add_argument("model", help="registered name, spec string, or file.py:factory")
    p.add_argument("--data", default=TRAIN_DEFAULTS["data"], help="digits, digits-image, mnist1d, mnist1d-seq, "
                   "synthetic:in=64,classes=10,n=4096, synthetic-image:chans=3,size=32, cifar10:DIR, text, "
                   f"text:PATH, file.py:loader; gradhealth list-data says more (default: {TRAIN_DEFAULTS['data']})")
    p.add_argument("--seq-len", type=int,
                   help=f"tokens per example of text data (default {TRAIN_DEFAULTS['seq_len']})")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, help=f"optimizer steps (default {DEFAULT_STEPS})")
    length.add_argument("--epochs", type=float, help="passes over the training data")
    p.add_argument("--batch-size", type=int, default=TRAIN_DEFAULTS["batch_size"])
    p.add_argument("--accumulate", type=int, default=TRAIN_DEFAULTS["accumulate"], help="micro-batches per optimizer step")
    p.add_argument("--optimizer", default=TRAIN_DEFAULTS["optimizer"], help="sgd, adam, adamw")
    p.add_argument("--lr", type=float, default=TRAIN_DEFAULTS["lr"])
    p.add_argument("--momentum", type=float, help="SGD momentum (default 0.9; adam/adamw use betas)")
    p.add_argument("--nesterov", action="store_true")
    p.add_argument("--weight-decay", type=float, default=TRAIN_DEFAULTS["weight_decay"])
    p.add_argument("--l2-mode", default=TRAIN_DEFAULTS["l2_mode"], choices=("decoupled", "penalty"),
                   help="weight decay in the optimizer (decoupled) or as a loss penalty")
    p.add_argument("--l1", type=float, default=TRAIN_DEFAULTS["l1"], help="L1 penalty weight")
    p.add_argument("--schedule", default=TRAIN_DEFAULTS["schedule"],
                   help="constant, step, multistep, exponential, cosine, warmup_cosine, onecycle")
    p.add_argument("--warmup-steps", type=int)
    p.add_argument("--clip", default=TRAIN_DEFAULTS["clip"], help=", ".join(CLIP_MODES))
    p.add_argument("--clip-value", type=float, help="threshold (norm/value), lambda (agc), percentile (autoclip)")
    p.add_argument("--clip-head", help="agc: the classifier head to leave unclipped, by module name (for models "
                                       "without get_classifier())")
    p.add_argument("--amp", default=TRAIN_DEFAULTS["amp"], help="none, bf16, fp16")
    p.add_argument("--init", help="re-initialize: he, xavier, normal(0.02), constant(5), orthogonal, lsuv, fixup ...")
    p.add_argument("--seed", type=int, default=TRAIN_DEFAULTS["seed"])
    p.add_argument("--monitor-every", type=int, default=TRAIN_DEFAULTS["monitor_every"], help="record every K optimizer steps")
    p.add_argument("--detail-every", type=int, default=TRAIN_DEFAULTS["detail_every"],
                   help="every K steps also weight norms, update ratios and activation health "
                        "(default 10 x --monitor-every)")
    p.add_argument("--no-activations", action="store_true", help="do not hook activation modules")
    p.add_argument("--on-nonfinite", default=TRAIN_DEFAULTS["on_nonfinite"],
                   help="on NaN/Inf: stop (save a checkpoint and a report), skip the step, or raise "
                        f"(default: {TRAIN_DEFAULTS['on_nonfinite']})")
    p.add_argument("--eval-every", type=int, default=TRAIN_DEFAULTS["eval_every"], help="evaluate on the validation split every K steps")
    p.add_argument("--checkpoint-every", type=int, default=TRAIN_DEFAULTS["checkpoint_every"])
    p.add_argument("--device", default=TRAIN_DEFAULTS["device"])
    p.add_argument("--strategy", default=TRAIN_DEFAULTS["strategy"], choices=("ddp", "fsdp"),
                   help="under torchrun: ddp (a full model per process) or fsdp (FSDP2, parameters sharded)")
    p.add_argument("--num-workers", type=int, default=TRAIN_DEFAULTS["num_workers"])
    p.add_argument("--out", default="run", help="output folder (default: ./run)")
    p.add_argument("--resume", help="checkpoint to resume from (e.g. run/checkpoints/last.pt)")
    p.add_argument("--overwrite", action="store_true", help="replace the run OUT already holds")
    p.add_argument("--tensorboard", action="store_true", help="also write TensorBoard scalars to OUT/tensorboard")
    p.set_defaults(run=run)


def config_from_args(args: argparse.Namespace):
    from gradhealth.train.config import TrainConfig

    # every option is named for its TrainConfig field; --no-activations is the one negated flag
    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}
    values.update(clip_head=agc_head(args.clip, args.clip_head), activations=not args.no_activations,
                  seq_len=seq_len_for(args.data, args.seq_len, TRAIN_DEFAULTS["seq_len"]))
    return TrainConfig(**values)


def run(args: argparse.Namespace) -> int:
    from gradhealth.train.loop import fit

    config = config_from_args(args)
    writable_folder(config.out)
    out = Path(config.out)
    if config.resume is None and not args.overwrite and any(
            (out / name).exists() for name in ("metrics.jsonl", "checkpoints/last.pt", "summary.json")):
        raise ConfigError(f"{out}/ already holds a run: continue it with --resume {out}/checkpoints/last.pt, "
                          "pass another --out, or --overwrite to replace it.")
    # a resumed run continues the run in its folder; a new one refuses any other command's outputs
    claim_folder(out, overwrite=args.overwrite, keeps=[] if config.resume is None else
                 [out / name for name in RUN_OUTPUTS])
    from gradhealth.models.spec import user_code

    # a user's model or loader may print while it is built or run: stdout carries only the summary
    with user_code():
        result = fit(config)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 writes and speaks
        return 0
    if result.stopped == "nonfinite":
        _write_stop_report(out)
        raise GradHealthError(f"{result.summary['stop_reason']}; checkpoint and report written to {out}/.")
    summary = {k: result.summary[k] for k in ("model", "data", "loss", "steps", "final_loss", "skipped_steps")}
    summary.update({k: v for k, v in result.summary.items() if k.startswith("final_val")})
    print(json.dumps(summary, indent=2, default=str))
    print(f"loss: {result.summary['loss']}", file=sys.stderr)
    last = "last.dcp" if config.strategy == "fsdp" and int(os.environ.get("WORLD_SIZE", "1")) > 1 else "last.pt"
    print(f"wrote {out}/metrics.jsonl, {out}/checkpoints/{last}, {out}/summary.json", file=sys.stderr)
    skipped, steps = result.summary.get("skipped_steps") or 0, result.summary.get("steps") or 0
    if steps and skipped * 2 > steps:
        # --on-nonfinite skip kept the run alive, but a run that skipped most of its steps did not train
        raise GradHealthError(f"{skipped} of {steps} steps were skipped for non-finite gradients, so the model "
                              f"hardly trained; see gradhealth diagnose --from-log {out}/metrics.jsonl.")
    return 0


def _write_stop_report(out: Path) -> None:
    """report.html and findings.json beside the checkpoint of a run that stopped on NaN/Inf."""
    from gradhealth.cli.diagnose import write_outputs
    from gradhealth.diagnose.rules import diagnose_log
    from gradhealth.monitor.records import read_jsonl

    log = read_jsonl(out / "metrics.jsonl")
    write_outputs(out, log, diagnose_log(log))
