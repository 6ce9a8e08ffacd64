"""What a framework callback leaves in its output folder when training ends.

The run's ``metrics.jsonl`` is diagnosed the way ``gradhealth diagnose --from-log`` does it, and
``findings.json`` and ``report.html`` are written beside it, each through a temp file and a rename
so a reader never sees half a file.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from gradhealth.diagnose.findings import Diagnosis
from gradhealth.diagnose.rules import diagnose_log
from gradhealth.errors import RecordError
from gradhealth.monitor.records import read_jsonl
from gradhealth.report.html import run_page, write_report

__all__ = ["METRICS_FILE", "diagnose_run_folder", "verdict_line"]

METRICS_FILE = "metrics.jsonl"


def _write_text_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        # mkstemp makes the file private; findings.json is meant to be read like any output
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def diagnose_run_folder(folder: str | os.PathLike, metrics: str | os.PathLike | None = None) -> Diagnosis | None:
    """Diagnose ``metrics`` (default ``folder/metrics.jsonl``); write findings.json and report.html in ``folder``.

    Returns None when the run recorded no step (training stopped before its first optimizer
    step), since there is nothing to diagnose.
    """
    folder = Path(folder)
    try:
        log = read_jsonl(Path(metrics) if metrics is not None else folder / METRICS_FILE)
    except RecordError:
        return None
    diagnosis = diagnose_log(log)
    folder.mkdir(parents=True, exist_ok=True)
    write_report(folder / "report.html", run_page(log, diagnosis, f"gradhealth diagnosis: {diagnosis.model or 'run'}"))
    _write_text_atomically(folder / "findings.json", json.dumps(diagnosis.to_json(), indent=2, default=str))
    return diagnosis


def verdict_line(diagnosis: Diagnosis | None, folder: str | os.PathLike) -> str:
    """One line for the end of training: the verdict, the kinds found, where the report is."""
    if diagnosis is None:
        return "gradhealth: no optimizer step was recorded, so there is nothing to diagnose."
    kinds = ", ".join(f.kind for f in diagnosis.findings)
    found = f" ({kinds})" if kinds else ""
    return f"gradhealth: {diagnosis.verdict}{found} after {diagnosis.steps} steps; see {Path(folder) / 'report.html'}"
