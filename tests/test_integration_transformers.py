"""The transformers callback records the Trainer's own pre-clip norm and the clipped gradients it steps with."""
from __future__ import annotations

import json
import math
from collections import defaultdict

import pytest
import torch

transformers = pytest.importorskip("transformers")  # a dev dependency: installed by `make test`

from gradhealth.integrations.transformers import GradHealthCallback  # noqa: E402
from gradhealth.monitor.records import read_jsonl  # noqa: E402

MAX_GRAD_NORM = 0.5


class TokenData(torch.utils.data.Dataset):
    def __init__(self, n: int, length: int, vocab: int):
        self.ids = torch.randint(0, vocab, (n, length), generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


class ClippedGradients(transformers.TrainerCallback):
    """The oracle: per-module norms of the gradients the optimizer gets, computed by hand."""

    def __init__(self):
        self.steps: list[dict[str, float]] = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        squares: dict[str, float] = defaultdict(float)
        for name, p in model.named_parameters():
            if p.grad is not None:
                squares[name.rpartition(".")[0]] += float(p.grad.double().pow(2).sum())
        self.steps.append({layer: math.sqrt(s) for layer, s in squares.items()})


def _train(tmp_path, callback, **overrides):
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=32)
    model = transformers.GPT2LMHeadModel(config)
    oracle = ClippedGradients()
    options = dict(output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=4,
                   max_grad_norm=MAX_GRAD_NORM, report_to=[], use_cpu=True, logging_steps=1,
                   save_strategy="no", disable_tqdm=True)
    args = transformers.TrainingArguments(**{**options, **overrides})
    trainer = transformers.Trainer(model=model, args=args, train_dataset=TokenData(32, 16, 64),
                                   callbacks=[callback, oracle])
    trainer.train()
    logged = [entry["grad_norm"] for entry in trainer.state.log_history if "grad_norm" in entry]
    return logged, oracle.steps


def test_pre_clip_norms_are_the_trainers_and_post_clip_norms_what_the_optimizer_used(tmp_path):
    callback = GradHealthCallback(detail_every=2)
    trainer_norms, clipped = _train(tmp_path, callback)
    records = callback.records
    assert [r.step for r in records] == [0, 1, 2, 3]
    # the Trainer logs the norm its clip measured, before clipping: ours must be that number
    assert [r.global_grad_norm for r in records] == pytest.approx(trainer_norms, rel=1e-5)
    assert min(trainer_norms) > MAX_GRAD_NORM  # so every step was clipped
    for record, oracle, total in zip(records, clipped, trainer_norms):
        assert record.global_grad_norm_post_clip <= MAX_GRAD_NORM + 1e-5
        # torch's clip multiplies every gradient by the same factor
        factor = MAX_GRAD_NORM / (total + 1e-6)
        measured = {name: s.grad_norm for name, s in record.layers.items() if s.grad_norm is not None}
        assert set(measured) == set(oracle)
        for name, post in oracle.items():
            assert record.layers[name].grad_norm_post_clip == pytest.approx(post, rel=1e-5, abs=1e-12)
            assert measured[name] == pytest.approx(post / factor, rel=1e-5, abs=1e-12)
        assert record.loss is not None and math.isfinite(record.loss)
    assert records[0].layers["transformer.h.0.mlp.c_fc"].update_ratio > 0  # a detailed step

    assert [r.step for r in read_jsonl(tmp_path / "metrics.jsonl").records] == [0, 1, 2, 3]
    findings = json.loads((tmp_path / "findings.json").read_text())
    assert findings["verdict"] in ("healthy", "inconclusive", "unhealthy") and findings["steps"] == 4
    assert callback.diagnosis is not None and findings["verdict"] == callback.diagnosis.verdict
    assert "<html" in (tmp_path / "report.html").read_text()


def test_every_and_gradient_accumulation_measure_once_per_optimizer_step(tmp_path):
    callback = GradHealthCallback(every=2, out=tmp_path / "health", report=False)
    trainer_norms, _ = _train(tmp_path, callback, gradient_accumulation_steps=2, max_grad_norm=0.0)
    records = callback.records
    assert [r.step for r in records] == [0, 2]
    assert [r.global_grad_norm for r in records] == pytest.approx(trainer_norms[0::2], rel=1e-5)
    # without clipping the optimizer gets the gradients as they were
    assert [r.global_grad_norm_post_clip for r in records] == pytest.approx(trainer_norms[0::2], rel=1e-5)
    assert (tmp_path / "health" / "metrics.jsonl").is_file()
    assert not (tmp_path / "health" / "report.html").exists()
