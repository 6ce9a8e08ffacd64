"""Studies: each one's tiny size runs and its claims hold on the numbers behind them; the study
command's files; the CIFAR-10 recipe of He et al. 2015 on a fake CIFAR folder.

Oracles: σ'(x) <= 1/4 and mean-field theory for the vanishing factor, 5 per layer for the chain of
weights 5, the paper's iteration counts and Table 6 numbers for the recipe.
"""
from __future__ import annotations

import json
import math
import pickle

import numpy as np
import pytest

from gradhealth.cli import main
from gradhealth.diagnose.theory import predict
from gradhealth.remedies.schedules import default_milestones
from gradhealth.studies import cifar, list_studies, residual, run_study
from gradhealth.io import strict_json
from gradhealth.studies.base import Claim, StudyResult, resolve_seeds, spread

_RESULTS: dict[str, StudyResult] = {}


def tiny(name: str) -> StudyResult:
    """Each study's tiny run, once per test session (several tests read the same numbers)."""
    if name not in _RESULTS:
        _RESULTS[name] = run_study(name, "tiny")
    return _RESULTS[name]


def assert_claims_hold(result: StudyResult) -> None:
    assert result.claims, f"{result.name} made no claims"
    failed = [(c.text, c.evidence) for c in result.claims if not c.holds]
    assert not failed, failed
    json.dumps(result.to_json(), allow_nan=False)  # strict JSON, whatever the runs produced


def test_registry_lists_every_study_in_the_materials_order():
    assert list_studies() == ["vanishing", "exploding", "residual", "normalization", "clipping", "schedules", "init",
                              "transformer", "recurrent"]


def test_vanishing_sigmoid_factor_is_below_a_quarter_and_matches_theory():
    result = tiny("vanishing")
    assert_claims_hold(result)
    cells = {(c["activation"], c["init"]): c for c in result.results["cells"]}
    sigmoid, relu = cells[("sigmoid", "xavier")], cells[("relu", "he")]
    assert sigmoid["factor"]["mean"] <= 0.3
    assert sigmoid["factor"]["mean"] == pytest.approx(predict("sigmoid", 1.0, 0.0, 20).per_layer_factor, rel=0.15)
    assert sigmoid["first_last"]["mean"] < 1e-8
    assert 0.1 < relu["first_last"]["mean"] < 10


def test_exploding_chain_of_fives_and_overflow_fixed_by_clipping_or_he():
    result = tiny("exploding")
    assert_claims_hold(result)
    chain = result.results["chain"]
    assert chain["per_layer_ratio"] == pytest.approx([5.0] * (len(chain["backprop_norms"]) - 1), rel=1e-5)
    norms = chain["backprop_norms"]
    assert norms[0] / norms[-1] == pytest.approx(5.0 ** (len(norms) - 1), rel=1e-4)
    overflow = result.results["overflow"]
    assert overflow["large init"][0]["first_nonfinite"] is not None
    for label in ("large init + clip norm 1", "He init"):
        assert overflow[label][0]["stopped"] is None and overflow[label][0]["final_loss"] < math.log(10)
    ratios = [row["first_last"]["mean"] for row in result.results["sweep"]]
    assert ratios == sorted(ratios) and ratios[0] < 1 < ratios[-1]


def test_residual_twins_keep_the_gradient_and_do_not_degrade():
    result = tiny("residual")
    assert_claims_hold(result)
    ratios = result.results["sigmoid_first_last"]
    plain, v1, v2 = ratios.values()
    assert v1 / plain > 1e3 and 0.1 < v2 < 10
    mlp = {(c["family"], c["depth"]): c["final_loss"]["mean"] for c in result.results["mlp"]}
    assert mlp[("plain MLP", 20)] > mlp[("plain MLP", 6)] + 0.1
    assert mlp[("residual MLP", 20)] <= mlp[("residual MLP", 6)] + 0.1
    assert {c["family"] for c in result.results["conv"]} == {"plain conv net", "ResNet"}


def test_normalization_rescues_the_vanishing_gradient():
    result = tiny("normalization")
    assert_claims_hold(result)
    cells = {(c["net"], c["norm"]): c for c in result.results["cells"]}
    assert cells[("mlp", "none")]["first_last"]["mean"] < 1e-3
    assert 1e-2 < cells[("mlp", "batch")]["first_last"]["mean"] < 1e3
    assert cells[("mlp", "batch")]["loss"] < cells[("mlp", "none")]["loss"]


def test_clipping_keeps_a_diverging_run_finite():
    result = tiny("clipping")
    assert_claims_hold(result)
    cells = {c["mode"]: c for c in result.results["cells"]}
    none = cells["none"]
    assert none["first_nonfinite_step"][0] is not None or none["losses"][0] >= 0.9 * math.log(10)
    assert all(math.isfinite(v) for mode in ("norm", "value", "agc", "autoclip") for v in cells[mode]["losses"])


def test_schedules_warmup_and_momentum():
    result = tiny("schedules")
    assert_claims_hold(result)
    runs = {r["label"]: r for r in result.results["runs"]}
    assert runs["warmup_cosine"]["config"]["warmup_steps"] == result.results["warmup_steps"]
    momentum = {c["label"]: c["losses"][0] for c in result.results["momentum"]}
    assert momentum["momentum 0.9"] < momentum["momentum 0"]


def test_init_constant_keeps_units_identical_and_fixup_trains():
    result = tiny("init")
    assert_claims_hold(result)
    plain = {c["init"]: c for c in result.results["plain"]}
    spreads = plain["constant(0.05)"]["symmetry"][0]["row_spread"]
    assert spreads and max(spreads.values()) == 0.0
    assert plain["normal(1)"]["first_last"]["mean"] > 1e3 and plain["normal(0.01)"]["first_last"]["mean"] < 1e-3
    res = {c["init"]: c for c in result.results["residual"]}
    assert res["fixup"]["losses"][0] < res["he"]["losses"][0]


def test_transformer_post_ln_needs_warmup_and_skips_carry_the_gradient():
    result = tiny("transformer")
    assert_claims_hold(result)
    final = {label: s["mean"] for label, s in result.results["final_loss"].items()}
    best = result.results["task"]["best_loss"]
    assert final["pre-LN"] < best + 0.3 and final["post-LN + warm-up"] < best + 0.3  # near ln 2
    assert final["post-LN"] > final["pre-LN"] + 0.5
    ratios = result.results["first_last"]
    assert ratios["none-norm plain"]["mean"] < 1e-2 < ratios["none-norm residual"]["mean"]
    depth = result.results["depth"]
    assert all(len(p) == depth for ps in result.results["init_block_grad_norms"].values() for p in ps)
    runs = {r["label"]: r for r in result.results["runs"]}
    assert runs["post-LN + warm-up"]["warmup_steps"] == result.results["warmup_steps"] > 0
    assert runs["post-LN"]["warmup_steps"] == 0 and "norm=post" in runs["post-LN"]["model"]


def test_recurrent_gradient_through_time_gates_orthogonal_and_clipping():
    result = tiny("recurrent")
    assert_claims_hold(result)
    nets = result.results["nets"]
    rnn = nets["tanh RNN"]
    # oracle: the fitted per-step factor sits near the Jacobian's spectral radius (Pascanu et al. 2013)
    radius = result.results["jacobian"][0]["radius"]
    assert rnn["per_step_factor"][0] == pytest.approx(radius, rel=0.25)
    length = result.results["length"]
    # geometric: the first/last ratio is the factor to the power of the steps between them
    assert math.log10(rnn["first_last"][0]) == pytest.approx((length - 1) * math.log10(rnn["per_step_factor"][0]),
                                                             abs=2.0)
    for label in ("tanh RNN, orthogonal W_hh", "LSTM", "GRU"):
        assert nets[label]["per_step_factor"][0] > rnn["per_step_factor"][0]
    exploding = result.results["exploding"]
    assert exploding["init_grad_norm"][0] > 100
    clipped = exploding["clipped"][0]
    assert clipped["first_nonfinite"] is None and max(clipped["grad_norm"]) > 1.0  # it clipped something


def test_helpers_seeds_spread_and_strict_json():
    assert resolve_seeds("full", None) == [0, 1, 2] and resolve_seeds("tiny", 2) == [0, 1]
    assert resolve_seeds("quick", [4, 7]) == [4, 7]
    assert spread([1.0, 3.0]) == {"n": 2, "finite": 2, "values": [1.0, 3.0], "mean": 2.0,
                                  "std": pytest.approx(math.sqrt(2)), "min": 1.0, "max": 3.0}
    assert spread([10.0, 1000.0], log=True)["mean"] == pytest.approx(100.0)
    assert spread([0.0, 0.0], log=True)["mean"] == 0.0
    assert strict_json({"a": math.inf, "b": (1, math.nan), "c": np.float32(0.5)}) == {"a": None, "b": [1, None], "c": 0.5}
    assert Claim("x", False, {"v": math.nan}).to_json() == {"text": "x", "holds": False, "evidence": {"v": None}}


# ---- the command ---------------------------------------------------------------------------------

def _reject_nan(text: str):
    raise ValueError(f"{text} in results.json")


def test_study_command_writes_results_report_and_gallery(tmp_path, capsys):
    out, gallery = tmp_path / "out", tmp_path / "gallery"
    assert main(["study", "clipping", "--size", "tiny", "--out", str(out), "--gallery", str(gallery)]) == 0
    results = json.loads((out / "results.json").read_text(), parse_constant=_reject_nan)
    study = results["studies"]["clipping"]
    assert results["size"] == "tiny" and results["claims_total"] == len(study["claims"]) == 3
    modes = {run["config"]["clip"] for run in study["results"]["runs"]}
    assert modes == {"none", "norm", "value", "agc", "autoclip"}
    page = (out / "report.html").read_text()
    assert page.count('class="badge healthy">holds') + page.count('class="badge unhealthy">fails') == 3
    assert "<svg" in page and "Contents" in page and "<script" not in page
    svg = (gallery / "clipping.svg").read_text()
    assert svg.startswith("<?xml") and 'height="' in svg.split(">", 2)[1] and len(svg) < 150_000
    assert (out / "figures" / "clipping.svg").read_text() == svg
    assert "claims hold" in capsys.readouterr().out


def test_study_command_refuses_bad_names_and_values(capsys):
    assert main(["study", "nope", "--size", "tiny"]) == 2
    assert "unknown study 'nope'; choose one of: all, clipping" in capsys.readouterr().err
    assert main(["study", "vanishing", "--size", "tiny", "--seeds", "0"]) == 2
    assert "--seeds must be a positive integer" in capsys.readouterr().err


# ---- the CIFAR-10 recipe --------------------------------------------------------------------------

def _fake_cifar(folder, per_batch=16):
    """data_batch_1..5 and test_batch in the python version's format, random pixels and labels."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"labels": rng.integers(0, 10, per_batch).tolist(),
                 b"data": rng.integers(0, 256, size=(per_batch, 3072)).astype(np.uint8)}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    return f"cifar10:{folder}"


def test_cifar_recipe_is_the_papers():
    config = cifar.recipe_config("resnet110", "cifar10:/data")
    assert (config.steps, config.batch_size, config.optimizer, config.lr) == (64_000, 128, "sgd", 0.1)
    assert (config.momentum, config.weight_decay, config.schedule) == (0.9, 1e-4, "multistep")
    assert default_milestones(config.steps) == [32_000, 48_000]  # lr / 10 at 32k and 48k iterations
    assert cifar.PAPER_ERROR == {20: 8.75, 32: 7.51, 44: 7.17, 56: 6.97, 110: 6.43}


def test_cifar_recipe_trains_and_tests_on_a_fake_folder(tmp_path):
    data = _fake_cifar(tmp_path / "cifar-10-batches-py")
    table = cifar.run_recipe(data, depths=(20,), steps=2, preact=True)
    row = table["rows"][0]
    assert row["paper_resnet_error"] == 8.75
    for key in ("resnet_error", "plain_error"):
        assert 0.0 <= row[key]["mean"] <= 100.0
    assert 0.0 <= table["preact"]["error"]["mean"] <= 100.0
    models = {r["config"]["model"] for r in table["runs"]}
    assert models == {"resnet20", "plain20", "cifar_resnet:depth=20,block=preact"}
    assert all(r["steps"] == 2 and r["config"]["batch_size"] == 128 for r in table["runs"])
    assert [type(c.holds) for c in cifar.recipe_claims(table)] == [bool, bool, bool]


def test_full_residual_study_runs_the_recipe_when_given_cifar10(tmp_path, monkeypatch):
    data = _fake_cifar(tmp_path / "cifar")
    real = cifar.run_recipe
    monkeypatch.setattr(cifar, "run_recipe", lambda d, **kw: real(d, **{**kw, "depths": (20,), "steps": 2}))
    monkeypatch.setitem(residual.PRESETS, "full", {**residual.PRESETS["tiny"], "mlp_steps": 5})
    result = residual.run("full", data=data, seeds=1)
    assert result.results["cifar10_recipe"]["rows"][0]["depth"] == 20
    assert any(s.title == "CIFAR-10, the paper's recipe" for s in result.sections)
    assert any("CIFAR-10" in c.text for c in result.claims)
