"""What a recorded step costs, timed two ways: against an unmonitored twin, and directly.

A recorded step is what ``GradientMonitor`` does on every step at ``every=1`` between its
detailed steps: the gradient norm of every layer and the loss, moved to the host once and turned
into a record. Here the monitor records every step and never a detailed one (``detail_every``
past the run). Beside it, Lightning's ``grad_norm(model, norm_type=2)`` on every step, and the
floor of any per-parameter gradient norm: one float32 ``torch._foreach_norm`` over the gradients,
which reads each once and nothing else (inexact where squares underflow or overflow, and no
per-layer grouping, transfer or record).

* overhead: the harness's median of paired ratios to an unmonitored twin (interleaved);
* direct: the monitor's own calls (``mon.step()`` and the record's completion in the optimizer's
  hook) and the ``grad_norm`` call, timed around them inside the step, as a share of the
  unmonitored step's median. On a machine shared with other jobs the paired ratio of whole steps
  swings by tens of percent; the direct figure times only the tool's own work.

    python benchmarks/recorded_step.py --clock cpu --threads 1
    python benchmarks/recorded_step.py --model mlp50 --quick
"""
from __future__ import annotations

import copy
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
from overhead import build_model, model_settings  # noqa: E402

NAME = "recorded_step"
MODELS = ("mlp50", "cifar10_3c3d", "transformer", "lstm", "resnet56")


class Stopwatch:
    """Seconds spent inside the wrapped calls, by the harness's clock (a call inside another once)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._depth = 0

    def wrap(self, fn: Callable) -> Callable:
        def timed(*args, **kwargs):
            if self._depth:
                return fn(*args, **kwargs)
            self._depth += 1
            start = harness.now_seconds()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += harness.now_seconds() - start
                self._depth -= 1
        return timed


def monitored(model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor,
              watch: Stopwatch) -> tuple[Callable[[], None], Callable[[], None]]:
    from gradhealth.monitor import GradientMonitor

    mon = GradientMonitor(model, optimizer=opt, history=16, detail_every=10**9)
    # the monitor's own work: its step() and the record's completion, which the optimizer's
    # post-hook runs (the hook calls the instance attribute, so wrapping it there times it)
    mon.step = watch.wrap(mon.step)
    mon._materialize = watch.wrap(mon._materialize)
    mon.attach()
    return harness.monitored_step(model, opt, x, y, mon), mon.detach


def one_read_step(model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor,
                  watch: Stopwatch) -> Callable[[], None]:
    """A step that reads every gradient once, by one float32 ``torch._foreach_norm`` (the floor)."""
    params = list(model.parameters())

    @watch.wrap
    def read() -> list[Tensor]:
        return torch._foreach_norm([p.grad for p in params if p.grad is not None], 2.0)

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        read()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def run_model(name: str, s: dict, device: torch.device) -> dict:
    torch.manual_seed(0)
    template = build_model(s).to(device)
    x, y = harness.make_batch(s["batch"], s["input"], device)
    if s.get("tokens"):
        x = torch.randint(0, s["tokens"], (s["batch"], *s["input"]), generator=torch.Generator().manual_seed(1)).to(device)
    copies = [copy.deepcopy(template) for _ in range(4)]
    opts = [harness.new_optimizer(m) for m in copies]
    watches = {"monitor_recorded": Stopwatch(), "lightning_grad_norm": Stopwatch(), "one_read": Stopwatch()}
    mon_step, detach = monitored(copies[1], opts[1], x, y, watches["monitor_recorded"])
    candidates = [harness.Candidate("baseline", harness.plain_step(copies[0], opts[0], x, y)),
                  harness.Candidate("monitor_recorded", mon_step),
                  harness.Candidate("lightning_grad_norm", harness.lightning_grad_norm_step(
                      copies[2], opts[2], x, y, wrap=watches["lightning_grad_norm"].wrap)),
                  harness.Candidate("one_read", one_read_step(copies[3], opts[3], x, y, watches["one_read"]))]
    print(f"{name}: batch {s['batch']}, {s['reps']} reps x {s['steps']} steps", file=sys.stderr)
    per_rep: dict[str, list[float]] = {c: [] for c in watches}
    times = _interleaved_with_watches(candidates, watches, per_rep, s, device)
    detach()
    summary = harness.summarize(times, "baseline")
    base_ms = summary["baseline"]["median_ms"]
    for config, watch_ms in per_rep.items():
        row = summary[config]
        row["direct_ms"] = statistics.median(watch_ms)
        row["direct_ms_range"] = [min(watch_ms), max(watch_ms)]
        row["direct_pct"] = row["direct_ms"] / base_ms * 100
    tensors = sum(1 for _ in template.parameters())
    return {"settings": s, "params": sum(p.numel() for p in template.parameters()), "tensors": tensors,
            "results": summary}


def _interleaved_with_watches(candidates: list[harness.Candidate], watches: dict[str, Stopwatch],
                              per_rep: dict[str, list[float]], s: dict, device: torch.device) -> dict[str, list[float]]:
    """``harness.interleaved``, reading each tool's stopwatch around its timed block (ms per step)."""
    for cand in candidates:
        for _ in range(s["warmup"]):
            cand.step()
    times: dict[str, list[float]] = {c.name: [] for c in candidates}
    for rep in range(s["reps"]):
        order = candidates if rep % 2 == 0 else list(reversed(candidates))
        for cand in order:
            for _ in range(s["rep_warmup"]):
                cand.step()
            watch = watches.get(cand.name)
            if watch is not None:
                watch.seconds = 0.0
            times[cand.name].append(harness.time_steps(cand.step, s["steps"], device))
            if watch is not None:
                per_rep[cand.name].append(watch.seconds / s["steps"] * 1e3)
        line = "  ".join(f"{n}={v[-1] * 1e3:.1f}ms" for n, v in times.items())
        print(f"  rep {rep + 1}/{s['reps']}: {line}", file=sys.stderr, flush=True)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = harness.base_parser(__doc__.split("\n")[0])
    parser.add_argument("--model", choices=MODELS, action="append", help="default: all")
    parser.add_argument("--batch", type=int, action="append", default=None,
                        help="batch size per --model, in the same order (default: each model's own)")
    args = parser.parse_args(argv)
    device = harness.resolve_device(args.device)
    threads = harness.set_threads(args.threads)
    clock = harness.use_clock(args.clock, device)
    settings = model_settings(args.quick)
    models = args.model or list(MODELS)
    result = {"benchmark": NAME, "command": harness.command_line(), "date": harness.now(), "quick": args.quick,
              "machine": harness.machine_info(device), "threads": threads, "clock": clock,
              "optimizer": "SGD(lr=0.01)", "models": {}}
    for i, model_name in enumerate(models):
        s = dict(settings[model_name])
        if args.reps:
            s["reps"] = args.reps
        if args.steps:
            s["steps"] = args.steps
        if args.batch and i < len(args.batch):
            s["batch"] = args.batch[i]
        result["models"][model_name] = run_model(model_name, s, device)
        for config, row in result["models"][model_name]["results"].items():
            if config != "baseline":
                print(f"{model_name} {config}: overhead {row['overhead_pct']:+.2f} % "
                      f"({(row['ratio_min'] - 1) * 100:+.1f} to {(row['ratio_max'] - 1) * 100:+.1f}), direct "
                      f"{row['direct_ms']:.2f} ms = {row['direct_pct']:.2f} % of the step", file=sys.stderr)
    harness.write_result(NAME, result, args.out)
    print(markdown_section(result))
    return 0


LABELS = {"monitor_recorded": "GradientMonitor recorded step",
          "lightning_grad_norm": "Lightning grad_norm(model, 2)",
          "one_read": "floor: one float32 torch._foreach_norm of the gradients"}


def markdown_section(result: dict) -> str:
    """The rows BENCHMARKS.md's overhead section shows for the recorded step."""
    rows = []
    for model_name, m in result["models"].items():
        s = m["settings"]
        base = m["results"]["baseline"]["median_ms"]
        for config, label in LABELS.items():
            r = m["results"].get(config)
            if r is None:  # a result written before this tool was timed
                continue
            rows.append([f"{model_name} (batch {s['batch']}, {m['tensors']} tensors)", label, f"{base:.1f}",
                         f"{r['overhead_pct']:+.1f} %",
                         f"{(r['ratio_min'] - 1) * 100:+.1f} to {(r['ratio_max'] - 1) * 100:+.1f} %",
                         f"{r['direct_ms']:.2f} ({r['direct_ms_range'][0]:.2f} to {r['direct_ms_range'][1]:.2f})",
                         f"{r['direct_pct']:.1f} %"])
    table = harness.markdown_table(["model", "tool", "baseline ms/step", "overhead (paired)", "per-rep range",
                                    "tool's own ms/step (range)", "own / baseline step"], rows)
    clock = "CPU time of the process" if result.get("clock") == "cpu" else "wall time"
    return "\n".join([table, "", *_against_the_floor(result), f"Command: `{result['command']}`  ",
                      f"Date: {result['date']}  ", f"Machine: {harness.describe_machine(result['machine'])}  ",
                      f"Steps timed by: {clock}"])


def _against_the_floor(result: dict) -> list[str]:
    """One sentence: each tool's own time as a multiple of one read of the gradients (the floor)."""
    parts = []
    for model_name, m in result["models"].items():
        floor = m["results"].get("one_read")
        if floor is None or not floor["direct_ms"]:
            continue
        ours = m["results"]["monitor_recorded"]["direct_ms"] / floor["direct_ms"]
        theirs = m["results"]["lightning_grad_norm"]["direct_ms"] / floor["direct_ms"]
        parts.append(f"{model_name} {ours:.2f}x (Lightning {theirs:.2f}x, the floor {floor['direct_pct']:.1f} % "
                     "of a step)")
    if not parts:
        return []
    return ["Each tool's own time as a multiple of the floor's (one float32 read of every gradient, "
            "inexact where squares underflow): " + "; ".join(parts) + ".", ""]


if __name__ == "__main__":
    raise SystemExit(main())
