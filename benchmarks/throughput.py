"""Training-step time of gradhealth's ImageNet ResNets against a torchvision-layout reference.

One step is forward + cross-entropy + backward + SGD (momentum 0.9). Both nets get the same
input and the same weights (the reference's state_dict is loaded into ours); before timing, the
script checks that both have torchvision's parameter count, identical state_dict keys and shapes,
that each loads the other's state_dict with ``strict=True``, and that their eval-mode outputs
agree. Figure: median over repetitions of the paired ratio ours / reference; goal: at most 5 %
slower. A third candidate, ours with its ReLU modules switched to ``inplace=True`` (as
torchvision's are), shows how much of a difference comes from that alone.

    python benchmarks/throughput.py            # resnet50 and resnet18
    python benchmarks/throughput.py --quick    # checks that it runs
"""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
from torchvision_layout import EXPECTED_PARAMS, reference_model  # noqa: E402

import gradhealth  # noqa: E402

NAME = "throughput"
GOAL_PCT = 5.0
ARCHS = ("resnet50", "resnet18")


def settings_for(device: torch.device, quick: bool, arch: str, args) -> dict:
    """Batch, resolution and repetition counts: a CPU repetition takes a few seconds."""
    if device.type == "cuda":
        s = {"batch": 64, "resolution": 224, "reps": 7, "steps": 20, "warmup": 3}
    else:
        s = {"batch": 8, "resolution": 112, "reps": 7, "steps": 4 if arch == "resnet50" else 8, "warmup": 2}
    if quick:
        s.update(batch=2, resolution=64, reps=3, steps=2, warmup=1)
    if args.batch:
        s["batch"] = args.batch
    if args.resolution:
        s["resolution"] = args.resolution
    if args.reps:
        s["reps"] = args.reps
    if args.steps:
        s["steps"] = args.steps
    s["channels_last"] = bool(args.channels_last)
    return s


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def verify_same_layout(arch: str, ours: nn.Module, ref: nn.Module) -> dict:
    """Fail loudly unless both nets are the same network up to module names of parameter-free layers."""
    expected = EXPECTED_PARAMS[arch]
    n_ours, n_ref = param_count(ours), param_count(ref)
    if n_ours != expected or n_ref != expected:
        raise SystemExit(f"error: {arch}: parameter counts ours={n_ours:,} reference={n_ref:,}, expected {expected:,}.")
    sd_ours, sd_ref = ours.state_dict(), ref.state_dict()
    if list(sd_ours) != list(sd_ref):
        only_ours = sorted(set(sd_ours) - set(sd_ref))[:5]
        only_ref = sorted(set(sd_ref) - set(sd_ours))[:5]
        raise SystemExit(f"error: {arch}: state_dict keys differ; only ours: {only_ours}, only reference: {only_ref}.")
    bad = [k for k in sd_ours if sd_ours[k].shape != sd_ref[k].shape]
    if bad:
        raise SystemExit(f"error: {arch}: state_dict shapes differ at {bad[:5]}.")
    ref.load_state_dict(sd_ours, strict=True)  # the reference takes our weights ...
    ours.load_state_dict(ref.state_dict(), strict=True)  # ... and ours the reference's: both ways
    ours.eval()
    ref.eval()
    with torch.no_grad():
        x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
        diff = (ours(x) - ref(x)).abs().max().item()
    ours.train()
    ref.train()
    if not diff < 1e-4:
        raise SystemExit(f"error: {arch}: eval outputs differ by {diff:.3g} with the same weights.")
    return {"params": n_ours, "expected_params": expected, "state_dict_keys": len(sd_ours),
            "keys_identical": True, "strict_load_both_ways": True, "eval_output_max_abs_diff": diff}


def make_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> callable:
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def run_arch(arch: str, device: torch.device, s: dict) -> dict:
    torch.manual_seed(0)
    ref, source = reference_model(arch)
    ours = gradhealth.create_model(arch)
    checks = verify_same_layout(arch, ours, ref)
    memory_format = torch.channels_last if s["channels_last"] else torch.contiguous_format
    ours.to(device, memory_format=memory_format)
    ref.to(device, memory_format=memory_format)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(s["batch"], 3, s["resolution"], s["resolution"], generator=gen)
    x = x.to(device, memory_format=memory_format)
    y = torch.randint(0, 1000, (s["batch"],), generator=gen).to(device)
    ours_inplace = copy.deepcopy(ours)
    for module in ours_inplace.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = True
    candidates = [harness.Candidate("reference", make_step(ref, x, y), f"reference ({source})"),
                  harness.Candidate("ours", make_step(ours, x, y), f"gradhealth.create_model({arch!r})"),
                  harness.Candidate("ours_inplace_relu", make_step(ours_inplace, x, y),
                                    "ours with ReLU(inplace=True), as torchvision")]
    print(f"{arch}: batch {s['batch']} at {s['resolution']}x{s['resolution']}, {s['reps']} reps x {s['steps']} steps",
          file=sys.stderr)
    times = harness.interleaved(candidates, reps=s["reps"], steps=s["steps"], device=device, warmup=s["warmup"])
    summary = harness.summarize(times, "reference")
    ratio = summary["ours"]["ratio"]
    return {
        "reference_source": source,
        "labels": {c.name: c.label for c in candidates},
        "checks": checks,
        "settings": s,
        "results": summary,
        "ratio": ratio,
        "goal": f"ours / reference <= {1 + GOAL_PCT / 100:.2f}",
        "pass": ratio <= 1 + GOAL_PCT / 100,
    }


def main(argv: list[str] | None = None) -> int:
    parser = harness.base_parser(__doc__.split("\n")[0])
    parser.add_argument("--arch", choices=ARCHS, action="append", help="default: all of " + ", ".join(ARCHS))
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--resolution", type=int, default=None)
    parser.add_argument("--channels-last", action="store_true")
    args = parser.parse_args(argv)
    device = harness.resolve_device(args.device)
    threads = harness.set_threads(args.threads)
    result = {
        "benchmark": NAME,
        "command": harness.command_line(),
        "date": harness.now(),
        "quick": args.quick,
        "machine": harness.machine_info(device),
        "threads": threads,
        "models": {},
    }
    for arch in args.arch or ARCHS:
        result["models"][arch] = run_arch(arch, device, settings_for(device, args.quick, arch, args))
        r = result["models"][arch]
        print(f"{arch}: ours/reference = {r['ratio']:.3f} ({'pass' if r['pass'] else 'MISS'})", file=sys.stderr)
    harness.write_result(NAME, result, args.out)
    return 0


def markdown_section(result: dict) -> str:
    """The BENCHMARKS.md section for one throughput result."""
    rows = []
    for arch, r in result["models"].items():
        s = r["settings"]
        res = r["results"]
        rows.append([
            arch,
            f"{s['batch']} x 3 x {s['resolution']} x {s['resolution']}",
            f"{res['reference']['median_ms']:.1f}",
            f"{res['ours']['median_ms']:.1f}",
            f"{r['ratio']:.3f} ({res['ours']['ratio_min']:.3f} to {res['ours']['ratio_max']:.3f})",
            "pass" if r["pass"] else "**miss**",
            f"{res['ours_inplace_relu']['ratio']:.3f}" if "ours_inplace_relu" in res else "",
            f"{s['reps']} x {s['steps']}",
        ])
    table = harness.markdown_table(
        ["model", "input", "reference ms/step", "ours ms/step", "ratio ours/ref (min to max)", "goal <= 1.05",
         "ours with in-place ReLU / ref", "reps x steps"], rows)
    first = next(iter(result["models"].values()))
    checks = "; ".join(
        f"{arch}: {r['checks']['params']:,} parameters, {r['checks']['state_dict_keys']} identical state_dict keys, "
        f"strict load both ways, eval outputs equal to {r['checks']['eval_output_max_abs_diff']:.1e}"
        for arch, r in result["models"].items()
    )
    return "\n".join([
        "## Throughput: our ImageNet ResNets against the torchvision layout",
        "",
        "Training step (forward, cross-entropy, backward, SGD with momentum) of "
        "`gradhealth.create_model(arch)` against the reference "
        f"(`{first['reference_source']}`), same input, same weights. "
        "The ratio is the median over repetitions of the paired ratio ours / reference. Our blocks use "
        "`nn.ReLU()` modules that are not in place; the column \"ours with in-place ReLU\" times the same "
        "net with `inplace=True` set on them, as torchvision's are, to show what that difference alone costs.",
        "",
        table,
        "",
        f"Layout checks passed before timing: {checks}.",
        "",
        f"Command: `{result['command']}`  ",
        f"Date: {result['date']}  ",
        f"Machine: {harness.describe_machine(result['machine'])}",
    ])


if __name__ == "__main__":
    raise SystemExit(main())
