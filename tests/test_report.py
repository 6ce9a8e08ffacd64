"""Report figures, HTML page, terminal view and the ``gradhealth report`` command (no torch needed)."""
from __future__ import annotations

import base64
import io
import math
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from _report_logs import EVIL, make_diagnosis, make_log

from gradhealth.cli import main
from gradhealth.diagnose.findings import Diagnosis
from gradhealth.errors import ConfigError
from gradhealth.monitor.records import LayerStats, RunLog, RunMeta, StepRecord, write_jsonl
from gradhealth.report import charts, figures
from gradhealth.report.console import depth_rows, print_diagnosis
from gradhealth.report.html import (Section, Table, findings_section, render_html, run_details_table, run_sections,
                                    write_report)

os.environ.setdefault("MPLCONFIGDIR", "/tmp/mpl")


def series_ids(svg: str) -> list[str]:
    return re.findall(r'id="[^"]*-series-(\d+)"', svg)


def legend_ids(svg: str) -> list[str]:
    return re.findall(r'id="[^"]*-legend-(\d+)"', svg)


def series_path(svg: str, index: int) -> str:
    """The ``d`` of the line drawn for series ``index`` (the first path inside its group)."""
    match = re.search(rf'id="[^"]*-series-{index}">\s*<path d="([^"]*)"', svg)
    assert match, f"series {index} has no line path"
    return match.group(1)


def path_points(d: str) -> list[list[tuple[float, float]]]:
    """Polyline pieces: each ``M`` starts a new piece (a gap in the data)."""
    pieces: list[list[tuple[float, float]]] = []
    for op, x, y in re.findall(r"([ML]) ([-\d.e]+) ([-\d.e]+)", d):
        if op == "M":
            pieces.append([])
        pieces[-1].append((float(x), float(y)))
    return pieces


# ---- figures -------------------------------------------------------------------------------------

def test_grad_vs_depth_is_a_straight_line_on_log_axis_for_geometric_decay():
    # at step 0 the norms are 0.1 * 0.5 ** (11 - i): equal steps on a log axis, equal x steps too
    fig = figures.grad_vs_depth(make_log(), "first")
    assert series_ids(fig.svg) == ["0"] and legend_ids(fig.svg) == []  # one run: no legend needed
    pieces = path_points(series_path(fig.svg, 0))
    # layer 1 has a zero gradient: layer 0 stands alone, then layers 2..11 are one piece
    assert [len(p) for p in pieces] == [1, 10]
    xs = [x for x, _ in pieces[1]]
    ys = [y for _, y in pieces[1]]
    assert np.allclose(np.diff(xs), np.diff(xs)[0], rtol=1e-4)
    assert np.allclose(np.diff(ys), np.diff(ys)[0], rtol=1e-4)
    assert ys[0] > ys[-1]  # SVG y grows downward: the input side is lower, the gradient vanishes
    assert "step 0" in fig.title and "1 zero or missing value is left as gaps" in fig.caption


def test_grad_vs_depth_one_line_and_one_legend_entry_per_run():
    runs = {"plain": make_log(), "residual": make_log(decay=0.95), "third": make_log(depth=5)}
    fig = figures.grad_vs_depth(runs, "last")
    assert series_ids(fig.svg) == ["0", "1", "2"]
    assert legend_ids(fig.svg) == ["0", "1", "2"]
    decayed = path_points(series_path(fig.svg, 0))[-1]
    flatter = path_points(series_path(fig.svg, 1))[-1]
    # same axis: the slower decay spans fewer SVG units from layer 2 to the output
    assert abs(decayed[0][1] - decayed[-1][1]) > abs(flatter[0][1] - flatter[-1][1])


def test_grad_vs_depth_marks_inf_and_rejects_unknown_steps():
    fig = figures.grad_vs_depth(make_log(), 17)  # layer 3 is Inf at step 17
    pieces = path_points(series_path(fig.svg, 0))
    assert [len(p) for p in pieces] == [1, 1, 8]
    assert "1 NaN/Inf value is marked × at the top" in fig.caption
    with pytest.raises(ConfigError, match="step 99 is not in the log"):
        figures.grad_vs_depth(make_log(), 99)
    with pytest.raises(ConfigError, match="unknown step"):
        figures.grad_vs_depth(make_log(), "middle")
    with pytest.raises(ConfigError, match="unknown layer metric"):
        figures.grad_vs_depth(make_log(), metric="gradnorm")


def test_heatmap_counts_red_and_grey_cells_and_paints_red():
    fig = figures.grad_heatmap(make_log())
    # hand count: one Inf (layer 3, step 17); layer 1 is zero at all 30 steps
    assert "1 red cell is NaN/Inf" in fig.caption and "30 grey cells are zero" in fig.caption
    images = re.findall(r'data:image/png;base64,([^"]+)"', fig.svg)
    assert images, "the heatmap should be embedded as a raster image"
    from PIL import Image

    pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode("".join(images[0].split())))).convert("RGBA"))
    red = np.all(np.abs(pixels[..., :3].astype(int) - (214, 39, 40)) < 8, axis=-1) & (pixels[..., 3] == 255)
    see_through = pixels[..., 3] == 0  # zero cells let the grey axes background show
    assert red.any() and see_through.any() and "fill: #d9d9d9" in fig.svg
    assert see_through.sum() > 10 * red.sum()  # a whole row of grey vs one cell of red


def test_loss_curves_series_legend_and_marks():
    fig = figures.loss_curves({"plain": make_log(), "residual": make_log(decay=0.9)})
    assert series_ids(fig.svg) == ["0", "1", "2", "3"]  # train + val for each run
    assert len(legend_ids(fig.svg)) == 6  # 4 curves, the NaN/Inf cross and the skipped-step tick
    assert "2 NaN/Inf losses are marked" in fig.caption and "1 skipped optimizer step is ticked" in fig.caption
    train = path_points(series_path(fig.svg, 0))
    assert [len(p) for p in train] == [17, 12]  # the NaN at step 17 splits 30 steps


def test_loss_caption_names_the_validation_curve_only_where_there_is_one():
    with_val = figures.loss_curves(make_log())
    log = make_log()
    for record in log.records:
        record.metrics.pop("val_loss", None)
    without = figures.loss_curves(log)
    assert "validation loss (dashed)" in with_val.caption
    assert "validation" not in without.caption and without.caption.startswith("Training loss per step")
    assert series_ids(without.svg) == ["0"]


def test_spans_decades_chooses_the_log_axis():
    assert figures.spans_decades([0.01, 1.5])
    assert not figures.spans_decades([0.5, 2.3])
    assert not figures.spans_decades([-1.0, 1000.0])
    assert not figures.spans_decades([])


def test_update_ratio_stats_match_numpy_percentiles():
    log = make_log()
    steps, low, median, high = figures.update_ratio_stats(log)
    assert 17 not in steps and len(steps) == 29  # the skipped step has no update
    record = log.records[5]
    values = [s.update_ratio for s in record.layers.values()]
    assert median[5] == pytest.approx(np.median(values))
    assert (low[5], high[5]) == pytest.approx(tuple(np.percentile(values, [10, 90])))
    fig = figures.update_ratio_chart(log)
    assert series_ids(fig.svg) == ["0"] and len(legend_ids(fig.svg)) == 3  # median, band, 1e-3 guide


def test_update_ratio_chart_draws_ratios_logged_on_detailed_steps_only():
    # the monitor measures update ratios on detailed steps only (every 10th): the chart must join
    # and mark those points, not leave every one isolated between missing steps
    log = make_log(steps=45, nonfinite_step=None)
    for record in log.records:
        if record.step % 10:
            for stats in record.layers.values():
                stats.update_ratio = None
    fig = figures.update_ratio_chart(log)
    pieces = path_points(series_path(fig.svg, 0))
    assert [len(p) for p in pieces] == [5]  # steps 0, 10, 20, 30, 40 in one joined line
    group = re.search(r'id="[^"]*-series-0">(.*?)</g>\s*</g>', fig.svg, re.S).group(1)
    assert len(re.findall(r"<use ", group)) == 5  # a marker on each


def test_generic_line_and_bar_charts():
    fig = charts.line_chart({"plain": ([10, 20, 30, 40], [1e-3, 1e-6, 0.0, math.nan]),
                              "residual": ([10, 20, 30, 40], [1, 1, 1, 1])},
                             title="First/last gradient ratio", xlabel="depth", ylabel="ratio", logy=True,
                             caption="Plain nets lose the gradient with depth.", guides={"no change": 1.0})
    assert series_ids(fig.svg) == ["0", "1"] and len(legend_ids(fig.svg)) == 3
    assert fig.caption.startswith("Plain nets")
    assert "1 NaN/Inf point is marked" in fig.caption and "1 zero or missing point is left" in fig.caption
    bars = charts.bar_chart(["a", "b", "c"], {"x": [1, 2, 3], "y": [2, math.inf, 1]}, title="t", ylabel="v")
    assert re.findall(r'-series-(\d+)-bar-(\d+)"', bars.svg) == [(s, b) for s in "01" for b in "012"]
    assert "1 NaN/Inf value has no bar" in bars.caption
    with pytest.raises(ConfigError, match="one y per x"):
        charts.line_chart({"a": ([1, 2], [1])}, title="t", xlabel="x", ylabel="y")
    with pytest.raises(ConfigError, match="one value per category"):
        charts.bar_chart(["a"], {"x": [1, 2]}, title="t", ylabel="v")


def test_svg_is_standalone_scalable_and_free_of_prolog_and_comments():
    fig = figures.grad_vs_depth({"a": make_log(), "b": make_log(depth=4)})
    root = ET.fromstring(fig.svg)  # well-formed on its own
    assert root.get("viewBox") and root.get("width") == "100%" and root.get("height") is None
    assert not fig.svg.startswith("<?xml") and "<!DOCTYPE" not in fig.svg and "<!--" not in fig.svg
    assert "<metadata" not in fig.svg


def test_nonfinite_everywhere_does_not_crash_any_figure():
    nan, inf = math.nan, math.inf
    records = [StepRecord(step=s, loss=[nan, inf, None][s % 3], skipped=s % 2 == 0,
                          layers={f"l{i}": LayerStats(grad_norm=[nan, inf, 0.0, None][(s + i) % 4],
                                                      update_ratio=nan) for i in range(4)})
               for s in range(6)]
    log = RunLog(RunMeta(), records)
    for fig in (figures.grad_vs_depth(log), figures.grad_vs_depth(log, "last"), figures.grad_heatmap(log),
                figures.loss_curves(log), figures.loss_curves(log, logy=True), figures.update_ratio_chart(log)):
        ET.fromstring(fig.svg)
    page = render_html("all broken", run_sections(log, Diagnosis(findings=[])))
    assert page.count("<svg") == 5


# ---- HTML ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def evil_page() -> str:
    diagnosis = make_diagnosis(evil=True)
    sections = run_sections(make_log(evil=True), diagnosis, label=EVIL)
    sections.append(Section(EVIL, intro=EVIL, tables=[Table([EVIL], [[EVIL], [1.5]], caption=EVIL)]))
    return render_html(EVIL, sections, diagnosis=diagnosis, toc=True, subtitle=EVIL)


def test_every_text_from_data_is_escaped(evil_page):
    assert "<script" not in evil_page.lower()  # the page itself has no scripts, so any would be injected
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in evil_page
    # layer names in figures are drawn as glyphs; none leaks as markup
    for svg in re.findall(r"<svg.*?</svg>", evil_page, flags=re.S):
        ET.fromstring(svg)


def test_page_fetches_nothing(evil_page):
    allowed = {'xmlns="http://www.w3.org/2000/svg"', 'xmlns:xlink="http://www.w3.org/1999/xlink"'}
    for match in re.finditer(r'[\w:]+="https?://[^"]*"|https?://', evil_page):
        assert match.group(0) in allowed, match.group(0)
    assert not re.search(r"<(link|iframe|img|object|embed)\b|@import|\bsrc=", evil_page)
    assert set(re.findall(r"url\((.)", evil_page)) <= {"#"}  # only in-page clip-path references


def test_ids_are_unique_and_contents_link_to_sections(evil_page):
    ids = re.findall(r'\bid="([^"]+)"', evil_page)
    assert len(ids) == len(set(ids))
    links = re.findall(r'<nav class="toc".*?</nav>', evil_page, flags=re.S)[0]
    targets = re.findall(r'href="#([^"]+)"', links)
    assert len(targets) == 8 and set(targets) <= set(ids)
    # a labelled run's finding rows get their own ids; the plain ones are what the verdict links to
    assert 'id="finding-script-alert-1-script-1"' in evil_page and 'href="#finding-1"' not in evil_page


def test_verdict_links_findings_of_an_unlabelled_run():
    diagnosis = make_diagnosis()
    page = render_html("r", [Section("Other"), findings_section(diagnosis)], diagnosis=diagnosis)
    assert re.findall(r'href="#(finding-\d)"', page) == ["finding-1", "finding-2"]
    assert 'id="finding-1"' in page and 'id="finding-2"' in page


def test_verdict_and_findings_come_first_then_remedies_in_rank_order(evil_page):
    verdict = evil_page.index('class="badge unhealthy"')
    assert verdict < evil_page.index("<figure")
    assert "2 findings: 1 error, 1 warning in 30 steps" in evil_page
    assert evil_page.index("Add residual connections") < evil_page.index("Use a non-saturating activation")
    assert "<code>mlp:depth=12,activation=sigmoid,residual=true</code>" in evil_page
    healthy = render_html("r", [], diagnosis=Diagnosis(findings=[]))
    assert 'class="badge healthy"' in healthy and "no findings" in healthy


def test_run_sections_without_optional_measurements():
    plain = RunLog(RunMeta(), [StepRecord(step=0, loss=1.0), StepRecord(step=1, loss=0.5)])
    titles = [s.title for s in run_sections(plain, None)]
    assert titles == ["Gradients", "Loss", "Run details"]


def test_run_details_name_the_data_the_training_loop_logs_in_the_config():
    # the training loop's log leaves meta.data empty and carries the data set in its config
    log = make_log()
    log.meta.data, log.meta.config = None, {**log.meta.config, "data": "digits"}
    rows = dict((key, value) for key, value in run_details_table(log).rows)
    assert rows["data"] == "digits" and rows["config: data"] == "digits"
    log.meta.config = {}
    assert dict((key, value) for key, value in run_details_table(log).rows)["data"] == "–"


def test_write_report_is_atomic(tmp_path, monkeypatch):
    target = tmp_path / "report.html"
    write_report(target, "old page")
    assert target.read_text() == "old page" and (target.stat().st_mode & 0o777) == 0o644

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        write_report(target, "new page")
    assert target.read_text() == "old page"
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]  # no temp file left behind


# ---- terminal view -------------------------------------------------------------------------------

def test_depth_rows_place_a_geometric_decay_evenly():
    rows, total = depth_rows(make_log(), "first")
    assert total == 12 and [r[0] for r in rows] == list(range(12))
    fractions = [r[3] for r in rows if r[3] is not None]
    assert rows[1][3] is None  # zero gradient: no bar
    assert np.allclose(np.diff(fractions[1:]), np.diff(fractions[1:])[0], rtol=1e-6)
    rows, total = depth_rows(make_log(depth=100), max_rows=30)
    assert total == 100 and len(rows) == 30 and rows[0][0] == 0 and rows[-1][0] == 99


def test_print_diagnosis_plain_text_when_piped():
    from rich.console import Console

    out = io.StringIO()
    log = make_log(evil=True)
    log.meta.layers[0].name = "[bold]x"  # rich markup in a name must print as it is
    for record in log.records:
        record.layers["[bold]x"] = record.layers.pop("blocks.0.fc")
    print_diagnosis(make_diagnosis(evil=True), log, Console(file=out, width=160))
    text = out.getvalue()
    assert "\x1b[" not in text
    assert "UNHEALTHY" in text and "Gradients vanish toward the input" in text and "Add residual connections" in text
    assert "the first layer gets 2^-11 of the last" in text  # the explanation, in words
    assert "[bold]x" in text and EVIL in text and "input at top" in text
    assert len(re.findall(r"^\s+\d+ ", text, flags=re.M)) == 12


def _blind_diagnosis() -> Diagnosis:
    cover = {"known": True, "threshold": 0.9, "complete_enough": False,
             "weight_matrices": {"measured": 2, "total": 26, "fraction": 2 / 26, "unmeasured": [EVIL], "frozen": 0},
             "activations": {"hooked": 0, "total": 6, "unhooked": ["mlp.act"]},
             "unclassified": ["h.0.attn"], "unclassified_count": 1}
    not_run = [{"rule": "depth profile", "kinds": ["vanishing_gradient", "exploding_gradient"],
                "reason": "needs 3 blocks with gradients, found 2", "blocks_verdict": True}]
    return Diagnosis(findings=[], model="gpt2", steps=4, coverage=cover, not_run=not_run)


def test_an_inconclusive_diagnosis_shows_coverage_and_what_did_not_run_on_the_page_and_in_the_terminal():
    from rich.console import Console

    diagnosis = _blind_diagnosis()
    assert diagnosis.verdict == "inconclusive"
    page = render_html("r", [findings_section(diagnosis)], diagnosis=diagnosis)
    assert 'class="badge inconclusive"' in page and "2 of 26 weight matrices measured (8%" in page
    assert "0 of 6 activation modules hooked" in page and "1 module(s) of no known role" in page
    assert "depth profile (vanishing_gradient, exploding_gradient): needs 3 blocks with gradients, found 2" in page
    assert EVIL not in page and "too little of the model was measured" in page
    out = io.StringIO()
    print_diagnosis(diagnosis, None, Console(file=out, width=200))
    text = out.getvalue()
    assert "INCONCLUSIVE" in text and "Coverage: 2 of 26 weight matrices measured" in text
    assert "Not run: depth profile" in text and "Inconclusive: depth profile: needs 3 blocks" in text
    # the same diagnosis with the model seen whole and the depth rules run is healthy
    diagnosis.not_run, diagnosis.coverage = [], {**diagnosis.coverage, "complete_enough": True}
    assert diagnosis.verdict == "healthy"


# ---- command line --------------------------------------------------------------------------------

def write_log(path: Path, **shape) -> Path:
    log = make_log(**shape)
    write_jsonl(path, log.records, log.meta)
    return path


def test_cli_writes_the_report_next_to_the_log(tmp_path, capsys):
    log_path = write_log(tmp_path / "run.jsonl")
    assert main(["report", str(log_path), "--title", "My run"]) == 0
    out = tmp_path / "report.html"
    assert capsys.readouterr().out.strip() == str(out)
    page = out.read_text()
    assert "<title>My run</title>" in page and page.count("<svg") == 5 and 'class="badge unhealthy"' in page


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing.jsonl")]) == 1
    assert capsys.readouterr().err.startswith("error: metrics log")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"step": 0}\nnot json\n{"step": 2}\n')
    assert main(["report", str(broken)]) == 1
    assert "line 2 of broken.jsonl" in capsys.readouterr().err
    log_path = write_log(tmp_path / "run.jsonl", depth=3, steps=4, nonfinite_step=None)
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["report", str(log_path), "--out", str(blocker / "r.html")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_cli_report_runs_without_torch(tmp_path):
    log_path = write_log(tmp_path / "run.jsonl")
    out = tmp_path / "r.html"
    code = ("import sys; from gradhealth.cli import main; "
            f"rc = main(['report', {str(log_path)!r}, '--out', {str(out)!r}]); "
            "assert rc == 0, rc; assert 'torch' not in sys.modules, 'torch was imported'; "
            "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot was imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(out) and out.is_file()


def test_the_activation_table_reads_the_last_step_that_measured_activations():
    from gradhealth.report.html import activation_table

    log = make_log()
    measured = log.records[-2]
    log.records[-1].activations = {}  # a step without detail measures no activations
    table = activation_table(log)
    assert f"Saturated, step {measured.step}" in table.columns
    name = next(iter(measured.activations))
    row = next(r for r in table.rows if r[0] == name)
    assert row[3] != "–"
