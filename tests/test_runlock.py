"""One writer per run folder and per log: a second writer is refused in a sentence that names the
owner, a lock left by a dead process is taken over, and a released lock leaves nothing behind."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from gradhealth.errors import ConfigError
from gradhealth.monitor.monitor import GradientMonitor
from gradhealth.runlock import LOCK_NAME, lock_file, lock_folder

SRC = str(Path(__file__).resolve().parents[1] / "src")


def test_a_second_writer_in_the_same_process_is_refused_until_the_first_lets_go(tmp_path):
    first = lock_folder(tmp_path)
    with pytest.raises(ConfigError, match=rf"being written by another gradhealth process \(pid {os.getpid()} on "):
        lock_folder(tmp_path)
    first.release()
    assert not (tmp_path / LOCK_NAME).exists()
    lock_folder(tmp_path).release()


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the other process never took its lock"
        time.sleep(0.05)


def _holder(folder: Path, marker: Path) -> subprocess.Popen:
    code = ("import sys, time; from gradhealth.runlock import lock_folder; lock_folder(sys.argv[1]); "
            "open(sys.argv[2], 'w').close(); time.sleep(600)")
    return subprocess.Popen([sys.executable, "-c", code, str(folder), str(marker)],
                            env={**os.environ, "PYTHONPATH": SRC}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_another_process_is_refused_and_its_lock_is_free_once_it_is_killed(tmp_path):
    folder, marker = tmp_path / "run", tmp_path / "locked"
    folder.mkdir()
    proc = _holder(folder, marker)
    try:
        _wait_for(marker, proc)
        with pytest.raises(ConfigError, match=rf"pid {proc.pid} on "):
            lock_folder(folder)
        proc.send_signal(signal.SIGKILL)  # no clean-up at all: the lock file stays behind
        proc.wait(timeout=60)
        assert (folder / LOCK_NAME).exists()
        lock = lock_folder(folder)  # stale: its owner is dead, so it is taken over
        assert (folder / LOCK_NAME).read_text().startswith(f"pid {os.getpid()} ")
        lock.release()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)


def test_a_lock_file_with_a_dead_owner_is_taken_over(tmp_path):
    (tmp_path / LOCK_NAME).write_text("pid 999999999 on elsewhere\n")
    lock = lock_folder(tmp_path)
    assert (tmp_path / LOCK_NAME).read_text().startswith(f"pid {os.getpid()} ")
    lock.release()


def test_two_monitors_on_one_log_are_refused(tmp_path):
    log = tmp_path / "metrics.jsonl"
    model = nn.Linear(4, 2)
    with GradientMonitor(model, jsonl=log):
        other = GradientMonitor(nn.Linear(4, 2), jsonl=log)
        with pytest.raises(ConfigError, match="metrics.jsonl' is being written by another gradhealth process"):
            other.attach()
    with GradientMonitor(model, jsonl=log) as monitor:  # the first one let go when it was closed
        model(torch.ones(3, 4)).sum().backward()
        monitor.step(loss=1.0)
    assert log.read_text().count("\n") >= 2
    assert not list(tmp_path.glob(".*.lock"))


def test_a_monitor_is_refused_while_another_process_writes_its_log(tmp_path):
    log, marker = tmp_path / "metrics.jsonl", tmp_path / "locked"
    code = ("import sys, time; from gradhealth.runlock import lock_file; lock_file(sys.argv[1]); "
            "open(sys.argv[2], 'w').close(); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(log), str(marker)],
                            env={**os.environ, "PYTHONPATH": SRC}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for(marker, proc)
        with pytest.raises(ConfigError, match=rf"pid {proc.pid} on "):
            GradientMonitor(nn.Linear(4, 2), jsonl=log).attach()
    finally:
        proc.kill()
        proc.wait(timeout=60)
    lock_file(log).release()
