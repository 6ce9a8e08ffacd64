"""What measuring gradients costs: step time with GradientMonitor and with other tools, against none.

Two models: the CIFAR ResNet-56 (3x32x32 input) and a 50-layer ReLU MLP
(``mlp:depth=50,width=256``, 64 input features). One step is forward + cross-entropy + backward
+ SGD (lr 0.01, no momentum: the only setting in which Cockpit's Alpha quantity runs its fast
path). Each configuration has its own copy of the model (same initial weights), optimizer and
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
  and moves the histogram to the host (``HistogramHooks`` below);
* ``cockpit``: Cockpit's "economy" configuration (run with ``--only cockpit`` from an
  environment where ``cockpit-for-pytorch`` imports; it is not a dependency of gradhealth).

Figure: overhead % = (median over repetitions of the paired ratio candidate / baseline - 1) * 100.
Goals on CPU: at most 3 % at every=1, at most 1 % at every=10. ``--only profile`` measures
where the monitor's time goes instead, per part, by timing each of its hooks (``overhead_profile.py``).

    python benchmarks/overhead.py                   # -> benchmarks/results/overhead.json
    python benchmarks/overhead.py --only profile    # -> benchmarks/results/overhead_profile.json
    python benchmarks/overhead.py --quick
    PYTHONPATH=src /path/to/cockpit-venv/bin/python benchmarks/overhead.py --only cockpit
"""
from __future__ import annotations

import copy
import functools
import math
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
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
    "cockpit": "Cockpit, economy configuration",
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


def make_batch(s: dict, device: torch.device) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(s["batch"], *s["input"], generator=gen).to(device)
    y = torch.randint(0, 10, (s["batch"],), generator=gen).to(device)
    return x, y


def new_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.01)


# ---- the reference tools -------------------------------------------------------------------

class HistogramHooks:
    """What wandb.watch(log="gradients", log_freq=1) computes for every parameter on every step.

    Per gradient, in the hook that autograd calls when it is ready: a copy, a check for finite
    values, min and max read on the host, a 64-bin ``torch.histc`` between them, and the counts
    and bin edges moved to the host (wandb then logs them; that upload is not measured here).
    """

    def __init__(self, model: nn.Module, bins: int = 64):
        self.bins = bins
        self.latest: dict[str, tuple[list[float], list[float]]] = {}
        self.handles = [
            p.register_hook(functools.partial(self._on_grad, name))
            for name, p in model.named_parameters() if p.requires_grad
        ]

    def _on_grad(self, name: str, grad: Tensor) -> None:
        flat = grad.detach().clone().reshape(-1).float()
        finite = torch.isfinite(flat)
        if flat.numel() == 0 or not bool(finite.any()):
            return
        if not bool(finite.all()):
            flat = flat[finite]
        low, high = flat.min().item(), flat.max().item()
        if low == high:
            self.latest[name] = ([float(flat.numel())], [low, high])
            return
        counts = torch.histc(flat, bins=self.bins, min=low, max=high).cpu().tolist()
        edges = torch.linspace(low, high, self.bins + 1).tolist()
        self.latest[name] = (counts, edges)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def plain_step(model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor) -> Callable[[], None]:
    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def every_multiple(steps: int, period: int) -> int:
    return -(-steps // period) * period


def build_candidate(config: str, template: nn.Module, x: Tensor, y: Tensor, steps: int,
                    use_converter: bool = False) -> tuple[harness.Candidate, Callable[[], None]]:
    """A candidate with its own model copy, and a function that takes its instrumentation off.

    A monitor whose work repeats every N steps (``every``, ``detail_every``) is timed over
    ``steps`` rounded up to a multiple of N per repetition, so that every repetition holds the
    same number of recorded and detailed steps (any N consecutive steps hold exactly one).
    """
    model = copy.deepcopy(template)
    opt = new_optimizer(model)
    if config == "baseline":
        return harness.Candidate(config, plain_step(model, opt, x, y), LABELS[config]), lambda: None
    if config.startswith("monitor"):
        from gradhealth.monitor import GradientMonitor

        kwargs = harness.monitor_kwargs(MONITOR_KWARGS[config])
        mon = GradientMonitor(model, optimizer=opt, **kwargs)
        mon.attach()

        def step() -> None:
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            mon.step(loss=loss)
            opt.step()
            opt.zero_grad(set_to_none=True)

        period = math.lcm(mon.every, getattr(mon, "detail_every", 1))
        return harness.Candidate(config, step, LABELS[config], steps=every_multiple(steps, period)), mon.detach
    if config == "lightning_grad_norm":
        from lightning.pytorch.utilities import grad_norm

        latest: list[dict] = []

        def step() -> None:
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            latest[:] = [grad_norm(model, norm_type=2)]
            opt.step()
            opt.zero_grad(set_to_none=True)

        return harness.Candidate(config, step, LABELS[config]), lambda: None
    if config == "wandb_hist":
        hooks = HistogramHooks(model)
        return harness.Candidate(config, plain_step(model, opt, x, y), LABELS[config]), hooks.remove
    if config == "cockpit":
        return cockpit_candidate(model, opt, x, y, use_converter)
    raise SystemExit(f"error: unknown configuration {config!r}.")


def cockpit_candidate(model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor, use_converter: bool):
    """Cockpit's economy configuration, used as its README shows (BackPACK-extended model and loss).

    ``use_converter``: BackPACK's torch.fx converter, which it needs for graphs with in-place
    residual additions.
    """
    from backpack import extend
    from cockpit import Cockpit
    from cockpit.utils.configuration import configuration

    model = extend(model, use_converter=use_converter)
    loss_fn = extend(nn.CrossEntropyLoss())
    individual_loss_fn = nn.CrossEntropyLoss(reduction="none")
    cockpit = Cockpit(model.parameters(), quantities=configuration("economy"))
    counter = [0]

    def step() -> None:
        global_step = counter[0]
        out = model(x)
        loss = loss_fn(out, y)
        losses = individual_loss_fn(out, y)
        info = {"batch_size": x.shape[0], "individual_losses": losses, "loss": loss, "optimizer": opt}
        with cockpit(global_step, info=info):
            loss.backward(create_graph=cockpit.create_graph(global_step))
        opt.step()
        opt.zero_grad(set_to_none=True)
        counter[0] += 1
        # Cockpit keeps every tracked value in memory; drop the old ones so memory stays flat
        if len(cockpit.output) > 4:
            for key in sorted(cockpit.output)[:-2]:
                del cockpit.output[key]

    return harness.Candidate("cockpit", step, LABELS["cockpit"]), lambda: None


# ---- measuring -----------------------------------------------------------------------------

def run_model(name: str, s: dict, configs: list[str], device: torch.device, use_converter: bool = False) -> dict:
    torch.manual_seed(0)
    template = gradhealth.create_model(s["spec"]).to(device)
    x, y = make_batch(s, device)
    candidates, removers = [], []
    for config in configs:
        cand, remove = build_candidate(config, template, x, y, s["steps"], use_converter)
        candidates.append(cand)
        removers.append(remove)
    print(f"{name}: batch {s['batch']}, {s['reps']} reps x {s['steps']} steps, configs {', '.join(configs)}",
          file=sys.stderr)
    try:
        times = harness.interleaved(candidates, reps=s["reps"], steps=s["steps"], device=device,
                                    warmup=s["warmup"], rep_warmup=s["rep_warmup"])
    finally:
        for remove in removers:
            remove()
    summary = harness.summarize(times, "baseline")
    for config, row in summary.items():
        goal = GOALS_PCT.get(config)
        row["label"] = LABELS[config]
        row["goal_pct"] = goal
        row["pass"] = None if goal is None else row["overhead_pct"] <= goal
    return {"settings": s, "params": sum(p.numel() for p in template.parameters()), "results": summary,
            "steps_per_rep": {c.name: c.steps or s["steps"] for c in candidates},
            "monitor_kwargs": {c: harness.monitor_kwargs(MONITOR_KWARGS[c]) for c in configs if c in MONITOR_KWARGS}}


# ---- command line --------------------------------------------------------------------------

def run_third_party(model_name: str, s: dict, configs: list[str], device: torch.device) -> dict:
    """Cockpit as its README uses it, then with BackPACK's converter; a tool that cannot run is a result."""
    errors = []
    for use_converter in (False, True):
        try:
            outcome = run_model(model_name, s, configs, device, use_converter)
        except Exception as exc:  # noqa: BLE001 - any failure of the third-party tool is the finding
            how = "extend(model, use_converter=True)" if use_converter else "extend(model)"
            errors.append(f"with {how}: {type(exc).__name__}: {str(exc).strip()}"[:300])
            continue
        outcome["use_converter"] = use_converter
        if errors:
            outcome["first_try_error"] = errors[0]
        return outcome
    return {"settings": s, "error": "; ".join(errors)}


def main(argv: list[str] | None = None) -> int:
    parser = harness.base_parser(__doc__.split("\n")[0])
    parser.add_argument("--only", choices=("cockpit", "profile"), default=None,
                        help="cockpit: only baseline against Cockpit (from an environment that has "
                             "cockpit-for-pytorch); profile: where the monitor's time goes")
    parser.add_argument("--model", choices=("resnet56", "mlp50"), action="append", help="default: both")
    args = parser.parse_args(argv)
    device = harness.resolve_device(args.device)
    threads = harness.set_threads(args.threads)
    settings = model_settings(args.quick)
    if args.only == "cockpit":
        # Cockpit's steps take tens of times longer: fewer of them, still >= 5 repetitions in a full run
        for s in settings.values():
            s.update(reps=3 if args.quick else 5, steps=1 if args.quick else 2, warmup=1, rep_warmup=1)
    for s in settings.values():
        if args.reps:
            s["reps"] = args.reps
        if args.steps:
            s["steps"] = args.steps
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
    configs = list(MAIN_CONFIGS) if args.only is None else ["baseline", "cockpit"]
    if args.only == "cockpit":
        try:
            import backpack  # noqa: F401
            import cockpit  # noqa: F401
        except Exception as exc:  # noqa: BLE001 - any failure to import is the finding
            result["error"] = f"cockpit-for-pytorch does not import: {type(exc).__name__}: {exc}"
            harness.write_result(name, result, args.out)
            return 0  # that it does not import is the result, recorded in the JSON
        import importlib.metadata as md

        result["versions"] = {pkg: md.version(pkg) for pkg in ("cockpit-for-pytorch", "backpack-for-pytorch")}
    for model_name in args.model or list(settings):
        s = settings[model_name]
        if args.only is None:
            result["models"][model_name] = run_model(model_name, s, configs, device)
        else:
            outcome = run_third_party(model_name, s, configs, device)
            result["models"][model_name] = outcome
            if "error" in outcome:
                print(f"{model_name}: failed: {outcome['error']}", file=sys.stderr)
                continue
        for config, row in result["models"][model_name]["results"].items():
            print(f"{model_name} {config}: {row['median_ms']:.1f} ms/step, overhead {row['overhead_pct']:+.2f} %",
                  file=sys.stderr)
    harness.write_result(name, result, args.out)
    return 0


# ---- BENCHMARKS.md -------------------------------------------------------------------------

def _fmt_pct(value: float) -> str:
    return f"{value:+.1f} %"


def markdown_section(result: dict, cockpit: dict | None = None, profile: dict | None = None) -> str:
    """The BENCHMARKS.md section: one table per model, Cockpit's rows merged in, then the profile."""
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
        cm = (cockpit or {}).get("models", {}).get(model_name)
        if cm and "results" in cm:
            r = cm["results"]["cockpit"]
            b = cm["results"]["baseline"]
            cs = cm["settings"]
            rows.append([f"{r['label']} (own run: baseline {b['median_ms']:.1f} ms there, {cs['reps']} repetitions)",
                         cs["steps"], f"{r['median_ms']:.1f}",
                         _fmt_pct(r["overhead_pct"]),
                         f"{(r['ratio_min'] - 1) * 100:+.1f} to {(r['ratio_max'] - 1) * 100:+.1f} %", ""])
        elif cm and "error" in cm:
            rows.append([LABELS["cockpit"], "", "did not run (see below)", "", "", ""])
        lines += [harness.markdown_table(["configuration", "steps/rep", "ms/step (median)", "overhead",
                                          "per-rep range", "goal"], rows), ""]
    lines += [f"Command: `{result['command']}`  ", f"Date: {result['date']}  ",
              f"Machine: {harness.describe_machine(result['machine'])}"]
    if cockpit is not None:
        lines += ["", "Cockpit: " + cockpit_note(cockpit)]
    if profile is not None:
        from overhead_profile import profile_section

        lines += ["", profile_section(profile)]
    return "\n".join(lines)


def cockpit_note(cockpit: dict) -> str:
    if "error" in cockpit:
        return f"not measured: {cockpit['error']}"
    versions = ", ".join(f"{k} {v}" for k, v in cockpit.get("versions", {}).items())
    failed = [f"{m}: {c['error']}" for m, c in cockpit["models"].items() if "error" in c]
    text = (f"measured in a separate environment ({versions}), baseline and Cockpit interleaved in that process; "
            f"command `{cockpit['command']}`, {cockpit['date']}.")
    if failed:
        text += " Did not run on " + "; ".join(failed)
    return text


if __name__ == "__main__":
    raise SystemExit(main())
