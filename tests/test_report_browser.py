"""The HTML report as a person sees it: rendered by headless Chromium at desktop and phone width.

Chromium comes from Debian's ``chromium`` package, which ``make test`` installs (``make browser``).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _report_logs import make_diagnosis, make_log

from gradhealth.report.html import render_html, run_sections, write_report

os.environ.setdefault("MPLCONFIGDIR", "/tmp/mpl")

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--enable-logging=stderr", "--v=0"]
# a console message or uncaught error from the page, as Chromium logs it with --enable-logging
CONSOLE_LINE = re.compile(r":CONSOLE[:(]|Uncaught|Page load failed")
# painted over the whole page when it is wider than the window (something overflows sideways)
OVERFLOW_PROBE = ("<script>if (document.documentElement.scrollWidth > window.innerWidth) {"
                  "document.body.style.background = 'rgb(255, 0, 255)';"
                  "document.body.innerHTML = '';}</script></body>")


def chromium(tmp_path: Path, url: str, *args: str) -> subprocess.CompletedProcess:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium package (target `browser`).")
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    return subprocess.run([str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", *args, url],
                          capture_output=True, text=True, timeout=120)


def screenshot(tmp_path: Path, page: Path, width: int, height: int, name: str) -> tuple[np.ndarray, str]:
    png = tmp_path / name
    result = chromium(tmp_path, page.as_uri(), f"--screenshot={png}", f"--window-size={width},{height}")
    assert png.is_file(), f"no screenshot: {result.stderr[-2000:]}"
    from PIL import Image

    return np.asarray(Image.open(png).convert("RGB")), result.stderr


def console_errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if CONSOLE_LINE.search(line)]


def assert_not_blank(pixels: np.ndarray, width: int) -> None:
    assert pixels.shape[1] == width
    non_white = np.any(pixels < 235, axis=-1).mean()
    assert 0.03 < non_white < 0.9, f"only {non_white:.1%} of the page is drawn on"
    assert pixels.std() > 20


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    diagnosis = make_diagnosis()
    assert len(diagnosis.findings) == 2
    page = render_html("gradhealth report: run.jsonl", run_sections(make_log(depth=12, steps=30), diagnosis),
                       diagnosis=diagnosis, subtitle="mlp:depth=12,activation=sigmoid · synthetic · 30 steps")
    return write_report(tmp_path_factory.mktemp("page") / "report.html", page)


def test_console_checks_catch_a_broken_page(tmp_path):
    # the checks below must be able to fail: a page with a script error and a too-wide element
    page = tmp_path / "broken.html"
    page.write_text('<!doctype html><html><head><meta name="viewport" content="width=device-width"></head><body>'
                    '<div style="width:900px;height:50px;background:#333"></div>'
                    '<script>console.error("boom"); undefined_function();</script>' + OVERFLOW_PROBE + "</html>")
    pixels, stderr = screenshot(tmp_path, page, 390, 400, "broken.png")
    assert len(console_errors(stderr)) == 2, stderr[-2000:]
    assert np.all(pixels[200, 10] == (255, 0, 255))


def test_missing_chromium_fails_and_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "CHROMIUM", tmp_path / "no-chromium")
    with pytest.raises(pytest.fail.Exception, match="make test"):
        chromium(tmp_path, "about:blank")


def test_desktop_render_has_figures_verdict_and_no_errors(report, tmp_path):
    pixels, stderr = screenshot(tmp_path, report, 1280, 2400, "desktop.png")
    assert_not_blank(pixels, 1280)
    assert console_errors(stderr) == []
    dom = chromium(tmp_path, report.as_uri(), "--dump-dom", "--window-size=1280,2400")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count("<svg") == 5  # depth at first and last step, heatmap, loss, update ratio
    assert re.search(r'<span class="badge unhealthy">unhealthy</span>2 findings: 1 error, 1 warning', dom.stdout)
    assert dom.stdout.count('<tr id="finding-') == 2
    assert console_errors(dom.stderr) == []


def test_phone_render_fits_the_width(report, tmp_path):
    probed = tmp_path / "probed.html"
    probed.write_text(report.read_text().replace("</body>", OVERFLOW_PROBE))
    pixels, stderr = screenshot(tmp_path, probed, 390, 2400, "phone.png")
    magenta = np.all(pixels == (255, 0, 255), axis=-1).mean()
    assert magenta == 0, "the page is wider than a 390 px phone screen"
    assert_not_blank(pixels, 390)
    assert console_errors(stderr) == []
