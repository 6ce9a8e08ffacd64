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
  on every ``detail_every``-th step); ``monitor_every10``: ``every=10``;
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
where the monitor's time goes instead, per part, by timing each of its hooks.

    python benchmarks/overhead.py                   # -> benchmarks/results/overhead.json
    python benchmarks/overhead.py --only profile    # -> benchmarks/results/overhead_profile.json
    python benchmarks/overhead.py --quick
    PYTHONPATH=src /path/to/cockpit-venv/bin/python benchmarks/overhead.py --only cockpit
"""
from __future__ import annotations

import copy
import cProfile
import functools
import io
import math
import pstats
import sys
import time
from collections import defaultdict
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


# ---- where the monitor's time goes ---------------------------------------------------------

class _Clock:
    """Accumulates wall-clock seconds per part; a part timed inside another is filed under both."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.stack: list[str] = []

    def wrap(self, part: str, fn: Callable, nested_only: bool = False) -> Callable:
        """``fn`` timed; ``nested_only``: timed only when called inside another timed part."""

        def timed(*args, **kwargs):
            if nested_only and not self.stack:
                return fn(*args, **kwargs)
            key = f"{self.stack[-1]} / {part}" if self.stack else part
            self.stack.append(key)
            harness.synchronize(self.device)
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                harness.synchronize(self.device)
                self.seconds[key] += time.perf_counter() - start
                self.calls[key] += 1
                self.stack.pop()

        return timed

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()


# Private methods of GradientMonitor wrapped in timers, with the part of the work each one is;
# a method a given version of the monitor does not have is skipped.
TIMED_METHODS = {
    "_on_root_forward": "forward pre-hook on the model (input finite flag)",
    "_on_optimizer_pre": "optimizer pre-hook",
    "_on_optimizer_post": "optimizer post-hook (update norms, post-step norms, then the record)",
    "after_clip": "gradient norms after the optimizer used them (after_clip)",
    "_materialize": "record: one host transfer + StepRecord",
    "_take_forward_stats": "stack the forward statistics",
    "_grads": "collect the .grad list",
    "_per_layer": "per-layer grouping (index_add_, scatter_reduce_)",
    "_build_record": "build the StepRecord (Python)",
}


def _training_step(model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor,
                   monitor_step: Callable) -> Callable[[], None]:
    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        monitor_step(loss=loss)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def monitor_breakdown(s: dict, device: torch.device, steps: int, blocks: int = 2) -> dict:
    """Milliseconds per step in each part of GradientMonitor on a detailed step, and a cProfile.

    The monitor measured is ``GradientMonitor(model, optimizer=opt, detail_every=1)``: every part
    on every step. Its hooks and the helpers they call are wrapped in timers on this one instance
    (the module-level helpers are patched for the duration): the source is not changed. Timed in
    alternating blocks with it: an unmonitored twin; a monitor that records every step but
    details none after the first (``detail_every`` huge); and one whose hooks are attached but
    that records no step after the first (``every`` huge). What no timer sees (PyTorch's slower
    module call path when hooks are registered, cache effects) is the monitored step minus the
    unmonitored one minus the timed parts.
    """
    import gradhealth.monitor.monitor as monitor_module
    from gradhealth.monitor import GradientMonitor
    from gradhealth.monitor.structure import layout_of

    torch.manual_seed(0)
    template = gradhealth.create_model(s["spec"]).to(device)
    x, y = make_batch(s, device)
    copies = {name: copy.deepcopy(template) for name in ("detailed", "unmonitored", "recorded", "idle")}
    opts = {name: new_optimizer(model) for name, model in copies.items()}
    monitors = {
        "detailed": GradientMonitor(copies["detailed"], optimizer=opts["detailed"], **harness.monitor_kwargs({"detail_every": 1})),
        "recorded": GradientMonitor(copies["recorded"], optimizer=opts["recorded"],
                                    **harness.monitor_kwargs({"detail_every": 10**9})),
        "idle": GradientMonitor(copies["idle"], optimizer=opts["idle"], every=10**9),
    }
    mon = monitors["detailed"]
    clock = _Clock(device)
    activation_names = {n for n, _, _ in layout_of(template).activations}

    # the hooks keep the bound methods they are given at attach(): wrap them before attaching
    make_layer_hook = mon._make_layer_hook

    def timed_layer_hook(name: str):
        part = "forward hooks on activations (5 reductions each)" if name in activation_names else \
            "forward hooks on weight layers (output finite flag)"
        return clock.wrap(part, make_layer_hook(name))

    mon._make_layer_hook = timed_layer_hook
    for method, part in TIMED_METHODS.items():
        if hasattr(mon, method):
            setattr(mon, method, clock.wrap(part, getattr(mon, method)))
    patched = {"fused_norms": monitor_module.fused_norms} if hasattr(monitor_module, "fused_norms") else {}
    if patched:
        first = layout_of(copies["detailed"]).params[0]
        fused = patched["fused_norms"]
        timed_by_kind = {}

        def timed_fused_norms(tensors):
            # which tensors: the weights themselves, the gradients, or something computed (update deltas)
            ptr = tensors[0].data_ptr() if tensors else None
            kind = "weights" if ptr == first.data_ptr() else \
                "gradients" if first.grad is not None and ptr == first.grad.data_ptr() else "update deltas"
            label = f"fused_norms of the {kind}, L2"
            if label not in timed_by_kind:
                # module-level: the twins' monitors call it too, outside any timed part of this one
                timed_by_kind[label] = clock.wrap(label, fused, nested_only=True)
            return timed_by_kind[label](tensors)

        monitor_module.fused_norms = timed_fused_norms
    try:
        for m in monitors.values():
            m.attach()
        runs = {
            "detailed": _training_step(copies["detailed"], opts["detailed"], x, y, clock.wrap("mon.step()", mon.step)),
            "unmonitored": plain_step(copies["unmonitored"], opts["unmonitored"], x, y),
            "recorded": _training_step(copies["recorded"], opts["recorded"], x, y, monitors["recorded"].step),
            "idle": _training_step(copies["idle"], opts["idle"], x, y, monitors["idle"].step),
        }
        for _ in range(1 if steps <= 3 else 3):
            for fn in runs.values():
                fn()
        clock.reset()
        seconds = dict.fromkeys(runs, 0.0)
        for block in range(blocks):
            for which in (list(runs) if block % 2 == 0 else list(reversed(runs))):
                seconds[which] += harness.time_steps(runs[which], steps, device) * steps
        n = blocks * steps
        parts = {part: {"ms_per_step": sec / n * 1e3, "calls_per_step": clock.calls[part] / n}
                 for part, sec in clock.seconds.items()}

        # cProfile of mon.step() alone (timers still in place), to name the functions inside it
        profiler = cProfile.Profile()
        model, opt = copies["detailed"], opts["detailed"]
        for _ in range(steps):
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            profiler.enable()
            mon.step(loss=loss)
            profiler.disable()
            opt.step()
            opt.zero_grad(set_to_none=True)
    finally:
        for m in monitors.values():
            m.detach()
        for name, fn in patched.items():
            setattr(monitor_module, name, fn)
    buf = io.StringIO()
    pstats.Stats(profiler, stream=buf).sort_stats("tottime").print_stats(15)

    timed_top = sum(v["ms_per_step"] for k, v in parts.items() if " / " not in k)
    layout = layout_of(template)
    ms = {k: v / n * 1e3 for k, v in seconds.items()}
    return {
        "model": s["spec"],
        "batch": s["batch"],
        "steps": n,
        "step_ms": ms,
        "ms_in_timed_parts": timed_top,
        "ms_unattributed": ms["detailed"] - ms["unmonitored"] - timed_top,
        "layers": len(layout.layer_names),
        "parameter_tensors": len(layout.params),
        "activation_modules": len(layout.activations),
        "parts": parts,
        "cprofile_mon_step_top": [line for line in buf.getvalue().splitlines() if line.strip()][:30],
    }


def _ms(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    fn()
    harness.synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    harness.synchronize(device)
    return (time.perf_counter() - start) / repeats * 1e3


def _relu_sums_f32(x: Tensor) -> Tensor:
    """ReLU statistics as they could be taken: float32 reductions, one mask, dead units from a max."""
    off = x <= 0
    per_unit_max = x.amax(dim=[0, *range(2, x.dim())])
    return torch.stack([x.sum(), torch.linalg.vector_norm(x).square(), torch.count_nonzero(off),
                        torch.count_nonzero(per_unit_max <= 0)]).double()


def reduction_costs(s: dict, device: torch.device, repeats: int) -> dict:
    """The monitor's own reductions on this model's real tensors, against cheaper float32 forms.

    Per step: the activation statistics of every ReLU output (``stats.activation_sums``) and the
    fused gradient / weight norms (``stats.fused_norms``: float32 on the CPU with a float64
    re-measure where float32 cannot hold a norm, float64 on a GPU) and max |grad|
    (``stats.max_abs``), each activation timed on a representative tensor of every shape and
    multiplied by how often that shape occurs; beside them the plain float32 and float64 norms.
    """
    from gradhealth.layers.activations import rule_for_module
    from gradhealth.monitor.stats import NORM_DTYPE, activation_sums, fused_norms, max_abs

    torch.manual_seed(0)
    model = gradhealth.create_model(s["spec"]).to(device)
    x, y = make_batch(s, device)
    outputs: dict[tuple, list] = {}
    handles = []
    for module in model.modules():
        rule = rule_for_module(module)
        if rule is not None and rule.name == "relu":
            def keep(mod, inp, out, rule=rule):
                entry = outputs.setdefault((tuple(out.shape), type(mod).__name__), [mod, rule, out.detach().clone(), 0])
                entry[3] += 1
            handles.append(module.register_forward_hook(keep))
    F.cross_entropy(model(x), y).backward()
    for handle in handles:
        handle.remove()
    act_now = act_f32 = 0.0
    shapes = []
    for (shape, _), (module, rule, out, count) in outputs.items():
        now = _ms(lambda: activation_sums(rule, module, None, out), device, repeats)
        fast = _ms(lambda: _relu_sums_f32(out), device, repeats)
        act_now += now * count
        act_f32 += fast * count
        shapes.append({"shape": list(shape), "count": count, "ms_now": now, "ms_f32": fast})
    grads = [p.grad.detach() for p in model.parameters() if p.grad is not None]
    weights = [p.detach() for p in model.parameters()]
    norms = {
        "grad L2 (fused_norms)": _ms(lambda: fused_norms(grads), device, repeats),
        "grad L2, float32 (_foreach_norm)": _ms(lambda: torch._foreach_norm(grads, 2), device, repeats),
        "grad L2, float64 (_foreach_norm)": _ms(lambda: torch._foreach_norm(grads, 2, dtype=NORM_DTYPE), device, repeats),
        "grad max (max_abs)": _ms(lambda: max_abs(grads), device, repeats),
        "weight L2 (fused_norms)": _ms(lambda: fused_norms(weights), device, repeats),
        "parameter snapshot (_foreach_mul by 1.0)": _ms(lambda: torch._foreach_mul(weights, 1.0), device, repeats),
    }
    return {"activation_shapes": shapes, "activations_ms_now": act_now, "activations_ms_f32": act_f32,
            "norms_ms": norms}


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
        "(both with the monitor's other defaults). A monitor whose work repeats every 10 steps is timed over "
        "a multiple of 10 steps per repetition (column steps/rep).",
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
        lines += ["", profile_section(profile)]
    return "\n".join(lines)


def profile_section(result: dict) -> str:
    """Where a detailed step's time goes, per model."""
    lines = ["### Where the monitor's time goes", "",
             "A detailed step (`detail_every=1`: every part on every step): each hook of one monitor, and the "
             "helpers inside them, wrapped in timers (wall clock per step; indented rows are part of the row "
             "above). \"Not in any hook\" is the monitored step minus an unmonitored twin timed in alternating "
             "blocks, minus the timed parts: PyTorch's slower module call path once hooks are registered, cache "
             "effects, and noise."]
    for model_name, p in result["profile"].items():
        ms = p["step_ms"]
        base = ms["unmonitored"]
        lines += ["", f"{model_name} (`{p['model']}`, batch {p['batch']}: {p['layers']} layers, "
                  f"{p['parameter_tensors']} parameter tensors, {p['activation_modules']} activation modules; "
                  f"{p['steps']} steps of each kind):", "",
                  harness.markdown_table(["part", "ms per step", "calls per step"], profile_rows(p)),
                  "",
                  "Whole steps, timed in the same alternating blocks (few steps: noisier than the overhead "
                  "tables above, which are the measurement; the per-part timings are direct): " + "; ".join(
                      f"{label} {ms[key]:.1f} ms ({(ms[key] / base - 1) * 100:+.1f} %)" for key, label in (
                          ("detailed", "detailed step with timers"),
                          ("recorded", "recorded step without detail (`detail_every` large)"),
                          ("idle", "hooks attached, step not recorded (`every` large)"))
                  ) + f"; unmonitored {base:.1f} ms."]
        red = p.get("reductions")
        if red:
            rows = [[f"ReLU statistics, {sh['count']} x {tuple(sh['shape'])}", f"{sh['ms_now'] * sh['count']:.2f}",
                     f"{sh['ms_f32'] * sh['count']:.2f}"] for sh in red["activation_shapes"]]
            rows.append(["all ReLU statistics of one step", f"{red['activations_ms_now']:.2f}",
                         f"{red['activations_ms_f32']:.2f}"])
            norms = red["norms_ms"]
            pairs = [("grad L2 (fused_norms)", ("grad L2, float32 (_foreach_norm)", "grad L2, float64 (_foreach_norm)")),
                     ("grad max (max_abs)", None),
                     ("weight L2 (fused_norms)", None),
                     ("parameter snapshot (_foreach_mul by 1.0)", None)]
            for now, alts in pairs:
                if alts and all(a in norms for a in alts):
                    rows.append([now, f"{norms[now]:.2f}", f"{norms[alts[0]]:.2f} / {norms[alts[1]]:.2f}"])
                elif now in norms:
                    rows.append([now, f"{norms[now]:.2f}", ""])
            lines += ["", "The same reductions on this model's tensors, one at a time (ms per step); activation "
                      "rows compare with bare float32 sums, the gradient norm with plain float32 and float64 "
                      "norms (float32 alone overflows above ~1e19 and underflows below ~1e-19):", "",
                      harness.markdown_table(["reduction", "monitor", "bare float32 form / float64"], rows)]
    lines += ["", f"Command: `{result['command']}`  ", f"Date: {result['date']}  ",
              f"Machine: {harness.describe_machine(result['machine'])}"]
    return "\n".join(lines)


def profile_rows(p: dict) -> list[list[str]]:
    """Top-level parts by cost, each followed by the parts timed inside it."""
    parts = p["parts"]
    rows = []

    def add(prefix: str, depth: int) -> None:
        children = [k for k in parts if k.startswith(prefix) and " / " not in k[len(prefix):]] if prefix else \
            [k for k in parts if " / " not in k]
        for key in sorted(children, key=lambda k: -parts[k]["ms_per_step"]):
            label = key.rsplit(" / ", 1)[-1]
            rows.append([("&nbsp;&nbsp;" * 2 * depth) + label, f"{parts[key]['ms_per_step']:.3f}",
                         f"{parts[key]['calls_per_step']:.0f}"])
            inner = [k for k in parts if k.startswith(key + " / ") and " / " not in k[len(key) + 3:]]
            add(key + " / ", depth + 1)
            if inner:
                rest = parts[key]["ms_per_step"] - sum(parts[k]["ms_per_step"] for k in inner)
                rows.append([("&nbsp;&nbsp;" * 2 * (depth + 1)) + "the rest of it (not timed on its own)",
                             f"{rest:.3f}", ""])

    add("", 0)
    rows.append(["not in any hook (monitored - unmonitored - timed parts; below zero where noise is larger)",
                 f"{p['ms_unattributed']:.3f}", ""])
    return rows


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
