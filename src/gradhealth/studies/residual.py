"""Residual connections: plain nets degrade with depth, their residual twins do not.

Twins differ by the skip connection alone (same layers, same parameter names, see
:mod:`gradhealth.models.mlp` and :mod:`gradhealth.models.convnet`): ReLU + BatchNorm MLPs and
CIFAR-style conv nets (He et al. 2015, option A) at increasing depth, trained for the same steps.
The residual twins start each block at the identity (``zero_init_last``, Goyal et al. 2017). A sigmoid MLP shows the gradient itself:
plain, with post-activation skips (v1) and with pre-activation skips (v2, He et al. 2016).
With ``--data cifar10:DIR`` in full size the conv nets follow the paper's CIFAR-10 recipe.
"""
from __future__ import annotations

import math
import statistics
from typing import Any

from gradhealth.report.figures import grad_vs_depth
from gradhealth.report.html import Section, Table
from gradhealth.studies import cifar
from gradhealth.studies.base import (Claim, StudyResult, final_loss, first_last, grad_norms, has_images, pick_size,
                                     resolve_seeds, run_config, run_entry, show_spread, spread)
from gradhealth.studies.charts import Line, lines_chart, loss_chart

NAME = "residual"
TITLE = "Residual connections"
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"mlp_depths": (6, 20), "mlp_steps": 100, "cifar_depths": (8, 20), "cifar_steps": 60},
    "quick": {"mlp_depths": (10, 30, 60), "mlp_steps": 300, "cifar_depths": (20, 56), "cifar_steps": 150},
    "full": {"mlp_depths": (10, 30, 60, 100), "mlp_steps": 1000, "cifar_depths": (20, 56, 110), "cifar_steps": 1000},
}
# "degrades": the final training loss rises by more than this many nats (4% of ln 10)
MARGIN = 0.1
MIN_DECADES = 3.0
MLP = "mlp:depth={depth},width=64,activation=relu,norm=batch,residual={residual}"
CONV = "cifar_resnet:depth={depth},residual={residual}"
FAMILIES = {("mlp", False): "plain MLP", ("mlp", True): "residual MLP",
            ("conv", False): "plain conv net", ("conv", True): "ResNet"}


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if all(math.isfinite(v) for v in values) else math.inf


def _twins(kind: str, depths, steps: int, data: str, seeds: list[int], runs: list) -> dict[tuple[bool, int], dict]:
    cells = {}
    for depth in depths:
        for residual in (False, True):
            spec = (MLP if kind == "mlp" else CONV).format(depth=depth, residual=str(residual).lower())
            spec += ",zero_init_last=true" if residual else ""
            pairs = [run_config(model=spec, init="he" if kind == "mlp" else None, data=data, steps=steps, lr=0.1,
                                seed=s) for s in seeds]
            losses = [final_loss(s) for _, s in pairs]
            norms = [grad_norms(log) for log, _ in pairs]
            cells[(residual, depth)] = {
                "family": FAMILIES[(kind, residual)], "depth": depth, "model": spec, "loss": _mean(losses),
                "final_loss": spread(losses), "first_grad": spread([n[0] for n in norms], log=True),
                "first_last": spread([first_last(n) for n in norms], log=True), "log": pairs[0][0]}
            runs += [run_entry(f"{FAMILIES[(kind, residual)]} {depth}", log, s, seed=seed)
                     for (log, s), seed in zip(pairs, seeds)]
    return cells


def _degradation(what: str, cells: dict, depths) -> list[Claim]:
    lo, hi = min(depths), max(depths)
    plain, res = (cells[(False, lo)]["loss"], cells[(False, hi)]["loss"]), (cells[(True, lo)]["loss"],
                                                                             cells[(True, hi)]["loss"])
    return [
        Claim(f"Degradation: the {hi}-layer plain {what} ends with a higher training loss than the {lo}-layer one "
              f"(by more than {MARGIN} nats) after the same steps.", plain[1] > plain[0] + MARGIN,
              {f"plain {lo} loss": plain[0], f"plain {hi} loss": plain[1], "margin": MARGIN}),
        Claim(f"The residual {what}s do not degrade: the {hi}-layer one ends at most {MARGIN} nats above the "
              f"{lo}-layer one.", res[1] <= res[0] + MARGIN,
              {f"residual {lo} loss": res[0], f"residual {hi} loss": res[1], "margin": MARGIN}),
    ]


def run(size: str = "quick", *, data: str | None = None, seeds: int | list[int] | None = None) -> StudyResult:
    p = pick_size(PRESETS, size)
    seeds = resolve_seeds(size, seeds)
    mlp_data = data or "digits"
    image_data = "digits-image" if data is None else data if has_images(data) else None
    recipe = size == "full" and image_data is not None and image_data.startswith("cifar10")
    runs: list[dict] = []
    mlp = _twins("mlp", p["mlp_depths"], p["mlp_steps"], mlp_data, seeds, runs)
    claims = _degradation("MLP", mlp, p["mlp_depths"])
    sig_depth = max(p["mlp_depths"])
    sigmoid = {}
    for label, extra in (("plain", "residual=false"), ("residual v1 (post-activation)", "residual=true"),
                         ("residual v2 (pre-activation)", "residual=true,block=preact")):
        log, summary = run_config(model=f"mlp:depth={sig_depth},width=64,activation=sigmoid,{extra}", init="xavier",
                                  data=mlp_data, steps=1)
        sigmoid[label] = log
        runs.append(run_entry(f"sigmoid MLP {sig_depth}, {label}", log, summary))
    ratios = {label: first_last(grad_norms(log)) for label, log in sigmoid.items()}
    plain_r, v1_r, v2_r = ratios.values()
    claims.append(Claim(
        f"In a {sig_depth}-layer sigmoid MLP the skip connections keep the gradient: the residual twin's first/last "
        f"ratio is at least {MIN_DECADES:g} orders of magnitude above the plain twin's, and with pre-activation "
        "blocks it stays within one order of magnitude of 1.",
        bool(plain_r and v1_r and v2_r) and math.log10(v1_r / plain_r) >= MIN_DECADES and abs(math.log10(v2_r)) <= 1,
        {"plain_first_last": plain_r, "residual_v1_first_last": v1_r, "residual_v2_first_last": v2_r}))
    results: dict[str, Any] = {"data": {"mlp": mlp_data, "conv": image_data}, "size": size, "seeds": seeds,
                               "margin_nats": MARGIN, "sigmoid_first_last": ratios}
    conv, versions = {}, {}
    if recipe:
        results["cifar10_recipe"] = table = cifar.run_recipe(image_data, seeds=seeds, preact=True)
        claims += cifar.recipe_claims(table)
    elif image_data is not None:
        conv = _twins("conv", p["cifar_depths"], p["cifar_steps"], image_data, seeds, runs)
        claims += _degradation("conv net", conv, p["cifar_depths"])
        deepest = max(p["cifar_depths"])
        for label, extra in (("v1 (post-activation)", ""), ("v2 (pre-activation)", ",block=preact")):
            pairs = [run_config(model=f"cifar_resnet:depth={deepest}{extra}", data=image_data, steps=p["cifar_steps"],
                                lr=0.1, seed=s) for s in seeds]
            versions[label] = {"loss": _mean([final_loss(s) for _, s in pairs]), "log": pairs[0][0],
                               "final_loss": spread([final_loss(s) for _, s in pairs])}
            runs += [run_entry(f"ResNet-{deepest} {label}", log, s) for log, s in pairs]
        v1, v2 = (v["loss"] for v in versions.values())
        claims.append(Claim(f"At depth {deepest} the pre-activation ResNet (v2) trains at least as well as the "
                            f"original (v1): its final loss is at most {MARGIN} nats above v1's.", v2 <= v1 + MARGIN,
                            {"v1_final_loss": v1, "v2_final_loss": v2, "margin": MARGIN}))
    strip = lambda cells: [{k: v for k, v in c.items() if k != "log"} for c in cells.values()]  # noqa: E731
    results.update(mlp=strip(mlp), conv=strip(conv), versions=strip(versions), runs=runs)
    sections = _sections(mlp, conv, versions, sigmoid, p, image_data, recipe, results)
    return StudyResult(NAME, TITLE, claims, sections, results, key_figure=sections[0].figures[0])


def _family_lines(cells: list[dict], key: str) -> list[Line]:
    """One line per family: MLPs in the first colour, conv nets in the second; plain dashed, residual solid."""
    lines: dict[str, Line] = {}
    for c in cells:
        kind = 0 if "MLP" in c["family"] else 1
        line = lines.setdefault(c["family"], Line(c["family"], [], [], kind, dashed=c["family"].startswith("plain")))
        line.xs.append(c["depth"])
        line.ys.append(c[key]["mean"])
    return list(lines.values())


def _twin_curves(cells: dict, extra: dict | None = None) -> tuple[dict, dict]:
    """Runs and their styles for a loss chart: one colour per depth, plain dashed, residual solid."""
    depths = sorted({d for _, d in cells})
    runs, styles = {}, {}
    for (residual, depth), c in sorted(cells.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        label = f"{c['family']} {depth}"
        runs[label], styles[label] = c["log"], (depths.index(depth), not residual)
    for index, (label, c) in enumerate((extra or {}).items(), len(depths)):
        runs[label], styles[label] = c["log"], (index, False)
    return runs, styles


def _sections(mlp, conv, versions, sigmoid, p, image_data, recipe, results) -> list[Section]:
    cells = [*mlp.values(), *conv.values()]
    steps = f"{p['mlp_steps']} steps (MLPs)" + (f", {p['cifar_steps']} steps (conv nets)" if conv else "")
    keys = {"plain": "dashed", "residual": "solid"}
    depth_loss = lines_chart(_family_lines(cells, "final_loss"),
                             title="Final training loss vs depth: plain vs residual",
                             xlabel="depth (layers)", ylabel="final training loss",
                             caption=f"After {steps}: the plain nets (dashed) end higher the deeper they are "
                                     "(degradation); their residual twins (solid) do not.")
    depth_grad = lines_chart(_family_lines(cells, "first_grad"), title="First layer's gradient norm at init vs depth",
                             xlabel="depth (layers)", ylabel="gradient norm (log scale)", logy=True,
                             caption="The gradient that reaches the first weight layer at step 0: in the plain "
                                     "BatchNorm nets it grows with depth, in the residual twins it stays put.")
    rows = [[c["family"], c["depth"], show_spread(c["final_loss"]), show_spread(c["first_grad"]),
             show_spread(c["first_last"])] for c in cells]
    table = Table(["net", "depth", "final training loss", "first-layer grad at init", "first/last at init"], rows,
                  "ReLU + BatchNorm, He init (MLPs) or the ResNet paper's init (conv nets), SGD lr 0.1, momentum 0.9; "
                  "residual twins start each block at the identity (zero_init_last).")
    runs, styles = _twin_curves(mlp)
    mlp_curves = loss_chart(runs, styles=styles, style_keys=keys, logy=True, title="Training loss, MLP twins",
                            caption="One colour per depth; the plain twin dashed, the residual twin solid.")
    sections = [Section("Plain vs residual: the degradation problem",
                        "Twins with the same layers; only the residual twin adds its input back after every two "
                        "layers. The deeper plain nets train worse, and the measure is the training loss: this is "
                        "not overfitting.", [depth_loss, depth_grad, mlp_curves], [table])]
    if conv:
        deepest = max(d for _, d in conv)
        runs, styles = _twin_curves(conv, {f"ResNet-{deepest} {k}": v for k, v in versions.items()})
        curves = loss_chart(runs, styles=styles, style_keys=keys, logy=True, title="Training loss, CIFAR-style nets",
                            caption=f"Plain (dashed) and residual (solid) twins, and ResNet-{deepest} v1 and v2 "
                                    "trained from the paper's init without zero-init.")
        note = ("CIFAR-style nets of He et al. 2015 (three stages, 16-32-64 channels, option A shortcuts) on "
                f"{image_data}. v1 puts the ReLU after the addition, v2 (He et al. 2016) moves norm and ReLU before "
                "each convolution, leaving the skip path an identity.")
        sections.append(Section("CIFAR-style ResNets", note, [curves],
                                [Table(["net", "final training loss"],
                                       [[f"ResNet-{deepest} {k}", show_spread(v["final_loss"])]
                                        for k, v in versions.items()])]))
    elif recipe:
        rows = [[r["depth"], show_spread(r["resnet_error"]), r["paper_resnet_error"], show_spread(r["plain_error"]),
                 show_spread(r["resnet_train_loss"]), show_spread(r["plain_train_loss"])]
                for r in results["cifar10_recipe"]["rows"]]
        sections.append(Section("CIFAR-10, the paper's recipe", "; ".join(cifar.DIFFERENCES) + ".", tables=[Table(
            ["depth", "ResNet test error %", "paper %", "plain test error %", "ResNet train loss", "plain train loss"],
            rows, cifar.PAPER)]))
    else:
        sections.append(Section("CIFAR-style ResNets", f"Skipped: {results['data']['mlp']} holds no images, and "
                                "these nets need (C, H, W) inputs."))
    sections.append(Section("Why the skip keeps the gradient", "A sigmoid MLP at init. With post-activation (v1) "
                            "blocks the sigmoid after each addition still scales the skip path; pre-activation (v2) "
                            "blocks leave the identity path untouched.", [grad_vs_depth(sigmoid, "first")]))
    return sections
