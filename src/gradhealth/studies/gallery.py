"""Each study's key figure as a standalone SVG file (``NAME.svg``), e.g. for a README gallery."""
from __future__ import annotations

import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

from gradhealth.errors import ConfigError
from gradhealth.io import write_text_atomic
from gradhealth.report.svg import Figure
from gradhealth.studies.base import StudyResult

__all__ = ["standalone_svg", "write_gallery"]


def standalone_svg(figure: Figure) -> str:
    """The figure as an .svg file: an XML prolog and a fixed size from its viewBox.

    The inline SVG of a report is 100% wide; an ``<img>`` of a file needs its own size, which
    matplotlib's viewBox gives in points.
    """
    svg = figure.svg
    end = svg.index(">")
    head, body = svg[:end], svg[end:]
    box = re.search(r'viewBox="0 0 ([\d.]+) ([\d.]+)"', head)
    head = re.sub(r'\swidth="100%"', "", head)
    if box:
        head += f' width="{box.group(1)}pt" height="{box.group(2)}pt"'
    if "xmlns=" not in head:
        head += ' xmlns="http://www.w3.org/2000/svg"'
    return '<?xml version="1.0" encoding="utf-8" standalone="no"?>\n' + head + body + "\n"


def write_gallery(source: StudyResult | Sequence[StudyResult] | str | os.PathLike,
                  folder: str | os.PathLike) -> list[Path]:
    """Write ``folder/NAME.svg`` for every study with a key figure; returns the files written.

    ``source`` is one or more finished studies, or the output folder of ``gradhealth study``
    (its ``figures/*.svg`` are copied).
    """
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    if isinstance(source, (str, os.PathLike)):
        found = sorted((Path(source) / "figures").glob("*.svg"))
        if not found:
            raise ConfigError(f"{str(source)!r} holds no figures/*.svg; pass the output folder of `gradhealth study`.")
        return [path if path.resolve() == (target / path.name).resolve()
                else Path(shutil.copyfile(path, target / path.name)) for path in found]
    studies = [source] if isinstance(source, StudyResult) else list(source)
    written = []
    for study in studies:
        if study.key_figure is None:
            continue
        path = target / f"{study.name}.svg"
        write_text_atomic(path, standalone_svg(study.key_figure))
        written.append(path)
    return written
