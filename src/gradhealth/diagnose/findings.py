"""What diagnosis concludes, as plain data (no torch): findings, their evidence and remedies."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["SEVERITIES", "FINDING_KINDS", "Remedy", "Finding", "Diagnosis"]

SEVERITIES = ("info", "warning", "error")
FINDING_KINDS = (
    "vanishing_gradient",
    "exploding_gradient",
    "nonfinite",
    "saturation",
    "dead_units",
    "lr_too_high",
    "lr_too_low",
    "degradation",
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
    """The verdict on one run: ``unhealthy`` when any finding has severity warning or error."""

    findings: list[Finding]
    model: str | None = None
    data: str | None = None
    steps: int = 0
    # optional extra sections (the theory prediction at init, trial results, ...)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        return "unhealthy" if any(f.severity in ("warning", "error") for f in self.findings) else "healthy"

    def kinds(self) -> set[str]:
        return {f.kind for f in self.findings}

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "findings": [f.to_json() for f in self.findings],
            "model": self.model,
            "data": self.data,
            "steps": self.steps,
            **({"extra": self.extra} if self.extra else {}),
        }
