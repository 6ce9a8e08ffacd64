"""``gradhealth train --strategy fsdp`` under torchrun (2 processes, gloo): sharded checkpoints resume bit-exactly."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from gradhealth.monitor.records import read_jsonl, record_to_json

TRAIN = ["mlp:depth=3,width=16", "--data", "digits", "--strategy", "fsdp", "--checkpoint-every", "2",
         "--clip", "norm", "--clip-value", "0.5", "--no-activations"]


def _env() -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[1] / "src")
    return {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def _torchrun(nproc: int, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-addr", "127.0.0.1",
           "--master-port", _free_port(),
           "-m", "gradhealth", "train", *args]
    # its own session, so a run that hangs is killed with its workers, not just the launcher
    with subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as proc:
        try:
            out, err = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.mark.timeout(900)
def test_fsdp_run_resumes_bit_exactly_and_refuses_another_world_size(tmp_path):
    straight = _torchrun(2, *TRAIN, "--steps", "4", "--out", str(tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr[-2000:]
    first = _torchrun(2, *TRAIN, "--steps", "2", "--out", str(tmp_path / "resumed"))
    assert first.returncode == 0, first.stderr[-2000:]
    last = tmp_path / "resumed" / "checkpoints" / "last.dcp"
    assert (last / "rank0.pt").is_file() and (last / "rank1.pt").is_file()
    assert not list(last.parent.glob(".*tmp")), "the temp folder is renamed into place"

    # one process cannot continue what two sharded
    alone = subprocess.run([sys.executable, "-m", "gradhealth", "train", *TRAIN, "--steps", "4", "--out",
                            str(tmp_path / "resumed"), "--resume", str(last)],
                           env=_env(), capture_output=True, text=True, timeout=300)
    assert alone.returncode == 2 and "sharded checkpoint" in alone.stderr and "Traceback" not in alone.stderr

    second = _torchrun(2, *TRAIN, "--steps", "4", "--out", str(tmp_path / "resumed"), "--resume", str(last))
    assert second.returncode == 0, second.stderr[-2000:]
    want = [record_to_json(r) for r in read_jsonl(tmp_path / "straight" / "metrics.jsonl").records]
    got = [record_to_json(r) for r in read_jsonl(tmp_path / "resumed" / "metrics.jsonl").records]
    assert [r["step"] for r in got] == [0, 1, 2, 3]
    # steps 2 and 3 ran on the restored shards, optimizer state, RNG and data position
    assert got == want
