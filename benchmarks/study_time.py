"""Wall time of `gradhealth study all --quick`, the showcase run, and how many of its claims held.

    python benchmarks/study_time.py [--reps N]

Each repetition is a fresh process, as a user runs it; the figure is the median.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import harness  # noqa: E402

GOAL_SECONDS = 600


def measure(reps: int) -> dict:
    seconds, claims = [], None
    for _ in range(reps):
        with tempfile.TemporaryDirectory() as out:
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "gradhealth", "study", "all", "--quick", "--out", out],
                           check=True, stdout=subprocess.DEVNULL)
            seconds.append(time.perf_counter() - started)
            results = json.loads((Path(out) / "results.json").read_text())
            found = [c for study in results["studies"].values() for c in study["claims"]]
            claims = {"total": len(found), "hold": sum(bool(c["holds"]) for c in found)}
    import torch

    return {"seconds": seconds, "median_seconds": statistics.median(seconds), "claims": claims,
            "machine": harness.machine_info(torch.device("cpu")), "command": harness.command_line(),
            "date": harness.now()}


def markdown_section(result: dict) -> str:
    median = result["median_seconds"]
    claims = result["claims"]
    rows = [[f"{median / 60:.1f} min ({median:.0f} s)", ", ".join(f"{s:.0f} s" for s in result["seconds"]),
             f"{claims['hold']} of {claims['total']}", "pass" if median <= GOAL_SECONDS else "**miss**"]]
    return "\n".join([
        "## Studies: `gradhealth study all --quick`",
        "",
        "Wall time of every study at the quick size in a fresh process (training, claims, figures, report), "
        "median over repetitions; goal under 10 minutes on 2 CPU cores.",
        "",
        harness.markdown_table(["median wall time", "wall time of each repetition", "claims that held", "goal < 10 min"], rows),
        "",
        f"Command: `{result['command']}`  ",
        f"Date: {result['date']}  ",
        f"Machine: {harness.describe_machine(result['machine'])}",
    ])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="accepted for run_all; the study is --quick already")
    parser.add_argument("--threads", type=int, default=None, help="ignored: the studies pick their own")
    parser.add_argument("--device", default=None, help="ignored: the studies run where torch finds a device")
    args = parser.parse_args()
    harness.write_result("study_time", measure(args.reps))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
