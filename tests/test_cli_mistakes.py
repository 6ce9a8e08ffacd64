"""User mistakes across the commands: each is one sentence and a non-zero exit, and nothing
already written is lost."""
from __future__ import annotations

import json

import pytest

from gradhealth.cli import main
from gradhealth.monitor.records import read_jsonl

FAST = ["--data", "synthetic:in=16,classes=4,n=256", "--batch-size", "32"]
SMALL = "mlp:depth=3,width=8"


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and "internal error" not in err, err
    return err


@pytest.mark.parametrize("argv, message", [
    (["train", "resnet20", "--data", "digits"], "cannot take the examples of --data digits (each of shape (64,))"),
    (["train", "convnet:dims=1,depth=2", "--data", "digits"], "Pick data of the shape the model expects"),
    (["train", "mlp:num_classes=5", "--data", "digits"], "has 10 classes: the model needs one score per class"),
])
def test_a_model_that_does_not_fit_the_data_says_so(argv, message, tmp_path, capsys):
    assert main([*argv, "--steps", "2", "--out", str(tmp_path / "run")]) == 2
    assert message in _error(capsys)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_a_factory_that_fails_when_called_names_itself(tmp_path, capsys):
    model_file = tmp_path / "broken.py"
    model_file.write_text("def build(**kwargs):\n    raise RuntimeError('boom from factory')\n"
                          "def leave(**kwargs):\n    raise SystemExit(0)\n")
    for factory, message in (("build", "RuntimeError: boom from factory"), ("leave", "SystemExit")):
        assert main(["train", f"{model_file}:{factory}", *FAST, "--steps", "2", "--out", str(tmp_path / factory)]) == 2
        assert f"calling {model_file}:{factory} failed" in (err := _error(capsys)) and message in err


def test_a_new_run_does_not_overwrite_an_old_one_unless_asked(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", SMALL, *FAST, "--steps", "3", "--out", str(out)]) == 0
    before = (out / "metrics.jsonl").read_bytes()
    assert main(["train", SMALL, *FAST, "--steps", "2", "--seed", "1", "--out", str(out)]) == 2
    assert "already holds a run" in _error(capsys)
    assert (out / "metrics.jsonl").read_bytes() == before
    assert main(["train", SMALL, *FAST, "--steps", "2", "--seed", "1", "--out", str(out), "--overwrite"]) == 0
    assert [r.step for r in read_jsonl(out / "metrics.jsonl").records] == [0, 1]


def test_resume_refuses_a_finished_checkpoint_and_another_runs_folder(tmp_path, capsys):
    mine, other = tmp_path / "mine", tmp_path / "other"
    assert main(["train", SMALL, *FAST, "--steps", "4", "--out", str(mine)]) == 0
    assert main(["train", SMALL, *FAST, "--steps", "8", "--seed", "7", "--out", str(other)]) == 0
    capsys.readouterr()
    checkpoint = str(mine / "checkpoints" / "last.pt")
    assert main(["train", SMALL, *FAST, "--steps", "2", "--out", str(mine), "--resume", checkpoint]) == 2
    assert "already at step 4" in _error(capsys)
    before = (other / "metrics.jsonl").read_bytes()
    assert main(["train", SMALL, *FAST, "--steps", "6", "--out", str(other), "--resume", checkpoint]) == 2
    assert "is the log of another run" in _error(capsys)
    assert (other / "metrics.jsonl").read_bytes() == before


@pytest.mark.parametrize("command", ["train", "diagnose", "fix"])
def test_an_out_that_is_a_file_is_refused_before_anything_runs(command, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    model = [SMALL, *FAST] if command == "train" else []
    assert main([command, *model, "--steps", "2", "--out", str(afile)]) == 2
    assert "is a file, not a folder" in _error(capsys)
    assert afile.read_text() == "keep me"


def test_a_report_never_overwrites_its_own_log(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", SMALL, *FAST, "--steps", "2", "--out", str(out)]) == 0
    log = out / "metrics.jsonl"
    before = log.read_bytes()
    assert main(["report", str(log), "--out", str(log)]) == 2
    assert "the log itself" in _error(capsys)
    assert log.read_bytes() == before
    assert main(["report", str(out)]) == 1
    assert "is a folder, not a metrics log; pass its metrics.jsonl" in _error(capsys)


def test_fix_fails_when_its_baseline_cannot_run(capsys):
    assert main(["fix", "--data", "nosuch", "--steps", "2", "--workers", "1"]) == 2
    assert "the baseline run failed" in (err := _error(capsys)) and "unknown data set 'nosuch'" in err


@pytest.mark.parametrize("argv, message", [
    (["diagnose", "--steps", "0"], "steps must be a positive integer"),
    (["fix", "--steps", "0"], "steps must be a positive integer"),
    (["theory", "--sigma-w", "1e200"], "overflow"),
    (["theory", "--sigma-w", "1e-300"], "underflow"),
    (["theory", "--sigma-w", "1.5", "--depth", "1000000000"], "past 100,000 layers"),
])
def test_values_out_of_range_are_refused_in_a_sentence(argv, message, capsys):
    assert main(argv) == 2
    assert message in _error(capsys)


def test_run_options_with_from_log_are_refused(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", SMALL, *FAST, "--steps", "2", "--out", str(out)]) == 0
    assert main(["diagnose", "--from-log", str(out / "metrics.jsonl"), "--steps", "5"]) == 2
    assert "--steps sets how a MODEL is run" in _error(capsys)


@pytest.mark.parametrize("line, message", [
    ('{"step": 1, "layers": {"a": {"grad_norm": "abc"}}}', "'grad_norm' must be a number, not str"),
    ('{"step": 1e400}', "infinity"),
    ('{"step": 1, "metrics": {"val_loss": "x"}}', "'val_loss' must be a number"),
    ('{"meta": {"config": 5, "model": 5}}', "'model' of the meta line must be text"),
    ("[" * 100_000, "line 1"),
])
def test_malformed_log_fields_name_the_line(line, message, tmp_path, capsys):
    log = tmp_path / "bad.jsonl"
    log.write_text(line + "\n" + json.dumps({"step": 2}) + "\n")
    assert main(["diagnose", "--from-log", str(log)]) == 1
    assert message in _error(capsys)


def test_debug_is_accepted_after_the_command(tmp_path):
    with pytest.raises(Exception, match="steps must be a positive integer"):
        main(["train", SMALL, *FAST, "--steps", "0", "--out", str(tmp_path / "run"), "--debug"])


def test_a_run_that_skipped_most_of_its_steps_does_not_exit_0(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", SMALL, *FAST, "--steps", "4", "--lr", "1e30", "--on-nonfinite", "skip", "--out", str(out)]
    assert main(argv) == 1
    assert "steps were skipped for non-finite gradients" in _error(capsys)
    assert (out / "summary.json").exists()


def test_a_log_diagnosis_names_the_data_set_of_the_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", SMALL, *FAST, "--steps", "2", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["diagnose", "--from-log", str(out / "metrics.jsonl"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["data"] == FAST[1]


@pytest.mark.parametrize("argv, message", [
    (["train", "mlp:depth=3,depth=5", "--steps", "1"], "sets depth twice"),
    (["train", "mlp", "--data", "synthetic:in=64,in=32", "--steps", "1"], "was given in twice"),
    (["train", "good.py:", "--steps", "1"], "write path/to/file.py:factory"),
    (["train", "good.py:build,depth=3", "--steps", "1"], "write path/to/file.py:factory"),
    (["train", "mlp", "--epochs", "inf"], "epochs must be a positive finite number"),
    (["train", "mlp", "--seed", "99999999999999999999", "--steps", "1"], "seed must be below 2**63"),
    (["train", "mlp", "--device", "cuda:abc", "--steps", "1"], "device must be auto, cpu, cuda or cuda:N"),
    (["list-models", "zzz*"], "no model matches 'zzz*'"),
    (["theory", "--init", "normal(0.02)", "--fan-in", "0"], "fan_in (the layer's input width) must be a positive"),
    (["theory", "--init", "normal(-1)", "--fan-in", "64"], "the scale in init 'normal(-1)' must be"),
    (["fix", "--only", ","], "names no remedy"),
])
def test_more_mistakes_are_one_sentence(argv, message, tmp_path, capsys):
    if argv[0] == "train":
        argv = [*argv, "--out", str(tmp_path / "run")]
    assert main(argv) == 2
    assert message in _error(capsys)


def test_a_cifar_path_that_is_a_file_says_so(tmp_path, capsys):
    afile = tmp_path / "data_batch_1"
    afile.write_bytes(b"not a folder")
    assert main(["train", "resnet20", "--data", f"cifar10:{afile}", "--steps", "1", "--out", str(tmp_path / "r")]) == 1
    assert "is a file; cifar10: takes the folder" in _error(capsys)


def test_a_report_into_a_path_under_a_file_says_so(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", SMALL, *FAST, "--steps", "2", "--out", str(out)]) == 0
    capsys.readouterr()
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["report", str(out / "metrics.jsonl"), "--out", str(afile / "r.html")]) == 2
    assert "is a file, not a folder" in _error(capsys)


def test_resume_asks_for_the_same_data_and_a_non_checkpoint_prints_only_the_sentence(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", SMALL, *FAST, "--steps", "2", "--out", str(out)]) == 0
    capsys.readouterr()
    checkpoint = str(out / "checkpoints" / "last.pt")
    other_data = ["--data", "synthetic:in=16,classes=4,n=512", "--batch-size", "32"]
    assert main(["train", SMALL, *other_data, "--steps", "4", "--out", str(out), "--resume", checkpoint]) == 2
    assert "was trained with data=" in _error(capsys)
    import pickle

    plain = tmp_path / "plain.pt"
    plain.write_bytes(pickle.dumps({"a": 1}))
    assert main(["train", SMALL, *FAST, "--steps", "4", "--out", str(tmp_path / "r2"), "--resume", str(plain)]) == 1
    err = _error(capsys)
    assert err.count("\n") == 1 and err.startswith("error: ")


def test_a_model_that_returns_no_tensor_says_what_training_needs(tmp_path, capsys):
    model_file = tmp_path / "pair.py"
    model_file.write_text("import torch\n"
                          "class Pair(torch.nn.Module):\n"
                          "    def __init__(self):\n"
                          "        super().__init__(); self.fc = torch.nn.Linear(16, 4)\n"
                          "    def forward(self, x):\n"
                          "        return {'scores': self.fc(x)}\n"
                          "def build():\n"
                          "    return Pair()\n")
    assert main(["train", f"{model_file}:build", *FAST, "--steps", "2", "--out", str(tmp_path / "run")]) == 2
    assert "returns a dict without a 'logits' tensor (its keys: scores); training reads a tensor of logits" \
        in _error(capsys)


@pytest.mark.parametrize("command", ["train", "diagnose", "fix"])
def test_seq_len_with_data_it_does_not_shape_is_refused_not_ignored(command, tmp_path, capsys):
    argv = [command, SMALL, *FAST, "--seq-len", "16", "--steps", "1"]
    if command == "train":
        argv += ["--out", str(tmp_path / "run")]
    assert main(argv) == 2
    err = _error(capsys)
    assert err.strip() == ("error: --seq-len sets the tokens per example of text data (text, text:PATH, or a "
                           f"file.py:loader that takes seq_len); it does nothing with --data {FAST[1]}, so drop it.")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_seq_len_goes_to_a_loader_that_takes_it_and_is_refused_with_one_that_does_not(tmp_path, capsys):
    (tmp_path / "seq_loaders.py").write_text(
        "import torch\n"
        "def with_len(seed=0, seq_len=64):\n"
        "    x = torch.randn(64, seq_len)\n"
        "    return (x, (x.sum(1) > 0).long()), (x[:16], (x[:16].sum(1) > 0).long())\n"
        "def without_len(seed=0):\n"
        "    return with_len(seed, 8)\n")
    common = ["train", SMALL, "--batch-size", "16", "--steps", "1", "--seq-len", "8"]
    assert main([*common, "--data", f"{tmp_path}/seq_loaders.py:with_len", "--out", str(tmp_path / "a")]) == 0
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["config"]["seq_len"] == 8
    capsys.readouterr()
    assert main([*common, "--data", f"{tmp_path}/seq_loaders.py:without_len", "--out", str(tmp_path / "b")]) == 2
    assert "it does nothing with --data" in _error(capsys)
    # not given, the default goes to any data without a word
    assert main(["train", SMALL, *FAST, "--steps", "1", "--out", str(tmp_path / "c")]) == 0
