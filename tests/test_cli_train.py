"""``gradhealth train``: the files it promises, one-sentence errors, Ctrl-C/SIGTERM, torchrun."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from gradhealth.cli import main
from gradhealth.monitor.records import read_jsonl

FAST = ["--data", "synthetic:in=16,classes=4,n=256", "--batch-size", "32"]


def test_train_writes_metrics_checkpoints_and_summary(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "resnet20", "--data", "digits-image", "--steps", "3", "--out", str(out)]) == 0
    assert (out / "metrics.jsonl").exists() and (out / "checkpoints" / "last.pt").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["model"] == "resnet20"
    assert json.loads(capsys.readouterr().out)["steps"] == 3


def test_train_a_users_factory_file_with_every_option(tmp_path):
    model_file = tmp_path / "user_model.py"
    model_file.write_text("import torch\n"
                          "def build(in_features=16, num_classes=4):\n"
                          "    return torch.nn.Sequential(torch.nn.Linear(in_features, 32), torch.nn.Tanh(),\n"
                          "                               torch.nn.Linear(32, num_classes))\n")
    out = tmp_path / "run"
    argv = ["train", f"{model_file}:build", *FAST, "--steps", "6", "--optimizer", "adamw", "--lr", "0.01",
            "--weight-decay", "0.01", "--l1", "1e-5", "--schedule", "warmup_cosine", "--clip", "autoclip",
            "--amp", "bf16", "--monitor-every", "2", "--accumulate", "2", "--eval-every", "3", "--tensorboard",
            "--out", str(out)]
    assert main(argv) == 0
    assert [r.step for r in read_jsonl(out / "metrics.jsonl").records] == [0, 2, 4]
    assert any((out / "tensorboard").iterdir())


@pytest.mark.parametrize("argv, message, code", [
    (["train", "mlp", "--lr", "-1"], "learning rate", 2),
    (["train", "mlp", "--clip", "sometimes"], "unknown clip mode", 2),
    (["train", "mlp", "--data", "imagenet"], "unknown data set", 2),
    (["train", "mlp:depth=0"], "depth must be a positive integer", 2),
    (["train", "mlp:depht=3"], "no option 'depht'", 2),
    (["train", "nosuch.py:build"], "does not exist", 2),
    (["train", "mlp", "--data", "cifar10:/nonexistent/folder"], "", 1),
    (["train", "mlp", "--steps", "2", "--resume", "/nonexistent/last.pt"], "", 1),
    (["train", "mlp", "--steps", "0"], "steps must be a positive integer", 2),
    (["train", "mlp", "--steps", "2", "--epochs", "1"], "not allowed with", 2),
])
def test_bad_inputs_give_one_error_line_and_no_traceback(argv, message, code, capsys, tmp_path):
    try:
        result = main([*argv, "--out", str(tmp_path / "out")])
    except SystemExit as exc:  # argparse usage errors
        result = exc.code
    err = capsys.readouterr().err
    assert result == code
    assert "error:" in err and message in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1


def test_a_corrupt_checkpoint_is_one_sentence(tmp_path, capsys):
    bad = tmp_path / "last.pt"
    bad.write_bytes(b"not a checkpoint at all")
    assert main(["train", "mlp", *FAST, "--steps", "2", "--resume", str(bad), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and "Traceback" not in err


def test_a_run_that_blows_up_stops_with_a_checkpoint_and_a_report(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "mlp:depth=8,width=64,init=constant(5)", "--lr", "1", "--steps", "20", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1 and "NaN/Inf at step" in err and "batch" in err
    for name in ("checkpoints/last.pt", "report.html", "findings.json", "summary.json"):
        assert (out / name).exists(), name
    assert json.loads((out / "summary.json").read_text())["stopped"] == "nonfinite"


def _wait_for_records(path, count, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and path.read_text().count("\n") >= count + 1:
            return
        time.sleep(0.2)
    raise AssertionError(f"no {count} records in {path} after {timeout}s")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_ctrl_c_finish_the_step_save_and_exit_130(tmp_path, sig):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "gradhealth", "train", "mlp:depth=6,width=64", *FAST,
                             "--steps", "100000", "--out", str(out)], stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_records(out / "metrics.jsonl", 3)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted at step" in err and "Traceback" not in err
    from gradhealth.train.checkpoint import load_checkpoint

    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] >= 3


@pytest.mark.timeout(240)
def test_torchrun_two_processes_on_gloo_agree_and_only_rank0_writes(tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "gradhealth", "train", "mlp:depth=4,width=16", *FAST, "--steps", "4", "--out", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    records = read_jsonl(out / "metrics.jsonl").records
    assert [r.step for r in records] == [0, 1, 2, 3]
    assert json.loads((out / "summary.json").read_text())["steps"] == 4


@pytest.mark.timeout(240)
def test_torchrun_ranks_agree_to_stop_when_only_one_rank_sees_nan(tmp_path):
    model_file = tmp_path / "rank_poison.py"
    model_file.write_text(
        "import os, torch\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__(); self.fc = torch.nn.Linear(16, 4); self.calls = 0\n"
        "    def forward(self, x):\n"
        "        self.calls += 1\n"
        "        if os.environ.get('RANK') == '1' and self.calls == 3:\n"
        "            x = x * float('nan')\n"
        "        return self.fc(x)\n"
        "def build():\n"
        "    return Net()\n")
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "gradhealth", "train", f"{model_file}:build", *FAST, "--steps", "10", "--on-nonfinite", "stop",
           "--out", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped"] == "nonfinite" and summary["steps"] == 2, result.stderr[-3000:]


def test_agc_on_a_users_model_takes_its_head_by_name(tmp_path, capsys):
    model_file = tmp_path / "headless.py"
    model_file.write_text("import torch\n"
                          "def build(in_features=16, num_classes=4):\n"
                          "    return torch.nn.Sequential(torch.nn.Linear(in_features, 32), torch.nn.ReLU(),\n"
                          "                               torch.nn.Linear(32, num_classes))\n")
    base = ["train", f"{model_file}:build", *FAST, "--steps", "3", "--clip", "agc", "--clip-value", "0.01"]
    assert main([*base, "--out", str(tmp_path / "no_head")]) == 2
    assert "--clip-head" in capsys.readouterr().err
    assert main([*base, "--clip-head", "2", "--out", str(tmp_path / "run")]) == 0
    assert len(read_jsonl(tmp_path / "run" / "metrics.jsonl").records) == 3
