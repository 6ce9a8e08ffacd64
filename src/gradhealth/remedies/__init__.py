"""Remedies of the material as library functions: clipping, L1/L2, lr schedules, optimizers by name."""
from gradhealth.remedies.clip import (
    CLIP_MODES,
    DEFAULT_CLIP_VALUES,
    AdaptiveGradClipper,
    AutoClipper,
    ClipResult,
    GradClipper,
    NormClipper,
    ValueClipper,
    create_clipper,
)
from gradhealth.remedies.optim import OPTIMIZERS, create_optimizer
from gradhealth.remedies.regularize import (
    L2_MODES,
    PENALTY_INCLUDE,
    L2Mode,
    l1_penalty,
    l2_penalty,
    param_groups_for_decay,
)
from gradhealth.remedies.schedules import SCHEDULES, create_scheduler

__all__ = [
    "CLIP_MODES",
    "DEFAULT_CLIP_VALUES",
    "ClipResult",
    "GradClipper",
    "NormClipper",
    "ValueClipper",
    "AdaptiveGradClipper",
    "AutoClipper",
    "create_clipper",
    "L2_MODES",
    "L2Mode",
    "PENALTY_INCLUDE",
    "l1_penalty",
    "l2_penalty",
    "param_groups_for_decay",
    "OPTIMIZERS",
    "create_optimizer",
    "SCHEDULES",
    "create_scheduler",
]
