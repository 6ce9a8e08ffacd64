"""``gradhealth train --strategy fsdp`` under torchrun (2 processes, gloo): sharded checkpoints resume bit-exactly,
after a run that stopped at its step count and after one stopped by SIGTERM."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from _ports import free_port

from gradhealth.distributed import DistInfo
from gradhealth.monitor.records import read_jsonl, record_to_json
from gradhealth.train import sharded_checkpoint
from gradhealth.train.sharded_checkpoint import load_sharded_checkpoint, save_sharded_checkpoint

TRAIN = ["mlp:depth=3,width=16", "--data", "digits", "--strategy", "fsdp", "--checkpoint-every", "2",
         "--clip", "norm", "--clip-value", "0.5", "--no-activations"]


def _env() -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[1] / "src")
    return {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}



def _launcher(nproc: int, entry: list[str], args: tuple[str, ...], env: dict[str, str] | None = None
              ) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), *entry, "train", *args]
    # its own session, so a run that hangs is killed with its workers, not just the launcher
    return subprocess.Popen(cmd, env={**_env(), **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def _finish(proc: subprocess.Popen, timeout: float = 300) -> subprocess.CompletedProcess:
    with proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _torchrun(nproc: int, *args: str) -> subprocess.CompletedProcess:
    return _finish(_launcher(nproc, ["-m", "gradhealth"], args))


def _records(path: Path) -> list[dict]:
    return [record_to_json(r) for r in read_jsonl(path).records]


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
    want = _records(tmp_path / "straight" / "metrics.jsonl")
    got = _records(tmp_path / "resumed" / "metrics.jsonl")
    assert [r["step"] for r in got] == [0, 1, 2, 3]
    # steps 2 and 3 ran on the restored shards, optimizer state, RNG and data position
    assert got == want


def _logged_steps(path: Path) -> int:
    """How many step records the log holds so far (its first line is the run's header)."""
    try:
        return max(0, len(path.read_text().splitlines()) - 1)
    except FileNotFoundError:
        return 0


@pytest.mark.timeout(900)
def test_fsdp_run_stopped_by_sigterm_saves_exits_130_and_resumes_bit_exactly(tmp_path):
    out, statuses = tmp_path / "stopped", tmp_path / "statuses"
    statuses.mkdir()
    last = out / "checkpoints" / "last.dcp"
    entry = str(Path(__file__).with_name("_rank_exit.py"))
    # more steps than it will ever reach; torchrun gets time to let a save on loaded cores finish
    # before it kills the processes (its default is 30 s)
    launcher = _launcher(2, [entry], (*TRAIN, "--steps", "100000", "--out", str(out)),
                         env={"EXIT_STATUS_DIR": str(statuses), "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "120"})
    deadline = time.monotonic() + 300
    while not ((last / "rank1.pt").is_file() and _logged_steps(out / "metrics.jsonl") >= 3):
        assert launcher.poll() is None, launcher.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "the run logged no steps"
        time.sleep(0.2)
    # SIGTERM to the launcher alone (as a scheduler stopping the job does): torchrun forwards it to its workers
    launcher.send_signal(signal.SIGTERM)
    stopped = _finish(launcher)

    # every rank ends as the README says (torchrun itself exits with its own status, not 0)
    assert stopped.returncode != 0
    assert [int((statuses / f"rank{r}").read_text()) for r in range(2)] == [130, 130], stopped.stderr[-2000:]
    # torchrun runs its workers unbuffered: a rank's message and its newline are two writes, between
    # which another process may write
    said = re.findall(r"error: interrupted at step (\d+); checkpoint written to " + re.escape(f"{last}."),
                      stopped.stderr)
    assert len(said) == 2 and said[0] == said[1], stopped.stderr[-2000:]
    step = int(said[0])
    assert step >= 3
    # both ranks agreed on the step they stopped at, and saved it whole: no temp or old folder is left
    for rank in range(2):
        assert torch.load(last / f"rank{rank}.pt", weights_only=True)["step"] == step
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.dcp"]
    assert [r["step"] for r in _records(out / "metrics.jsonl")] == list(range(step))

    straight = _torchrun(2, *TRAIN, "--steps", str(step + 2), "--out", str(tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr[-2000:]
    resumed = _torchrun(2, *TRAIN, "--steps", str(step + 2), "--out", str(out), "--resume", str(last))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _records(out / "metrics.jsonl") == _records(tmp_path / "straight" / "metrics.jsonl")


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")  # one process saves alone, as meant
def test_a_sharded_save_cut_short_leaves_the_last_good_checkpoint(tmp_path, monkeypatch):
    model = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    folder = tmp_path / "checkpoints" / "last.dcp"
    save_sharded_checkpoint(folder, model=model, optimizer=optimizer, state={"step": 4}, info=DistInfo())
    good = model.weight.detach().clone()

    with torch.no_grad():
        model.weight.add_(1.0)

    def cut() -> None:  # the shards are in the temp folder; the process is stopped before its own file
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(sharded_checkpoint, "capture_rng_state", cut)
        with pytest.raises(KeyboardInterrupt):
            save_sharded_checkpoint(folder, model=model, optimizer=optimizer, state={"step": 6}, info=DistInfo())
    assert (folder.parent / ".last.dcp.tmp").is_dir()

    own = load_sharded_checkpoint(folder, model=model, optimizer=optimizer, info=DistInfo())
    assert own["step"] == 4
    assert torch.equal(model.weight, good)
    # the next save clears what the cut one left and replaces the checkpoint
    save_sharded_checkpoint(folder, model=model, optimizer=optimizer, state={"step": 6}, info=DistInfo())
    assert sorted(p.name for p in folder.parent.iterdir()) == ["last.dcp"]
