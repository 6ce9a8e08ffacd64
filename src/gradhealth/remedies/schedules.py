"""Learning-rate schedules by name, each built from ``torch.optim.lr_scheduler`` classes.

Steps are optimizer steps: call ``scheduler.step()`` once right after every ``optimizer.step()``
(never per epoch), and ``total_steps`` is the number of optimizer steps of the run. The lr used
by optimizer step k (counting from 0) is the one set by k scheduler steps; after ``total_steps``
of them the decaying schedules have reached their final value (``min_lr`` for the cosines).

Defaults for a run of T steps:
``constant``; ``step`` (x gamma=0.1 every T//3 steps); ``multistep`` (x0.1 at 50% and 75% of T,
He et al. 2015's 32k and 48k of 64k iterations); ``exponential`` (per-step gamma that ends at
1% of the base lr); ``cosine`` (to ``min_lr`` at T, Loshchilov & Hutter 2017);
``warmup_cosine`` (linear warm-up over 5% of T from lr/(W+1) up to lr, Goyal et al. 2017, then
cosine to ``min_lr``); ``onecycle`` (Smith & Topin 2019, peak ``max_lr``, default the
optimizer's lr; momentum is cycled only when the optimizer has momentum or betas).
"""
from __future__ import annotations

from collections.abc import Sequence

from torch.optim import Optimizer
from torch.optim import lr_scheduler as sched

from gradhealth.errors import ConfigError, unknown_name
from gradhealth.validate import non_negative_number, positive_number

__all__ = ["SCHEDULES", "create_scheduler", "default_warmup_steps", "default_milestones"]

SCHEDULES = ("constant", "step", "multistep", "exponential", "cosine", "warmup_cosine", "onecycle")

# which schedules use each optional argument; giving one to another schedule is refused, not ignored
_USES = {
    "step_size": ("step",),
    "milestones": ("multistep",),
    "gamma": ("step", "multistep", "exponential"),
    "warmup_steps": ("warmup_cosine",),
    "min_lr": ("cosine", "warmup_cosine"),
    "max_lr": ("onecycle",),
}
_WARMUP_FRACTION = 0.05
_EXPONENTIAL_END = 0.01  # the default exponential schedule ends at 1% of the base lr


def _whole(what: str, value: object, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value >= high):
        where = f"in [{low}, {high})" if high is not None else f">= {low}"
        raise ConfigError(f"{what} must be a whole number of steps {where}, not {value!r}.")
    return value


def default_warmup_steps(total_steps: int) -> int:
    """5% of the run, at least one step, and always fewer than ``total_steps``."""
    return min(max(1, round(_WARMUP_FRACTION * total_steps)), total_steps - 1)


def default_milestones(total_steps: int) -> list[int]:
    """50% and 75% of the run (He et al. 2015: 32k and 48k of 64k), dropping any that cannot fire."""
    return sorted({m for m in (total_steps // 2, 3 * total_steps // 4) if 0 < m < total_steps})


def _check_milestones(milestones: Sequence[int], total_steps: int) -> list[int]:
    values = list(milestones)
    for m in values:
        _whole("every milestone", m, 1, total_steps)
    if any(b <= a for a, b in zip(values, values[1:])):
        raise ConfigError(f"milestones must be strictly increasing, not {values!r}.")
    return values


def create_scheduler(
    name: str,
    optimizer: Optimizer,
    total_steps: int,
    *,
    step_size: int | None = None,
    milestones: Sequence[int] | None = None,
    gamma: float | None = None,
    warmup_steps: int | None = None,
    min_lr: float = 0.0,
    max_lr: float | None = None,
) -> sched.LRScheduler:
    """The schedule ``name`` for a run of ``total_steps`` optimizer steps; unset options take the
    defaults of the module docstring, and an option the schedule does not use is refused."""
    if name not in SCHEDULES:
        raise unknown_name("lr schedule", name, SCHEDULES)
    total_steps = _whole("total_steps", total_steps, 1)
    given = {"step_size": step_size, "milestones": milestones, "gamma": gamma, "warmup_steps": warmup_steps,
             "max_lr": max_lr, "min_lr": min_lr or None}
    for option, value in given.items():
        if value is not None and name not in _USES[option]:
            raise ConfigError(f"{option} is not used by the {name!r} schedule; drop it or choose "
                              f"{' or '.join(repr(s) for s in _USES[option])}.")
    if gamma is not None:
        gamma = positive_number("gamma", gamma)
    min_lr = non_negative_number("min_lr", min_lr)
    if name in _USES["min_lr"] and any(min_lr > group["lr"] for group in optimizer.param_groups):
        raise ConfigError(
            f"min_lr {min_lr:g} is above the optimizer's learning rate; a decay must end below where it starts."
        )

    if name == "constant":
        return sched.ConstantLR(optimizer, factor=1.0, total_iters=total_steps)
    if name == "step":
        size = max(1, total_steps // 3) if step_size is None else _whole("step_size", step_size, 1)
        return sched.StepLR(optimizer, step_size=size, gamma=0.1 if gamma is None else gamma)
    if name == "multistep":
        marks = default_milestones(total_steps) if milestones is None else _check_milestones(milestones, total_steps)
        return sched.MultiStepLR(optimizer, milestones=marks, gamma=0.1 if gamma is None else gamma)
    if name == "exponential":
        return sched.ExponentialLR(optimizer, gamma=_EXPONENTIAL_END ** (1 / total_steps) if gamma is None else gamma)
    if name == "cosine":
        return sched.CosineAnnealingLR(optimizer, T_max=total_steps, eta_min=min_lr)
    if name == "warmup_cosine":
        warmup = default_warmup_steps(total_steps) if warmup_steps is None else _whole(
            "warmup_steps", warmup_steps, 0, total_steps)
        if warmup == 0:
            return sched.CosineAnnealingLR(optimizer, T_max=total_steps, eta_min=min_lr)
        # start at lr/(W+1): step k of the warm-up then runs at lr*(k+1)/(W+1), reaching lr at step W
        ramp = sched.LinearLR(optimizer, start_factor=1.0 / (warmup + 1), end_factor=1.0, total_iters=warmup)
        decay = sched.CosineAnnealingLR(optimizer, T_max=total_steps - warmup, eta_min=min_lr)
        return sched.SequentialLR(optimizer, [ramp, decay], milestones=[warmup])
    peak = [group["lr"] for group in optimizer.param_groups] if max_lr is None else positive_number("max_lr", max_lr)
    # OneCycleLR would otherwise cycle a plain SGD's momentum from 0 up to 0.95
    has_momentum = any(group.get("momentum", 0) > 0 or "betas" in group for group in optimizer.param_groups)
    return sched.OneCycleLR(optimizer, max_lr=peak, total_steps=total_steps, cycle_momentum=has_momentum)
