"""Where GradientMonitor's time goes on a detailed step: each hook timed, the reductions one by one.

    python benchmarks/overhead.py --only profile    # -> benchmarks/results/overhead_profile.json

Run through ``overhead.py --only profile`` (same models, batches and command line); this module
holds the measurement and its BENCHMARKS.md section.
"""
from __future__ import annotations

import copy
import cProfile
import io
import pstats
import time
from collections import defaultdict
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import harness

import gradhealth

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


# Private methods of GradientMonitor and its parts (``_hooks``, ``_measures``, ``_assembly``)
# wrapped in timers, by their path from the monitor, with the part of the work each one is;
# a method a given version of the monitor does not have is skipped.
TIMED_METHODS = {
    "_hooks._on_root_forward": "forward pre-hook on the model (input finite flag)",
    "_on_optimizer_step": "optimizer post-hook (update norms, post-step norms, then the record)",
    "after_clip": "gradient norms after the optimizer used them (after_clip)",
    "_materialize": "record: one host transfer + StepRecord",
    "_hooks.take_forward_stats": "stack the forward statistics",
    "_measures.grads": "collect the .grad list",
    "_measures.per_layer": "per-layer grouping (index_add_, scatter_reduce_)",
    "_assembly.add": "build the StepRecord (Python)",
}


def _owner_of(mon, path: str):
    """The object that holds the method at ``path`` (dotted, from the monitor) and its name; None if absent."""
    *parts, name = path.split(".")
    owner = mon
    for part in parts:
        owner = getattr(owner, part, None)
    return (owner, name) if owner is not None and hasattr(owner, name) else None


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
    import gradhealth.monitor.measure as measure_module
    from gradhealth.monitor import GradientMonitor
    from gradhealth.monitor.structure import layout_of

    torch.manual_seed(0)
    template = gradhealth.create_model(s["spec"]).to(device)
    x, y = harness.make_batch(s["batch"], s["input"], device)
    copies = {name: copy.deepcopy(template) for name in ("detailed", "unmonitored", "recorded", "idle")}
    opts = {name: harness.new_optimizer(model) for name, model in copies.items()}
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
    make_layer_hook = mon._hooks._make_layer_hook

    def timed_layer_hook(name: str, module):
        part = "forward hooks on activations (5 to 6 reductions each)" if name in activation_names else \
            "forward hooks on weight layers (output extremes: finite or not)"
        return clock.wrap(part, make_layer_hook(name, module))

    mon._hooks._make_layer_hook = timed_layer_hook
    for path, part in TIMED_METHODS.items():
        found = _owner_of(mon, path)
        if found is not None:
            owner, method = found
            setattr(owner, method, clock.wrap(part, getattr(owner, method)))
    patched = {"fused_norms": measure_module.fused_norms} if hasattr(measure_module, "fused_norms") else {}
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

        measure_module.fused_norms = timed_fused_norms
    try:
        for m in monitors.values():
            m.attach()
        runs = {
            "detailed": _training_step(copies["detailed"], opts["detailed"], x, y, clock.wrap("mon.step()", mon.step)),
            "unmonitored": harness.plain_step(copies["unmonitored"], opts["unmonitored"], x, y),
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
            setattr(measure_module, name, fn)
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

    Per step: the activation statistics of every ReLU output (``ForwardTally.add_activation``,
    then its ``pieces``) and the
    fused gradient / weight norms (``tensor_norms.fused_norms``: float32 on the CPU with a float64
    re-measure where float32 cannot hold a norm, float64 on a GPU) and max |grad|
    (``tensor_norms.max_abs``), each activation timed on a representative tensor of every shape and
    multiplied by how often that shape occurs; beside them the plain float32 and float64 norms.
    """
    from gradhealth.layers.activations import rule_for_module
    from gradhealth.monitor.forward_tally import ForwardTally
    from gradhealth.tensor_norms import NORM_DTYPE, fused_norms, max_abs

    def activation_stats(rule, module, out) -> dict[str, Tensor]:
        tally = ForwardTally()
        tally.add_activation("act", rule, module, None, out)
        return tally.pieces(out.device, NORM_DTYPE)

    torch.manual_seed(0)
    model = gradhealth.create_model(s["spec"]).to(device)
    x, y = harness.make_batch(s["batch"], s["input"], device)
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
        now = _ms(lambda: activation_stats(rule, module, out), device, repeats)
        fast = _ms(lambda: _relu_sums_f32(out), device, repeats)
        act_now += now * count
        act_f32 += fast * count
        shapes.append({"shape": list(shape), "count": count, "ms_now": now, "ms_f32": fast})
    grads = [p.grad.detach() for p in model.parameters() if p.grad is not None]
    weights = [p.detach() for p in model.parameters()]
    kept = [torch.empty_like(w) for w in weights]
    norms = {
        "grad L2 (fused_norms)": _ms(lambda: fused_norms(grads), device, repeats),
        "grad L2, float32 (_foreach_norm)": _ms(lambda: torch._foreach_norm(grads, 2), device, repeats),
        "grad L2, float64 (_foreach_norm)": _ms(lambda: torch._foreach_norm(grads, 2, dtype=NORM_DTYPE), device, repeats),
        "grad max (max_abs)": _ms(lambda: max_abs(grads), device, repeats),
        "weight L2 (fused_norms)": _ms(lambda: fused_norms(weights), device, repeats),
        "parameter snapshot, fresh memory (_foreach_mul by 1.0)": _ms(lambda: torch._foreach_mul(weights, 1.0), device, repeats),
        "parameter snapshot into kept memory (_foreach_copy_)": _ms(lambda: torch._foreach_copy_(kept, weights), device, repeats),
    }
    return {"activation_shapes": shapes, "activations_ms_now": act_now, "activations_ms_f32": act_f32,
            "norms_ms": norms}


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
                     ("parameter snapshot, fresh memory (_foreach_mul by 1.0)", None),
                     ("parameter snapshot into kept memory (_foreach_copy_)", None)]
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
