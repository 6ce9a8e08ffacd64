"""Diagnosis rules on synthetic logs (round-tripped through JSONL) and on short real training runs."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from gradhealth.diagnose import rules
from gradhealth.diagnose.rules import diagnose_log
from gradhealth.monitor.records import (
    ActivationStats,
    LayerInfo,
    LayerStats,
    NonFiniteEvent,
    RunLog,
    RunMeta,
    StepRecord,
    read_jsonl,
    write_jsonl,
)

NAN, INF = float("nan"), float("inf")


def make_log(norms: list[list[float | None]], *, names: list[str] | None = None, activation: str = "relu",
             loss: list[float] | None = None, global_norm: list[float] | None = None,
             update_ratio: float | list[float] | None = 1e-3, acts: list[dict[str, ActivationStats]] | None = None,
             with_meta: bool = True, model: str | None = "mlp:depth=4", config: dict | None = None) -> RunLog:
    """A log with one record per row of ``norms`` (per weight layer, input to output)."""
    count = len(norms[0])
    names = names or [f"fc{i}" for i in range(count)]
    layers = []
    for i, name in enumerate(names):
        layers += [LayerInfo(name, "Linear", "weight", 100),
                   LayerInfo(f"act{i}", activation.title(), "activation", 0, activation)]
    records = []
    for step, row in enumerate(norms):
        ratios = update_ratio if isinstance(update_ratio, list) else [update_ratio] * count
        stats = {n: LayerStats(grad_norm=g, weight_norm=1.0, update_ratio=u) for n, g, u in zip(names, row, ratios)}
        finite = [g for g in row if g is not None]
        records.append(StepRecord(
            step=step, lr=0.1, batch=step, layers=stats,
            loss=2.3 * 0.98 ** step if loss is None else loss[step],
            global_grad_norm=math.sqrt(sum(g * g for g in finite)) if global_norm is None else global_norm[step],
            activations=acts[step] if acts else {},
        ))
    meta = RunMeta(layers=layers if with_meta else [], model=model, data="digits", config=config or {})
    return RunLog(meta, records)


def roundtrip(log: RunLog, tmp_path) -> RunLog:
    """Through the strict-JSON file, so NaN/Inf come back from null + flag as the reader restores them."""
    return read_jsonl(write_jsonl(tmp_path / "run.jsonl", log.records, log.meta))


def geometric(count: int, factor: float, last: float = 1.0) -> list[float]:
    """Norms input -> output where each layer toward the input multiplies the gradient by ``factor``."""
    return [last * factor ** (count - 1 - i) for i in range(count)]


def kinds(log: RunLog, **kw) -> set[str]:
    diagnosis = diagnose_log(log, **kw)
    json.dumps(diagnosis.to_json(), allow_nan=False)  # evidence must be strict JSON
    return diagnosis.kinds()


def by_kind(log: RunLog, kind: str, **kw):
    return next((f for f in diagnose_log(log, **kw).findings if f.kind == kind), None)


# ---- vanishing / exploding through depth ---------------------------------------------------------

def test_vanishing_reports_decay_factor_ratio_and_weak_layers(tmp_path):
    log = roundtrip(make_log([geometric(10, 0.3)] * 6, activation="sigmoid",
                             config={"init": "xavier"}), tmp_path)
    finding = by_kind(log, "vanishing_gradient")
    assert finding is not None and finding.severity == "error"  # 0.3**9 = 2e-5 < 1e-4
    assert finding.evidence["decay_factor"] == pytest.approx(0.3, rel=1e-3)
    assert finding.evidence["first_last_ratio"] == pytest.approx(0.3 ** 9, rel=1e-3)
    assert finding.evidence["depth"] == 10 and "first 5 records" in finding.evidence["basis"]
    # below 1 % of the last layer: 0.3**k < 0.01 for k >= 4, i.e. fc0..fc5
    assert finding.layers == [f"fc{i}" for i in range(6)]
    assert "0.25" in finding.explanation and "init=xavier" in finding.explanation
    assert {r.key for r in finding.remedies[:2]} == {"relu", "preact"}  # skips that keep the sigmoid off the identity path


def test_vanishing_threshold_boundary(tmp_path):
    # 10 layers, so that each layer's factor (~0.6) stays above 1/BLOCK_GROWTH: the end-to-end ratio decides
    just_below = geometric(10, (rules.VANISHING_RATIO * 0.99) ** (1 / 9))
    just_above = geometric(10, (rules.VANISHING_RATIO * 1.01) ** (1 / 9))
    below = by_kind(roundtrip(make_log([just_below] * 3), tmp_path), "vanishing_gradient")
    assert below is not None and below.severity == "warning"
    assert below.remedies[0].key == "residual"  # ReLU already: the skip path first
    assert "vanishing_gradient" not in kinds(roundtrip(make_log([just_above] * 3), tmp_path))


def test_zero_gradients_are_reported_as_vanishing(tmp_path):
    log = roundtrip(make_log([[0.0, 0.0, 1e-2, 0.1, 1.0]] * 3), tmp_path)
    finding = by_kind(log, "vanishing_gradient")
    assert finding.severity == "error" and finding.evidence["zero_layers"] == ["fc0", "fc1"]
    assert finding.evidence["decay_factor"] == pytest.approx(0.1, rel=1e-3)  # fit over the non-zero ones


def test_zero_first_step_of_zero_initialized_branches_is_not_vanishing(tmp_path):
    # Fixup / zero_init_last: nothing flows back at step 0, then training moves the zeroed weights
    log = roundtrip(make_log([[0.0, 0.0, 0.0, 1.0]] + [[0.5, 0.6, 0.8, 1.0]] * 5), tmp_path)
    assert kinds(log) == set()


def test_frozen_layers_without_gradient_are_left_out(tmp_path):
    log = roundtrip(make_log([[None, 1e-4, 1e-2, 1.0]] * 3), tmp_path)
    finding = by_kind(log, "vanishing_gradient")
    assert finding.evidence["layers"] == ["fc1", "fc2", "fc3"]
    assert finding.evidence["first_last_ratio"] == pytest.approx(1e-4)


def test_exploding_toward_the_input(tmp_path):
    log = roundtrip(make_log([geometric(6, 4.0)] * 4), tmp_path)
    finding = by_kind(log, "exploding_gradient")
    assert finding.evidence["profile"]["decay_factor"] == pytest.approx(4.0, rel=1e-3)
    assert finding.evidence["profile"]["first_last_ratio"] == pytest.approx(4.0 ** 5, rel=1e-3)
    assert finding.remedies[0].key == "clip_norm"
    assert "vanishing_gradient" not in {f.kind for f in diagnose_log(log).findings}


def _blocks_log(norms: list[float], **kw) -> RunLog:
    """A log of repeated blocks blocks.K (two weight layers each), with per-block gradient norms."""
    names = [f"blocks.{k}.fc{j}" for k in range(len(norms)) for j in (1, 2)]
    row = [g / math.sqrt(2) for g in norms for _ in (1, 2)]  # two equal halves of each block's norm
    return make_log([row] * 4, names=names, model=None, **kw)


def test_a_shallow_net_whose_blocks_double_the_gradient_explodes_below_the_end_to_end_threshold(tmp_path):
    # 4 blocks at 2.5x each: 15.6x end to end, far below EXPLODING_RATIO, but no healthy init compounds so fast
    log = roundtrip(_blocks_log(geometric(4, 2.5)), tmp_path)
    assert rules.gradient_profile(log)["first_last_ratio"] < rules.EXPLODING_RATIO
    finding = by_kind(log, "exploding_gradient")
    assert finding is not None and finding.severity == "warning"
    assert finding.evidence["profile"]["block_factor"] == pytest.approx(2.5, rel=1e-3)
    assert "each block toward the input multiplies the gradient by about 2.5" in finding.explanation
    assert finding.layers == ["blocks.0"]  # the one block past MATERIAL_RATIO x the last one's
    # the mirror: each block halving it, past a tenth end to end
    shrinking = by_kind(roundtrip(_blocks_log(geometric(4, 0.4)), tmp_path), "vanishing_gradient")
    assert shrinking is not None and shrinking.severity == "warning" and shrinking.layers == ["blocks.0"]


def test_a_deep_net_drifting_mildly_per_block_is_healthy_though_it_spans_decades(tmp_path):
    # 24 blocks at 1.15x each: 25x end to end, beyond the healthy band, yet each block is near the
    # variance-preserving factor of 1: the end-to-end rule alone judges it, and it stays below 100x
    assert kinds(roundtrip(_blocks_log(geometric(24, 1.15)), tmp_path)) == set()
    assert kinds(roundtrip(_blocks_log(geometric(24, 1 / 1.15)), tmp_path)) == set()


def test_fast_growth_per_block_must_also_be_material_end_to_end(tmp_path):
    # 3 blocks at 2.5x each: 6.25x end to end, inside the healthy band of 0.1..10
    assert kinds(roundtrip(_blocks_log(geometric(3, rules.BLOCK_GROWTH * 1.25)), tmp_path)) == set()
    # just under the per-block bound with a material ratio: no finding either
    assert kinds(roundtrip(_blocks_log(geometric(5, rules.BLOCK_GROWTH * 0.95)), tmp_path)) == set()


def test_per_block_growth_is_not_judged_across_the_matrices_of_a_recurrent_layer(tmp_path):
    # an RNN's input and recurrent matrices get gradients summed over the time steps: 3 "layers" at
    # 4x each are no depth profile, and 16x stays below the end-to-end rule
    log = make_log([geometric(3, 4.0)] * 4, names=["rnn.weight_ih_l0", "rnn.weight_hh_l0", "head"], model=None)
    log.meta.layers.insert(0, LayerInfo("rnn", "RNN", "other", 0))
    assert "exploding_gradient" not in kinds(roundtrip(log, tmp_path))


def test_global_norm_rising_over_the_run(tmp_path):
    flat = [[1.0, 1.0, 1.0]] * 9
    rising = [1, 1.2, 1.5, 3, 5, 8, 12, 20, 30]
    finding = by_kind(roundtrip(make_log(flat, global_norm=rising), tmp_path), "exploding_gradient")
    assert finding is not None and finding.evidence["global_grad_norm_thirds"] == [1.2, 5.0, 20.0]
    assert finding.step == 6  # first step at >= 10x the first third's median
    # 9.9x from the first to the last third: below GRAD_GROWTH
    short = [1, 1.2, 1.5, 3, 5, 8, 11, 11.88, 13]
    assert "exploding_gradient" not in kinds(roundtrip(make_log(flat, global_norm=short), tmp_path))
    # a spike that falls back is not a rising trend
    spike = [1, 1.2, 1.5, 30, 50, 80, 12, 11.9, 13]
    assert "exploding_gradient" not in kinds(roundtrip(make_log(flat, global_norm=spike), tmp_path))


def test_loss_divergence_to_nan_is_exploding_and_nonfinite(tmp_path):
    loss = [2.3, 2.5, 4.0, 9.0, 40.0, NAN]
    norms = [[1.0, 1.0, 1.0]] * 5 + [[NAN, NAN, NAN]]
    log = roundtrip(make_log(norms, loss=loss), tmp_path)
    assert math.isnan(log.records[-1].loss)  # restored from null + flag
    exploding = by_kind(log, "exploding_gradient")
    assert exploding.severity == "error"
    assert exploding.evidence["loss"] == {"initial_loss": 2.3, "peak_loss": 40.0, "nonfinite_step": 5, "step": 3}
    nonfinite = by_kind(log, "nonfinite")
    assert nonfinite.step == 5 and nonfinite.evidence["kind"] == "loss"
    assert [r.key for r in nonfinite.remedies[:3]] == ["lower_lr", "clip_norm", "warmup"]


def test_final_loss_boundary_for_divergence(tmp_path):
    flat = [[1.0, 1.0, 1.0]] * 10
    high = [2.0] + [2.0 * rules.LOSS_DIVERGENCE * 1.01] * 9
    low = [2.0] + [2.0 * rules.LOSS_DIVERGENCE * 0.99] * 9
    assert "exploding_gradient" in kinds(roundtrip(make_log(flat, loss=high), tmp_path))
    assert "exploding_gradient" not in kinds(roundtrip(make_log(flat, loss=low), tmp_path))


# ---- non-finite ----------------------------------------------------------------------------------

def test_nonfinite_from_the_monitors_event(tmp_path):
    log = make_log([[1.0, 1.0, 1.0]] * 5)
    log.records[3].first_nonfinite = NonFiniteEvent("activation", "act1", batch=7, step=3)
    log.records[3].loss = INF
    finding = by_kind(roundtrip(log, tmp_path), "nonfinite")
    assert (finding.step, finding.layers, finding.evidence["batch"]) == (3, ["act1"], 7)
    assert finding.evidence["kind"] == "activation" and finding.severity == "error"


def test_nonfinite_gradient_found_in_layer_norms(tmp_path):
    norms = [[1.0, 1.0, 1.0]] * 4 + [[1.0, INF, NAN]]
    finding = by_kind(roundtrip(make_log(norms, global_norm=[1.7] * 4 + [NAN]), tmp_path), "nonfinite")
    assert finding.evidence["kind"] == "gradient" and finding.step == 4
    # the backward pass meets the layer nearest the output first
    assert finding.evidence["layer"] == "fc2" and finding.layers == ["fc1", "fc2"]


def test_input_nonfinite_points_at_the_data(tmp_path):
    log = make_log([[1.0, 1.0, 1.0]] * 3)
    log.records[1].first_nonfinite = NonFiniteEvent("input", None, batch=1, step=1)
    finding = by_kind(roundtrip(log, tmp_path), "nonfinite")
    assert finding.remedies == [] and "data" in finding.explanation


def test_a_few_skipped_mixed_precision_steps_are_only_info(tmp_path):
    log = make_log([[1.0, 1.0, 1.0]] * 40)
    log.records[0].global_grad_norm, log.records[0].skipped = INF, True
    diagnosis = diagnose_log(roundtrip(log, tmp_path))
    assert [(f.kind, f.severity) for f in diagnosis.findings] == [("nonfinite", "info")]
    assert diagnosis.verdict == "healthy"
    # skipped steps past SKIPPED_OK_FRACTION are an error
    for record in log.records[:4]:
        record.global_grad_norm, record.skipped = INF, True
    assert by_kind(roundtrip(log, tmp_path), "nonfinite").severity == "error"


# ---- activations ---------------------------------------------------------------------------------

def _acts(steps: int, **fractions: tuple[float | None, float | None]) -> list[dict[str, ActivationStats]]:
    return [{name: ActivationStats(mean=0.1, std=1.0, saturation=s, dead_fraction=d)
             for name, (s, d) in fractions.items()} for _ in range(steps)]


def test_saturation_of_sigmoid_layers_and_its_boundary(tmp_path):
    acts = _acts(4, act0=(0.1, None), act1=(0.9, None), act2=(rules.SATURATION_HIGH, None))
    finding = by_kind(roundtrip(make_log([[1.0] * 3] * 4, activation="sigmoid", acts=acts), tmp_path), "saturation")
    assert finding.layers == ["act1", "act2"] and finding.severity == "error"  # 0.9 >= SATURATION_SEVERE
    assert finding.evidence["worst"][0] == ["act1", 0.9]
    assert finding.remedies[0].key == "relu"
    acts = _acts(4, act0=(rules.SATURATION_HIGH - 0.01, None))
    assert "saturation" not in kinds(roundtrip(make_log([[1.0] * 3] * 4, activation="sigmoid", acts=acts), tmp_path))


def test_relu_being_off_half_the_time_is_not_saturation(tmp_path):
    acts = _acts(4, act0=(0.5, 0.0), act1=(0.55, 0.01))
    assert kinds(roundtrip(make_log([[1.0] * 3] * 4, acts=acts), tmp_path)) == set()


def test_dead_units_that_stay_dead(tmp_path):
    acts = _acts(3, act0=(0.5, 0.0), act1=(0.8, 0.1)) + _acts(3, act0=(0.5, 0.0), act1=(0.9, 0.7))
    finding = by_kind(roundtrip(make_log([[1.0] * 3] * 6, acts=acts), tmp_path), "dead_units")
    assert finding.layers == ["act1"] and finding.evidence["worst"] == [["act1", 0.7]]
    assert [r.key for r in finding.remedies[:3]] == ["leaky_relu", "lower_lr", "he_init"]
    recovered = _acts(3, act1=(0.9, 0.7)) + _acts(3, act1=(0.5, 0.05))
    assert "dead_units" not in kinds(roundtrip(make_log([[1.0] * 3] * 6, acts=recovered), tmp_path))
    # a batch of 4 leaves a live unit off for the whole batch by chance
    tiny = make_log([[1.0] * 3] * 6, acts=acts, config={"batch_size": 4})
    assert "dead_units" not in kinds(roundtrip(tiny, tmp_path))


# ---- learning rate -------------------------------------------------------------------------------

def test_lr_too_high_and_boundary(tmp_path):
    finding = by_kind(roundtrip(make_log([[1.0] * 3] * 4, update_ratio=0.5), tmp_path), "lr_too_high")
    assert finding.evidence["median_update_ratio"] == 0.5 and finding.remedies[0].key == "lower_lr"
    ok = make_log([[1.0] * 3] * 4, update_ratio=rules.LR_HIGH_RATIO)
    assert "lr_too_high" not in kinds(roundtrip(ok, tmp_path))


def test_lr_too_low_and_boundary(tmp_path):
    finding = by_kind(roundtrip(make_log([[1.0] * 3] * 4, update_ratio=1e-7), tmp_path), "lr_too_low")
    assert finding.evidence["median_update_ratio"] == 1e-7 and finding.remedies[0].key == "higher_lr"
    ok = make_log([[1.0] * 3] * 4, update_ratio=rules.LR_LOW_RATIO)
    assert "lr_too_low" not in kinds(roundtrip(ok, tmp_path))


def test_an_output_layer_below_the_healthy_band_does_not_excuse_a_low_lr(tmp_path):
    # the layer nearest the output moves faster than the rest but still 30x below the healthy 1e-3:
    # the gradients do not vanish (flat profile), the learning rate is what is small
    slow = make_log([[1.0] * 3] * 4, update_ratio=[1e-6, 1e-6, 3e-5])
    assert "lr_too_low" in kinds(roundtrip(slow, tmp_path))
    normal = make_log([[1.0] * 3] * 4, update_ratio=[1e-6, 1e-6, rules.HEALTHY_UPDATE_MIN])
    assert "lr_too_low" not in kinds(roundtrip(normal, tmp_path))


def test_vanishing_explains_tiny_updates_so_lr_is_not_blamed(tmp_path):
    ratios = [1e-9, 1e-8, 1e-7, 1e-6, 1e-3]  # the output layer updates at a healthy rate
    log = roundtrip(make_log([geometric(5, 0.1)] * 4, update_ratio=ratios), tmp_path)
    assert {"vanishing_gradient"} == kinds(log)
    assert "not from the learning rate" in by_kind(log, "vanishing_gradient").explanation


# ---- degradation ---------------------------------------------------------------------------------

def _run(depth: int, final: float, residual: bool = False) -> RunLog:
    loss = [2.3 - (2.3 - final) * min(1.0, i / 10) for i in range(20)]
    spec = f"mlp:depth={depth},residual={'true' if residual else 'false'}"
    return make_log([[1.0] * 3] * 20, loss=loss, model=spec)


def test_degradation_deeper_plain_net_trains_worse(tmp_path):
    shallow, deep, res = _run(20, 0.5), _run(56, 0.8), _run(56, 0.3, residual=True)
    finding = by_kind(roundtrip(shallow, tmp_path), "degradation", compare=[deep, res])
    assert finding.evidence["depths"] == [20, 56]  # the residual net is not a plain one
    assert finding.evidence["pairs"] == [
        {"shallow_depth": 20, "deep_depth": 56, "shallow_loss": 0.5, "deep_loss": 0.8}]
    assert finding.remedies[0].key == "residual"
    # within the margin, or without runs to compare: nothing
    close = _run(56, 0.5 * (1 + rules.DEGRADATION_MARGIN) * 0.99)
    assert "degradation" not in kinds(shallow, compare=[close])
    assert "degradation" not in kinds(deep)


# ---- healthy logs, fallback, the Diagnosis -------------------------------------------------------

def test_healthy_log_raises_nothing(tmp_path):
    # a residual net with He init and BatchNorm: first/last within 0.1..10, updates ~1e-3
    norms = [[3.8, 2.8, 2.0, 1.6, 1.3, 1.1, 1.0, 1.0, 6.8]] * 10
    acts = _acts(10, act0=(0.5, 0.0), act1=(0.5, 0.02))
    log = roundtrip(make_log(norms, acts=acts, update_ratio=2e-3, config={"init": "he", "norm": "batch"}), tmp_path)
    diagnosis = diagnose_log(log)
    assert diagnosis.findings == [] and diagnosis.verdict == "healthy"
    assert (diagnosis.model, diagnosis.data, diagnosis.steps) == ("mlp:depth=4", "digits", 10)


def test_without_meta_layer_order_comes_from_the_records(tmp_path):
    log = make_log([[1e-5, 5.0, 1e-3, 1.0]] * 3, names=["conv1", "bn1", "conv2", "fc"], with_meta=False)
    log = roundtrip(log, tmp_path)
    assert rules.weight_layers(log) == ["conv1", "conv2", "fc"]  # bn1 reads as a norm
    finding = by_kind(log, "vanishing_gradient")
    assert finding.evidence["first_last_ratio"] == pytest.approx(1e-5)


def test_context_changes_the_ranking():
    log = make_log([geometric(6, 0.2)] * 3, activation="relu")
    default = by_kind(log, "vanishing_gradient")
    assert default.remedies[0].key == "residual"
    told = by_kind(log, "vanishing_gradient", context={"activation": "tanh"})
    assert told.remedies[0].key == "relu"


def test_diagnosis_does_not_import_torch():
    code = ("import sys, gradhealth.diagnose.rules, gradhealth.diagnose.catalogue; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# ---- real models, measured by the live monitor inside fit() ------------------------------------

def _real(spec: str, *, seed: int = 0, steps: int = 8, data: str = "digits", **train) -> RunLog:
    from gradhealth.train.loop import fit

    result = fit(model=spec, data=data, steps=steps, seed=seed, progress=False, detail_every=1, **train)
    return RunLog(result.meta, result.records)


def test_deep_sigmoid_mlp_on_digits_vanishes(tmp_path):
    log = roundtrip(_real("mlp:depth=20,width=64,activation=sigmoid,init=xavier"), tmp_path)
    finding = by_kind(log, "vanishing_gradient")
    assert finding is not None and finding.evidence["first_last_ratio"] < 1e-6
    assert 0.1 < finding.evidence["decay_factor"] < 0.5  # sigma' <= 0.25 times a xavier-scaled weight
    assert {"residual", "relu"} <= {r.key for r in finding.remedies[:3]}


def test_mlp_initialized_too_large_explodes(tmp_path):
    log = roundtrip(_real("mlp:depth=10,width=32,activation=relu,init=normal(1)", lr=0.01, on_nonfinite="skip"),
                    tmp_path)
    finding = by_kind(log, "exploding_gradient")
    assert finding is not None and finding.severity == "error"
    assert "normal(1)" in finding.explanation


def test_weights_of_five_overflow_and_the_first_bad_layer_is_named(tmp_path):
    log = roundtrip(_real("mlp:depth=8,width=64,init=constant(5)", lr=1.0, steps=10), tmp_path)
    finding = by_kind(log, "nonfinite")
    assert finding is not None and finding.layers and finding.step is not None


def test_sigmoid_units_pushed_into_their_flat_region_saturate(tmp_path):
    log = roundtrip(_real("mlp:depth=6,width=64,activation=sigmoid,init=normal(1)"), tmp_path)
    finding = by_kind(log, "saturation")
    assert finding is not None and finding.evidence["worst"][0][1] > 0.3


def test_relu_units_behind_a_large_negative_bias_are_dead(tmp_path):
    import torch

    import gradhealth
    from gradhealth.train.config import TrainConfig
    from gradhealth.train.loop import fit

    torch.manual_seed(0)
    model = gradhealth.create_model("mlp:depth=6,width=64,activation=relu,init=he")
    with torch.no_grad():
        for block in model.blocks:
            block.fc1.bias.fill_(-30.0)
    result = fit(TrainConfig(model="custom", data="digits", steps=10, detail_every=1), model=model, progress=False)
    finding = by_kind(roundtrip(RunLog(result.meta, result.records), tmp_path), "dead_units")
    assert finding is not None and any("act1" in layer for layer in finding.layers)


def test_a_learning_rate_far_too_high_or_too_low_is_named(tmp_path):
    high = _real("mlp:depth=4,width=64,norm=batch,init=he", optimizer="adam", lr=1.0, steps=10)
    assert by_kind(roundtrip(high, tmp_path), "lr_too_high") is not None
    low = _real("mlp:depth=4,width=64,norm=batch,init=he", lr=1e-7, steps=10)
    assert by_kind(roundtrip(low, tmp_path), "lr_too_low") is not None


def test_deeper_plain_nets_train_worse_but_residual_twins_do_not():
    from gradhealth.diagnose.rules import diagnose_log

    runs = {depth: _real(f"mlp:depth={depth},width=32,activation=tanh,init=xavier", steps=60, lr=0.05)
            for depth in (4, 40)}
    diagnosis = diagnose_log(runs[40], compare=[runs[4]])
    assert "degradation" in diagnosis.kinds()
    twins = {depth: _real(f"mlp:depth={depth},width=32,activation=tanh,init=xavier,residual=true", steps=60, lr=0.05)
             for depth in (4, 40)}
    assert "degradation" not in diagnose_log(twins[40], compare=[twins[4]]).kinds()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_residual_batchnorm_he_mlp_is_healthy(tmp_path, seed):
    log = roundtrip(_real("mlp:depth=20,width=64,activation=relu,norm=batch,residual=true,init=he", seed=seed),
                    tmp_path)
    assert not kinds(log) & {"vanishing_gradient", "exploding_gradient", "nonfinite", "saturation", "dead_units",
                             "lr_too_high", "lr_too_low"}
    profile = rules.gradient_profile(log)
    assert 0.1 < profile["first_last_ratio"] < 10
