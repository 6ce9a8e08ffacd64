"""GradientMonitor beside its peers: step time of each tool against one unmonitored step, and what each gives.

Two models: the 50-layer ReLU MLP (``mlp:depth=50,width=256``, 64 input features, batch 128) and
the CIFAR-10 3C3D net of the Cockpit paper (Schneider et al., 2021, after DeepOBS: three
convolutions and three dense layers, 895,210 parameters; synthetic 3x32x32 input, batch 64). One
step is forward + cross-entropy + backward + SGD (lr 0.01, no momentum). Each configuration has
its own copy of the model (same initial weights), optimizer and instrumentation, set up once; all
are timed interleaved in one process against one unmonitored baseline (``harness.interleaved``):

* GradientMonitor with its defaults (every=1), with every=10, and with detail_every=1 (everything
  every step), driven as ``overhead.py`` drives it (``harness.monitor_candidate``);
* Lightning's ``grad_norm(model, norm_type=2)`` after every backward;
* Cockpit's "economy" and "business" configurations, every step, on a BackPACK-extended model and
  loss as Cockpit's README shows (``extend(model)``, ``extend(CrossEntropyLoss())``, individual
  losses in ``info``); BackPACK's torch.fx converter is tried when plain ``extend`` fails;
* a wandb.watch-style hook: a 64-bin ``torch.histc`` of every parameter's gradient every step
  (``harness.HistogramHooks``; no wandb).

Cockpit (cockpit-for-pytorch) and BackPACK (backpack-for-pytorch) are not dependencies of
gradhealth: ``make bench`` installs them into ``.venv-bench``. Without them their rows say so.

    python benchmarks/peers.py                 # -> benchmarks/results/peers.json
    python benchmarks/peers.py --quick
"""
from __future__ import annotations

import copy
import importlib.metadata as md
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402

import gradhealth  # noqa: E402

NAME = "peers"
MONITOR_KWARGS = {
    "monitor_every1": {},
    "monitor_every10": {"every": 10},
    "monitor_detail1": {"detail_every": 1},
}
LABELS = {
    "baseline": "no measurement (baseline)",
    "monitor_every1": "gradhealth GradientMonitor, defaults (every=1)",
    "monitor_every10": "gradhealth GradientMonitor, every=10",
    "monitor_detail1": "gradhealth GradientMonitor, detail_every=1 (everything every step)",
    "lightning_grad_norm": "Lightning grad_norm(model, 2) every step",
    "cockpit_economy": "Cockpit, economy configuration, every step",
    "cockpit_business": "Cockpit, business configuration, every step",
    "wandb_hist": "wandb.watch-style 64-bin gradient histograms every step",
}
CONFIGS = tuple(LABELS)
PEER_PACKAGES = ("cockpit-for-pytorch", "backpack-for-pytorch", "lightning")

# What each tool gives, by quantity. A cell says how the tool gives it; "" means it does not.
# Sources: gradhealth's StepRecord (monitor/records.py); Lightning utilities/grads.py; Cockpit's
# quantities/ and utils/configuration.py; wandb's watch (log="gradients").
TOOLS = ("gradhealth", "Lightning grad_norm", "Cockpit economy", "Cockpit business", "wandb.watch")
CAPABILITIES = [
    ("gradient norm per layer", ["per module", "per parameter tensor", "per parameter tensor (GradNorm)",
                                 "per parameter tensor (GradNorm)", ""]),
    ("global gradient norm", ["yes", "yes (total)", "", "", ""]),
    ("gradient norm after clipping", ["yes (after_clip)", "", "", "", ""]),
    ("max |gradient| per layer", ["yes (detailed steps)", "", "", "", "histogram range"]),
    ("gradient histogram", ["", "", "whole model (GradHist1d)", "whole model (GradHist1d)", "per parameter tensor"]),
    ("weight norm per layer", ["yes (detailed steps)", "", "distance from init (Distance)",
                               "distance from init (Distance)", ""]),
    ("update size / update ratio", ["||dw|| / ||w|| per layer (detailed steps)", "",
                                    "||dw|| per tensor (UpdateSize)", "||dw|| per tensor (UpdateSize)", ""]),
    ("activation saturation, dead units", ["per activation module (detailed steps)", "", "", "", ""]),
    ("where NaN/Inf first showed (input, layer, loss, gradient)", ["yes", "a NaN norm per tensor", "", "",
                                                                   "non-finite values skipped"]),
    ("loss", ["yes", "", "yes (Loss)", "yes (Loss)", ""]),
    ("gradient noise / batch-size tests", ["", "", "NormTest, InnerTest, OrthoTest",
                                           "NormTest, InnerTest, OrthoTest", ""]),
    ("step-size fit along the update (alpha)", ["", "", "Alpha", "Alpha", ""]),
    ("curvature: Hessian trace, TIC", ["", "", "", "HessTrace, TICDiag", ""]),
    ("diagnosis and remedies from the numbers", ["findings + remedies", "", "plots (instruments)",
                                                 "plots (instruments)", "dashboards"]),
]


# ---- the models ----------------------------------------------------------------------------

def cifar10_3c3d(num_classes: int = 10) -> nn.Sequential:
    """The 3C3D net of DeepOBS / the Cockpit paper: 895,210 parameters on 3x32x32 input.

    TensorFlow's "same" max-pooling (3x3, stride 2) pads one row and column at the bottom right;
    after a ReLU a zero pad is the same as TensorFlow's -inf pad, so ZeroPad2d + MaxPool2d gives
    the paper's 28 -> 14, 12 -> 6, 6 -> 3 feature maps with modules BackPACK knows.
    """

    def pool() -> list[nn.Module]:
        return [nn.ZeroPad2d((0, 1, 0, 1)), nn.MaxPool2d(3, stride=2)]

    return nn.Sequential(
        nn.Conv2d(3, 64, 5), nn.ReLU(), *pool(),
        nn.Conv2d(64, 96, 3), nn.ReLU(), *pool(),
        nn.Conv2d(96, 128, 3, padding=1), nn.ReLU(), *pool(),
        nn.Flatten(),
        nn.Linear(128 * 3 * 3, 512), nn.ReLU(),
        nn.Linear(512, 256), nn.ReLU(),
        nn.Linear(256, num_classes),
    )


def model_settings(quick: bool) -> dict[str, dict]:
    """Per model: how it is built, its input, and repetition counts (Cockpit's steps are the long ones)."""
    models = {
        "mlp50": {"spec": "mlp:depth=50,width=256", "input": (64,), "batch": 128,
                  "reps": 3, "steps": 10, "cockpit_steps": 1, "warmup": 1, "rep_warmup": 0},
        "cifar10_3c3d": {"spec": "Cockpit paper's CIFAR-10 3C3D", "input": (3, 32, 32), "batch": 64,
                         "reps": 3, "steps": 10, "cockpit_steps": 1, "warmup": 1, "rep_warmup": 0},
    }
    # one Cockpit step on the MLP holds 128 per-example gradients of 3.2 M parameters and takes
    # tens of seconds on one thread: one timed step of it per repetition, three repetitions
    if quick:
        for s in models.values():
            s.update(reps=2, steps=10)
    return models


def build_model(name: str, s: dict) -> nn.Module:
    return cifar10_3c3d() if name == "cifar10_3c3d" else gradhealth.create_model(s["spec"])


# ---- the candidates ------------------------------------------------------------------------

def cockpit_candidate(config: str, model: nn.Module, x: Tensor, y: Tensor,
                      steps: int) -> tuple[harness.Candidate, Callable[[], None], dict]:
    """Cockpit every step with one of its configurations, set up as its README shows.

    Plain ``extend(model)`` first; BackPACK's torch.fx converter (needed for graphs it cannot
    follow module by module) where one step with it fails. Returns what was used, for the result.
    """
    from backpack import extend
    from cockpit import Cockpit
    from cockpit.utils.configuration import configuration

    label = config.split("_", 1)[1]
    errors = []
    for use_converter in (False, True):
        extended = extend(copy.deepcopy(model), use_converter=use_converter)
        loss_fn = extend(nn.CrossEntropyLoss())
        individual_loss_fn = nn.CrossEntropyLoss(reduction="none")
        opt = harness.new_optimizer(extended)
        quantities = configuration(label)
        cockpit = Cockpit(extended.parameters(), quantities=quantities)
        counter = [0]

        def step(extended=extended, loss_fn=loss_fn, cockpit=cockpit, opt=opt, counter=counter) -> None:
            global_step = counter[0]
            out = extended(x)
            loss = loss_fn(out, y)
            info = {"batch_size": x.shape[0], "individual_losses": individual_loss_fn(out, y), "loss": loss,
                    "optimizer": opt}
            with cockpit(global_step, info=info):
                loss.backward(create_graph=cockpit.create_graph(global_step))
            opt.step()
            opt.zero_grad(set_to_none=True)
            counter[0] += 1

        try:
            step()
        except Exception as exc:  # noqa: BLE001 - a failure of the third-party tool is the finding
            how = "extend(model, use_converter=True)" if use_converter else "extend(model)"
            errors.append(f"with {how}: {type(exc).__name__}: {str(exc).strip()}"[:300])
            continue
        setup = {"use_converter": use_converter, "quantities": [type(q).__name__ for q in quantities]}
        if errors:
            setup["first_try_error"] = errors[0]
        return harness.Candidate(config, step, LABELS[config], steps=steps), lambda: None, setup
    raise RuntimeError("; ".join(errors))


def build_candidate(config: str, template: nn.Module, x: Tensor, y: Tensor,
                    s: dict) -> tuple[harness.Candidate, Callable[[], None], dict]:
    """A candidate with its own model copy, the function that takes its instrumentation off, its set-up."""
    model = copy.deepcopy(template)
    opt = harness.new_optimizer(model)
    none = lambda: None  # noqa: E731
    if config == "baseline":
        return harness.Candidate(config, harness.plain_step(model, opt, x, y), LABELS[config]), none, {}
    if config in MONITOR_KWARGS:
        kwargs = harness.monitor_kwargs(MONITOR_KWARGS[config])
        cand, remove = harness.monitor_candidate(config, LABELS[config], model, opt, x, y, s["steps"], kwargs)
        return cand, remove, {"monitor_kwargs": kwargs}
    if config == "lightning_grad_norm":
        return harness.Candidate(config, harness.lightning_grad_norm_step(model, opt, x, y), LABELS[config]), none, {}
    if config == "wandb_hist":
        hooks = harness.HistogramHooks(model)
        return harness.Candidate(config, harness.plain_step(model, opt, x, y), LABELS[config]), hooks.remove, {}
    if config.startswith("cockpit"):
        return cockpit_candidate(config, model, x, y, s["cockpit_steps"])
    raise SystemExit(f"error: unknown configuration {config!r}.")


# ---- measuring -----------------------------------------------------------------------------

def run_model(name: str, s: dict, configs: list[str], device: torch.device) -> dict:
    torch.manual_seed(0)
    template = build_model(name, s).to(device)
    x, y = harness.make_batch(s["batch"], s["input"], device)
    candidates, removers, setups, failed = [], [], {}, {}
    for config in configs:
        try:
            cand, remove, setup = build_candidate(config, template, x, y, s)
        except Exception as exc:  # noqa: BLE001 - a tool that cannot run here is a result, not a crash
            failed[config] = f"{type(exc).__name__}: {str(exc).strip()}"[:400]
            print(f"{name} {config}: did not run: {failed[config]}", file=sys.stderr)
            continue
        candidates.append(cand)
        removers.append(remove)
        setups[config] = setup
    print(f"{name}: batch {s['batch']}, {s['reps']} reps, configs {', '.join(c.name for c in candidates)}",
          file=sys.stderr)
    summary = harness.time_against_baseline(candidates, removers, reps=s["reps"], steps=s["steps"], device=device,
                                            baseline="baseline", warmup=s["warmup"], rep_warmup=s["rep_warmup"])
    for config, row in summary.items():
        row["label"] = LABELS[config]
    return {"settings": s, "params": sum(p.numel() for p in template.parameters()), "results": summary,
            "steps_per_rep": {c.name: c.steps or s["steps"] for c in candidates},
            "setup": setups, "did_not_run": failed}


def versions() -> dict[str, str | None]:
    out = {}
    for pkg in PEER_PACKAGES:
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def main(argv: list[str] | None = None) -> int:
    parser = harness.base_parser(__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("mlp50", "cifar10_3c3d"), action="append", help="default: both")
    parser.add_argument("--config", choices=CONFIGS[1:], action="append",
                        help="only these against the baseline (default: all)")
    args = parser.parse_args(argv)
    device = harness.resolve_device(args.device)
    # one thread by default: the figures are ratios, and a shared machine's other cores stay free
    threads = harness.set_threads(args.threads or 1)
    settings = model_settings(args.quick)
    for s in settings.values():
        if args.reps:
            s["reps"] = args.reps
        if args.steps:
            s["steps"] = args.steps
    configs = ["baseline", *(args.config or CONFIGS[1:])]
    result = {
        "benchmark": NAME,
        "command": harness.command_line(),
        "date": harness.now(),
        "quick": args.quick,
        "machine": harness.machine_info(device),
        "threads": threads,
        "optimizer": "SGD(lr=0.01)",
        "versions": versions(),
        "capabilities": {"tools": list(TOOLS), "rows": [[q, *cells] for q, cells in CAPABILITIES]},
        "models": {},
    }
    for model_name in args.model or list(settings):
        result["models"][model_name] = run_model(model_name, settings[model_name], configs, device)
        for config, row in result["models"][model_name]["results"].items():
            print(f"{model_name} {config}: {row['median_ms']:.1f} ms/step, x{row['ratio']:.2f}", file=sys.stderr)
    harness.write_result(NAME, result, args.out)
    return 0


# ---- BENCHMARKS.md -------------------------------------------------------------------------

def markdown_section(result: dict) -> str:
    """The BENCHMARKS.md section: one timing table per model, then what each tool gives."""
    v = result.get("versions", {})
    peers = ", ".join(f"{k} {ver}" for k, ver in v.items() if ver) or "none installed"
    lines = [
        "## Peers: GradientMonitor beside Lightning, Cockpit and wandb-style histograms",
        "",
        "Every tool on its own copy of the model, all timed in one process, interleaved, against one "
        "unmonitored step; the figure is the median over repetitions of the paired ratio tool / baseline "
        "(1.00 = free). Step = forward, cross-entropy, backward, SGD (lr 0.01, no momentum). Cockpit runs "
        "every quantity of its configuration on every step, on a BackPACK-extended model and loss; its "
        "steps are long, so fewer of them are timed per repetition (column steps/rep). "
        f"Versions: {peers}.",
        "",
    ]
    for model_name, m in result["models"].items():
        s = m["settings"]
        shape = " x ".join(str(d) for d in (s["batch"], *s["input"]))
        lines += [f"### {model_name}: {s['spec'] if model_name != 'mlp50' else '`' + s['spec'] + '`'}, "
                  f"input {shape}, {m['params']:,} parameters, {s['reps']} repetitions", ""]
        rows = []
        for config, r in m["results"].items():
            note = ""
            if m.get("setup", {}).get(config, {}).get("use_converter"):
                note = "BackPACK's fx converter"
            rows.append([r["label"], m["steps_per_rep"].get(config, s["steps"]), f"{r['median_ms']:.1f}",
                         "" if config == "baseline" else f"x{r['ratio']:.2f}",
                         "" if config == "baseline" else f"x{r['ratio_min']:.2f} to x{r['ratio_max']:.2f}", note])
        for config, why in m.get("did_not_run", {}).items():
            rows.append([LABELS[config], "", "did not run", "", "", why])
        lines += [harness.markdown_table(["tool", "steps/rep", "ms/step (median)", "time vs baseline",
                                          "per-rep range", "note"], rows), ""]
    machine = result["machine"]
    load = (machine.get("load_average_at_start") or [0.0])[0]
    if load > machine["usable_cores"]:
        lines += [f"Measured on a shared machine under load (load average {load:.1f} on {machine['usable_cores']} "
                  "cores at the start): the per-repetition range beside each median says how far to trust it.", ""]
    caps = result["capabilities"]
    lines += ["### What each tool gives", "",
              harness.markdown_table(["quantity", *caps["tools"]], caps["rows"]), "",
              "\"Detailed steps\": by default one recorded step in ten (`detail_every=10`); `detail_every=1` "
              "gives them every step at the cost in the table above.", "",
              f"Command: `{result['command']}`  ", f"Date: {result['date']}  ",
              f"Machine: {harness.describe_machine(result['machine'])}"]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
