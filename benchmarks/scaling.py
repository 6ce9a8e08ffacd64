"""How the monitor's cost grows: against the number of layers, and against the number of parameters.

Cost = median over repetitions of the paired difference (monitored step - unmonitored step), in
ms, for ReLU MLPs (batch 128, 64 input features): depth 10, 20, 40, 80 at width 256, and width
64, 128, 256, 512 at depth 20. The monitor is ``GradientMonitor(model, optimizer=opt,
detail_every=1)``: every part (gradient, weight and update norms, activation statistics) on
every step, used as its docstring says. A least-squares line is fitted to
cost against layers and against parameters (slope, intercept, R^2), and a line to
log(cost) against log(size), whose slope is the growth exponent: 1 is linear, 2 quadratic.

Wall time on a real machine grows faster than the work once the weights outgrow a cache, for
the unmonitored step as much as for the monitor, so the verdict sets the cost's exponent beside
the baseline step's, and the work itself is counted as well: the ATen operators the monitor
adds to one step (torch.profiler), which is what it costs on a GPU, where each one is a launch.

A third sweep counts parameter tensors: GPT-style transformers of many small blocks (width 32,
12 parameter tensors a block) from ~250 to ~2,000 tensors, with the monitor recording the
gradient norms of every step and nothing else (``detail_every`` past the run), the recorded step
of every=1. There the per-tensor host work (Python, one operator dispatch per tensor) is what
grows: its cost is set against the step's and fitted against the number of tensors, and
``mon.step()`` itself is timed on its own.

    python benchmarks/scaling.py
    python benchmarks/scaling.py --quick
    python benchmarks/scaling.py --only tensors --clock cpu --threads 1
"""
from __future__ import annotations

import copy
import math
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402

import gradhealth  # noqa: E402

NAME = "scaling"
BATCH, IN_FEATURES = 128, 64


def sweep_settings(quick: bool) -> dict:
    if quick:
        return {"depths": [10, 20, 40], "depth_width": 128, "widths": [64, 128, 256], "width_depth": 10,
                "reps": 3, "steps": 3, "warmup": 1, "batch": 32}
    return {"depths": [10, 20, 40, 80], "depth_width": 256, "widths": [64, 128, 256, 512], "width_depth": 20,
            "reps": 7, "steps": 20, "warmup": 3, "batch": BATCH}


def measure_point(depth: int, width: int, s: dict, device: torch.device) -> dict:
    from gradhealth.monitor import GradientMonitor
    from gradhealth.monitor.structure import layout_of

    torch.manual_seed(0)
    template = gradhealth.create_model(f"mlp:depth={depth},width={width}").to(device)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(s["batch"], IN_FEATURES, generator=gen).to(device)
    y = torch.randint(0, 10, (s["batch"],), generator=gen).to(device)

    plain = copy.deepcopy(template)
    plain_opt = torch.optim.SGD(plain.parameters(), lr=0.01)

    def plain_step() -> None:
        F.cross_entropy(plain(x), y).backward()
        plain_opt.step()
        plain_opt.zero_grad(set_to_none=True)

    model = copy.deepcopy(template)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    # every part on every step, so that each step costs the same and the fit sees all of it
    mon = GradientMonitor(model, optimizer=opt, history=16, **harness.monitor_kwargs({"detail_every": 1}))

    def monitored_step() -> None:
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        mon.step(loss=loss)
        opt.step()
        opt.zero_grad(set_to_none=True)

    with mon:
        times = harness.interleaved(
            [harness.Candidate("baseline", plain_step), harness.Candidate("monitored", monitored_step)],
            reps=s["reps"], steps=s["steps"], device=device, warmup=s["warmup"], progress=False)
        added_ops = aten_ops(monitored_step) - aten_ops(plain_step)
    layout = layout_of(template)
    layers, hooked_activations = len(layout.layer_names), len(layout.activations)
    costs = [(m - b) * 1e3 for m, b in zip(times["monitored"], times["baseline"])]
    row = {
        "depth": depth,
        "width": width,
        "layers": layers,
        "activation_modules": hooked_activations,
        "params": sum(p.numel() for p in template.parameters()),
        "baseline_ms": statistics.median(times["baseline"]) * 1e3,
        "monitored_ms": statistics.median(times["monitored"]) * 1e3,
        "cost_ms": statistics.median(costs),
        "cost_ms_per_rep": costs,
        "added_ops": added_ops,
    }
    print(f"  depth {depth:3d} width {width:4d}: {row['params']:>10,} params, baseline {row['baseline_ms']:.1f} ms, "
          f"cost {row['cost_ms']:.2f} ms, {added_ops} operators added", file=sys.stderr, flush=True)
    return row


TENSOR_WIDTH, TENSOR_SEQ, TENSOR_BATCH = 32, 16, 16


def tensor_settings(quick: bool) -> dict:
    if quick:
        return {"depths": [10, 20, 40], "reps": 3, "steps": 3, "warmup": 1}
    return {"depths": [20, 40, 80, 160], "reps": 9, "steps": 10, "warmup": 3}


def measure_tensor_point(depth: int, s: dict, device: torch.device) -> dict:
    """A recorded step (gradient norms only) on a transformer of ``depth`` small blocks, against none."""
    from gradhealth.monitor import GradientMonitor

    torch.manual_seed(0)
    spec = f"transformer:depth={depth},width={TENSOR_WIDTH},heads=2,task=classify,max_len={TENSOR_SEQ}"
    template = gradhealth.create_model(spec).to(device)
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (TENSOR_BATCH, TENSOR_SEQ), generator=gen).to(device)
    y = torch.randint(0, 10, (TENSOR_BATCH,), generator=gen).to(device)
    plain = copy.deepcopy(template)
    plain_candidate = harness.Candidate("baseline", harness.plain_step(plain, harness.new_optimizer(plain), x, y))
    model = copy.deepcopy(template)
    opt = harness.new_optimizer(model)
    mon = GradientMonitor(model, optimizer=opt, history=16, detail_every=10**9)
    in_step = []

    def recorded_step() -> None:
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        start = harness.now_seconds()
        mon.step(loss=loss)
        in_step.append(harness.now_seconds() - start)
        opt.step()
        opt.zero_grad(set_to_none=True)

    with mon:
        times = harness.interleaved([plain_candidate, harness.Candidate("recorded", recorded_step)],
                                    reps=s["reps"], steps=s["steps"], device=device, warmup=s["warmup"],
                                    progress=False)
        added_ops = aten_ops(recorded_step) - aten_ops(plain_candidate.step)
    costs = [(m - b) * 1e3 for m, b in zip(times["recorded"], times["baseline"])]
    ratios = [m / b for m, b in zip(times["recorded"], times["baseline"])]
    row = {
        "depth": depth,
        "tensors": sum(1 for _ in template.parameters()),
        "params": sum(p.numel() for p in template.parameters()),
        "baseline_ms": statistics.median(times["baseline"]) * 1e3,
        "recorded_ms": statistics.median(times["recorded"]) * 1e3,
        "cost_ms": statistics.median(costs),
        "overhead_pct": (statistics.median(ratios) - 1) * 100,
        "overhead_pct_range": [(min(ratios) - 1) * 100, (max(ratios) - 1) * 100],
        "mon_step_ms": statistics.median(in_step) * 1e3,
        "added_ops": added_ops,
    }
    print(f"  depth {depth:3d}: {row['tensors']:5d} tensors, baseline {row['baseline_ms']:.1f} ms, cost "
          f"{row['cost_ms']:.2f} ms ({row['overhead_pct']:+.1f} %), mon.step {row['mon_step_ms']:.2f} ms, "
          f"{added_ops} operators added", file=sys.stderr, flush=True)
    return row


def aten_ops(step) -> int:
    """How many ATen operators one call of ``step`` runs (nested ones included)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    return sum(1 for event in prof.events() if event.name.startswith("aten::"))


def _exponent(xs: list[float], ys: list[float]) -> float | None:
    """The slope of log(y) against log(x); None where some y is not positive (noise above it)."""
    if not all(v > 0 for v in ys):
        return None
    return harness.linear_fit([math.log(v) for v in xs], [math.log(v) for v in ys])["slope"]


def fits(rows: list[dict], key: str, cost: str = "cost_ms") -> dict:
    xs = [float(r[key]) for r in rows]
    ys = [r[cost] for r in rows]
    out = {"x": key, "linear": harness.linear_fit(xs, ys), "ops": harness.linear_fit(xs, [r["added_ops"] for r in rows]),
           "exponent": _exponent(xs, ys), "baseline_exponent": _exponent(xs, [r["baseline_ms"] for r in rows]),
           "ops_exponent": _exponent(xs, [float(r["added_ops"]) for r in rows])}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = harness.base_parser(__doc__.split("\n")[0])
    parser.add_argument("--only", choices=("tensors",), default=None,
                        help="tensors: only the sweep over the number of parameter tensors")
    args = parser.parse_args(argv)
    device = harness.resolve_device(args.device)
    threads = harness.set_threads(args.threads)
    clock = harness.use_clock(args.clock, device)
    s = sweep_settings(args.quick)
    t = tensor_settings(args.quick)
    for settings in (s, t):
        if args.reps:
            settings["reps"] = args.reps
        if args.steps:
            settings["steps"] = args.steps
    result = {
        "benchmark": NAME,
        "command": harness.command_line(),
        "date": harness.now(),
        "quick": args.quick,
        "machine": harness.machine_info(device),
        "threads": threads,
        "clock": clock,
        "settings": s,
        "tensor_settings": t,
    }
    print("tensor sweep: transformers of many small blocks, recorded step", file=sys.stderr)
    tensor_rows = [measure_tensor_point(d, t, device) for d in t["depths"]]
    # fitted on mon.step() timed directly: the paired difference of whole steps is noisier than it
    result["tensor_sweep"] = {"rows": tensor_rows, "fit": fits(tensor_rows, "tensors", cost="mon_step_ms")}
    f = result["tensor_sweep"]["fit"]
    print(f"tensor_sweep: mon.step = {f['linear']['slope'] * 1e3:.4g} us per tensor + {f['linear']['intercept']:.3g} ms, "
          f"R^2 {f['linear']['r2']:.3f}", file=sys.stderr)
    if args.only == "tensors":
        harness.write_result(f"{NAME}_tensors", result, args.out)
        return 0
    print(f"depth sweep at width {s['depth_width']}", file=sys.stderr)
    depth_rows = [measure_point(d, s["depth_width"], s, device) for d in s["depths"]]
    print(f"width sweep at depth {s['width_depth']}", file=sys.stderr)
    width_rows = [measure_point(s["width_depth"], w, s, device) for w in s["widths"]]
    result["depth_sweep"] = {"rows": depth_rows, "fit": fits(depth_rows, "layers")}
    result["width_sweep"] = {"rows": width_rows, "fit": fits(width_rows, "params")}
    for sweep in ("depth_sweep", "width_sweep"):
        f = result[sweep]["fit"]
        print(f"{sweep}: cost = {f['linear']['slope']:.4g} ms per {f['x'][:-1]} + {f['linear']['intercept']:.3g} ms, "
              f"R^2 {f['linear']['r2']:.3f}; {_verdict(f)}", file=sys.stderr)
    harness.write_result(NAME, result, args.out)
    return 0


# An exponent this far above 1 (or above the baseline step's) is within what noise and the
# fitted range of four sizes can show; past it growth is called faster than linear.
EXPONENT_TOLERANCE = 0.15


def _verdict(fit: dict) -> str:
    exponent, baseline, ops = fit.get("exponent"), fit.get("baseline_exponent"), fit.get("ops_exponent")
    if exponent is None or baseline is None:
        return "not decided (a cost at or below zero: noise larger than the cost)"
    unit, per = {"layers": ("layer", 1), "tensors": ("tensor", 1)}.get(fit["x"], ("million parameters", 1e6))
    counted = (f"; operators added: {fit['ops']['slope'] * per:.4g} per {unit}, exponent {ops:.2f}"
               if ops is not None else "")
    times = f"time exponent {exponent:.2f}, the unmonitored step's {baseline:.2f}{counted}"
    if exponent <= 1 + EXPONENT_TOLERANCE:
        return f"linear or better ({times})"
    if exponent <= baseline + EXPONENT_TOLERANCE and (ops is None or ops <= 1 + EXPONENT_TOLERANCE):
        return f"linear work; the time grows as the unmonitored step's does ({times})"
    return f"**faster than linear** ({times})"


def tensor_sweep_section(result: dict) -> list[str]:
    """The BENCHMARKS.md rows of the sweep over parameter tensors (empty without it)."""
    data = result.get("tensor_sweep")
    if not data:
        return []
    t = result["tensor_settings"]
    rows = [[r["depth"], r["tensors"], f"{r['params']:,}", f"{r['baseline_ms']:.1f}", f"{r['cost_ms']:.2f}",
             f"{r['overhead_pct']:+.1f} %",
             f"{r['overhead_pct_range'][0]:+.1f} to {r['overhead_pct_range'][1]:+.1f} %",
             f"{r['mon_step_ms']:.2f}", f"{r['mon_step_ms'] / r['baseline_ms'] * 100:.1f} %", r["added_ops"]]
            for r in data["rows"]]
    fit = fits(data["rows"], "tensors", cost="mon_step_ms")
    lin = fit["linear"]
    clock = "CPU time of the process" if result.get("clock") == "cpu" else "wall time"
    return ["", "### Parameter tensors: recorded steps of transformers of many small blocks", "",
            f"GPT-style transformers (width {TENSOR_WIDTH}, 2 heads, 12 parameter tensors a block, batch "
            f"{TENSOR_BATCH} x {TENSOR_SEQ} tokens), GradientMonitor recording every step's gradient norms and no "
            f"detailed step; {t['reps']} repetitions of {t['steps']} steps, timed by {clock}. Overhead = median of "
            "the paired ratios to an unmonitored twin; `mon.step()` = the monitor's own call on each recorded step, "
            "timed inside the step (the record is finished in the optimizer's hook, in the overhead column only).",
            "",
            harness.markdown_table(["depth", "parameter tensors", "parameters", "baseline ms", "cost ms", "overhead",
                                    "per-rep range", "mon.step() ms", "mon.step() / step", "operators added"], rows),
            "",
            f"Fit of `mon.step()`: {lin['slope'] * 1e3:.3g} us per tensor {'-' if lin['intercept'] < 0 else '+'} "
            f"{abs(lin['intercept']):.3g} ms, R^2 = {lin['r2']:.3f}; operators added: "
            f"{fit['ops']['slope']:.3g} per tensor. Verdict: {_verdict(fit)}."]


def markdown_section(result: dict) -> str:
    s = result["settings"]
    lines = [
        "## Scaling: the monitor's cost against layers and parameters",
        "",
        f"Cost = median over {s['reps']} repetitions ({s['steps']} steps each) of the paired difference, monitored "
        f"step minus unmonitored step, GradientMonitor with every part on every step (`detail_every=1`); ReLU MLPs, batch "
        f"{s['batch']}, {IN_FEATURES} input features. Goal: the cost grows linearly, not worse. Wall time grows "
        "faster than the work once the weights outgrow a cache, for the unmonitored step too, so the verdict sets "
        "the cost's growth exponent beside the step's and counts the work: the ATen operators the monitor adds "
        "to a step (torch.profiler; on a GPU each is a kernel launch).",
    ]
    for sweep, title in (("depth_sweep", f"Depth sweep at width {s['depth_width']}"),
                         ("width_sweep", f"Width sweep at depth {s['width_depth']}")):
        data = result[sweep]
        rows = [[r["depth"], r["width"], r["layers"], f"{r['params']:,}", f"{r['baseline_ms']:.1f}",
                 f"{r['cost_ms']:.2f}", f"{r['cost_ms'] / r['baseline_ms'] * 100:+.0f} %", r.get("added_ops", "")]
                for r in data["rows"]]
        fit = data["fit"]
        lin = fit["linear"]
        unit = "layer" if fit["x"] == "layers" else "million parameters"
        slope = lin["slope"] if fit["x"] == "layers" else lin["slope"] * 1e6
        lines += ["", f"### {title}", "",
                  harness.markdown_table(["depth", "width", "layers with parameters", "parameters", "baseline ms",
                                          "monitor cost ms", "cost / baseline", "operators added per step"], rows),
                  "",
                  f"Fit: cost = {slope:.4g} ms per {unit} {'-' if lin['intercept'] < 0 else '+'} {abs(lin['intercept']):.3g} ms, R^2 = {lin['r2']:.3f}. "
                  f"Verdict: {_verdict(fit)}."]
    lines += tensor_sweep_section(result)
    lines += ["", f"Command: `{result['command']}`  ", f"Date: {result['date']}  ",
              f"Machine: {harness.describe_machine(result['machine'])}"]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
