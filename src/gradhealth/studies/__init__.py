"""Studies that reproduce each claim of the material by training small networks and measuring them.

    from gradhealth.studies import run_study
    result = run_study("vanishing", "quick")
    [(claim.text, claim.holds) for claim in result.claims]

Sizes: ``tiny`` (seconds, for tests), ``quick`` (minutes on a laptop CPU), ``full`` (deeper, longer,
three seeds). ``gradhealth study NAME`` runs one from the command line and writes its report.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from importlib import import_module
from types import ModuleType
from typing import TYPE_CHECKING

from gradhealth.errors import unknown_name

if TYPE_CHECKING:
    from gradhealth.studies.base import StudyResult

__all__ = ["STUDIES", "list_studies", "get_study", "run_study", "run_all"]

# name -> module, in the order the material tells the story
STUDIES = {
    "vanishing": "gradhealth.studies.vanishing",
    "exploding": "gradhealth.studies.exploding",
    "residual": "gradhealth.studies.residual",
    "normalization": "gradhealth.studies.normalization",
    "clipping": "gradhealth.studies.clipping",
    "schedules": "gradhealth.studies.schedules",
    "init": "gradhealth.studies.initialization",
    "transformer": "gradhealth.studies.transformer",
    "recurrent": "gradhealth.studies.recurrent",
}


def list_studies() -> list[str]:
    return list(STUDIES)


def get_study(name: str) -> ModuleType:
    """The module of study ``name``: it has NAME, TITLE, PRESETS and ``run(size, *, data, seeds)``."""
    if name not in STUDIES:
        raise unknown_name("study", name, [*STUDIES, "all"])
    return import_module(STUDIES[name])


def run_study(name: str, size: str = "quick", *, data: str | None = None,
              seeds: int | Sequence[int] | None = None) -> StudyResult:
    """Run one study; ``data`` replaces the data set of its runs, ``seeds`` is a count or a list."""
    started = time.perf_counter()
    result = get_study(name).run(size, data=data, seeds=seeds)
    result.results["seconds"] = round(time.perf_counter() - started, 1)
    return result


def run_all(size: str = "quick", *, data: str | None = None, seeds: int | Sequence[int] | None = None,
            names: Sequence[str] | None = None,
            on_start: Callable[[str], None] | None = None) -> list[StudyResult]:
    """Every study (or those in ``names``) in the material's order; ``on_start(name)`` before each."""
    chosen = list(names) if names is not None else list_studies()
    for name in chosen:
        get_study(name)  # an unknown name fails before any training starts
    results = []
    for name in chosen:
        if on_start is not None:
            on_start(name)
        results.append(run_study(name, size, data=data, seeds=seeds))
    return results
