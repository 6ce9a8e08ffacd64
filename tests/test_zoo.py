"""The diagnosis benchmark over the zoo: its scoring on hand-made results, the shape of the zoo, and
the quick subset run again against the figures recorded by ``benchmarks/zoo/run.py --record``."""
from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from zoo import score  # noqa: E402
from zoo.architectures import ARCHITECTURES, HELD_OUT, TUNING  # noqa: E402
from zoo.cases import CASES, CAUSES, QUICK, label  # noqa: E402

from gradhealth.diagnose.findings import FINDING_KINDS  # noqa: E402


def result(cause: str, findings: list[tuple[str, str, list[str]]], where: list[str] | None = None,
           half: str = HELD_OUT, matrices: tuple[int, int] = (4, 4)) -> dict:
    return {"arch": "a", "half": half, "cause": cause, "label": label(cause, where), "verdict": "unhealthy",
            "findings": [{"kind": k, "severity": s, "layers": layers, "step": 0} for k, s, layers in findings],
            "coverage": {"weight_matrices": list(matrices), "activations": [1, 1]}}


# ---- scoring -------------------------------------------------------------------------------------

def test_a_finding_that_names_the_labelled_unit_or_a_module_inside_it_is_a_true_positive():
    hit = score.case_counts(result("nan", [("nonfinite", "error", ["transformer.h.2.attn.c_attn"])],
                                   where=["transformer.h.2"]))
    assert hit["nonfinite"] == {"tp": 1, "fp": 0, "fn": 0}
    # h.20 is not inside h.2: the wrong place is both a miss and a wrong finding
    elsewhere = score.case_counts(result("nan", [("nonfinite", "error", ["transformer.h.20.mlp"])],
                                         where=["transformer.h.2"]))
    assert elsewhere["nonfinite"] == {"tp": 0, "fp": 1, "fn": 1}


def test_may_kinds_are_not_scored_other_kinds_are_false_positives_and_info_does_not_count():
    counts = score.case_counts(result("lr_high_sgd", [("lr_too_high", "error", []),
                                                      ("exploding_gradient", "error", []),
                                                      ("vanishing_through_time", "warning", []),
                                                      ("lr_too_low", "info", [])]))
    assert counts["lr_too_high"] == {"tp": 1, "fp": 0, "fn": 0}
    assert counts["exploding_gradient"] == {"tp": 0, "fp": 0, "fn": 0}  # a consequence the label allows
    assert counts["vanishing_through_time"] == {"tp": 0, "fp": 1, "fn": 0}
    assert counts["lr_too_low"] == {"tp": 0, "fp": 0, "fn": 0}
    missed = score.case_counts(result("lr_low", [("lr_too_low", "info", [])]))
    assert missed["lr_too_low"] == {"tp": 0, "fp": 0, "fn": 1}


def test_a_healthy_case_may_carry_a_warning_only_as_a_false_positive_and_never_an_error():
    warned = score.case_outcome(result("healthy", [("saturation", "warning", [])]))
    assert warned["wrong"] == ["saturation"] and not warned["healthy_error"]
    assert score.case_outcome(result("healthy", [("dead_units", "error", [])]))["healthy_error"]
    assert score.case_outcome(result("healthy", [("lr_too_high", "info", [])]))["status"] == "correct"


def test_precision_recall_and_f1_per_kind_against_hand_counts():
    results = [
        result("lr_low", [("lr_too_low", "warning", [])]),                      # tp
        result("lr_low", []),                                                   # fn
        result("lr_low", [("lr_too_low", "warning", [])]),                      # tp
        result("healthy", [("lr_too_low", "warning", [])]),                     # fp
        result("nan", [("nonfinite", "error", ["x.1"])], where=["x.1"]),        # tp
    ]
    kinds = score.kind_scores(results)
    low = kinds["lr_too_low"]
    assert (low["tp"], low["fp"], low["fn"], low["labelled"]) == (2, 1, 1, 3)
    assert low["precision"] == pytest.approx(2 / 3, abs=1e-4) and low["recall"] == pytest.approx(2 / 3, abs=1e-4)
    assert low["f1"] == pytest.approx(2 / 3, abs=1e-3)
    assert kinds["nonfinite"]["precision"] == 1.0 and kinds["nonfinite"]["recall"] == 1.0
    assert kinds["saturation"]["precision"] is None and kinds["saturation"]["recall"] is None


def test_scores_split_by_half_with_confusion_and_coverage():
    cases = {"a/lr_low": result("lr_low", [("lr_too_low", "warning", [])], half=TUNING),
             "b/lr_low": result("lr_low", [("dead_units", "warning", [])], matrices=(3, 4)),
             "b/healthy": result("healthy", [("saturation", "error", [])])}
    s = score.scores(cases)
    assert s[TUNING]["kinds"]["lr_too_low"]["recall"] == 1.0 and s[TUNING]["correct"] == 1
    held = s[HELD_OUT]
    assert held["kinds"]["lr_too_low"]["recall"] == 0.0 and held["correct"] == 0
    assert held["confusion"]["lr_low"] == {"cases": 1, "kinds": {"dead_units": 1}}
    assert held["healthy_with_error"] == ["b/healthy"]
    assert held["weight_coverage_min"] == 0.75 and held["below_full_coverage"] == ["b/lr_low"]
    text = score._kinds_table(held["kinds"])
    assert "`lr_too_low` | 1 | 0 | 0 | 1 | - | 0.00" in text and "**below goal**" in text


def test_the_zoo_section_replaces_its_old_self_or_lands_after_the_real_models():
    doc = "# B\n\n## Real models\n\nr\n\n## Scaling\n\ns\n"
    once = score.splice_section(doc, "## Zoo: x\n\n### held-out\n\nold")
    assert once.index("## Real models") < once.index("## Zoo: x") < once.index("## Scaling")
    twice = score.splice_section(once, "## Zoo: y\n\nnew")
    assert "old" not in twice and "### held-out" not in twice and twice.count("## Zoo") == 1
    assert twice.endswith("## Scaling\n\ns\n") and "r\n" in twice


def test_labels_follow_the_cause_and_the_activation():
    assert label("init_large") == {"must": {"exploding_gradient": []}, "may": ["nonfinite", "saturation",
                                                                               "lr_too_high"]}
    tanh = label("init_large", saturating=True)
    assert set(tanh["must"]) == {"exploding_gradient", "saturation"} and "saturation" not in tanh["may"]
    assert label("nan", ["blocks.2"]) == {"must": {"nonfinite": ["blocks.2"]}, "may": []}
    assert label("healthy") == {"must": {}, "may": []}


# ---- the zoo -------------------------------------------------------------------------------------

def test_the_zoo_spans_families_and_halves_by_architecture():
    assert len(ARCHITECTURES) >= 12 and len({a.family for a in ARCHITECTURES.values()}) >= 5
    per_arch = Counter(c.arch for c in CASES)
    for name in ARCHITECTURES:
        causes = [c.cause for c in CASES if c.arch == name]
        assert "healthy" in causes and per_arch[name] - 1 >= 4, name
    halves = {a.half for a in ARCHITECTURES.values()}
    assert halves == {TUNING, HELD_OUT}
    assert len({c.name for c in CASES}) == len(CASES)
    assert all(c.cause in CAUSES for c in CASES)
    assert {k for c in CAUSES.values() for k in (*c.must, *c.may)} <= set(FINDING_KINDS)
    assert set(QUICK) <= {c.name for c in CASES}
    assert {ARCHITECTURES[n.split("/")[0]].half for n in QUICK} == halves


# ---- the quick subset against the recorded figures -----------------------------------------------

RECORDED = BENCHMARKS / "zoo" / "recorded.json"


@pytest.mark.timeout(180)
def test_the_quick_subset_keeps_every_correct_finding_and_gains_no_wrong_one():
    from zoo import run

    recorded = json.loads(RECORDED.read_text())["cases"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as recorded: the figures repeat bit for bit on one thread
    try:
        now = run.run_cases(list(QUICK))
    finally:
        torch.set_num_threads(threads)
    problems = []
    for name, fresh in now.items():
        before = recorded[name]
        assert fresh["label"] == before["label"], f"{name}: the label changed; record the zoo again"
        was, got = score.case_counts(before), score.case_counts(fresh)
        lost = [k for k in FINDING_KINDS if was[k]["tp"] and not got[k]["tp"]]
        gained = [k for k in FINDING_KINDS if got[k]["fp"] and not was[k]["fp"]]
        measured, total = fresh["coverage"]["weight_matrices"]
        if lost:
            problems.append(f"{name} lost {lost}")
        if gained:
            problems.append(f"{name} wrongly reports {gained}")
        if total != before["coverage"]["weight_matrices"][1] or measured < before["coverage"]["weight_matrices"][0]:
            problems.append(f"{name} measures {measured}/{total} weight matrices, "
                            f"recorded {before['coverage']['weight_matrices']}")
        if fresh["cause"] == "healthy" and score.case_outcome(fresh)["healthy_error"]:
            problems.append(f"{name} is healthy but draws an error")
    assert not problems, problems
