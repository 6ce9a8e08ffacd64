"""What diagnosis concludes, as plain data (no torch): findings, their evidence and remedies."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["SEVERITIES", "VERDICTS", "FINDING_KINDS", "Remedy", "Finding", "Diagnosis"]

SEVERITIES = ("info", "warning", "error")
VERDICTS = ("healthy", "inconclusive", "unhealthy")
FINDING_KINDS = (
    "vanishing_gradient",
    "exploding_gradient",
    "nonfinite",
    "saturation",
    "dead_units",
    "lr_too_high",
    "lr_too_low",
    "degradation",
    "vanishing_through_time",
    "exploding_through_time",
)


@dataclass
class Remedy:
    """A fix from the material: ``key`` identifies it (e.g. ``residual``), ``why`` the cause it treats."""

    key: str
    title: str
    why: str
    # how to apply it here: a spec change, a CLI flag, a line of code
    how: str = ""


@dataclass
class Finding:
    kind: str
    severity: str
    title: str
    explanation: str
    layers: list[str] = field(default_factory=list)
    step: int | None = None
    # the measured numbers behind the finding (decay factor, first/last ratio, fractions ...)
    evidence: dict[str, Any] = field(default_factory=dict)
    remedies: list[Remedy] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Diagnosis:
    """The verdict on one run: ``unhealthy`` when any finding has severity warning or error, else
    ``inconclusive`` when a rule the verdict rests on could not run or too little of the model was
    measured (see ``inconclusive_because``), else ``healthy``."""

    findings: list[Finding]
    model: str | None = None
    data: str | None = None
    steps: int = 0
    # optional extra sections (the theory prediction at init, trial results, ...)
    extra: dict[str, Any] = field(default_factory=dict)
    # how much of the model was measured (see diagnose.coverage); None: not computed
    coverage: dict[str, Any] | None = None
    # the rules that could not run: {"rule", "kinds", "reason", "blocks_verdict"}
    not_run: list[dict[str, Any]] = field(default_factory=list)

    def inconclusive_because(self) -> list[str]:
        """Why a run without findings is not called healthy: rules that could not run, low coverage."""
        reasons = [f"{n['rule']}: {n['reason']}" for n in self.not_run if n.get("blocks_verdict")]
        cover = (self.coverage or {}).get("weight_matrices")
        if cover and (self.coverage or {}).get("complete_enough") is False:
            reasons.append(f"only {cover['measured']} of {cover['total']} weight matrices were measured "
                           f"(below {self.coverage['threshold']:.0%})")
        return reasons

    @property
    def verdict(self) -> str:
        if any(f.severity in ("warning", "error") for f in self.findings):
            return "unhealthy"
        return "inconclusive" if self.inconclusive_because() else "healthy"

    def kinds(self) -> set[str]:
        return {f.kind for f in self.findings}

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "findings": [f.to_json() for f in self.findings],
            "model": self.model,
            "data": self.data,
            "steps": self.steps,
            **({"coverage": self.coverage} if self.coverage is not None else {}),
            "not_run": list(self.not_run),
            **({"inconclusive_because": self.inconclusive_because()} if self.verdict == "inconclusive" else {}),
            **({"extra": self.extra} if self.extra else {}),
        }
