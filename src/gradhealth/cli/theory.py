"""``gradhealth theory``: predict from the init alone whether gradients vanish or explode with depth."""
from __future__ import annotations

import argparse
import math

from gradhealth.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("theory", help="predict vanishing/exploding gradients from activation, init scale and depth",
                       description="Mean-field signal propagation (Poole et al. 2016, Schoenholz et al. 2017): the "
                                   "per-layer gradient factor sqrt(chi_1), its depth scale and regime, for a wide "
                                   "plain or residual fully-connected net at initialization. It does not model attention "
                                   "or recurrence: for the transformer and rnn/lstm/gru families, measure instead "
                                   "(gradhealth diagnose, gradhealth study transformer / recurrent).")
    p.add_argument("--activation", default="tanh", help="sigmoid, tanh, relu, leaky_relu, elu, gelu, silu, identity")
    scale = p.add_mutually_exclusive_group()
    scale.add_argument("--sigma-w", type=float, help="weight scale: W ~ N(0, sigma_w^2 / fan_in)")
    scale.add_argument("--init", help="an init scheme instead of --sigma-w, e.g. 'he', 'xavier', 'normal(0.02)'")
    p.add_argument("--fan-in", type=int,
                   help="layer width, for --init schemes that depend on it (normal, uniform, default)")
    p.add_argument("--sigma-b", type=float, default=0.0, help="bias scale: b ~ N(0, sigma_b^2) (default 0)")
    p.add_argument("--depth", type=int, default=50, help="number of layers (residual: blocks); default 50")
    p.add_argument("--residual", action="store_true", help="h + alpha F(h) with a one-layer branch F")
    p.add_argument("--branch-scale", default="1", help="alpha for --residual: a number or '1/sqrt(L)' (0 = ReZero)")
    p.add_argument("--negative-slope", type=float, default=0.01, help="leaky_relu slope (default 0.01)")
    p.add_argument("--q0", type=float, default=1.0, help="variance of the first pre-activations (default 1)")
    p.add_argument("--json", action="store_true", help="print the prediction as JSON")
    p.set_defaults(run=run)


def _branch_scale(text: str, depth: int) -> float:
    compact = text.replace(" ", "").lower()
    if compact in ("1/sqrt(l)", "1/sqrt(depth)"):
        return 1.0 / math.sqrt(depth) if depth > 0 else 1.0
    try:
        return float(compact)
    except ValueError:
        raise ConfigError(f"--branch-scale {text!r} is not a number; write e.g. 0.1, 0 or '1/sqrt(L)'.") from None


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return ("inf" if value > 0 else "-inf") if math.isinf(value) else f"{value:.4g}"


# The prediction walks the layers one by one; past this depth no network is built and the
# answer is the depth scale already (its per-layer factor to the power of the depth).
MAX_DEPTH = 100_000


def run(args: argparse.Namespace) -> int:
    from gradhealth.diagnose.theory import predict, sigma_w_of_init

    if args.depth > MAX_DEPTH:
        raise ConfigError(f"--depth {args.depth} is past {MAX_DEPTH:,} layers, where no network is trained; "
                          "pass a smaller depth (the per-layer factor and the depth scale say the rest).")
    try:
        return _predict_and_print(args, predict, sigma_w_of_init)
    except (OverflowError, ZeroDivisionError) as exc:
        raise ConfigError(f"these scales overflow the mean-field recursion ({exc}); pass values nearer 1.") from None
    except ValueError as exc:
        if "math domain" not in str(exc):
            raise
        raise ConfigError(f"these scales underflow the mean-field recursion ({exc}); pass values nearer 1.") from None


def _predict_and_print(args: argparse.Namespace, predict, sigma_w_of_init) -> int:

    sigma_w, sigma_b = args.sigma_w, args.sigma_b
    if args.init is not None:
        scale = sigma_w_of_init(args.init, args.activation, fan_in=args.fan_in, negative_slope=args.negative_slope)
        if scale.sigma_w is None:
            raise ConfigError(f"init {args.init!r} has no mean-field weight scale: {scale.note}")
        sigma_w, sigma_b = scale.sigma_w, math.hypot(sigma_b, scale.sigma_b)
    elif sigma_w is None:
        raise ConfigError("give the weight scale: --sigma-w 1.5, or an init scheme such as --init he.")
    pred = predict(args.activation, sigma_w, sigma_b, args.depth, args.residual, q0=args.q0,
                   negative_slope=args.negative_slope, branch_scale=_branch_scale(args.branch_scale, args.depth))
    if args.json:
        print(pred.to_json())
        return 0

    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    kind = f"residual (branch scale {pred.branch_scale:g})" if pred.residual else "plain"
    table = Table(title=f"{pred.activation}, sigma_w={pred.sigma_w:.4g}, sigma_b={pred.sigma_b:.4g}, "
                        f"depth {pred.depth}, {kind}")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    table.add_column("meaning")
    per = "block" if pred.residual else "layer"
    rows = [
        ("q*", _fmt(pred.q_star), "fixed point of the pre-activation variance (inf: grows)"),
        ("chi_1", _fmt(pred.chi_1), f"squared-gradient multiplier per {per}"),
        (f"per-{per} factor", _fmt(pred.per_layer_factor), "sqrt(chi_1): gradient norm multiplier, output -> input"),
        ("depth scale", _fmt(pred.depth_scale), "layers per factor e of the squared gradient norm"),
        ("correlation depth", _fmt(pred.correlation_depth_scale), "layers over which inputs' correlation settles"),
        ("regime", pred.regime, "vanishing < 1 < exploding (critical: within 0.01 of 1)"),
        ("first/last ratio", _fmt(pred.first_last_ratio), "gradient norm, first layer over last"),
    ]
    for row in rows:
        table.add_row(*row)
    console.print(table)

    step = max(1, pred.depth // 10)
    layers = sorted(set(range(1, pred.depth + 1, step)) | {pred.depth})
    profile = Table(title="gradient norm / last layer's")
    profile.add_column(per)
    profile.add_column("relative norm", justify="right")
    for layer in layers:
        profile.add_row(str(layer), _fmt(pred.profile[layer - 1]))
    console.print(profile)
    console.print(pred.explanation, markup=False, highlight=False)
    return 0
