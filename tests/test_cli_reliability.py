"""Nothing already written is lost: every command claims its output folder, no file it reads is
written over, a full disk and an unreadable checkpoint are said in a sentence, and SIGINT/SIGTERM
end every phase with a true sentence and exit 130."""
from __future__ import annotations

import errno
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from gradhealth.cli import main
from gradhealth.errors import CheckpointError
from gradhealth.io import atomic_write
from gradhealth.monitor.monitor import GradientMonitor
from gradhealth.monitor.records import JsonlWriter, read_jsonl
from gradhealth.runlock import lock_folder
from gradhealth.train import checkpoint as checkpoint_module
from gradhealth.train.checkpoint import FORMAT, load_checkpoint

FAST = ["--data", "synthetic:in=16,classes=4,n=256", "--batch-size", "32"]
SMALL = "mlp:depth=3,width=8"
SRC = str(Path(__file__).resolve().parents[1] / "src")

# a model file for the cases that need user code: it prints, fails, stalls or signals on request
MODEL_FILE = '''
import os, time
import torch
from torch import nn
print("printed at import")
if os.environ.get("STALL_AT") == "import":
    open(os.environ["MARKER"], "w").close()
    time.sleep(600)

class Tag:
    pass

class Net(nn.Module):
    def __init__(self, in_features=16, num_classes=4, extra=False, fail_at=None, signal_at=None):
        super().__init__()
        self.lin = nn.Linear(in_features, num_classes)
        self.extra, self.fail_at, self.signal_at, self.calls = extra, fail_at, signal_at, 0
    def get_extra_state(self):
        return {"tag": Tag()} if self.extra else {}
    def set_extra_state(self, state):
        pass
    def forward(self, x):
        self.calls += 1
        if self.fail_at is not None and self.calls > self.fail_at:
            raise KeyError("no such token in the vocabulary")
        if self.signal_at is not None and self.calls == self.signal_at:
            os.kill(os.getpid(), signal_number())
        return self.lin(x)

def signal_number():
    import signal
    return signal.SIGTERM

def noisy(in_features=16, num_classes=4):
    print("printed by the factory")
    return Net(in_features, num_classes)

def with_extra(in_features=16, num_classes=4):
    return Net(in_features, num_classes, extra=True)

def fails_later(in_features=16, num_classes=4):
    return Net(in_features, num_classes, fail_at=5)

def signals(in_features=16, num_classes=4):
    return Net(in_features, num_classes, signal_at=2)

def stalls(in_features=16, num_classes=4):
    open(os.environ["MARKER"], "w").close()
    time.sleep(600)
'''


@pytest.fixture
def model_file(tmp_path, request) -> Path:
    # a module name of its own per test: a file model is imported once per process and name
    path = tmp_path / f"user_model_{abs(hash(request.node.nodeid))}.py"
    path.write_text(MODEL_FILE)
    return path


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and "internal error" not in err, err
    return err


def _train(out: Path, *more: str) -> list[str]:
    return ["train", SMALL, *FAST, "--steps", "3", "--out", str(out), *more]


# ---- no overwrite without --overwrite -----------------------------------------------------------

def test_a_diagnosis_does_not_replace_a_training_run(tmp_path, capsys):
    run = tmp_path / "R"
    assert main(_train(run)) == 0
    before = {name: (run / name).read_bytes() for name in ("metrics.jsonl", "summary.json", "checkpoints/last.pt")}
    assert main(["diagnose", SMALL, *FAST, "--steps", "2", "--out", str(run)]) == 2
    assert "already holds metrics.jsonl" in _error(capsys)
    assert {name: (run / name).read_bytes() for name in before} == before
    assert main(["diagnose", SMALL, *FAST, "--steps", "2", "--out", str(run), "--overwrite"]) == 0
    assert len(read_jsonl(run / "metrics.jsonl").records) == 2 and (run / "findings.json").exists()


@pytest.mark.parametrize("argv", [
    ["fix", SMALL, *FAST, "--steps", "2", "--only", "lower_lr"],
    ["study", "vanishing", "--size", "tiny"],
    ["train", SMALL, *FAST, "--steps", "2"],
])
def test_every_command_refuses_a_folder_holding_another_commands_outputs(argv, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "findings.json").write_text('{"keep": true}')
    assert main([*argv, "--out", str(out)]) == 2
    assert "already holds findings.json" in _error(capsys)
    assert (out / "findings.json").read_text() == '{"keep": true}'


def test_a_report_does_not_replace_a_report_unless_asked(tmp_path, capsys):
    run = tmp_path / "R"
    assert main(_train(run)) == 0
    (run / "report.html").write_text("mine")
    assert main(["report", str(run / "metrics.jsonl")]) == 2
    assert "already exists" in _error(capsys)
    assert (run / "report.html").read_text() == "mine"
    assert main(["report", str(run / "metrics.jsonl"), "--overwrite"]) == 0
    assert "<html" in (run / "report.html").read_text().lower()


def test_a_log_may_take_its_diagnosis_in_its_own_folder(tmp_path, capsys):
    run = tmp_path / "R"
    assert main(_train(run)) == 0
    assert main(["diagnose", "--from-log", str(run / "metrics.jsonl"), "--out", str(run)]) == 0
    assert (run / "findings.json").exists() and (run / "checkpoints" / "last.pt").exists()
    other = tmp_path / "other"
    assert main(_train(other)) == 0
    assert main(["diagnose", "--from-log", str(run / "metrics.jsonl"), "--out", str(other)]) == 2
    assert "already holds metrics.jsonl" in _error(capsys)


def test_make_demo_may_run_twice_and_replaces_only_its_own_folder():
    recipe = (Path(__file__).resolve().parents[1] / "Makefile").read_text().split("\ndemo:")[1].split("\n\n")[0]
    assert "diagnose --out demo --overwrite" in recipe
    assert "json.load(open('demo/findings.json')).get('model') != DEFAULT_MODEL" in recipe


# ---- one writer per folder -----------------------------------------------------------------------

def test_a_folder_being_written_is_refused(tmp_path, capsys):
    out = tmp_path / "R"
    out.mkdir()
    lock = lock_folder(out)
    try:
        assert main(_train(out)) == 2
        assert f"is being written by another gradhealth process (pid {os.getpid()}" in _error(capsys)
        assert not (out / "metrics.jsonl").exists()
    finally:
        lock.release()
    assert main(_train(out)) == 0


# ---- a full disk ---------------------------------------------------------------------------------

def test_a_full_disk_under_torch_save_keeps_the_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    out = tmp_path / "R"
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("step", 0) >= 4:
            raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 2048 vs 1984")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", save)
    assert main(_train(out, "--steps", "6", "--checkpoint-every", "2")) == 1
    err = _error(capsys)
    last = out / "checkpoints" / "last.pt"
    assert f"the disk holding {last} is full; the last good checkpoint (step 2) is kept" in err
    monkeypatch.setattr(checkpoint_module.torch, "save", real_save)
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == 2


def test_a_full_disk_under_the_log_is_said_in_a_sentence(tmp_path, capsys, monkeypatch):
    out = tmp_path / "R"
    real_write, writes = JsonlWriter.write, []

    def write(self, record):
        writes.append(record.step)
        if record.step >= 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, record)

    monkeypatch.setattr(JsonlWriter, "write", write)
    assert main(_train(out, "--steps", "8", "--checkpoint-every", "2")) == 1
    err = _error(capsys)
    assert f"the disk holding {out} is full; the last good checkpoint (step " in err
    kept = load_checkpoint(out / "checkpoints" / "last.pt")["step"]
    assert f"(step {kept}) is kept" in err and kept in (2, 4)


# ---- checkpoints gradhealth could not read back --------------------------------------------------

def test_a_state_a_weights_only_load_refuses_is_said_at_the_first_save(tmp_path, model_file, capsys):
    out = tmp_path / "R"
    assert main(["train", f"{model_file}:with_extra", *FAST, "--steps", "4", "--checkpoint-every", "2",
                 "--out", str(out)]) == 1
    err = _error(capsys)
    assert "entry 'model._extra_state.tag' cannot be read back by the weights-only load" in err
    assert f"{model_file.stem}.Tag" in err
    assert not (out / "checkpoints" / "last.pt").exists()


@pytest.mark.parametrize("field, value, message", [
    ("step", "12", "its step is '12', not a whole number"),
    ("step", -3, "its step is -3, which is negative"),
    ("extra", [1, 2], "its extra is a list, not a mapping"),
    ("config", "mlp", "its config is a str, not a mapping"),
])
def test_forged_checkpoint_fields_are_a_corrupt_checkpoint(field, value, message, tmp_path, capsys):
    run = tmp_path / "R"
    assert main(_train(run)) == 0
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    ckpt[field] = value
    forged = tmp_path / "forged.pt"
    torch.save(ckpt, forged)
    with pytest.raises(CheckpointError, match="is corrupt: " + message):
        load_checkpoint(forged)
    assert main(_train(tmp_path / "next", "--steps", "6", "--resume", str(forged))) == 1
    assert message in _error(capsys)


def test_forged_data_position_is_a_corrupt_checkpoint(tmp_path, capsys):
    run = tmp_path / "R"
    assert main(_train(run)) == 0
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    ckpt["extra"]["position"] = "seven"
    forged = tmp_path / "forged.pt"
    torch.save(ckpt, forged)
    assert main(_train(tmp_path / "next", "--steps", "6", "--resume", str(forged))) == 1
    assert "is corrupt: its data position is wrong" in _error(capsys)


# ---- stdout is the command's own ---------------------------------------------------------------

def test_json_output_stays_json_when_the_model_file_prints(model_file, tmp_path, capsys):
    assert main(["diagnose", f"{model_file}:noisy", *FAST, "--steps", "2", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["findings"] is not None
    assert "printed at import" in err and "printed by the factory" in err
    assert main(["train", f"{model_file}:noisy", *FAST, "--steps", "2", "--out", str(tmp_path / "R")]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 2


def test_fix_json_stays_json_when_the_model_prints_in_its_workers(model_file, capfd):
    assert main(["fix", f"{model_file}:noisy", *FAST, "--steps", "2", "--only", "lower_lr", "--workers", "2",
                 "--json"]) == 0
    out, err = capfd.readouterr()  # the workers write to the file descriptors, not to sys.stdout
    assert [t["trial"]["key"] for t in json.loads(out)["trials"]] and "printed by the factory" in err


# ---- user mistakes, not internal errors -------------------------------------------------------

@pytest.mark.parametrize("more, message", [
    (["--lr", "1e300"], "the learning rate 1e+300 overflows the float32 numbers"),
    (["--weight-decay", "1e300"], "weight_decay 1e+300 overflows"),
    (["--epochs", "1e308"], "--epochs 1e+308 makes more than 1e+12 optimizer steps"),
    (["--accumulate", "2000000"], "accumulate 2000000 is past 1,000,000 micro-batches"),
    (["--out", ""], "--out is empty"),
    (["--out", "x" * 300], "cannot be used as a folder (File name too long)"),
])
def test_more_user_mistakes_are_one_sentence(more, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["train", SMALL, *FAST, *([] if "--epochs" in more else ["--steps", "2"]), *more]
    assert main(argv) == 2
    assert message in _error(capsys)
    assert not list(tmp_path.rglob("metrics.jsonl"))


def test_a_forward_that_raises_mid_run_is_the_models_exception(model_file, tmp_path, capsys):
    assert main(["train", f"{model_file}:fails_later", *FAST, "--steps", "8", "--out", str(tmp_path / "R")]) == 1
    err = _error(capsys)
    assert f"the model {model_file}:fails_later raised KeyError in its forward pass at step 5" in err
    assert "no such token in the vocabulary" in err


def test_an_argparse_error_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", SMALL, "--steps", "two"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "usage:" not in err
    assert err.startswith("error: argument --steps: invalid int value: 'two' (see gradhealth train --help)")


# ---- outputs that are inputs -------------------------------------------------------------------

def test_a_report_of_a_log_named_report_html_does_not_replace_it(tmp_path, capsys):
    run = tmp_path / "R"
    assert main(_train(run)) == 0
    log = tmp_path / "D" / "report.html"
    log.parent.mkdir()
    log.write_bytes((run / "metrics.jsonl").read_bytes())
    before = log.read_bytes()
    assert main(["report", str(log)]) == 2
    assert "which is the log itself" in _error(capsys)
    assert main(["report", str(log), "--overwrite"]) == 2
    assert log.read_bytes() == before


def test_a_diagnosis_does_not_replace_the_log_it_reads(tmp_path, capsys):
    run = tmp_path / "R"
    assert main(_train(run)) == 0
    folder = tmp_path / "D"
    folder.mkdir()
    log = folder / "findings.json"
    log.write_bytes((run / "metrics.jsonl").read_bytes())
    before = log.read_bytes()
    for more in ([], ["--overwrite"]):
        assert main(["diagnose", "--from-log", str(log), "--out", str(folder), *more]) == 2
        assert "is also the input" in _error(capsys)
    assert log.read_bytes() == before


def test_a_report_onto_a_link_or_a_device_is_refused(tmp_path, capsys):
    run = tmp_path / "R"
    assert main(_train(run)) == 0
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    link = tmp_path / "link.html"
    link.symlink_to(target)
    assert main(["report", str(run / "metrics.jsonl"), "--out", str(link), "--overwrite"]) == 2
    assert "is a symbolic link" in _error(capsys)
    assert target.read_text() == "keep me" and link.is_symlink()
    assert main(["report", str(run / "metrics.jsonl"), "--out", os.devnull, "--overwrite"]) == 2
    assert "is not a regular file" in _error(capsys)


def test_resuming_into_another_runs_folder_compares_the_whole_run(tmp_path, capsys):
    mine, other = tmp_path / "mine", tmp_path / "other"
    assert main(_train(mine, "--steps", "4")) == 0
    # the same model and seed, another batch size: another run all the same
    assert main(["train", SMALL, "--data", "synthetic:in=16,classes=4,n=256", "--batch-size", "16", "--steps", "8",
                 "--out", str(other)]) == 0
    capsys.readouterr()
    before = (other / "metrics.jsonl").read_bytes()
    assert main(_train(other, "--steps", "6", "--resume", str(mine / "checkpoints" / "last.pt"))) == 2
    assert "is the log of another run (batch_size=16 there, 32 in the checkpoint's run)" in _error(capsys)
    assert (other / "metrics.jsonl").read_bytes() == before


# ---- pickling a monitored model ----------------------------------------------------------------

def test_a_model_with_a_monitor_attached_pickles_and_comes_back_unmonitored(tmp_path):
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.ones(3, 4)
    with GradientMonitor(model, optimizer=optimizer, detail_every=1) as monitor:
        model(x).sum().backward()
        monitor.step(loss=1.0)
        copy = pickle.loads(pickle.dumps(model))
        torch.save(model, tmp_path / "model.pt")
        expected = model(x)
        optimizer.step()
    loaded = torch.load(tmp_path / "model.pt", weights_only=False)
    for other in (copy, loaded):
        assert torch.equal(other(x), expected)
        # the copy carries no live monitor: its forward passes record nothing anywhere
        assert all(type(hook).__name__ == "_InertHook" for module in other.modules()
                   for hook in [*module._forward_hooks.values(), *module._forward_pre_hooks.values()])


# ---- signals -----------------------------------------------------------------------------------

def test_a_signal_in_the_loop_without_out_says_nothing_was_saved(model_file, capsys):
    assert main(["diagnose", f"{model_file}:signals", *FAST, "--steps", "6"]) == 130
    err = _error(capsys)
    assert "nothing was saved" in err and "checkpoint written" not in err


def test_a_second_signal_waits_for_the_checkpoint_being_written(model_file, tmp_path, capsys, monkeypatch):
    real_save = torch.save

    def save_under_a_second_signal(obj, f, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # the second one: the model sent the first
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", save_under_a_second_signal)
    out = tmp_path / "R"
    assert main(["train", f"{model_file}:signals", *FAST, "--steps", "6", "--out", str(out)]) == 130
    assert "interrupted by SIGTERM" in _error(capsys)
    monkeypatch.setattr(checkpoint_module.torch, "save", real_save)
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] >= 1


def test_a_signal_inside_an_atomic_write_is_answered_after_it(tmp_path):
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append((tmp_path / "f").exists()))
    try:
        with atomic_write(tmp_path / "f") as handle:
            os.kill(os.getpid(), signal.SIGTERM)
            handle.write("whole")
            assert seen == []
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert seen == [True] and (tmp_path / "f").read_text() == "whole"


@pytest.mark.parametrize("stall", ["import", "factory"])
def test_sigterm_before_training_ends_with_a_sentence_and_130(stall, model_file, tmp_path):
    marker = tmp_path / "stalled"
    factory = "noisy" if stall == "import" else "stalls"
    env = {**os.environ, "PYTHONPATH": SRC, "MARKER": str(marker), "STALL_AT": stall}
    proc = subprocess.Popen([sys.executable, "-m", "gradhealth", "train", f"{model_file}:{factory}", *FAST,
                             "--steps", "2", "--out", str(tmp_path / "R")], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while not marker.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the command never reached the stall"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)
    assert proc.returncode == 130, err
    assert "error: interrupted by SIGTERM" in err and "Traceback" not in err
