"""Records -> findings: what is wrong, in which layers, why, and what fixes it (no torch)."""
from gradhealth.diagnose.findings import FINDING_KINDS, SEVERITIES, Diagnosis, Finding, Remedy
from gradhealth.diagnose.rules import diagnose_log

__all__ = [
    "diagnose_log",
    "Diagnosis",
    "Finding",
    "Remedy",
    "FINDING_KINDS",
    "SEVERITIES",
]
