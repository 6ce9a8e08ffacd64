"""benchmarks/run_all.py: a section whose benchmark has no result here keeps what BENCHMARKS.md says."""
from __future__ import annotations

import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import harness  # noqa: E402
import run_all  # noqa: E402

PAGE = """# Benchmarks

Intro.

## Zoo: precision and recall

Held-out recall 1.00.

### Held-out half

A table.

## Scaling: the monitor's cost

16 us per tensor.

## On a GPU

## Overhead: on the GPU (GPU)
"""


def test_sections_without_results_keep_their_text_and_failures_say_so(tmp_path, monkeypatch):
    page = tmp_path / "BENCHMARKS.md"
    page.write_text(PAGE)
    kept = run_all.kept_sections(page)
    assert set(kept) == {"Zoo", "Scaling"}  # the GPU part is rendered apart
    assert kept["Zoo"].startswith("## Zoo: precision") and "### Held-out half" in kept["Zoo"]
    assert kept["Zoo"].rstrip().endswith("A table.")

    monkeypatch.setattr(harness, "read_result", lambda name: None)
    assert run_all.section("zoo", {}, kept) == kept["Zoo"]
    # a run that failed is said, not hidden behind the old figures
    assert "the last run failed (exit code 3)" in run_all.section("zoo", {"zoo": 3}, kept)
    # nothing kept and nothing measured: says how to measure it
    assert "not run yet" in run_all.section("scaling", {}, {})
    assert run_all.kept_sections(tmp_path / "missing.md") == {}
