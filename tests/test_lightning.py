"""The Lightning callback records the same per-layer norms as the monitor, pre- and post-clip, logs them and diagnoses
the run; under Lightning's FSDP2 strategy (``ModelParallelStrategy``, 2 processes on CPU with gloo) the norms are
the whole tensors'."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

lightning = pytest.importorskip("lightning")  # a dev dependency: installed by `make test`

from lightning.pytorch.loggers import CSVLogger  # noqa: E402

import gradhealth  # noqa: E402
from gradhealth.integrations.lightning import GradHealthCallback  # noqa: E402
from gradhealth.monitor.records import read_jsonl  # noqa: E402

import _lightning_workers as lightning_workers  # noqa: E402
from _ports import free_port  # noqa: E402


class TinyModule(lightning.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = gradhealth.create_model("mlp:depth=4,width=16,in_features=8,num_classes=3")
        self.seen: list[float] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def on_before_optimizer_step(self, optimizer):
        grads = [p.grad.flatten() for p in self.parameters() if p.grad is not None]
        self.seen.append(float(torch.cat(grads).double().norm()))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_callback_records_pre_and_post_clip_norms_in_a_trainer(tmp_path):
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 8), torch.randint(0, 3, (64,)))
    module = TinyModule()
    callback = GradHealthCallback(detail_every=1, jsonl=tmp_path / "metrics.jsonl")
    trainer = lightning.Trainer(max_steps=4, accelerator="cpu", logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False, gradient_clip_val=0.05,
                                accumulate_grad_batches=2, default_root_dir=tmp_path, callbacks=[callback])
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=8))
    records = callback.records
    assert [r.step for r in records] == [0, 1, 2, 3]
    assert [r.global_grad_norm for r in records] == pytest.approx(module.seen, rel=1e-6)
    assert all(r.global_grad_norm_post_clip <= 0.05 + 1e-6 for r in records)
    assert all(r.layers["net.head"].update_ratio > 0 for r in records)
    assert all(r.loss is not None for r in records)
    assert [r.step for r in read_jsonl(tmp_path / "metrics.jsonl").records] == [0, 1, 2, 3]
    # no logger: the diagnosis goes to default_root_dir
    assert json.loads((tmp_path / "findings.json").read_text())["steps"] == 4
    assert (tmp_path / "report.html").is_file()


def test_callback_logs_norms_to_the_trainers_logger_and_writes_the_run_files_in_its_folder(tmp_path, capsys):
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 8), torch.randint(0, 3, (64,)))
    module = TinyModule()
    callback = GradHealthCallback(detail_every=4)
    logger = CSVLogger(tmp_path, name="run")
    trainer = lightning.Trainer(max_steps=4, accelerator="cpu", logger=logger, log_every_n_steps=2,
                                enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                                gradient_clip_val=0.05, default_root_dir=tmp_path, callbacks=[callback])
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=8))
    folder = Path(logger.log_dir)
    records = callback.records
    with open(folder / "metrics.csv", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("gradhealth/grad_norm")]
    # every second step, as log_every_n_steps says: the records of steps 1 and 3
    assert [int(row["step"]) for row in rows] == [1, 3]
    for row in rows:
        record = records[int(row["step"])]
        assert float(row["gradhealth/grad_norm"]) == pytest.approx(module.seen[record.step], rel=1e-6)
        assert float(row["gradhealth/grad_norm_post_clip"]) <= 0.05 + 1e-6
        for name, stats in record.layers.items():
            assert float(row[f"gradhealth/grad_norm/{name}"]) == pytest.approx(stats.grad_norm, rel=1e-6)
    assert [r.step for r in read_jsonl(folder / "metrics.jsonl").records] == [0, 1, 2, 3]
    findings = json.loads((folder / "findings.json").read_text())
    assert findings["verdict"] == callback.diagnosis.verdict
    assert (folder / "report.html").is_file()
    assert f"gradhealth: {findings['verdict']}" in capsys.readouterr().out



@pytest.mark.timeout(600)
def test_callback_under_model_parallel_strategy_records_the_whole_tensors_norms(tmp_path):
    # Lightning's FSDP2 strategy runs on CPU with gloo: two ranks, each on every second example
    world = 2
    mp.spawn(lightning_workers.model_parallel_worker, args=(world, free_port(), str(tmp_path)), nprocs=world,
             join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world)]
    assert all(rank["sharded"] for rank in ranks)  # configure_model made every parameter a DTensor
    assert ranks[1]["records"] == ranks[0]["records"]  # every rank combines the same gathered pieces
    # the oracle: one unsharded process on both ranks' batches at once (the mean of their mean losses)
    oracle = lightning_workers.numbers(lightning_workers.fit(lightning_workers.ShardableModule(),
                                                             world * lightning_workers.BATCH, str(tmp_path / "plain")))
    got = ranks[0]["records"]
    assert [r["step"] for r in got] == [r["step"] for r in oracle] == list(range(lightning_workers.STEPS))
    for seen, want in zip(got, oracle):
        assert list(seen["layers"]) == list(want["layers"])
        for name, stats in want["layers"].items():
            for key, value in stats.items():
                # float32 gradients averaged across ranks in another order: a few roundings apart
                assert seen["layers"][name][key] == pytest.approx(value, rel=1e-5), (seen["step"], name, key)
        assert seen["total"] == pytest.approx(want["total"], rel=1e-5)
        # Lightning clipped the sharded gradients by their global norm, as the plain run clips the whole ones
        assert seen["total_post"] == pytest.approx(want["total_post"], rel=1e-5)
    assert got[0]["total"] > lightning_workers.CLIP  # so clipping did fire
