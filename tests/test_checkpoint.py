"""Checkpoints: bit-exact resume, RNG round trips, every broken file a CheckpointError, crash-safe saves."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradhealth.errors import CheckpointError
from gradhealth.train.checkpoint import (
    FORMAT, build_checkpoint, capture_rng_state, load_checkpoint, restore_checkpoint, restore_rng_state,
    save_checkpoint,
)


def _make(seed, width=16):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, width), nn.BatchNorm1d(width), nn.Tanh(), nn.Dropout(0.3), nn.Linear(width, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    return model, optimizer, scheduler


def _train(model, optimizer, scheduler, steps):
    """Steps whose data and dropout masks come from torch's, numpy's and python's global RNGs."""
    for _ in range(steps):
        x = torch.randn(8, 6) * (1 + np.random.rand()) + random.random()
        y = torch.randint(0, 3, (8,))
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        scheduler.step()


def _saved(tmp_path, name="ckpt.pt", width=16, **kwargs):
    model, optimizer, scheduler = _make(0, width)
    state = build_checkpoint(model=model, optimizer=optimizer, scheduler=scheduler, step=3, **kwargs)
    return save_checkpoint(tmp_path / name, state)


def test_resume_is_bit_exact(tmp_path):
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    model, optimizer, scheduler = _make(0)
    _train(model, optimizer, scheduler, 3)
    state = build_checkpoint(model=model, optimizer=optimizer, scheduler=scheduler, step=3, epoch=1,
                             config={"lr": 0.1}, monitor_state={"step": 3, "batch": 2}, extra={"position": 4})
    path = save_checkpoint(tmp_path / "run" / "last.pt", state)
    _train(model, optimizer, scheduler, 3)

    resumed, resumed_opt, resumed_sched = _make(99)  # other weights, and every RNG somewhere else
    np.random.seed(5), random.seed(5)
    info = restore_checkpoint(load_checkpoint(path), model=resumed, optimizer=resumed_opt, scheduler=resumed_sched)
    assert info == {"step": 3, "epoch": 1, "config": {"lr": 0.1}, "monitor": {"step": 3, "batch": 2},
                    "extra": {"position": 4}}
    _train(resumed, resumed_opt, resumed_sched, 3)
    for (name, a), (_, b) in zip(model.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), name  # includes BatchNorm buffers
    for p, q in zip(model.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(optimizer.state[p]["momentum_buffer"], resumed_opt.state[q]["momentum_buffer"])
    assert scheduler.get_last_lr() == resumed_sched.get_last_lr() == [0.1 * 0.5 ** 3]


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    np.random.randn(), random.gauss(0, 1)  # both generators now hold a cached gaussian
    state = capture_rng_state()
    expected = torch.rand(4), np.random.randn(3), np.random.rand(2), random.gauss(0, 1), random.random()
    torch.save(state, tmp_path / "rng.pt")
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    again = torch.rand(4), np.random.randn(3), np.random.rand(2), random.gauss(0, 1), random.random()
    assert torch.equal(expected[0], again[0])
    np.testing.assert_array_equal(expected[1], again[1])
    np.testing.assert_array_equal(expected[2], again[2])
    assert expected[3:] == again[3:]


# importing torch.compile's machinery warns about torch.jit, which is not ours to fix
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_wrappers_are_unwrapped(tmp_path):
    model, *_ = _make(0)
    plain_keys = list(model.state_dict())
    for wrapped in (nn.DataParallel(model), torch.compile(model), nn.DataParallel(torch.compile(model))):
        assert list(build_checkpoint(model=wrapped, step=0)["model"]) == plain_keys
    path = save_checkpoint(tmp_path / "c.pt", build_checkpoint(model=model, step=7))
    target, *_ = _make(3)
    assert restore_checkpoint(load_checkpoint(path), model=torch.compile(target))["step"] == 7
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), target.state_dict().values()))


def test_saved_file_has_format_marker_and_normal_permissions(tmp_path):
    path = _saved(tmp_path)
    ckpt = load_checkpoint(path)
    assert ckpt["format"] == FORMAT == {"name": "gradhealth", "version": 1} and ckpt["step"] == 3
    umask = os.umask(0)
    os.umask(umask)
    assert (path.stat().st_mode & 0o777) == 0o666 & ~umask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]


# ---- broken files ------------------------------------------------------------------------------

class _RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _Custom:
    pass


def _broken(tmp_path, how):
    path = tmp_path / "bad.pt"
    if how == "missing":
        return path
    if how == "folder":
        path.mkdir()
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "random bytes":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif how == "truncated":
        whole = _saved(tmp_path, "good.pt").read_bytes()
        path.write_bytes(whole[: len(whole) // 2])
    elif how == "not gradhealth":
        torch.save({"a": 1}, path)
    elif how == "future version":
        state = torch.load(_saved(tmp_path, "good.pt"), weights_only=True)
        torch.save({**state, "format": {"name": "gradhealth", "version": 2}}, path)
    elif how == "code":
        torch.save({"model": {}, "x": _RunsShell(tmp_path / "pwned")}, path)
    elif how == "custom class":
        _saved(tmp_path, "bad.pt", extra={"obj": _Custom()})
    return path


@pytest.mark.parametrize("how, words", [
    ("missing", "does not exist"), ("folder", "is a folder"), ("empty", "is empty"),
    ("random bytes", "corrupt or truncated"), ("truncated", "corrupt or truncated"),
    ("not gradhealth", "not a gradhealth checkpoint"), ("future version", "newer than the 1"),
    ("code", r"(posix|nt)\.system object, which a weights-only load refuses"),
    ("custom class", "_Custom object, which a weights-only load refuses"),
])
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_broken_checkpoints_raise_checkpoint_error(tmp_path, how, words):
    path = _broken(tmp_path, how)
    with pytest.raises(CheckpointError, match=words) as caught:
        load_checkpoint(path)
    assert str(caught.value).count("; ") == 1 and str(caught.value).endswith(".")
    assert not (tmp_path / "pwned").exists()  # nothing in the file was run


@pytest.mark.parametrize("width, depth, words", [
    (32, 1, r"'0.weight' has shape \(16, 6\) there but \(32, 6\) here"),
    (16, 2, "'5.weight' which this model lacks|missing from it"),
])
def test_other_architecture_is_named(tmp_path, width, depth, words):
    ckpt = load_checkpoint(_saved(tmp_path))
    model, *_ = _make(0, width)
    if depth == 2:
        model.append(nn.Linear(3, 3))
    with pytest.raises(CheckpointError, match="made for a different model") as caught:
        restore_checkpoint(ckpt, model=model)
    assert caught.match(words)


def test_optimizer_state_must_fit(tmp_path):
    ckpt = load_checkpoint(_saved(tmp_path))
    model, *_ = _make(0)
    two_groups = torch.optim.SGD([{"params": model[0].parameters()}, {"params": model[4].parameters()}], lr=0.1)
    with pytest.raises(CheckpointError, match="optimizer state does not fit"):
        restore_checkpoint(ckpt, model=model, optimizer=two_groups)
    weights_only = load_checkpoint(save_checkpoint(tmp_path / "w.pt", build_checkpoint(model=model, step=0)))
    with pytest.raises(CheckpointError, match="holds no optimizer state"):
        restore_checkpoint(weights_only, model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))


# ---- interrupted saves -------------------------------------------------------------------------

def _assert_old_checkpoint_intact(path):
    assert load_checkpoint(path)["step"] == 3


@pytest.mark.parametrize("failure", [RuntimeError("disk on fire"), KeyboardInterrupt()])
def test_failing_torch_save_keeps_previous_file(tmp_path, monkeypatch, failure):
    path = _saved(tmp_path)
    real_save = torch.save

    def half_then_fail(obj, f):
        real_save(obj, f)
        f.truncate(100)
        raise failure

    monkeypatch.setattr(torch, "save", half_then_fail)
    with pytest.raises(type(failure)):
        save_checkpoint(path, {"step": 4})
    monkeypatch.undo()
    _assert_old_checkpoint_intact(path)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # the temp file was removed


def test_failing_rename_keeps_previous_file(tmp_path, monkeypatch):
    path = _saved(tmp_path)

    def no_space(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", no_space)
    with pytest.raises(CheckpointError, match="previous one is unchanged"):
        save_checkpoint(path, {"step": 4})
    monkeypatch.undo()
    _assert_old_checkpoint_intact(path)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


_CHILD = """
import os, sys, time, torch
path, stage = sys.argv[1], sys.argv[2]
real_save = torch.save

class SlowFile:  # writes the first megabyte, then stalls, so the parent kills it mid-write
    def __init__(self, f):
        self.f, self.written = f, 0
    def write(self, data):
        self.f.write(data)
        self.f.flush()
        self.written += len(data)
        if self.written > 2**20:
            print("writing", flush=True)
            time.sleep(120)
        return len(data)

def stall_rename(src, dst):  # everything written and synced, killed just before the rename
    print("writing", flush=True)
    time.sleep(120)

if stage == "mid-write":
    torch.save = lambda obj, f: real_save(obj, SlowFile(f))
else:
    os.replace = stall_rename
from gradhealth.train.checkpoint import save_checkpoint
save_checkpoint(path, {"step": 4, "big": torch.ones(13_000_000)})  # about 50 MB
"""


@pytest.mark.parametrize("stage", ["mid-write", "before-rename"])
def test_sigkill_during_save_keeps_previous_file(tmp_path, stage):
    path = _saved(tmp_path)
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(path), stage], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline()
        assert line.strip() == "writing", child.stderr.read()
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    _assert_old_checkpoint_intact(path)
    # the dead writer's temp file is left under its own prefix, never under the checkpoint's name
    leftovers = [p for p in tmp_path.iterdir() if p.name != "ckpt.pt"]
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".ckpt.pt.") and leftovers[0].name.endswith(".tmp")
    assert leftovers[0].stat().st_size > 2**20
    # the next save to the same name clears it, and leaves other files alone
    (tmp_path / ".other.pt.x.tmp").write_bytes(b"x")
    save_checkpoint(path, build_checkpoint(model=nn.Linear(2, 2), step=5))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.pt.x.tmp", "ckpt.pt"]
    assert load_checkpoint(path)["step"] == 5
