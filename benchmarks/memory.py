"""What the monitor adds to a training run's peak memory, against the same run without it.

Each configuration runs in its own process (a process's peak resident memory only grows, so
configurations cannot share one): build the model, take a few training steps (forward,
cross-entropy, backward, SGD), and report

* on the CPU, the peak resident set size (``ru_maxrss``) minus the resident size before the first
  step: what training itself added, model and torch already loaded;
* on a GPU, ``torch.cuda.max_memory_allocated()`` minus the memory allocated before the first step.

The monitor's cost is that figure minus the baseline's, also given in copies of the parameters
(``parameter bytes``). The resident size also moves with the allocator's fragmentation and the
interpreter's own growth, so each process also counts, exactly, the most bytes of new tensors that
``mon.step()`` and the optimizer step hold at once (``NewTensorBytes``, a ``TorchDispatchMode``):
the goal is judged on that count. Configurations: ``baseline`` (no monitor), ``monitor_defaults``
(``GradientMonitor(model, optimizer=opt)``: one recorded step in ten detailed),
``monitor_detail1`` (everything every step: update ratios from one kept copy of the weights) and
``monitor_detail1_no_update`` (the same with ``update_ratio=False``: no copy). Goal: the monitor
adds at most one copy of the parameters, and none with ``update_ratio=False`` (up to the noise of
the allocator, stated as the spread of the baseline over its runs).

    python benchmarks/memory.py            # -> benchmarks/results/memory.json
    python benchmarks/memory.py --quick
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402

NAME = "memory"
CONFIGS = {
    "baseline": None,
    "monitor_defaults": {},
    "monitor_detail1": {"detail_every": 1},
    "monitor_detail1_no_update": {"detail_every": 1, "update_ratio": False},
}
LABELS = {
    "baseline": "no monitor (baseline)",
    "monitor_defaults": "GradientMonitor defaults (one step in ten detailed)",
    "monitor_detail1": "GradientMonitor, detail_every=1 (update ratios: one copy of the weights)",
    "monitor_detail1_no_update": "GradientMonitor, detail_every=1, update_ratio=False",
}
GOAL_COPIES = {"monitor_defaults": 1.0, "monitor_detail1": 1.0, "monitor_detail1_no_update": 0.0}


def model_settings(quick: bool) -> dict[str, dict]:
    models = {
        "mlp50": {"spec": "mlp:depth=50,width=256", "input": (64,), "batch": 128, "steps": 12, "runs": 3},
        "resnet56": {"spec": "resnet56", "input": (3, 32, 32), "batch": 16, "steps": 12, "runs": 3},
    }
    if quick:
        for s in models.values():
            s.update(steps=3, runs=1)
    return models


# ---- one configuration, in its own process --------------------------------------------------

def _resident_bytes() -> int:
    """The process's resident set size now (Linux: /proc/self/statm)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize()


class NewTensorBytes:
    """The peak bytes of the new tensors (not views of an input) that torch ops make inside the block.

    Exact and free of allocator noise, unlike the resident size: each new tensor counts from the
    op that makes it until it is freed (a weak reference's finalizer), and ``peak`` is the most
    alive at once; a tensor still alive at the end (a kept copy) counts to the end.
    """

    def __enter__(self) -> NewTensorBytes:
        import weakref

        import torch
        from torch.utils._python_dispatch import TorchDispatchMode

        counter = self
        self.live = self.peak = 0
        self.alive: dict[int, int] = {}  # storage address -> bytes, of the new tensors alive

        def freed(ptr: int) -> None:
            counter.live -= counter.alive.pop(ptr, 0)

        class Watch(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                out = func(*args, **kwargs)
                given = [*args, *kwargs.values()]  # out= tensors too: they are not new
                inputs = [a for a in given if isinstance(a, torch.Tensor)]
                inputs += [t for a in given if isinstance(a, (list, tuple)) for t in a if isinstance(t, torch.Tensor)]
                known = {t.untyped_storage().data_ptr() for t in inputs} | set(counter.alive)
                for o in out if isinstance(out, (list, tuple)) else [out]:
                    if isinstance(o, torch.Tensor) and o.untyped_storage().data_ptr() not in known:
                        ptr, nbytes = o.untyped_storage().data_ptr(), o.untyped_storage().nbytes()
                        known.add(ptr)
                        counter.alive[ptr] = nbytes
                        counter.live += nbytes
                        counter.peak = max(counter.peak, counter.live)
                        weakref.finalize(o, freed, ptr)
                return out

        self._mode = Watch()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._mode.__exit__(*exc)


def measure_child(spec: dict) -> dict:
    """Train a few steps with or without the monitor; the peak memory that training added."""
    import torch
    import torch.nn.functional as F

    import gradhealth
    from gradhealth.monitor import GradientMonitor

    torch.set_num_threads(1)
    device = torch.device(spec["device"])
    torch.manual_seed(0)
    model = gradhealth.create_model(spec["spec"]).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(spec["batch"], *spec["input"], device=device)
    y = torch.randint(0, 10, (spec["batch"],), device=device)
    kwargs = spec["kwargs"]
    mon = GradientMonitor(model, optimizer=opt, **kwargs).attach() if kwargs is not None else None
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = _resident_bytes()
    made_per_step = []
    for _ in range(spec["steps"]):
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        with NewTensorBytes() as made:
            if mon is not None:
                mon.step(loss=loss)
            opt.step()
        made_per_step.append(made.peak)
        opt.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        how = "torch.cuda.max_memory_allocated"
    else:
        # ru_maxrss is in KiB on Linux
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        how = "peak resident set size (ru_maxrss)"
    if mon is not None:
        records = len(mon.records)
        mon.detach()
    else:
        records = 0
    return {"added_bytes": peak - before, "param_bytes": param_bytes, "how": how, "records": records,
            "step_new_bytes": max(made_per_step)}


def run_child(spec: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                         check=False)
    if out.returncode:
        raise SystemExit(f"error: the measuring process failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---- all of them ----------------------------------------------------------------------------

def run_model(name: str, s: dict, device: str) -> dict:
    runs: dict[str, list[int]] = {c: [] for c in CONFIGS}
    step_new: dict[str, int] = {}
    param_bytes = 0
    how = ""
    for r in range(s["runs"]):
        order = list(CONFIGS) if r % 2 == 0 else list(CONFIGS)[::-1]
        for config in order:
            spec = {k: s[k] for k in ("spec", "input", "batch", "steps")} | {"device": device,
                                                                             "kwargs": CONFIGS[config]}
            got = run_child(spec)
            runs[config].append(got["added_bytes"])
            step_new[config] = got["step_new_bytes"]
            param_bytes, how = got["param_bytes"], got["how"]
            print(f"{name} {config}: +{got['added_bytes'] / 2**20:.2f} MiB", file=sys.stderr)
    base = statistics.median(runs["baseline"])
    results = {}
    for config, values in runs.items():
        added = statistics.median(values) - base
        goal = GOAL_COPIES.get(config)
        results[config] = {
            "label": LABELS[config],
            "training_added_mib": statistics.median(values) / 2**20,
            "runs_mib": [v / 2**20 for v in values],
            "monitor_mib": None if config == "baseline" else added / 2**20,
            "copies": None if config == "baseline" else added / param_bytes,
            "goal_copies": goal,
            # the most that mon.step() and the optimizer step held at once, in the step that held
            # most, beyond what the optimizer step alone holds (deterministic: one run suffices)
            "step_new_mib": None if config == "baseline" else (step_new[config] - step_new["baseline"]) / 2**20,
            "step_new_copies": None if config == "baseline" else (step_new[config] - step_new["baseline"]) / param_bytes,
        }
    spread = (max(runs["baseline"]) - min(runs["baseline"])) / 2**20
    return {"settings": s, "param_mib": param_bytes / 2**20, "how": how, "baseline_spread_mib": spread,
            "results": results}


def main(argv: list[str] | None = None) -> int:
    parser = harness.base_parser(__doc__.split("\n")[0])
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model", choices=("mlp50", "resnet56"), action="append", help="default: both")
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(measure_child(json.loads(args.child))))
        return 0
    device = harness.resolve_device(args.device)
    settings = model_settings(args.quick)
    result = {"benchmark": NAME, "command": harness.command_line(), "date": harness.now(), "quick": args.quick,
              "machine": harness.machine_info(device), "threads": 1, "models": {}}
    for name in args.model or list(settings):
        s = settings[name]
        if args.steps:
            s["steps"] = args.steps
        if args.reps:
            s["runs"] = args.reps
        result["models"][name] = run_model(name, s, device.type)
    harness.write_result(NAME, result, args.out)
    return 0


# ---- BENCHMARKS.md --------------------------------------------------------------------------

def markdown_section(result: dict) -> str:
    lines = [
        "## Memory: what the monitor adds to peak memory",
        "",
        "Each configuration in its own process: build the model, train a few steps (forward, cross-entropy, "
        "backward, SGD), and take the peak memory training added (CPU: peak resident set size minus the resident "
        "size before the first step; GPU: `torch.cuda.max_memory_allocated()` minus the memory allocated before "
        "it). The monitor's figure is that minus the baseline's (median over runs, the runs interleaved), also "
        "in copies of the parameters; the resident size also holds memory outside tensors (the interpreter's own "
        "growth, the allocator's fragmentation), so beside it stands an exact count: "
        "the most bytes of new tensors that `mon.step()` and the optimizer step (with the monitor's hook) held "
        "at once, in the step that held most, minus what the optimizer step holds alone (a `TorchDispatchMode` "
        "sees each tensor made, a weak reference when it is freed). Goal, judged on that count to within 0.1 "
        "of a copy (the norms' per-tensor scratch and the step's own small results): at most one copy of the "
        "parameters (the weights before the optimizer step, for the real update), none with "
        "`update_ratio=False`; the activation hooks keep one scratch tensor the size of the largest activation "
        "output on the CPU.",
        "",
    ]
    for name, m in result["models"].items():
        s = m["settings"]
        shape = " x ".join(str(d) for d in (s["batch"], *s["input"]))
        lines += [f"### {name}: `{s['spec']}`, input {shape}, parameters {m['param_mib']:.2f} MiB, "
                  f"{s['steps']} steps, {s['runs']} runs per configuration; baseline spread over its runs "
                  f"{m['baseline_spread_mib']:.2f} MiB", ""]
        rows = []
        for config, r in m["results"].items():
            goal = r["goal_copies"]
            verdict = ""
            if goal is not None and r.get("step_new_copies") is not None:
                # judged on the exact count; the resident size beside it also holds memory outside
                # tensors (the interpreter, the allocator's fragmentation)
                ok = r["step_new_copies"] <= goal + 0.1
                verdict = f"<= {goal:.0f}: " + ("pass" if ok else "**miss**")
            rows.append([r["label"], f"{r['training_added_mib']:.2f}",
                         " / ".join(f"{v:.2f}" for v in r["runs_mib"]),
                         "" if r["monitor_mib"] is None else f"{r['monitor_mib']:+.2f}",
                         "" if r["copies"] is None else f"{r['copies']:+.2f}",
                         "" if r.get("step_new_mib") is None else f"{r['step_new_mib']:.2f} ({r['step_new_copies']:.2f})",
                         verdict])
        lines += [harness.markdown_table(["configuration", "training added, MiB (median)", "runs, MiB",
                                          "monitor adds, MiB", "parameter copies", "held at once in a step, MiB (copies)",
                                          "goal (copies)"], rows), ""]
        lines += [f"Measured as: {m['how']}.", ""]
    lines += [f"Command: `{result['command']}`  ", f"Date: {result['date']}  ",
              f"Machine: {harness.describe_machine(result['machine'])}"]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
