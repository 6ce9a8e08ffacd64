"""What the monitor costs under FSDP2: step time with GradientMonitor against FSDP2 alone, 2 processes (gloo).

The script starts the processes itself (``torch.multiprocessing.spawn``, gloo on CPU, one thread
each); every rank builds the same model (``mlp:depth=10,width=256``, 64 input features), one
copy of it per configuration with the same initial weights, each sharded as ``gradhealth train --strategy fsdp``
shards it (``fully_shard`` on each block, then the root), with its own SGD optimizer, and its own
batch of 64 examples per rank. One step is forward + cross-entropy + backward + SGD step:

* ``fsdp``: FSDP2 alone (the baseline);
* ``fsdp_monitor_every1``: ``GradientMonitor(model, optimizer=opt)`` with its defaults (every=1;
  one recorded step in ten detailed), ``mon.step(loss=loss)`` after backward: on a recorded step
  its one all-gather (``monitor/sharded.py``);
* ``fsdp_monitor_every10``: ``every=10`` (detailed every 100 steps);
* ``fsdp_monitor_undetailed``: every=1 with no detailed step in the timed ones (``detail_every=100000``):
  what a recorded step with its one all-gather costs, without the detailed steps' weight norms,
  update ratios and activation statistics.

All are timed interleaved in the same processes, one step at a time: a repetition is 100
rounds, each round one step of every configuration, the order rotated every round (every rank runs
the same order, since each step is a collective). On a machine loaded by other work, the load of
any second falls on all alike, which blocks of steps (``harness.interleaved``) do not give
here: FSDP2's many small collectives make a step's time swing by 2x with the load. 100 rounds hold
every configuration's recorded and detailed steps in their real proportion (every=10 is detailed
every 100 steps). The figure is rank 0's median over repetitions of the paired ratio
(mean step time of a configuration / that of FSDP2 alone in the same repetition), with their range.

    python benchmarks/sharded_overhead.py            # -> benchmarks/results/sharded_overhead.json
    python benchmarks/sharded_overhead.py --quick
"""
from __future__ import annotations

import copy
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402

import gradhealth  # noqa: E402

NAME = "sharded_overhead"
WORLD = 2
SPEC, INPUT, BATCH = "mlp:depth=10,width=256", (64,), 64
MONITOR_KWARGS = {"fsdp_monitor_every1": {}, "fsdp_monitor_every10": {"every": 10},
                  "fsdp_monitor_undetailed": {"detail_every": 100_000}}
LABELS = {
    "fsdp": "FSDP2 alone (baseline)",
    "fsdp_monitor_every1": "FSDP2 + GradientMonitor defaults: every=1",
    "fsdp_monitor_every10": "FSDP2 + GradientMonitor, every=10",
    "fsdp_monitor_undetailed": "FSDP2 + GradientMonitor, every=1, never detailed (detail_every=100000)",
}

# counted by tests/test_monitor_sharded.py, not timed: the section states them beside the timings
COLLECTIVES = """Counted by patching `torch.distributed`'s collectives in `tests/test_monitor_sharded.py` (2 and 4 CPU
processes, gloo; `pytest tests/test_monitor_sharded.py`). A plain (unsharded) model makes none.

| step | collectives | bytes sent per rank |
|---|---|---|
| monitor, ordinary recorded step | 1 `all_gather_single` | 8 x layers (16 x layers with `after_clip`) |
| monitor, detailed step | 1 `all_gather_single` | 6 pieces x 8 x layers (4-layer test model: 192 B) |
| + gradient clipping by norm (or AutoClip) | + 1 `all_reduce` | 8 B |
| + value clipping | + 3 `all_reduce` | 8 B each |
| + AGC | + 2 `all_reduce` | |

Each rank receives world size x the bytes it sends."""


def settings(quick: bool) -> dict:
    """``steps``: rounds per repetition (each one step of every configuration)."""
    return {"reps": 2, "steps": 10, "warmup": 1} if quick else {"reps": 7, "steps": 100, "warmup": 3}


def round_robin(candidates: list[harness.Candidate], *, reps: int, rounds: int, warmup: int,
                progress: bool) -> dict[str, list[float]]:
    """Seconds per step of every candidate, one mean per repetition, the candidates' steps interleaved one by one."""
    for cand in candidates:
        for _ in range(warmup):
            cand.step()
    times: dict[str, list[float]] = {c.name: [] for c in candidates}
    for rep in range(reps):
        spent = dict.fromkeys(times, 0.0)
        for index in range(rounds):
            shift = index % len(candidates)
            for cand in candidates[shift:] + candidates[:shift]:
                start = time.perf_counter()
                cand.step()
                spent[cand.name] += time.perf_counter() - start
        for name, total in spent.items():
            times[name].append(total / rounds)
        if progress:
            line = "  ".join(f"{n}={v[-1] * 1e3:.1f}ms" for n, v in times.items())
            print(f"  rep {rep + 1}/{reps}: {line}", file=sys.stderr, flush=True)
    return times


def shard(model: torch.nn.Module) -> torch.nn.Module:
    """FSDP2 as ``gradhealth train --strategy fsdp`` applies it."""
    from torch.distributed.fsdp import fully_shard

    from gradhealth.train.strategy import fsdp_units

    for unit in fsdp_units(model):
        fully_shard(unit)
    fully_shard(model)
    return model


def rank_main(rank: int, world: int, port: int, s: dict, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        device = torch.device("cpu")
        torch.manual_seed(0)
        template = gradhealth.create_model(SPEC)
        params = sum(p.numel() for p in template.parameters())
        # each rank its own data, as data parallelism has it
        x, y = harness.make_batch(BATCH, INPUT, device)
        x, y = x.roll(rank, 0), y.roll(rank, 0)
        candidates, removers = [], []
        for name in LABELS:
            model = shard(copy.deepcopy(template))
            opt = harness.new_optimizer(model)
            if name == "fsdp":
                candidates.append(harness.Candidate(name, harness.plain_step(model, opt, x, y), LABELS[name]))
                continue
            cand, remove = harness.monitor_candidate(name, LABELS[name], model, opt, x, y, s["steps"],
                                                     MONITOR_KWARGS[name])
            candidates.append(cand)
            removers.append(remove)
        try:
            times = round_robin(candidates, reps=s["reps"], rounds=s["steps"], warmup=s["warmup"],
                                progress=rank == 0)
        finally:
            for remove in removers:
                remove()
        if rank == 0:
            table = harness.summarize(times, "fsdp")
            for name, row in table.items():
                row["label"] = LABELS[name]
            Path(out).write_text(json.dumps({"results": table, "params": params}))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    parser = harness.base_parser(__doc__.split("\n")[0])
    args = parser.parse_args(argv)
    if args.device == "cuda":
        raise SystemExit("error: this benchmark measures FSDP2 on CPU processes (gloo); drop --device cuda.")
    s = settings(args.quick)
    s.update({k: v for k, v in (("reps", args.reps), ("steps", args.steps)) if v})
    device = torch.device("cpu")
    print(f"{WORLD} processes, {SPEC}, batch {BATCH} per rank, {s['reps']} reps x {s['steps']} rounds",
          file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "rank0.json")
        mp.spawn(rank_main, args=(WORLD, _free_port(), s, out), nprocs=WORLD, join=True)
        measured = json.loads(Path(out).read_text())
    torch.set_num_threads(1)  # what each process had, for the machine line
    result = {"benchmark": NAME, "command": harness.command_line(), "date": harness.now(), "quick": args.quick,
              "machine": harness.machine_info(device), "world": WORLD, "backend": "gloo", "spec": SPEC,
              "input": list(INPUT), "batch_per_rank": BATCH, "settings": s, **measured}
    for name, row in result["results"].items():
        print(f"{name}: {row['median_ms']:.1f} ms/step, x{row['ratio']:.3f} "
              f"(x{row['ratio_min']:.3f} to x{row['ratio_max']:.3f})", file=sys.stderr)
    harness.write_result(NAME, result, args.out)
    return 0


def markdown_section(result: dict | None) -> str:
    """The BENCHMARKS.md section: the collectives counted by the tests, then the timings (when measured)."""
    lines = ["## Sharded training: collectives per recorded step", "", COLLECTIVES, ""]
    if result is None:
        lines.append("The monitor's overhead under FSDP2: not measured yet; `python benchmarks/sharded_overhead.py`.")
        return "\n".join(lines)
    shape = " x ".join(str(d) for d in (result["batch_per_rank"], *result["input"]))
    s = result["settings"]
    lines += [
        f"### The monitor's overhead under FSDP2: `{result['spec']}`, {result['params']:,} parameters, "
        f"{result['world']} processes ({result['backend']}), input {shape} per rank",
        "",
        "A copy of the model per configuration, each sharded as `--strategy fsdp` shards it (`fully_shard` per block, "
        "then the root), SGD; the monitor used as its docstring says (`mon.step(loss=loss)` after backward, "
        "optimizer attached). Timed interleaved one step at a time in the same processes: a repetition is "
        f"{s['steps']} rounds, each one step of every configuration in an order rotated every round, so the "
        "load of other work on the machine falls on all alike (and every=10's detailed step, one in "
        f"100, is in its real proportion). Figure = rank 0's median over {s['reps']} repetitions of the "
        "paired ratio of mean step times to FSDP2 alone; range = the lowest and highest of those ratios.",
        "",
    ]
    rows = [[row["label"], f"{row['median_ms']:.1f}", f"x{row['ratio']:.3f}",
             f"x{row['ratio_min']:.3f} to x{row['ratio_max']:.3f}"] for name, row in result["results"].items()]
    lines += [harness.markdown_table(["configuration", "ms/step (median)", "time vs FSDP2 alone",
                                      "range of paired ratios"], rows), ""]
    base = result["results"]["fsdp"]
    lines += [f"FSDP2 alone took {base['min_ms']:.0f} to {base['max_ms']:.0f} ms per step from one repetition to "
              "the next (other work on the machine); the ratios, paired within each repetition, move far less.", ""]
    lines += [f"Command: `{result['command']}`  ", f"Date: {result['date']}  ",
              f"Machine: {harness.describe_machine(result['machine'])}"]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
