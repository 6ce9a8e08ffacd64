"""The diagnosis of logs shaped like real models: a GPT-2, a post-LN encoder, Adam's first steps,
recurrent nets through time, and logs that saw too little of the model to say it is healthy.

Every log is built by hand (no torch): the numbers are known, so the findings can be checked exactly.
"""
from __future__ import annotations

import json
import math

import pytest

from gradhealth.cli import main
from gradhealth.diagnose import rules
from gradhealth.diagnose.coverage import WEIGHT_COVERAGE_MIN, coverage
from gradhealth.diagnose.rules import diagnose_log, gradient_profile, profile_gap
from gradhealth.diagnose.structure import block_of, norm_placement
from gradhealth.monitor.records import (
    ActivationStats,
    BlockInfo,
    LayerInfo,
    LayerStats,
    ParamInfo,
    RunLog,
    RunMeta,
    StepRecord,
    read_jsonl,
    write_jsonl,
)

EMBED, VOCAB = 32, 50


def roundtrip(log: RunLog, tmp_path) -> RunLog:
    return read_jsonl(write_jsonl(tmp_path / "run.jsonl", log.records, log.meta))


def by_kind(diagnosis, kind):
    return next((f for f in diagnosis.findings if f.kind == kind), None)


def build(layers: list[LayerInfo], grads, *, steps: int = 8, update_ratio=1e-3, config=None, model=None,
          parameters=None, blocks=None, time_grads=None, lr=None, acts=True) -> RunLog:
    """One record per step; ``grads(step)`` gives each weight layer's gradient norm (None: not measured)."""
    records = []
    for step in range(steps):
        norms = grads(step)
        ratio = update_ratio(step) if callable(update_ratio) else update_ratio
        stats = {n: LayerStats(grad_norm=g, weight_norm=1.0, update_ratio=ratio if g is not None else None)
                 for n, g in norms.items() if g is not None}
        activations = {layer.name: ActivationStats(mean=0.1, std=1.0, saturation=0.02)
                       for layer in layers if layer.role == "activation"} if acts else {}
        tg = time_grads(step) if time_grads else {}
        records.append(StepRecord(step=step, loss=3.0 * 0.97 ** step, lr=lr(step) if lr else 1e-3,
                                  global_grad_norm=math.sqrt(sum(g * g for g in norms.values() if g)),
                                  layers=stats, activations=activations, time_grads=tg))
    meta = RunMeta(layers=layers, model=model, config=config or {}, parameters=parameters or [],
                   blocks=blocks or [])
    return RunLog(meta, records)


# ---- a GPT-2: blocks h.0..h.5, Conv1D matrices of different scales, tied wte / lm_head ------------

GPT2_MATRICES = {"attn.c_attn": (EMBED, 3 * EMBED), "attn.c_proj": (EMBED, EMBED), "mlp.c_fc": (EMBED, 4 * EMBED),
                 "mlp.c_proj": (4 * EMBED, EMBED)}
# healthy training measures matrices of one block at very different scales: side by side, not a decay
GPT2_SCALES = {"attn.c_attn": 0.02, "attn.c_proj": 0.5, "mlp.c_fc": 0.1, "mlp.c_proj": 2.0}


def gpt2_layers(blocks: int = 6) -> list[LayerInfo]:
    layers = [LayerInfo("transformer.wte", "Embedding", "weight", VOCAB * EMBED, tied=["lm_head"]),
              LayerInfo("transformer.wpe", "Embedding", "weight", 16 * EMBED)]
    for k in range(blocks):
        h = f"transformer.h.{k}"
        layers += [LayerInfo(f"{h}.ln_1", "LayerNorm", "norm", 2 * EMBED),
                   LayerInfo(f"{h}.attn.c_attn", "Conv1D", "weight", 3 * EMBED * EMBED),
                   LayerInfo(f"{h}.attn.c_proj", "Conv1D", "weight", EMBED * EMBED),
                   LayerInfo(f"{h}.ln_2", "LayerNorm", "norm", 2 * EMBED),
                   LayerInfo(f"{h}.mlp.c_fc", "Conv1D", "weight", 4 * EMBED * EMBED),
                   LayerInfo(f"{h}.mlp.act", "NewGELUActivation", "activation", 0, "gelu"),
                   LayerInfo(f"{h}.mlp.c_proj", "Conv1D", "weight", 4 * EMBED * EMBED)]
    return layers + [LayerInfo("transformer.ln_f", "LayerNorm", "norm", 2 * EMBED)]


def gpt2_parameters(blocks: int = 6) -> list[ParamInfo]:
    params = [ParamInfo("transformer.wte.weight", [VOCAB, EMBED], "transformer.wte", "weight",
                        tied=["lm_head.weight"]),
              ParamInfo("transformer.wpe.weight", [16, EMBED], "transformer.wpe", "weight")]
    for k in range(blocks):
        h = f"transformer.h.{k}"
        for norm in ("ln_1", "ln_2"):
            params += [ParamInfo(f"{h}.{norm}.{p}", [EMBED], f"{h}.{norm}", "norm") for p in ("weight", "bias")]
        for sub, shape in GPT2_MATRICES.items():
            params += [ParamInfo(f"{h}.{sub}.weight", list(shape), f"{h}.{sub}", "weight"),
                       ParamInfo(f"{h}.{sub}.bias", [shape[1]], f"{h}.{sub}", "weight")]
    params += [ParamInfo("transformer.ln_f.weight", [EMBED], "transformer.ln_f", "norm"),
               ParamInfo("lm_head.weight", [VOCAB, EMBED], "transformer.wte", "weight",
                         tied=["transformer.wte.weight"])]
    return params


def gpt2_grads(per_block: float = 1.0, blocks: int = 6):
    """Block k's matrices at GPT2_SCALES times per_block ** (blocks - 1 - k); wte large (it is also the
    head), wpe small (position embeddings get little gradient)."""
    def grads(step):
        out = {"transformer.wte": 5.0, "transformer.wpe": 1e-4}
        for k in range(blocks):
            scale = per_block ** (blocks - 1 - k)
            out.update({f"transformer.h.{k}.{sub}": s * scale for sub, s in GPT2_SCALES.items()})
        return out
    return grads


def gpt2(per_block: float = 1.0, **kw) -> RunLog:
    return build(gpt2_layers(), gpt2_grads(per_block), parameters=gpt2_parameters(),
                 config={"optimizer": "AdamW", "lr": 1e-3}, model="gpt2-tiny", **kw)


def test_gpt2_blocks_come_from_the_names_and_the_norm_sits_before_each_sublayer():
    log = gpt2()
    blocks = block_of(log)
    assert blocks["transformer.h.3.mlp.c_fc"] == "transformer.h.3" and "transformer.wte" not in blocks
    assert norm_placement(log) == "pre"


def test_a_healthy_gpt2_is_healthy_although_its_matrices_differ_by_a_hundredfold(tmp_path):
    log = roundtrip(gpt2(), tmp_path)
    profile = gradient_profile(log)
    assert profile["unit"] == "block" and profile["layers"] == [f"transformer.h.{k}" for k in range(6)]
    # each block: sqrt of the sum of squares of its four matrices
    assert profile["grad_norms"][0] == pytest.approx(math.sqrt(sum(s * s for s in GPT2_SCALES.values())), rel=1e-3)
    assert profile["first_last_ratio"] == pytest.approx(1.0)
    assert profile["left_out"] == ["transformer.wpe"] and profile["tied"] == {"transformer.wte": ["lm_head"]}
    diagnosis = diagnose_log(log)
    assert diagnosis.findings == [] and diagnosis.verdict == "healthy", diagnosis.findings
    cover = diagnosis.coverage["weight_matrices"]
    assert (cover["measured"], cover["total"]) == (26, 26)  # wte and lm_head are one matrix
    # read matrix by matrix, the same log looks like a vanishing gradient: wpe 1e-4 against c_proj 2.0
    assert 1e-4 / 2.0 < rules.VANISHING_RATIO


def test_a_gpt2_whose_blocks_decay_vanishes_per_block_and_is_not_told_to_use_pre_ln(tmp_path):
    log = roundtrip(gpt2(per_block=0.3), tmp_path)
    finding = by_kind(diagnose_log(log), "vanishing_gradient")
    assert finding is not None
    assert finding.evidence["block_factor"] == pytest.approx(0.3, rel=1e-3)
    assert finding.evidence["first_last_ratio"] == pytest.approx(0.3 ** 5, rel=1e-3)
    assert "each block toward the input" in finding.explanation
    keys = [r.key for r in finding.remedies]
    assert "pre_ln" not in keys  # the norms already sit before each sublayer
    assert "residual" not in keys and "layernorm" not in keys  # a transformer block has both
    assert keys[0] == "zero_init_last" and "batchnorm" not in keys


def test_a_backbone_and_a_head_in_one_sequential_are_not_a_stack_of_blocks():
    names = ["0.stem"] + [f"0.layer1.{k}.conv{c}" for k in range(3) for c in (1, 2)] + ["1.fc"]
    layers = [LayerInfo(n, "Linear" if n == "1.fc" else "Conv2d", "weight", 10) for n in names]
    blocks = block_of(build(layers, lambda s: {n: 1.0 for n in names}))
    # indices 0 and 1 of the outer Sequential hold different layers; layer1.K hold the same ones
    assert blocks == {f"0.layer1.{k}.conv{c}": f"0.layer1.{k}" for k in range(3) for c in (1, 2)}


def test_monitor_blocks_with_a_skip_path_make_the_run_residual():
    log = gpt2(blocks=[BlockInfo(f"transformer.h.{k}", True) for k in range(6)])
    assert rules.run_context(log)["residual"] is True
    assert block_of(log)["transformer.h.0.attn.c_attn"] == "transformer.h.0"


# ---- a post-LN encoder whose gradients grow toward the output -------------------------------------

def encoder_layers(blocks: int = 12) -> list[LayerInfo]:
    layers = [LayerInfo("embeddings.word_embeddings", "Embedding", "weight", 1000),
              LayerInfo("embeddings.LayerNorm", "LayerNorm", "norm", 64)]
    for k in range(blocks):
        b = f"encoder.layer.{k}"
        layers += [LayerInfo(f"{b}.attention.self.{m}", "Linear", "weight", 1056) for m in ("query", "key", "value")]
        layers += [LayerInfo(f"{b}.attention.output.dense", "Linear", "weight", 1056),
                   LayerInfo(f"{b}.attention.output.LayerNorm", "LayerNorm", "norm", 64),
                   LayerInfo(f"{b}.intermediate.dense", "Linear", "weight", 4224),
                   LayerInfo(f"{b}.intermediate.intermediate_act_fn", "GELUActivation", "activation", 0, "gelu"),
                   LayerInfo(f"{b}.output.dense", "Linear", "weight", 4128),
                   LayerInfo(f"{b}.output.LayerNorm", "LayerNorm", "norm", 64)]
    return layers + [LayerInfo("classifier", "Linear", "weight", 66)]


def encoder_grads(per_block: float, blocks: int = 12):
    subs = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
            "intermediate.dense", "output.dense")

    def grads(step):
        out = {"embeddings.word_embeddings": 1e-3, "classifier": 3.0}
        for k in range(blocks):
            out.update({f"encoder.layer.{k}.{sub}": (0.1 + 0.1 * i) * per_block ** (blocks - 1 - k)
                        for i, sub in enumerate(subs)})
        return out
    return grads


def test_a_post_ln_encoder_with_gradients_growing_toward_the_output_gets_warmup_and_pre_ln_first(tmp_path):
    log = roundtrip(build(encoder_layers(), encoder_grads(0.5), config={"optimizer": "AdamW", "lr": 1e-3},
                          model="bert-tiny"), tmp_path)
    assert norm_placement(log) == "post"
    finding = by_kind(diagnose_log(log), "vanishing_gradient")
    assert finding is not None and finding.evidence["unit"] == "block"
    assert finding.evidence["block_factor"] == pytest.approx(0.5, rel=1e-3)
    assert [r.key for r in finding.remedies[:2]] == ["warmup", "pre_ln"]
    assert "Xiong et al. 2020" in finding.remedies[1].why


def test_a_post_ln_encoder_that_already_warms_up_gets_pre_ln_first(tmp_path):
    # the lr rises over the first records: a warm-up the diagnosis reads from the records
    log = build(encoder_layers(), encoder_grads(0.5), config={"optimizer": "AdamW"}, lr=lambda s: 1e-4 * (s + 1))
    finding = by_kind(diagnose_log(log), "vanishing_gradient")
    assert finding.remedies[0].key == "pre_ln" and "warmup" not in [r.key for r in finding.remedies]


# ---- the learning rate at Adam's first steps, and an explosion the init caused ---------------------

def mlp_layers(depth: int = 6, activation: str = "relu") -> list[LayerInfo]:
    out = []
    for i in range(depth):
        out += [LayerInfo(f"fc{i}", "Linear", "weight", 100), LayerInfo(f"act{i}", "ReLU", "activation", 0, activation)]
    return out


def test_adam_updates_fifty_times_the_weights_at_step_0_are_a_learning_rate_too_high(tmp_path):
    log = roundtrip(build(mlp_layers(), lambda s: {f"fc{i}": 1.0 for i in range(6)}, steps=20,
                          update_ratio=lambda s: 50.0 if s == 0 else 1e-3, config={"optimizer": "Adam"}), tmp_path)
    finding = by_kind(diagnose_log(log), "lr_too_high")
    assert finding is not None and finding.severity == "error" and finding.step == 0
    assert finding.layers == [f"fc{i}" for i in range(6)]
    assert finding.evidence["step_spike"]["max_update_ratio"] == 50.0
    assert finding.evidence["median_update_ratio"] == 1e-3  # the median alone would not have seen it
    assert [r.key for r in finding.remedies[:2]] == ["warmup", "lower_lr"]
    # the same run with a warm-up in its config: a lower rate first
    log.meta.config["warmup_steps"] = 100
    assert by_kind(diagnose_log(log), "lr_too_high").remedies[0].key == "lower_lr"


def test_one_layer_with_a_big_first_step_is_not_the_learning_rate():
    ratios = lambda s: 1e-3  # noqa: E731
    log = build(mlp_layers(), lambda s: {f"fc{i}": 1.0 for i in range(6)}, steps=10, update_ratio=ratios)
    log.records[0].layers["fc5"].update_ratio = 50.0
    assert by_kind(diagnose_log(log), "lr_too_high") is None


def test_an_init_explosion_at_a_normal_lr_is_no_error_level_lr_too_high(tmp_path):
    # gradients 1e4 times the weights in every layer from step 0: updates of 10x the weights follow
    log = roundtrip(build(mlp_layers(), lambda s: {f"fc{i}": 1e4 for i in range(6)}, steps=10, update_ratio=10.0,
                          config={"lr": 1e-3, "init": "normal(1)"}), tmp_path)
    diagnosis = diagnose_log(log)
    exploding = by_kind(diagnosis, "exploding_gradient")
    assert exploding is not None and "early_grad_weight_ratio" in exploding.evidence
    high = by_kind(diagnosis, "lr_too_high")
    assert high is None or high.severity == "info"
    assert not [f for f in diagnosis.findings if f.kind == "lr_too_high" and f.severity == "error"]


def test_a_he_initialized_resnet_without_batchnorm_is_not_offered_he_init_first():
    names = ["conv1"] + [f"layer{s}.{b}.conv{c}" for s in (1, 2, 3) for b in range(3) for c in (1, 2)] + ["fc"]
    layers = [LayerInfo(n, "Conv2d" if n != "fc" else "Linear", "weight", 100) for n in names]
    log = build(layers, lambda s: {n: 1e4 for n in names}, update_ratio=10.0, model="resnet20:norm=none")
    log.records[-1].loss = math.nan
    diagnosis = diagnose_log(log)
    assert {"exploding_gradient", "nonfinite"} <= diagnosis.kinds()
    assert rules.run_context(log)["init"] == "he"
    for finding in diagnosis.findings:
        assert finding.remedies[0].key != "he_init", (finding.kind, [r.key for r in finding.remedies])


# ---- gradient through time --------------------------------------------------------------------------

def rnn_layers(cell: str) -> list[LayerInfo]:
    return [LayerInfo("embedding", "Embedding", "weight", 640),
            LayerInfo("rnn.weight_ih_l0", cell, "weight", 2048), LayerInfo("rnn.weight_hh_l0", cell, "weight", 4096),
            LayerInfo("head", "Linear", "weight", 650)]


def rnn_log(cell: str, per_step: float, length: int = 100) -> RunLog:
    def time_grads(step):
        # detailed every other step; ||dL/dx_t|| = per_step ** (steps back from the last)
        return {"rnn": [per_step ** (length - 1 - t) for t in range(length)]} if step % 2 == 0 else {}
    log = build(rnn_layers(cell), lambda s: {"embedding": 0.3, "rnn.weight_ih_l0": 0.5, "rnn.weight_hh_l0": 0.6,
                                             "head": 1.0}, steps=10, time_grads=time_grads)
    log.meta.time_series = ["rnn"]
    return log


def test_a_tanh_rnn_whose_gradient_decays_0_9_per_step_reaches_66_steps_back(tmp_path):
    log = roundtrip(rnn_log("RNN", 0.9), tmp_path)
    finding = by_kind(diagnose_log(log), "vanishing_through_time")
    assert finding is not None and finding.layers == ["rnn"]
    assert finding.evidence["factor"] == pytest.approx(0.9, rel=1e-3)
    # 0.9 ** 65 = 1.06e-3, 0.9 ** 66 = 9.6e-4: the first step back below 1e-3 of the last is 66
    assert finding.evidence["horizon"] == 66 and finding.evidence["length"] == 100
    assert finding.evidence["records"] == 5  # the median over the detailed records only
    assert [r.key for r in finding.remedies[:2]] == ["lstm_gru", "orthogonal_recurrent_init"]


def test_an_lstm_that_decays_slower_has_no_finding_or_a_later_horizon():
    assert by_kind(diagnose_log(rnn_log("LSTM", 0.99)), "vanishing_through_time") is None
    slower = by_kind(diagnose_log(rnn_log("LSTM", 0.92)), "vanishing_through_time")
    assert slower.evidence["horizon"] > 66
    # an LSTM is not told to become one
    assert "lstm_gru" not in [r.key for r in slower.remedies]


def test_exactly_zero_early_steps_count_as_vanished():
    log = rnn_log("RNN", 0.99)
    for record in log.records:
        if record.time_grads:
            record.time_grads["rnn"][:10] = [0.0] * 10
    finding = by_kind(diagnose_log(log), "vanishing_through_time")
    assert finding.evidence["horizon"] == 90


def test_a_gradient_through_time_that_dies_only_after_the_loss_diverged_is_the_divergence_not_the_cell():
    # healthy (0.99 per step) on steps 0..3, then the loss blows up 10x and the gradient is exactly
    # zero beyond the last two steps: saturated units, which the divergence explains
    def died(step):
        length = 100
        if step % 2:
            return {}
        if step < 4:
            return {"rnn": [0.99 ** (length - 1 - t) for t in range(length)]}
        return {"rnn": [0.0] * (length - 2) + [0.5, 1.0]}

    def losses(log, blow_up):
        for record in log.records:
            record.loss = 30.0 if blow_up and record.step >= 4 else 3.0 * 0.97 ** record.step
        return log

    layers = rnn_layers("RNN")
    grads = lambda s: {"embedding": 0.3, "rnn.weight_ih_l0": 0.5, "rnn.weight_hh_l0": 0.6, "head": 1.0}  # noqa: E731
    diverged = losses(build(layers, grads, steps=10, time_grads=died), blow_up=True)
    assert by_kind(diagnose_log(diverged), "vanishing_through_time") is None
    # the same gradients under a loss that stays put: the cell itself stopped carrying the gradient
    steady = losses(build(layers, grads, steps=10, time_grads=died), blow_up=False)
    assert by_kind(diagnose_log(steady), "vanishing_through_time") is not None


def test_a_gradient_growing_back_through_time_explodes():
    finding = by_kind(diagnose_log(rnn_log("RNN", 1.2, length=50)), "exploding_through_time")
    assert finding is not None and finding.evidence["factor"] == pytest.approx(1.2, rel=1e-3)
    assert finding.remedies[0].key == "clip_norm"


def test_a_recurrent_log_without_time_grads_says_the_rule_did_not_run():
    log = build(rnn_layers("GRU"), lambda s: {"embedding": 0.3, "rnn.weight_ih_l0": 0.5, "rnn.weight_hh_l0": 0.6,
                                              "head": 1.0})
    diagnosis = diagnose_log(log)
    assert any(n["rule"] == "gradient through time" for n in diagnosis.not_run)
    assert diagnosis.verdict == "healthy"  # not a rule the verdict rests on
    # recurrent pseudo-layers are ordered weight layers of the depth profile
    assert gradient_profile(log)["layers"] == ["embedding", "rnn.weight_ih_l0", "rnn.weight_hh_l0", "head"]


# ---- coverage: two of twenty-six matrices -----------------------------------------------------------

def partial_gpt2() -> RunLog:
    # only wte and wpe carry gradients in the records: the blocks were not measured
    return build(gpt2_layers(), lambda s: {"transformer.wte": 5.0, "transformer.wpe": 0.1},
                 parameters=gpt2_parameters(), model="gpt2-tiny")


def test_two_of_twenty_six_matrices_is_inconclusive_and_says_why(tmp_path):
    diagnosis = diagnose_log(roundtrip(partial_gpt2(), tmp_path))
    assert diagnosis.findings == [] and diagnosis.verdict == "inconclusive"
    cover = diagnosis.coverage["weight_matrices"]
    assert (cover["measured"], cover["total"]) == (2, 26) and cover["fraction"] < WEIGHT_COVERAGE_MIN
    depth = next(n for n in diagnosis.not_run if n["rule"] == "depth profile")
    assert depth["reason"] == "needs 3 weight layers with gradients, found 1" and depth["blocks_verdict"]
    assert any("2 of 26 weight matrices" in r for r in diagnosis.inconclusive_because())


def test_an_old_log_without_a_parameter_list_has_unknown_coverage_and_stays_healthy():
    log = build(mlp_layers(), lambda s: {f"fc{i}": 1.0 for i in range(6)})
    diagnosis = diagnose_log(log)
    assert diagnosis.coverage["known"] is False and "unknown" in diagnosis.coverage["note"]
    assert diagnosis.verdict == "healthy"


def test_a_two_layer_log_cannot_be_healthy():
    log = build(mlp_layers(2), lambda s: {"fc0": 1.0, "fc1": 1.0})
    diagnosis = diagnose_log(log)
    assert diagnosis.verdict == "inconclusive"
    assert diagnosis.not_run[0]["reason"] == "needs 3 weight layers with gradients, found 2"


def test_coverage_counts_frozen_and_unhooked_apart():
    log = gpt2()
    log.meta.parameters[1].trainable = False  # wpe frozen: no gradient
    for record in log.records:
        record.layers["transformer.wpe"].grad_norm = None
    log.meta.unhooked = ["transformer.h.0.mlp.custom_act"]
    cover = coverage(log)
    assert cover["weight_matrices"]["total"] == 25 and cover["weight_matrices"]["frozen"] == 1
    assert cover["activations"] == {"hooked": 6, "total": 7, "unhooked": ["transformer.h.0.mlp.custom_act"]}
    # a matrix frozen while its bias trains (BitFit): its layer has a gradient, the matrix none
    bitfit = next(p for p in log.meta.parameters if p.name == "transformer.h.0.attn.c_attn.weight")
    bitfit.trainable = False
    assert coverage(log)["weight_matrices"]["total"] == 24 and coverage(log)["weight_matrices"]["frozen"] == 2


def frozen_gpt2(blocks, embeddings: bool = True) -> RunLog:
    """The GPT-2 with the given blocks (and its embeddings) frozen: no gradient there, and said so."""
    log = gpt2()
    frozen = (*(("transformer.wte", "transformer.wpe") if embeddings else ()),
              *(f"transformer.h.{k}." for k in blocks))
    for param in log.meta.parameters:
        if param.layer is not None and param.layer.startswith(frozen):
            param.trainable = False
    for record in log.records:
        for name, stats in record.layers.items():
            if name.startswith(frozen):
                # no gradient; the monitor measures that the weights did not move
                stats.grad_norm, stats.update_ratio = None, 0.0
    return log


def test_frozen_blocks_are_frozen_not_a_vanishing_gradient(tmp_path):
    log = roundtrip(frozen_gpt2(range(2)), tmp_path)
    diagnosis = diagnose_log(log)
    assert diagnosis.findings == [] and diagnosis.verdict == "healthy", diagnosis.findings
    cover = diagnosis.coverage["weight_matrices"]
    # wte (its lm_head copy once), wpe and the 4 matrices of each of two blocks
    assert (cover["measured"], cover["total"], cover["frozen"]) == (16, 16, 2 + 2 * 4)
    profile = gradient_profile(log)
    assert profile["layers"] == [f"transformer.h.{k}" for k in range(2, 6)]
    assert profile["frozen"] == ["transformer.h.0", "transformer.h.1"]
    # too few trainable blocks: the depth profile says the rest are frozen, not that it found nothing
    few = frozen_gpt2(range(4))
    assert diagnose_log(few).verdict == "inconclusive"
    assert profile_gap(few) == "needs 3 blocks with gradients, found 2 (4 more frozen)"


def test_a_mostly_frozen_model_is_not_told_its_learning_rate_is_too_low():
    # the first three blocks train; the last three, nearest the output, and the embeddings are frozen:
    # their updates are 0 because nothing moved them, which says nothing of the rate
    log = frozen_gpt2(range(3, 6))
    diagnosis = diagnose_log(log)
    assert by_kind(diagnosis, "lr_too_low") is None and diagnosis.verdict == "healthy", diagnosis.findings


# ---- GELU/SiLU: no saturation on the positive side, units off on the negative one -----------------

def gelu_mlp(fraction: float, activation: str = "gelu", steps: int = 6) -> RunLog:
    layers = []
    for i in range(4):
        layers += [LayerInfo(f"fc{i}", "Linear", "weight", 100),
                   LayerInfo(f"act{i}", activation.upper(), "activation", 0, activation)]
    log = build(layers, lambda s: {f"fc{i}": 1.0 for i in range(4)}, steps=steps)
    for record in log.records:
        for stats in record.activations.values():
            stats.saturation = fraction
    return log


@pytest.mark.parametrize("activation", ["gelu", "silu", "mish", "elu"])
def test_gelu_type_units_on_their_flat_side_are_units_off_with_remedies_that_fit(activation, tmp_path):
    finding = by_kind(diagnose_log(roundtrip(gelu_mlp(0.68, activation), tmp_path)), "saturation")
    assert finding is not None and finding.severity == "warning"
    assert finding.title.startswith("Units off: 68%") and "does not saturate for positive inputs" in finding.explanation
    assert finding.evidence["side"] == "negative" and finding.evidence["threshold"] == rules.ONE_SIDED_OFF_HIGH
    keys = [r.key for r in finding.remedies]
    assert keys[0] == "lower_lr" and "relu" not in keys and "xavier_init" not in keys
    assert by_kind(diagnose_log(gelu_mlp(0.9, activation)), "saturation").severity == "error"


def test_up_to_half_of_gelu_units_off_is_no_finding_while_tanh_is_saturated():
    # zero-mean inputs of any scale leave at most half of a GELU's elements on its flat side
    assert by_kind(diagnose_log(gelu_mlp(0.45)), "saturation") is None
    tanh = by_kind(diagnose_log(gelu_mlp(0.45, "tanh")), "saturation")
    assert tanh.title.startswith("Saturated units") and [r.key for r in tanh.remedies][:2] == ["relu", "xavier_init"]


def test_cli_json_terminal_and_html_show_the_coverage_and_fail_on_inconclusive(tmp_path, capsys):
    path = write_jsonl(tmp_path / "metrics.jsonl", partial_gpt2().records, partial_gpt2().meta)
    assert main(["diagnose", "--from-log", str(path), "--json", "--fail-on", "inconclusive"]) == 3
    report = json.loads(capsys.readouterr().out)
    assert report["verdict"] == "inconclusive"
    assert report["coverage"]["weight_matrices"]["measured"] == 2 and report["not_run"][0]["rule"] == "depth profile"
    assert main(["diagnose", "--from-log", str(path), "--fail-on", "vanishing_gradient"]) == 0
    out = capsys.readouterr().out
    assert "INCONCLUSIVE" in out and "2 of 26 weight matrices measured" in out and "Not run: depth profile" in out
    page = tmp_path / "report.html"
    assert main(["report", str(path), "--out", str(page)]) == 0
    assert capsys.readouterr().out.strip() == str(page)
    html = page.read_text()
    assert 'class="badge inconclusive"' in html and "2 of 26 weight matrices measured" in html
    assert "needs 3 weight layers with gradients, found 1" in html
    # a healthy log passes the same gate
    healthy = write_jsonl(tmp_path / "healthy.jsonl", gpt2().records, gpt2().meta)
    assert main(["diagnose", "--from-log", str(healthy), "--json", "--fail-on", "inconclusive"]) == 0
    assert json.loads(capsys.readouterr().out)["coverage"]["weight_matrices"]["fraction"] == 1.0


# ---- short runs of real architectures, diagnosed: everything seen, so a verdict -----------------------

def _run_and_diagnose(model, batch, loss_of, steps: int = 6):
    torch = pytest.importorskip("torch")
    from gradhealth.monitor import GradientMonitor

    torch.manual_seed(0)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    with GradientMonitor(model, optimizer=opt, detail_every=2) as mon:
        for _ in range(steps):
            loss = loss_of(model, *batch)
            loss.backward()
            mon.step(loss=loss)
            opt.step()
            opt.zero_grad()
        log = RunLog(mon.meta, list(mon.records))
    return diagnose_log(log)


def _lm_loss(model, tokens):
    return model(input_ids=tokens, labels=tokens).loss


def _image_loss(model, images, labels):
    import torch.nn.functional as F

    out = model(images)
    return F.cross_entropy(out.logits if hasattr(out, "logits") else out, labels)


def _real_models():
    """name -> (a model built small from its config, one batch, the loss)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from _real_models import TorchViT, tiny_decoder, vgg

    torch.manual_seed(0)
    tokens = (torch.randint(0, 64, (4, 12)),)
    images = (torch.randn(8, 3, 16, 16), torch.randint(0, 5, (8,)))

    def llama(frozen_blocks: int = 0, layers: int = 3):
        model = tiny_decoder("llama", tied=False, layers=layers)
        if frozen_blocks:
            model.model.embed_tokens.requires_grad_(False)
            for block in model.model.layers[:frozen_blocks]:
                block.requires_grad_(False)
        return model

    vit_config = transformers.ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=3,
                                        num_attention_heads=2, intermediate_size=64, num_labels=5)
    return {
        "llama": lambda: (llama(), tokens, _lm_loss),
        "llama_frozen_first_block": lambda: (llama(frozen_blocks=1, layers=4), tokens, _lm_loss),
        "hf_vit": lambda: (transformers.ViTForImageClassification(vit_config).train(), images, _image_loss),
        "torch_vit": lambda: (TorchViT(depth=3), images, _image_loss),
        "vgg": lambda: (vgg(), images, _image_loss),
    }


@pytest.mark.parametrize("name", ["llama", "llama_frozen_first_block", "hf_vit", "torch_vit", "vgg"])
def test_a_short_healthy_run_of_a_real_architecture_is_seen_whole_and_gets_a_verdict(name):
    model, batch, loss_of = _real_models()[name]()
    diagnosis = _run_and_diagnose(model, batch, loss_of)
    assert not [f for f in diagnosis.findings if f.severity == "error"], diagnosis.findings
    assert diagnosis.verdict != "inconclusive", diagnosis.inconclusive_because()
    cover = diagnosis.coverage["weight_matrices"]
    assert cover["fraction"] == 1.0 and cover["unmeasured"] == []
    assert not [n for n in diagnosis.not_run if n["blocks_verdict"]]
    if name == "llama_frozen_first_block":
        assert cover["frozen"] == 1 + 7 and cover["total"] == 3 * 7 + 1
    # every activation measured, F.gelu inside nn.TransformerEncoderLayer (torch_vit) too
    assert not [n for n in diagnosis.not_run if n["rule"] == "activations"], diagnosis.not_run
