"""Where a monitored training step spends its time, by operator, on the CPU or a GPU.

    python benchmarks/profile_step.py [--spec mlp:depth=50,width=256] [--device cuda] [--steps 20]

Profiles (torch.profiler) the same number of steps without the monitor, with it recording norms
only, and with it recording everything, and prints each one's operators sorted by host time
together with the wall time per step. On a GPU host time per launch is what a monitor adds to a
launch-bound step, so the operator counts are the figure to look at.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402

import gradhealth  # noqa: E402
from gradhealth.monitor import GradientMonitor  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="mlp:depth=50,width=256")
    parser.add_argument("--input", default="64", help="input shape without the batch, e.g. 3,32,32")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rows", type=int, default=25)
    args = parser.parse_args(argv)
    device = harness.resolve_device(args.device)
    shape = tuple(int(d) for d in args.input.split(","))
    torch.manual_seed(0)
    template = gradhealth.create_model(args.spec).to(device)
    x = torch.randn(args.batch, *shape, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)

    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    for label, kwargs in (("no monitor", None), ("norms only (detail_every huge)", {"detail_every": 10**9}),
                          ("everything (detail_every=1)", {"detail_every": 1})):
        model = copy.deepcopy(template)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        mon = GradientMonitor(model, optimizer=opt, **kwargs).attach() if kwargs is not None else None

        def step():
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            if mon is not None:
                mon.step(loss=loss)
            opt.step()
            opt.zero_grad(set_to_none=True)

        for _ in range(3):
            step()
        harness.synchronize(device)
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        harness.synchronize(device)
        wall = (time.perf_counter() - start) / args.steps * 1e3
        with torch.profiler.profile(activities=activities) as prof:
            for _ in range(args.steps):
                step()
            harness.synchronize(device)
        if mon is not None:
            mon.detach()
        print(f"\n=== {label}: {wall:.2f} ms/step (unprofiled wall time), {args.spec}, batch {args.batch}, {device}")
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=48)
        print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
