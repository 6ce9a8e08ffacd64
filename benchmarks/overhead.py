"""What measuring gradients costs: step time with GradientMonitor and with other tools, against none.

Two models: the CIFAR ResNet-56 (3x32x32 input) and a 50-layer ReLU MLP
(``mlp:depth=50,width=256``, 64 input features). One step is forward + cross-entropy + backward
+ SGD (lr 0.01, no momentum). Each configuration has its own copy of the model (same initial weights), optimizer and
instrumentation, set up once; all are timed interleaved in one process:

* ``baseline``: no measurement;
* ``monitor_every1``: ``GradientMonitor(model, optimizer=opt)`` used as its docstring says
  (``mon.step(loss=loss)`` after backward, optimizer attached so update ratios are measured),
  with its defaults (every=1; weight norms, update ratios, max |grad| and activation statistics
  on one recorded step in ten); ``monitor_every10``: ``every=10`` (so detailed every 100 steps);
* ``monitor_detail1``: everything on every step (``detail_every=1``), and
  ``monitor_detail1_noact``: the same with ``activations=False``: what a detailed step costs;
* ``lightning_grad_norm``: ``lightning.pytorch.utilities.grad_norm(model, norm_type=2)`` every step;
* ``wandb_hist``: what ``wandb.watch(model, log="gradients", log_freq=1)`` computes, without
  wandb's upload: a hook on every parameter that histograms its gradient into 64 bins each step
  and moves the histogram to the host (``harness.HistogramHooks``).

Cockpit and the other peers side by side with the monitor, on the MLP and Cockpit's CIFAR-10 net:
``peers.py``.

Figure: overhead % = (median over repetitions of the paired ratio candidate / baseline - 1) * 100.
Goals on CPU: at most 3 % at every=1, at most 1 % at every=10. ``--only profile`` measures
where the monitor's time goes instead, per part, by timing each of its hooks (``overhead_profile.py``).

    python benchmarks/overhead.py                   # -> benchmarks/results/overhead.json
    python benchmarks/overhead.py --only profile    # -> benchmarks/results/overhead_profile.json
    python benchmarks/overhead.py --quick
"""
from __future__ import annotations

import copy
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402

import gradhealth  # noqa: E402

NAME = "overhead"
GOALS_PCT = {"monitor_every1": 3.0, "monitor_every10": 1.0}
# GradientMonitor keyword arguments of each monitored configuration (optimizer attached in all)
MONITOR_KWARGS = {
    "monitor_every1": {},
    "monitor_every10": {"every": 10},
    "monitor_detail1": {"detail_every": 1},
    "monitor_detail1_noact": {"detail_every": 1, "activations": False},
}
LABELS = {
    "baseline": "no measurement (baseline)",
    "monitor_every1": "GradientMonitor defaults: every=1",
    "monitor_every10": "GradientMonitor, every=10",
    "monitor_detail1": "GradientMonitor, every=1, detail_every=1 (everything every step)",
    "monitor_detail1_noact": "GradientMonitor, every=1, detail_every=1, activations=False",
    "lightning_grad_norm": "Lightning grad_norm(model, 2) every step",
    "wandb_hist": "wandb.watch-style 64-bin gradient histograms every step",
}
MAIN_CONFIGS = ("baseline", "monitor_every1", "monitor_every10", "monitor_detail1", "monitor_detail1_noact",
                "lightning_grad_norm", "wandb_hist")


# ---- the models ----------------------------------------------------------------------------

def model_settings(quick: bool) -> dict[str, dict]:
    """Per model: how it is built, its input, and repetition counts that keep a full run under ~10 min."""
    models = {
        "resnet56": {"spec": "resnet56", "input": (3, 32, 32), "batch": 128,
                     "reps": 5, "steps": 5, "warmup": 1, "rep_warmup": 0, "profile_steps": 3},
        "mlp50": {"spec": "mlp:depth=50,width=256", "input": (64,), "batch": 128,
                  "reps": 7, "steps": 20, "warmup": 3, "rep_warmup": 1, "profile_steps": 10},
    }
    if quick:
        models["resnet56"].update(batch=16, reps=3, steps=2, warmup=1, profile_steps=2)
        models["mlp50"].update(batch=32, reps=3, steps=10, warmup=1, profile_steps=5)
    return models


def build_candidate(config: str, template: nn.Module, x: Tensor, y: Tensor,
                    steps: int) -> tuple[harness.Candidate, Callable[[], None]]:
    """A candidate with its own model copy, and a function that takes its instrumentation off."""
    model = copy.deepcopy(template)
    opt = harness.new_optimizer(model)
    if config == "baseline":
        return harness.Candidate(config, harness.plain_step(model, opt, x, y), LABELS[config]), lambda: None
    if config.startswith("monitor"):
        return harness.monitor_candidate(config, LABELS[config], model, opt, x, y, steps, MONITOR_KWARGS[config])
    if config == "lightning_grad_norm":
        return harness.Candidate(config, harness.lightning_grad_norm_step(model, opt, x, y), LABELS[config]), lambda: None
    if config == "wandb_hist":
        hooks = harness.HistogramHooks(model)
        return harness.Candidate(config, harness.plain_step(model, opt, x, y), LABELS[config]), hooks.remove
    raise SystemExit(f"error: unknown configuration {config!r}.")


# ---- measuring -----------------------------------------------------------------------------

def run_model(name: str, s: dict, configs: list[str], device: torch.device) -> dict:
    torch.manual_seed(0)
    template = gradhealth.create_model(s["spec"]).to(device)
    x, y = harness.make_batch(s["batch"], s["input"], device)
    candidates, removers = [], []
    for config in configs:
        cand, remove = build_candidate(config, template, x, y, s["steps"])
        candidates.append(cand)
        removers.append(remove)
    print(f"{name}: batch {s['batch']}, {s['reps']} reps x {s['steps']} steps, configs {', '.join(configs)}",
          file=sys.stderr)
    summary = harness.time_against_baseline(candidates, removers, reps=s["reps"], steps=s["steps"], device=device,
                                            baseline="baseline", warmup=s["warmup"], rep_warmup=s["rep_warmup"])
    for config, row in summary.items():
        goal = GOALS_PCT.get(config)
        row["label"] = LABELS[config]
        row["goal_pct"] = goal
        row["pass"] = None if goal is None else row["overhead_pct"] <= goal
    return {"settings": s, "params": sum(p.numel() for p in template.parameters()), "results": summary,
            "steps_per_rep": {c.name: c.steps or s["steps"] for c in candidates},
            "monitor_kwargs": {c: harness.monitor_kwargs(MONITOR_KWARGS[c]) for c in configs if c in MONITOR_KWARGS}}


# ---- command line --------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = harness.base_parser(__doc__.split("\n")[0])
    parser.add_argument("--only", choices=("profile",), default=None,
                        help="profile: where the monitor's time goes")
    parser.add_argument("--model", choices=("resnet56", "mlp50"), action="append", help="default: both")
    parser.add_argument("--configs", default=None,
                        help="comma-separated configurations to time (default: all; baseline is always timed)")
    parser.add_argument("--batch", type=int, default=None, help="batch size of every model (default per model)")
    args = parser.parse_args(argv)
    device = harness.resolve_device(args.device)
    threads = harness.set_threads(args.threads)
    settings = model_settings(args.quick)
    for s in settings.values():
        if args.reps:
            s["reps"] = args.reps
        if args.steps:
            s["steps"] = args.steps
        if args.batch:
            s["batch"] = args.batch
    name = NAME if args.only is None else f"{NAME}_{args.only}"
    result = {
        "benchmark": name,
        "command": harness.command_line(),
        "date": harness.now(),
        "quick": args.quick,
        "machine": harness.machine_info(device),
        "threads": threads,
        "optimizer": "SGD(lr=0.01)",
        "models": {},
    }
    if args.only == "profile":
        from overhead_profile import monitor_breakdown, reduction_costs

        result["profile"] = {}
        for model_name in args.model or list(settings):
            s = settings[model_name]
            print(f"{model_name}: profile over {s['profile_steps']} steps per block", file=sys.stderr)
            result["profile"][model_name] = monitor_breakdown(s, device, s["profile_steps"])
            result["profile"][model_name]["reductions"] = reduction_costs(s, device, 3 if args.quick else 10)
        del result["models"]
        harness.write_result(name, result, args.out)
        return 0
    configs = list(MAIN_CONFIGS)
    if args.configs:
        wanted = {c.strip() for c in args.configs.split(",")}
        unknown = wanted - set(MAIN_CONFIGS)
        if unknown:
            parser.error(f"unknown configurations: {', '.join(sorted(unknown))}")
        configs = [c for c in MAIN_CONFIGS if c in wanted or c == "baseline"]
    for model_name in args.model or list(settings):
        result["models"][model_name] = run_model(model_name, settings[model_name], configs, device)
        for config, row in result["models"][model_name]["results"].items():
            print(f"{model_name} {config}: {row['median_ms']:.1f} ms/step, overhead {row['overhead_pct']:+.2f} %",
                  file=sys.stderr)
    harness.write_result(name, result, args.out)
    return 0


# ---- BENCHMARKS.md -------------------------------------------------------------------------

def _fmt_pct(value: float) -> str:
    return f"{value:+.1f} %"


def markdown_section(result: dict, profile: dict | None = None) -> str:
    """The BENCHMARKS.md section: one table per model, then the profile."""
    lines = [
        "## Overhead: what measuring gradients costs per training step",
        "",
        "Step = forward, cross-entropy, backward, SGD (lr 0.01, no momentum). Overhead = median over "
        "repetitions of the paired ratio candidate / baseline, minus 1, all in one process, interleaved. "
        "The monitor is used as its docstring says: `mon.step(loss=loss)` after backward, optimizer "
        "attached (update ratios measured). Goals on CPU: at most 3 % at every=1, at most 1 % at every=10 "
        "(both with the monitor's other defaults: one recorded step in ten is detailed, so every 10th step "
        "at every=1 and every 100th at every=10). A monitor whose work repeats every N steps is timed over "
        "a multiple of N steps per repetition (column steps/rep), so that each repetition holds its "
        "detailed steps in their real proportion.",
        "",
    ]
    for model_name, m in result["models"].items():
        s = m["settings"]
        shape = " x ".join(str(d) for d in (s["batch"], *s["input"]))
        lines += [f"### {model_name}: `{s['spec']}`, input {shape}, {m['params']:,} parameters, "
                  f"{s['reps']} repetitions", ""]
        rows = []
        for config, r in m["results"].items():
            goal = "" if r["goal_pct"] is None else f"<= {r['goal_pct']:.0f} %: " + ("pass" if r["pass"] else "**miss**")
            rows.append([r["label"], m.get("steps_per_rep", {}).get(config, s["steps"]), f"{r['median_ms']:.1f}",
                         "" if config == "baseline" else _fmt_pct(r["overhead_pct"]),
                         "" if config == "baseline" else f"{(r['ratio_min'] - 1) * 100:+.1f} to {(r['ratio_max'] - 1) * 100:+.1f} %",
                         goal])
        lines += [harness.markdown_table(["configuration", "steps/rep", "ms/step (median)", "overhead",
                                          "per-rep range", "goal"], rows), ""]
    lines += [f"Command: `{result['command']}`  ", f"Date: {result['date']}  ",
              f"Machine: {harness.describe_machine(result['machine'])}"]
    lines += ["", "Cockpit, BackPACK and the others side by side with the monitor: see *Peers* below."]
    if profile is not None:
        from overhead_profile import profile_section

        lines += ["", profile_section(profile)]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
