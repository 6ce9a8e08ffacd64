"""What the monitor adds to a step, from twins stepped alternately in one process.

    python benchmarks/alternated_steps.py mlp50 detail 8
    python benchmarks/alternated_steps.py transformer defaults 3

A monitored and an unmonitored copy of the same model take turns step by step (plain, monitored,
plain, ...), each step timed by the CPU time of the thread; a block is 10 such pairs (so the
defaults' one detailed step in ten is in every block), and the figure is the median over blocks
of monitored / plain - 1, with its quartiles. On a shared virtual machine whose speed drifts from
minute to minute, pairing adjacent steps resolves a few points where whole repetitions of
``overhead.py`` (several seconds apart) do not. Run it with ``PYTHONPATH`` at a revision's
``src`` to compare revisions.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable

from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402

import gradhealth  # noqa: E402
from gradhealth.monitor import GradientMonitor  # noqa: E402

MODELS = {
    "mlp50": ("mlp:depth=50,width=256", lambda: torch.randn(128, 64)),
    "transformer": ("transformer:depth=6,width=128,heads=4,task=classify,max_len=64",
                    lambda: torch.randint(0, 256, (32, 64))),
}
MODES = {"defaults": {}, "detail": {"detail_every": 1}, "recorded": {"detail_every": 10**9}}
PAIRS_PER_BLOCK = 10


def twin_step(template: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, monitor: dict | None) -> Callable[[], None]:
    """A step of a fresh copy of ``template``: plain, or with a GradientMonitor of these options."""
    model = copy.deepcopy(template)
    opt = harness.new_optimizer(model)
    if monitor is None:
        return harness.plain_step(model, opt, x, y)
    return harness.monitored_step(model, opt, x, y, GradientMonitor(model, optimizer=opt, **monitor).attach())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=tuple(MODELS))
    parser.add_argument("mode", choices=tuple(MODES))
    parser.add_argument("blocks", type=int, help=f"blocks of {PAIRS_PER_BLOCK} step pairs")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    spec, make_input = MODELS[args.model]
    template = gradhealth.create_model(spec)
    x = make_input()
    y = torch.randint(0, 10, (x.shape[0],))
    plain, watched = twin_step(template, x, y, None), twin_step(template, x, y, MODES[args.mode])
    for _ in range(PAIRS_PER_BLOCK):
        plain()
        watched()
    ratios = []
    for _ in range(args.blocks):
        spent = [0.0, 0.0]
        for _ in range(PAIRS_PER_BLOCK):
            for i, step in enumerate((plain, watched)):
                start = time.thread_time()
                step()
                spent[i] += time.thread_time() - start
        ratios.append(spent[1] / spent[0] - 1)
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    print(f"{args.model} {args.mode}: {statistics.median(ratios) * 100:+.1f} % (quartiles {q[0] * 100:+.1f}, "
          f"{q[2] * 100:+.1f}), unmonitored {spent[0] / PAIRS_PER_BLOCK * 1e3:.1f} ms/step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
