"""What every benchmark here shares: the machine, paired interleaved timing, results on disk.

The method: every candidate is timed against a baseline in the same process, in the same
repetition, one after the other, with the order reversed on every other repetition so that
neither side always runs on a warmer (or busier) machine. A repetition times several steps after
a warm-up step; the figure reported for a candidate is the median over repetitions of the
paired ratio candidate / baseline, which cancels most of the drift of a shared machine.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import functools
import gc
import inspect
import json
import math
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass
class Candidate:
    """One way of running a training step; ``step`` runs exactly one optimizer step.

    ``steps``: timed steps per repetition for this candidate when it needs its own count (a
    monitor recording every 10th step is timed over a multiple of 10 steps).
    """

    name: str
    step: Callable[[], None]
    label: str = ""
    steps: int | None = None


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="few repetitions and steps: checks that it runs")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help="cuda when available, else cpu")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: all cores this process may use)")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default depends on --quick)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per repetition")
    parser.add_argument("--out", type=Path, default=None, help="JSON result file")
    parser.add_argument("--clock", choices=tuple(CLOCKS), default="wall",
                        help="time steps by wall time or (CPU runs) by this process's CPU time")
    return parser


def resolve_device(requested: str | None) -> torch.device:
    if requested is None:
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda was asked for but this torch build sees no CUDA device.")
    return torch.device(requested)


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def set_threads(threads: int | None) -> int:
    """Fix torch's intra-op thread count (stated with every result) and return it."""
    threads = threads or usable_cores()
    torch.set_num_threads(threads)
    return torch.get_num_threads()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device) -> dict:
    """What the numbers were measured on, including how busy the machine was when we started."""
    info = {
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }
    try:
        info["load_average_at_start"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        info["load_average_at_start"] = None
    return info


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# What steps are timed by: wall time, or this process's CPU time (``--clock cpu``, CPU runs only),
# which leaves out the time spent waiting for a core on a machine other jobs share: there wall
# time swings by tens of percent from one block of steps to the next.
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
_clock = CLOCKS["wall"]


def use_clock(name: str, device: torch.device) -> str:
    """Time steps by the named clock from now on (and return its name)."""
    global _clock
    if name == "cpu" and device.type != "cpu":
        raise SystemExit("error: --clock cpu times CPU runs only: a GPU's work is not this process's CPU time.")
    _clock = CLOCKS[name]
    return name


def now_seconds() -> float:
    """The clock steps are timed by, for timing a part of a step the same way."""
    return _clock()


def time_steps(step: Callable[[], None], steps: int, device: torch.device) -> float:
    """Seconds per step, over ``steps`` consecutive steps."""
    gc.collect()
    synchronize(device)
    start = _clock()
    for _ in range(steps):
        step()
    synchronize(device)
    return (_clock() - start) / steps


def interleaved(
    candidates: Sequence[Candidate],
    *,
    reps: int,
    steps: int,
    device: torch.device,
    warmup: int = 2,
    rep_warmup: int = 1,
    progress: bool = True,
) -> dict[str, list[float]]:
    """Seconds per step of every candidate, one value per repetition, measured interleaved.

    ``warmup`` steps per candidate run once before the first repetition (allocator, lazy
    initialisation, first-step work of a monitor); ``rep_warmup`` steps run untimed before each
    timed block, so that a candidate does not pay for the caches its predecessor left behind.
    """
    for cand in candidates:
        for _ in range(warmup):
            cand.step()
    synchronize(device)
    times: dict[str, list[float]] = {c.name: [] for c in candidates}
    for rep in range(reps):
        order = list(candidates) if rep % 2 == 0 else list(reversed(candidates))
        for cand in order:
            for _ in range(rep_warmup):
                cand.step()
            times[cand.name].append(time_steps(cand.step, cand.steps or steps, device))
        if progress:
            line = "  ".join(f"{n}={v[-1] * 1e3:.1f}ms" for n, v in times.items())
            print(f"  rep {rep + 1}/{reps}: {line}", file=sys.stderr, flush=True)
    return times


def time_against_baseline(candidates: Sequence[Candidate], removers: Sequence[Callable[[], None]], *, reps: int,
                          steps: int, device: torch.device, baseline: str, warmup: int = 2,
                          rep_warmup: int = 1) -> dict[str, dict]:
    """``interleaved`` then ``summarize``; the measuring tools come off the models (``removers``) however it ends."""
    try:
        times = interleaved(candidates, reps=reps, steps=steps, device=device, warmup=warmup, rep_warmup=rep_warmup)
    finally:
        for remove in removers:
            remove()
    return summarize(times, baseline)


def summarize(times: dict[str, list[float]], baseline: str) -> dict[str, dict]:
    """Per candidate: median step time and the median of the paired ratios to ``baseline``."""
    base = times[baseline]
    out = {}
    for name, values in times.items():
        ratios = [v / b for v, b in zip(values, base)]
        out[name] = {
            "median_ms": statistics.median(values) * 1e3,
            "min_ms": min(values) * 1e3,
            "max_ms": max(values) * 1e3,
            "per_rep_ms": [v * 1e3 for v in values],
            "ratio": statistics.median(ratios),
            "ratio_min": min(ratios),
            "ratio_max": max(ratios),
            "overhead_pct": (statistics.median(ratios) - 1.0) * 100.0,
        }
    return out


def monitor_kwargs(wanted: dict) -> dict:
    """``wanted`` less the arguments this version of GradientMonitor does not take."""
    from gradhealth.monitor import GradientMonitor

    accepted = inspect.signature(GradientMonitor).parameters
    return {k: v for k, v in wanted.items() if k in accepted}


# ---- data the benchmarks train on (no download) ---------------------------------------

def stdlib_bytes(limit: int = 400_000) -> torch.Tensor:
    """Byte-level text with no download: the Python standard library's own sources, sorted."""
    root = Path(os.__file__).parent
    chunks, size = [], 0
    for path in sorted(root.glob("*.py")):
        data = path.read_bytes()
        chunks.append(data)
        size += len(data)
        if size >= limit:
            break
    return torch.tensor(list(b"".join(chunks)[:limit]), dtype=torch.long)


def text_batches(text: torch.Tensor, batch: int, seq_len: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    while True:
        starts = torch.randint(0, len(text) - seq_len - 1, (batch,), generator=gen)
        window = torch.stack([text[s:s + seq_len + 1] for s in starts.tolist()])
        yield window[:, :-1], window[:, 1:]


def first_element_batches(batch: int, length: int, seed: int):
    """Gaussian sequences whose label is the sign of the first element: a dependency over ``length`` steps."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        x = torch.randn(batch, length, 1, generator=gen)
        yield x, (x[:, 0, 0] > 0).long()


# ---- one training step, and the measuring tools the benchmarks put on it ----------------------

def make_batch(batch: int, input_shape: Sequence[int], device: torch.device,
               num_classes: int = 10) -> tuple[Tensor, Tensor]:
    """A fixed random batch (seeded) and class labels: the same data for every candidate."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, *input_shape, generator=gen).to(device)
    y = torch.randint(0, num_classes, (batch,), generator=gen).to(device)
    return x, y


def new_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    # plain SGD without momentum: the only setting in which Cockpit's Alpha quantity runs its fast path
    return torch.optim.SGD(model.parameters(), lr=0.01)


def plain_step(model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor) -> Callable[[], None]:
    """Forward, cross-entropy, backward, SGD step: the unmeasured step every figure is a ratio to."""

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def every_multiple(steps: int, period: int) -> int:
    """``steps`` rounded up to a multiple of ``period``."""
    return -(-steps // period) * period


def monitor_candidate(name: str, label: str, model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor,
                      steps: int, wanted: dict) -> tuple[Candidate, Callable[[], None]]:
    """GradientMonitor used as its docstring says (``mon.step(loss=loss)`` after backward, the
    optimizer attached), and the function that takes it off.

    A monitor whose work repeats every N steps (``every``, ``detail_every``) is timed over
    ``steps`` rounded up to a multiple of N per repetition, so that every repetition holds the
    same number of recorded and detailed steps (any N consecutive steps hold exactly one).
    """
    from gradhealth.monitor import GradientMonitor

    mon = GradientMonitor(model, optimizer=opt, **monitor_kwargs(wanted))
    mon.attach()
    step = monitored_step(model, opt, x, y, mon)
    period = math.lcm(mon.every, getattr(mon, "detail_every", 1))
    return Candidate(name, step, label, steps=every_multiple(steps, period)), mon.detach


def monitored_step(model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor, mon) -> Callable[[], None]:
    """A training step with ``mon.step(loss=loss)`` after backward, as the monitor's docstring says."""

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        mon.step(loss=loss)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def lightning_grad_norm_step(model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor,
                             wrap: Callable[[Callable], Callable] = lambda f: f) -> Callable[[], None]:
    """A step that calls ``lightning.pytorch.utilities.grad_norm(model, norm_type=2)`` after backward.

    ``wrap`` may wrap ``grad_norm`` (a stopwatch that times the call on its own).
    """
    from lightning.pytorch.utilities import grad_norm

    measured = wrap(grad_norm)
    latest: list[dict] = []

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        latest[:] = [measured(model, norm_type=2)]
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


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


def linear_fit(xs: Sequence[float], ys: Sequence[float]) -> dict[str, float]:
    """Least-squares line y = slope * x + intercept, with R^2."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    slope = sxy / sxx if sxx else 0.0
    intercept = my - slope * mx
    ss_res = sum((y - (slope * x + intercept)) ** 2 for x, y in zip(xs, ys))
    ss_tot = sum((y - my) ** 2 for y in ys)
    return {"slope": slope, "intercept": intercept, "r2": 1.0 - ss_res / ss_tot if ss_tot else 1.0}


def _relative(path: str) -> str:
    """``path`` relative to the working directory where it lies below it (symlinks kept: venvs are links)."""
    absolute = Path(os.path.abspath(path))
    try:
        return str(absolute.relative_to(Path.cwd()))
    except ValueError:
        return str(absolute)


def command_line() -> str:
    """The command that produced a result, as it can be pasted into a shell from the repository root."""
    words = [_relative(sys.executable), _relative(sys.argv[0]), *sys.argv[1:]]
    env = os.environ.get("PYTHONPATH")
    if env:
        words.insert(0, "PYTHONPATH=" + os.pathsep.join(_relative(p) for p in env.split(os.pathsep) if p))
    return " ".join(shlex.quote(w) if not w.startswith("PYTHONPATH=") else w for w in words)


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def write_result(name: str, payload: dict, path: Path | None = None) -> Path:
    """Write ``payload`` as JSON to ``benchmarks/results/<name>.json`` (or ``path``), atomically."""
    path = Path(path) if path is not None else RESULTS_DIR / f"{name}.json"
    from gradhealth.io import write_text_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(payload, indent=2) + "\n")
    print(f"wrote {path}", file=sys.stderr)
    return path


def read_result(name: str) -> dict | None:
    path = RESULTS_DIR / f"{name}.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def describe_machine(machine: dict) -> str:
    """One line for BENCHMARKS.md."""
    parts = [f"{machine['cpu']}, {machine['usable_cores']} usable of {machine['logical_cores']} logical cores",
             f"torch {machine['torch']} with {machine['torch_threads']} threads",
             f"Python {machine['python']}"]
    if machine.get("gpu"):
        parts.insert(1, f"GPU {machine['gpu']}")
    load = machine.get("load_average_at_start")
    if load:
        parts.append(f"load average at start {load[0]:.2f}")
    return "; ".join(parts)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    # a "|" inside a cell would end it
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)
