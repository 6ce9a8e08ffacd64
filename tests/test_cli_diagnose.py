"""``gradhealth diagnose`` and ``fix``: the embedded default, JSON schema, CI gates, logs without torch."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from gradhealth.cli import main
from gradhealth.diagnose.findings import FINDING_KINDS

HEALTHY = "mlp:depth=12,width=64,activation=relu,norm=batch,residual=true,init=he"


@pytest.fixture(scope="module")
def default_diagnosis(tmp_path_factory):
    out = tmp_path_factory.mktemp("diag")
    code = main(["diagnose", "--json", "--out", str(out), "--fail-on", "vanishing_gradient"])
    return code, out


def test_default_model_is_diagnosed_with_vanishing_gradients_and_skip_connections_as_a_remedy(default_diagnosis):
    code, out = default_diagnosis
    assert code == 3  # --fail-on vanishing_gradient found it
    report = json.loads((out / "findings.json").read_text())
    assert set(report) >= {"verdict", "findings", "model", "data", "steps"}
    assert report["verdict"] == "unhealthy" and report["data"] == "digits" and report["steps"] == 60
    vanishing = [f for f in report["findings"] if f["kind"] == "vanishing_gradient"]
    assert vanishing, report["findings"]
    keys = [r["key"] for r in vanishing[0]["remedies"]]
    assert "residual" in keys[:3] and "relu" in keys[:3]
    assert vanishing[0]["evidence"]["first_last_ratio"] < 1e-6
    theory = report["extra"]["theory"]
    assert theory["prediction"]["regime"] == "vanishing" and theory["comparison"]["agree"]
    html = (out / "report.html").read_text()
    assert "Vanishing gradient" in html and "Theory at initialization" in html


def test_json_schema_of_every_finding(default_diagnosis):
    _, out = default_diagnosis
    for finding in json.loads((out / "findings.json").read_text())["findings"]:
        assert finding["kind"] in FINDING_KINDS
        assert finding["severity"] in ("info", "warning", "error")
        assert finding["explanation"] and isinstance(finding["evidence"], dict)
        assert all({"key", "title", "why", "how"} <= set(r) for r in finding["remedies"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_healthy_residual_net_raises_no_alarm(seed, capsys):
    assert main(["diagnose", HEALTHY, "--json", "--steps", "40", "--seed", str(seed),
                 "--fail-on", ",".join(FINDING_KINDS)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["verdict"] == "healthy", report["findings"]


def test_diagnose_from_log_does_not_import_torch(default_diagnosis, tmp_path):
    _, out = default_diagnosis
    # the default run wrote no metrics (no --out for the run itself): make one with train
    log_dir = tmp_path / "run"
    assert main(["train", "mlp:depth=12,width=32,activation=sigmoid,init=xavier", "--steps", "5",
                 "--out", str(log_dir)]) == 0
    code = ("import sys, json; from gradhealth.cli import main; "
            f"rc = main(['diagnose', '--from-log', {str(log_dir / 'metrics.jsonl')!r}, '--json']); "
            "assert 'torch' not in sys.modules, 'torch was imported'; sys.exit(rc)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["findings"][0]["kind"] == "vanishing_gradient"


def test_diagnose_a_users_factory(tmp_path, capsys):
    model_file = tmp_path / "deep_tanh.py"
    model_file.write_text(
        "import torch\n"
        "def build(in_features=64, num_classes=10):\n"
        "    layers = [torch.nn.Linear(in_features, 64), torch.nn.Tanh()]\n"
        "    for _ in range(16):\n"
        "        layers += [torch.nn.Linear(64, 64), torch.nn.Tanh()]\n"
        "    net = torch.nn.Sequential(*layers, torch.nn.Linear(64, num_classes))\n"
        "    for m in net:\n"
        "        if isinstance(m, torch.nn.Linear):\n"
        "            torch.nn.init.normal_(m.weight, std=0.05)\n"
        "    return net\n")
    assert main(["diagnose", f"{model_file}:build", "--json", "--steps", "20"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert "vanishing_gradient" in {f["kind"] for f in report["findings"]}


@pytest.mark.parametrize("argv, message", [
    (["diagnose", "--fail-on", "vanishing"], "unknown finding kind 'vanishing'"),
    (["diagnose", "mlp", "--from-log", "x.jsonl"], "either a MODEL"),
    (["diagnose", "--from-log", "/nonexistent/metrics.jsonl"], "does not exist"),
    (["fix", "--only", "magic"], "does not apply here"),
    (["fix", "--workers", "0"], "--workers"),
])
def test_diagnose_and_fix_errors(argv, message, capsys):
    assert main(argv) in (1, 2)
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_fix_ranks_residual_or_relu_above_the_baseline_for_the_deep_sigmoid_mlp(tmp_path, capsys):
    out = tmp_path / "fix"
    assert main(["fix", "--steps", "40", "--only", "residual,relu,lower_lr", "--workers", "2", "--json",
                 "--out", str(out)]) == 0
    ranked = [t["trial"]["key"] for t in json.loads(capsys.readouterr().out)["trials"]]
    assert ranked.index("residual") < ranked.index("baseline") or ranked.index("relu") < ranked.index("baseline")
    assert ranked[0] in ("residual", "relu")
    assert (out / "trials.json").exists() and "Remedy trials" in (page := (out / "report.html").read_text())
    assert "Training loss of each trial" in page and page.count("<svg") >= 1
    trials = json.loads((out / "trials.json").read_text())["trials"]
    assert all(len(t["losses"]) == len(t["loss_steps"]) == 40 for t in trials)


def test_an_init_scale_too_large_is_an_exploding_gradient_with_he_init_first(capsys):
    # ReLU, width 64, weights N(0, 0.5^2): each layer multiplies the signal by sqrt(64 * 0.25 / 2) ~ 2.8,
    # so the gradients start 1e4 times the weights, the same in every layer, and the run overflows
    assert main(["diagnose", "mlp:depth=12,width=64,activation=relu,init=normal(0.5)", "--steps", "5", "--json"]) == 0
    findings = {f["kind"]: f for f in json.loads(capsys.readouterr().out)["findings"]}
    exploding = findings["exploding_gradient"]
    assert exploding["severity"] == "error"
    assert exploding["evidence"]["early_grad_weight_ratio"]["median_grad_weight_ratio"] > 1e3
    assert exploding["remedies"][0]["key"] == "he_init"
    assert findings["nonfinite"]["remedies"][0]["key"] == "he_init"


def test_fail_on_accepts_inconclusive_and_names_it_among_the_choices(capsys):
    assert main(["diagnose", "--fail-on", "inconclusive,vanishing"]) == 2
    err = capsys.readouterr().err
    assert "unknown finding kind 'vanishing'" in err and "or inconclusive" in err
