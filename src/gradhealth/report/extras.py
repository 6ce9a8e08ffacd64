"""Sections for what a diagnosis carries besides findings: the theory at init, remedy trials."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from gradhealth.report.charts import line_chart
from gradhealth.report.html import Section, Table

__all__ = ["theory_section", "trials_section", "trials_table", "trials_loss_chart"]


def theory_section(theory: Mapping[str, Any]) -> Section | None:
    """Mean-field prediction at init beside the measured per-layer factor, with the profile drawn."""
    if not theory or not theory.get("applies"):
        return None
    p = theory["prediction"]
    rows = [["activation", p.get("activation")], ["sigma_w (from init " + str(theory.get("init")) + ")", theory["sigma_w"]],
            ["sigma_b", theory["sigma_b"]], ["chi_1", p["chi_1"]], ["predicted per-layer factor", p["per_layer_factor"]],
            ["regime", p["regime"]], ["depth scale (layers)", p["depth_scale"]],
            ["predicted first/last ratio", p["first_last_ratio"]]]
    comparison = theory.get("comparison")
    if comparison:
        rows += [["measured per-layer factor", comparison["measured_factor"]],
                 ["measured first/last ratio", comparison["measured_first_last"]],
                 ["agree (within " + f"{comparison['tolerance']:.0%})", "yes" if comparison["agree"] else "no"]]
    profile = [float(v) for v in p.get("profile", [])]
    figures = []
    if profile and all(math.isfinite(v) and v > 0 for v in profile):
        figures.append(line_chart(
            {"predicted": (list(range(len(profile))), profile)}, title="Predicted gradient norm vs depth",
            xlabel="hidden layer (0 = input side)", ylabel="relative gradient norm", logy=True,
            caption="The mean-field prediction at init: a straight line on this log scale is a geometric "
                    "decay or growth by the per-layer factor, flat means critical.", markers=False))
    return Section("Theory at initialization", p.get("explanation", ""), figures,
                   [Table(["quantity", "value"], rows, "Mean-field signal propagation (Poole et al. 2016, "
                          "Schoenholz et al. 2017) against the gradients measured at step 0.")])


def trials_table(results: Sequence[Mapping[str, Any]]) -> Table:
    rows = []
    for rank, r in enumerate(results, 1):
        trial = r["trial"]
        rows.append([rank, trial["title"], trial.get("describe", ""), r.get("final_loss"), r.get("loss_vs_baseline"),
                     r.get("first_last_ratio"), "yes" if r.get("nonfinite") else "no", r.get("score"),
                     r.get("error") or ""])
    return Table(["rank", "remedy", "change", "final loss", "vs baseline", "first/last grad ratio", "NaN/Inf",
                  "score", "note"], rows,
                 "Each remedy forked from the same seed and data order; score = ln(ln C / final loss) - "
                 "min(|log10 ratio|, 10)/10, higher is healthier.")


# lines in the trials' loss chart beside the baseline: more would not be told apart
CHARTED_TRIALS = 5


def trials_section(results: Sequence[Mapping[str, Any]]) -> Section:
    return Section("Remedy trials", "Short runs that differ from the baseline by one remedy, best first.",
                   figures=[f for f in [trials_loss_chart(results)] if f is not None], tables=[trials_table(results)])


def trials_loss_chart(results: Sequence[Mapping[str, Any]]):
    """Training loss of the baseline and the best-ranked trials, step by step; None without curves."""
    ranked = [r for r in results if r.get("losses") and r["trial"]["key"] != "baseline"][:CHARTED_TRIALS]
    baseline = [r for r in results if r.get("losses") and r["trial"]["key"] == "baseline"]
    shown = baseline + ranked
    if not shown:
        return None
    series = {r["trial"]["title"]: (r["loss_steps"], r["losses"]) for r in shown}
    finite = [v for r in shown for v in r["losses"] if v is not None and v > 0]
    return line_chart(series, title="Training loss of each trial", xlabel="step", ylabel="loss",
                      logy=bool(finite) and max(finite) / min(finite) >= 100, markers=False,
                      caption=f"The baseline and the {len(ranked)} best-ranked remedies: a remedy that works "
                              "pulls its line below the baseline's.")
