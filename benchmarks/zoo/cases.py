"""The zoo's cases and their labels: what each known cause must make the diagnosis say, and may.

A label comes from the cause of the breakage, never from what the tool outputs:

- ``must``: the finding kinds that have to appear (warning or error), with where they must point
  when that is knowable (``where``: the unit a NaN was injected into, the ReLUs whose bias was
  pushed down);
- ``may``: kinds the cause produces downstream by the same mechanism (a learning rate too high
  blows the gradient up, and from there the loss overflows); they are neither required nor wrong;
- every other kind must not appear, and a healthy case has no error-level finding at all.

The split into a tuning half and a held-out half is by architecture (``architectures.py``): the
rules' thresholds may be changed on what the tuning half shows, never on the held-out half.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


# The breakages' sizes, one value for every architecture (never one per case): init scaled by
# 1/4 or 4 (the gain every layer multiplies the signal by moves away from 1 by the same factor as
# the scale), SGD at lr 5 and Adam at lr 0.3 (hundreds of times the usual 0.01..0.05 and 1e-3), the
# architecture's own optimizer at 1e-4 of its healthy lr, the NaN at the middle unit at step 10.
INIT_SMALL, INIT_LARGE = 0.25, 4.0
LR_HIGH_SGD, LR_HIGH_ADAM = 5.0, 0.3
LR_LOW_FACTOR = 1e-4
NAN_STEP = 10
LONG_RANGE, SHORT_RANGE = 100, 10
STEPS = 40
# the shallow plain twin a deep plain net is compared with (degradation)
SHALLOW_DEPTH = 4

# the consequences of oversized weights or updates
_BLOWUP = ("exploding_gradient", "nonfinite", "saturation", "dead_units")


@dataclass(frozen=True)
class Cause:
    """A known cause of trouble: the kinds it must produce, may produce, and where it must point."""

    name: str
    description: str
    must: tuple[str, ...] = ()
    may: tuple[str, ...] = ()
    # "nan_unit" / "dead_relus": the label names layers for the first must-kind; None: anywhere
    where: str | None = None
    # kinds it must produce too in a net of saturating activations (tanh, sigmoid)
    must_if_saturating: tuple[str, ...] = ()


CAUSES: dict[str, Cause] = {c.name: c for c in (
    Cause("healthy", "the architecture's own healthy configuration"),
    Cause("saturating_depth", "sigmoid in every layer of a deep plain net (16 layers)",
          must=("vanishing_gradient",), may=("saturation",)),
    # with the weights near zero a ReLU unit's input is its bias: one with a negative bias is off for
    # every example, which is what a dead unit is
    Cause("init_small", f"weights initialized {INIT_SMALL}x their calibrated scale",
          must=("vanishing_gradient",), may=("dead_units",)),
    # a tanh unit's input then has a standard deviation of several units (4 x Xavier's 5/3 gain): most
    # of it lies where tanh' < 1 % of its maximum (|x| > 2.65), which is what saturation is
    Cause("init_large", f"weights initialized {INIT_LARGE:g}x their calibrated scale",
          must=("exploding_gradient",), may=("nonfinite", "saturation", "lr_too_high"),
          must_if_saturating=("saturation",)),
    Cause("recurrent_init_small", f"hidden-to-hidden weights {INIT_SMALL}x their default scale",
          must=("vanishing_through_time",)),
    Cause("recurrent_init_large", f"hidden-to-hidden weights {INIT_LARGE:g}x their default scale",
          must=("exploding_through_time",), may=("exploding_gradient", "nonfinite", "saturation", "lr_too_high")),
    # the degradation problem (He et al. 2016): the deep plain net trains worse than a shallow plain
    # twin; diagnosed with that twin's run as ``diagnose_log(log, compare=[twin])``, as the depth study does.
    # A deep plain stack of ReLUs also loses units for good (Lu et al. 2019, "Dying ReLU and
    # initialization": the deeper the plain net, the likelier its ReLUs die)
    Cause("no_skip", f"the residual connections taken out of a deep net ({16} blocks), diagnosed against its "
          f"{SHALLOW_DEPTH}-block plain twin", must=("degradation",), may=("vanishing_gradient", "dead_units")),
    Cause("lr_high_sgd", f"SGD at lr {LR_HIGH_SGD:g}", must=("lr_too_high",), may=_BLOWUP),
    Cause("lr_high_adam", f"Adam at lr {LR_HIGH_ADAM:g}", must=("lr_too_high",), may=_BLOWUP),
    Cause("lr_low", f"the healthy optimizer at {LR_LOW_FACTOR:g}x its lr", must=("lr_too_low",)),
    # without warm-up the first Adam steps are oversized for a post-LN stack (Liu et al. 2020): the
    # consequences of oversized updates, dead ReLUs among them, as for a learning rate too high
    Cause("post_ln_no_warmup", "post-LN encoder 16 layers deep, Adam 1e-3 without warm-up",
          must=("vanishing_gradient",), may=("lr_too_high", "exploding_gradient", "nonfinite", "dead_units")),
    Cause("dead_relu", f"every ReLU fed by a bias of {-5}", must=("dead_units",), may=("vanishing_gradient",),
          where="dead_relus"),
    Cause("nan", f"NaN output of the first weight layer of the middle unit at step {NAN_STEP}",
          must=("nonfinite",), where="nan_unit"),
    Cause("long_range", f"the label is the sign of step 1 of {LONG_RANGE}", must=("vanishing_through_time",)),
)}


@dataclass(frozen=True)
class Case:
    """One architecture in one configuration; ``options`` go to the factory (or the task/optimizer)."""

    arch: str
    cause: str
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.arch}/{self.cause}"


def _cases(arch: str, *causes: str | tuple[str, dict[str, Any]]) -> list[Case]:
    out = []
    for cause in causes:
        name, options = (cause, {}) if isinstance(cause, str) else cause
        out.append(Case(arch, name, options))
    return out


_DEEP_SIGMOID = ("saturating_depth", {"activation": "sigmoid", "depth": 16})
_NO_SKIP = ("no_skip", {"residual": False, "depth": 16})
CASES: list[Case] = [
    # tuning half
    *_cases("mlp", "healthy", _DEEP_SIGMOID, "init_small", "init_large", "lr_high_sgd", "lr_low", "dead_relu",
            "nan"),
    *_cases("vgg", "healthy", _DEEP_SIGMOID, "init_small", "init_large", "lr_high_sgd", "lr_low", "dead_relu",
            "nan"),
    *_cases("resmlp", "healthy", _NO_SKIP, "lr_high_adam", "lr_low", "dead_relu", "nan"),
    *_cases("encoder_post_ln", "healthy", ("post_ln_no_warmup", {"depth": 16, "warmup": 0}), "lr_high_adam",
            "lr_low", "nan"),
    *_cases("gpt2", "healthy", "init_large", "lr_high_adam", "lr_high_sgd", "lr_low", "nan"),
    *_cases("rnn", "healthy", ("long_range", {"length": LONG_RANGE}), ("recurrent_init_large", {"length": 30}),
            "lr_high_sgd", "lr_low", "nan"),
    *_cases("lstm", "healthy", ("long_range", {"length": LONG_RANGE}), "lr_high_adam", "lr_low", "nan"),
    # held-out half
    *_cases("frozen_tanh_mlp", "healthy", _DEEP_SIGMOID, "init_small", "init_large", "lr_high_sgd", "lr_low",
            "nan"),
    *_cases("resnet", "healthy", "lr_high_sgd", "lr_high_adam", "lr_low", "dead_relu", "nan"),
    *_cases("encoder_pre_ln", "healthy", _NO_SKIP, "lr_high_adam", "lr_low", "nan"),
    *_cases("vit", "healthy", _NO_SKIP, "lr_high_adam", "lr_low", "nan"),
    *_cases("llama", "healthy", "init_large", "lr_high_adam", "lr_high_sgd", "lr_low", "nan"),
    *_cases("gru", "healthy", ("long_range", {"length": LONG_RANGE}), "lr_high_adam", "lr_low", "nan"),
    # the identity recurrent init exists to carry long dependencies (Le et al. 2015): no long-range case
    *_cases("irnn", "healthy", ("recurrent_init_small", {"length": 30}), ("recurrent_init_large", {"length": 30}),
            "lr_high_adam", "lr_low", "nan"),
]

# The regression subset `make test` runs (tests/test_zoo.py, well under 3 minutes on 2 cores): cases
# of both halves and of every family, between them labelled with every kind the zoo asks for.
QUICK: tuple[str, ...] = (
    "mlp/healthy", "mlp/saturating_depth", "mlp/init_small", "mlp/init_large", "mlp/lr_low", "mlp/dead_relu",
    "mlp/nan", "vgg/lr_high_sgd", "resmlp/no_skip", "resmlp/lr_high_adam", "gpt2/nan", "rnn/long_range",
    "rnn/recurrent_init_large", "lstm/healthy", "frozen_tanh_mlp/healthy", "frozen_tanh_mlp/init_small",
    "frozen_tanh_mlp/lr_high_sgd", "resnet/dead_relu", "encoder_pre_ln/healthy", "gru/healthy", "gru/long_range",
    "irnn/recurrent_init_small", "irnn/recurrent_init_large",
)


def case(name: str) -> Case:
    found = next((c for c in CASES if c.name == name), None)
    if found is None:
        raise KeyError(f"no zoo case {name!r}")
    return found


def label(cause_name: str, where: list[str] | None = None, saturating: bool = False) -> dict[str, Any]:
    """The label of a case: ``must`` (kind -> the layers it must name, [] for anywhere), ``may``.
    ``saturating``: the model's activation modules are tanh or sigmoid."""
    cause = CAUSES[cause_name]
    must = {kind: [] for kind in (*cause.must, *(cause.must_if_saturating if saturating else ()))}
    if cause.where and where is not None:
        must[cause.must[0]] = list(where)
    return {"must": must, "may": [k for k in cause.may if k not in must]}
