"""Run every benchmark, each in its own process, and rewrite BENCHMARKS.md from their results.

    python benchmarks/run_all.py                      # what `make bench` runs
    python benchmarks/run_all.py --quick              # checks that everything runs (figures meaningless)
    python benchmarks/run_all.py --render-only        # rewrite BENCHMARKS.md from benchmarks/results/*.json

Cockpit and BackPACK, which peers.py measures, are not dependencies of gradhealth: `make bench`
runs this script from .venv-bench, which has them; from another environment their rows say that
they did not run.
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import harness  # noqa: E402

from gradhealth.io import write_text_atomic  # noqa: E402

BENCHMARKS_MD = REPO / "BENCHMARKS.md"
# Results measured on a GPU machine by benchmarks/gpu.sh. Kept in the repository (unlike
# benchmarks/results/): `make bench` on a machine without a GPU cannot measure them again.
GPU_RESULTS = HERE / "gpu"


def run(cmd: list[str]) -> int:
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    return subprocess.call(cmd, cwd=REPO)


def passthrough(args: argparse.Namespace) -> list[str]:
    out = []
    if args.quick:
        out.append("--quick")
    if args.device:
        out += ["--device", args.device]
    if args.threads:
        out += ["--threads", str(args.threads)]
    return out


def run_benchmarks(args: argparse.Namespace) -> dict[str, int]:
    """Run the scripts; a result file is removed first so a failed run cannot leave an old figure behind."""
    codes = {}
    common = passthrough(args)
    jobs = {
        "throughput": [sys.executable, "benchmarks/throughput.py", *common],
        "overhead": [sys.executable, "benchmarks/overhead.py", *common],
        "overhead_profile": [sys.executable, "benchmarks/overhead.py", "--only", "profile", *common],
        "recorded_step": [sys.executable, "benchmarks/recorded_step.py", *common],
        "scaling": [sys.executable, "benchmarks/scaling.py", *common],
        "study_time": [sys.executable, "benchmarks/study_time.py"],
        "peers": [sys.executable, "benchmarks/peers.py", *common],
        "real_models": [sys.executable, "benchmarks/real_models.py", *common],
        "memory": [sys.executable, "benchmarks/memory.py", *common],
        # the zoo trains on the CPU with one thread by default so that its figures repeat
        "zoo": [sys.executable, "benchmarks/zoo/run.py", *(["--quick"] if args.quick else []),
                *(["--threads", str(args.threads)] if args.threads else [])],
        # its own processes on CPU (gloo): --device does not apply, --threads neither (one thread per process)
        "sharded_overhead": [sys.executable, "benchmarks/sharded_overhead.py", *(["--quick"] if args.quick else [])],
    }
    for name, cmd in jobs.items():
        if args.only and name not in args.only:
            continue
        (harness.RESULTS_DIR / f"{name}.json").unlink(missing_ok=True)
        codes[name] = run(cmd)
    return codes


def intro(note: str | None, produced_by: str | None) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Reproduce everything with `make bench` (which runs `python benchmarks/run_all.py`); each script "
        "also runs on its own, `--quick` checks that it runs, `--device cpu|cuda` picks the device (CUDA when "
        "available), `--threads N` fixes torch's thread count. Raw results are written to "
        "`benchmarks/results/*.json` (not committed); this file is rewritten from them.",
        "",
        "Method: every figure is a ratio against a baseline measured side by side in the same process. Each "
        "repetition times several steps of every configuration one after the other (after a warm-up), with the "
        "order reversed on every other repetition; the figure is the median over repetitions of the paired ratio "
        "candidate / baseline. Thread count, CPU, cores, torch version and GPU are stated with every table.",
    ]
    if produced_by:
        lines += ["", f"This file was last written by `{produced_by}` on {harness.now()}; each section names "
                      "the command and date of its own figures."]
    if note:
        lines += ["", f"**Note on these figures:** {note}"]
    return "\n".join(lines)


def kept_sections(path: Path = BENCHMARKS_MD) -> dict[str, str]:
    """The CPU sections of the BENCHMARKS.md there is now, by their heading's words before the colon.

    benchmarks/results/ is not kept in git, so a fresh checkout has no results to render: a section
    whose benchmark has no result keeps its text (and its command and date) instead of being wiped.
    """
    if not path.is_file():
        return {}
    text = path.read_text().split("\n## On a GPU", 1)[0]
    sections = {}
    for part in text.split("\n## ")[1:]:
        heading = part.split("\n", 1)[0]
        sections.setdefault(heading.split(":", 1)[0].strip(), "## " + part.rstrip("\n"))
    return sections


def section(name: str, codes: dict[str, int], kept: dict[str, str] | None = None) -> str:
    import memory
    import overhead
    import peers
    import real_models
    import scaling
    import sharded_overhead
    import study_time
    import throughput
    from zoo import score as zoo_score

    result = harness.read_result(name)
    titles = {"throughput": "Throughput", "overhead": "Overhead", "scaling": "Scaling", "study_time": "Studies",
              "peers": "Peers", "real_models": "Real models", "zoo": "Zoo", "memory": "Memory",
              "sharded_overhead": "Sharded training"}
    code = codes.get(name)
    if result is None and not code and titles[name] in (kept or {}):
        return (kept or {})[titles[name]]
    if name == "sharded_overhead":
        # the collectives counted by the tests are stated whether or not the timings ran
        text = sharded_overhead.markdown_section(result)
        code = codes.get(name)
        if result is None and code:
            text = text.replace("not measured yet;", f"the last run failed (exit code {code});")
    elif result is None:
        code = codes.get(name)
        why = f"the last run failed (exit code {code})" if code else "not run yet"
        script = "zoo/run" if name == "zoo" else name
        return f"## {titles[name]}\n\nNo result: {why}. Run `python benchmarks/{script}.py`."
    elif name == "throughput":
        text = throughput.markdown_section(result)
    elif name == "overhead":
        import recorded_step
        from overhead_profile import profile_section

        profile = harness.read_result("overhead_profile")
        text = overhead.markdown_section(result)
        recorded = harness.read_result("recorded_step")
        if recorded is not None:
            text += ("\n\n### The recorded step beside Lightning's `grad_norm`\n\n"
                     + recorded_step.markdown_section(recorded))
        if profile is not None:
            text += "\n\n" + profile_section(profile)
        else:
            code = codes.get("overhead_profile")
            why = f"its run failed (exit code {code})" if code else "not run yet"
            text += f"\n\nWhere the monitor's time goes: {why}; `python benchmarks/overhead.py --only profile`."
    elif name == "study_time":
        text = study_time.markdown_section(result)
    elif name == "peers":
        text = peers.markdown_section(result)
    elif name == "real_models":
        text = real_models.markdown_section(result)
    elif name == "memory":
        text = memory.markdown_section(result)
    elif name == "zoo":
        text = zoo_score.markdown_section(result)
    else:
        text = scaling.markdown_section(result)
    if result is not None and result.get("quick"):
        text = text.replace("\n", "\n\n> Made with `--quick`: a check that the script runs, not a measurement.\n", 1)
    return text


def gpu_sections() -> list[str]:
    """Throughput and overhead on a GPU, from benchmarks/gpu/*.json (written by benchmarks/gpu.sh)."""
    import overhead
    import throughput

    parts = []
    for name, render_section in (("throughput", throughput.markdown_section), ("overhead", overhead.markdown_section)):
        path = GPU_RESULTS / f"{name}.json"
        if path.is_file():
            heading, rest = render_section(json.loads(path.read_text())).split("\n", 1)
            parts.append(f"{heading} (GPU)\n{rest}")
    if not parts:
        return ["## On a GPU\n\nNot measured yet: run `bash benchmarks/gpu.sh OUT` on a machine with a CUDA GPU, "
                "copy `OUT/throughput.json` and `OUT/overhead.json` into `benchmarks/gpu/`, then "
                "`python benchmarks/run_all.py --render-only`."]
    return ["## On a GPU\n\nMeasured on a GPU machine by `bash benchmarks/gpu.sh OUT` (which also runs "
            "`tests/test_cuda.py` there); the results are kept in `benchmarks/gpu/` because `make bench` on a "
            "machine without a GPU cannot measure them again. On a GPU a small step is bound by the host "
            "launching kernels, so what the monitor adds is its Python and its kernel launches, not arithmetic; "
            "`python benchmarks/profile_step.py --device cuda` lists them by operator. The GPU machine is a "
            "shared virtual machine whose baseline step time moved by up to 20 % between repetitions: read the "
            "per-repetition range beside each median."] + parts


def render(note: str | None, codes: dict[str, int]) -> str:
    produced_by = harness.command_line()
    if note:
        produced_by = produced_by.replace(shlex.quote(note), "'(the note below)'")
    names = ("throughput", "overhead", "memory", "peers", "real_models", "zoo", "sharded_overhead", "scaling",
             "study_time")
    kept = kept_sections()
    parts = [intro(note, produced_by)] + [section(name, codes, kept) for name in names] + gpu_sections()
    return "\n\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="pass --quick to every benchmark")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--only", choices=("throughput", "overhead", "overhead_profile", "scaling", "peers", "real_models",
                                                   "sharded_overhead", "study_time", "zoo", "memory"),
                        action="append",
                        help="run only these (the others' last results are kept in BENCHMARKS.md)")
    parser.add_argument("--render-only", action="store_true", help="only rewrite BENCHMARKS.md")
    parser.add_argument("--note", default=None, help="a sentence about these figures, shown at the top")
    args = parser.parse_args(argv)
    codes = {} if args.render_only else run_benchmarks(args)
    write_text_atomic(BENCHMARKS_MD, render(args.note, codes))
    print(f"wrote {BENCHMARKS_MD}", file=sys.stderr)
    failed = {name: code for name, code in codes.items() if code}
    for name, code in failed.items():
        print(f"error: {name} exited with {code}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
