"""Records are plain data: strict JSON with NaN/Inf restored, CSV, clear errors, no torch."""
from __future__ import annotations

import io
import json
import math
import subprocess
import sys

import pytest

from gradhealth.errors import RecordError
from gradhealth.monitor.records import (
    ActivationStats,
    LayerInfo,
    LayerStats,
    NonFiniteEvent,
    RunMeta,
    StepRecord,
    read_jsonl,
    record_from_json,
    record_to_json,
    write_csv,
    write_jsonl,
)


def _record(step=0, loss=1.5):
    return StepRecord(
        step=step, loss=loss, lr=0.1, global_grad_norm=2.0, batch=step,
        layers={"fc1": LayerStats(grad_norm=float("nan"), weight_norm=3.0, update_ratio=1e-3, grad_nonfinite=1),
                "fc2": LayerStats(grad_norm=float("inf"), grad_max=float("-inf"))},
        activations={"act": ActivationStats(mean=0.5, std=0.1, saturation=0.25)},
        first_nonfinite=NonFiniteEvent("gradient", "fc2", 3, step),
        metrics={"val_loss": float("nan"), "acc": 0.5},
    )


def test_round_trip_restores_nan_and_inf_and_the_file_is_strict_json(tmp_path):
    meta = RunMeta(layers=[LayerInfo("fc1", "Linear", "weight", 10), LayerInfo("act", "ReLU", "activation", 0, "relu")],
                   model="mlp", config={"lr": 0.1})
    path = write_jsonl(tmp_path / "run.jsonl", [_record(0), _record(1, float("inf"))], meta)
    for line in path.read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    log = read_jsonl(path)
    assert log.meta == meta
    first, second = log.records
    assert math.isnan(first.layers["fc1"].grad_norm)
    assert first.layers["fc2"].grad_norm == math.inf and first.layers["fc2"].grad_max == -math.inf
    assert second.loss == math.inf
    assert math.isnan(first.metrics["val_loss"]) and first.metrics["acc"] == 0.5
    assert first.first_nonfinite == NonFiniteEvent("gradient", "fc2", 3, 0)
    assert first.activations["act"] == ActivationStats(mean=0.5, std=0.1, saturation=0.25)
    obj = record_to_json(first)
    assert obj["layers"]["fc1"]["grad_norm"] is None and obj["layers"]["fc1"]["nonfinite"] == {"grad_norm": "nan"}


def test_record_json_matches_the_documented_schema():
    obj = record_to_json(_record())
    assert {"step", "loss", "lr", "global_grad_norm", "skipped", "layers"} <= set(obj)
    assert record_from_json(obj).layers.keys() == {"fc1", "fc2"}


def test_csv_has_one_row_per_step_and_module():
    buffer = io.StringIO()
    write_csv(buffer, [_record(0), _record(1)])
    rows = buffer.getvalue().strip().splitlines()
    assert rows[0].startswith("step,loss,lr,skipped,layer,kind,grad_norm")
    assert len(rows) == 1 + 2 * 3


@pytest.mark.parametrize("content, message", [
    ("", "no step records"),
    ('{"step": 0}\nnot json\n{"step": 2}\n', "line 2"),
    ('{"no_step": 1}\n', "line 1"),
    ('{"step": 0, "layers": []}\n', "line 1"),
])
def test_broken_files_give_one_clear_error(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(RecordError, match=message):
        read_jsonl(path)


def test_missing_and_binary_files(tmp_path):
    with pytest.raises(RecordError, match="does not exist"):
        read_jsonl(tmp_path / "nope.jsonl")
    binary = tmp_path / "bin.jsonl"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(RecordError):
        read_jsonl(binary)


def test_a_truncated_last_line_from_a_killed_run_is_dropped(tmp_path):
    path = tmp_path / "run.jsonl"
    good = json.dumps(record_to_json(_record(0)))
    path.write_text(good + "\n" + good[: len(good) // 2])
    assert [r.step for r in read_jsonl(path).records] == [0]


def test_records_module_does_not_import_torch():
    code = "import sys, gradhealth.monitor.records, gradhealth.diagnose.findings; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_coverage_blocks_and_time_grads_round_trip(tmp_path):
    from gradhealth.monitor.records import BlockInfo, ParamInfo

    meta = RunMeta(
        layers=[LayerInfo("transformer.wte", "Embedding", "weight", 640, tied=["lm_head"]),
                LayerInfo("rnn.weight_ih_l0", "LSTM", "weight", 96)],
        parameters=[ParamInfo("transformer.wte.weight", [64, 10], "transformer.wte", "weight", tied=["lm_head.weight"]),
                    ParamInfo("rnn.weight_ih_l0", [32, 3], "rnn.weight_ih_l0", "weight"),
                    ParamInfo("frozen.bias", [10], None, "unmeasured", trainable=False)],
        unhooked=["mlp.act_fn"], time_series=["rnn"], blocks=[BlockInfo("transformer.h.0", True), BlockInfo("h.1")])
    record = StepRecord(step=0, time_grads={"rnn": [0.5, float("nan"), float("inf"), 0.0]})
    path = write_jsonl(tmp_path / "run.jsonl", [record], meta)
    for line in path.read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    log = read_jsonl(path)
    assert log.meta == meta
    grads = log.records[0].time_grads["rnn"]
    assert grads[0] == 0.5 and math.isnan(grads[1]) and grads[2] == math.inf and grads[3] == 0.0
    assert record_to_json(record)["time_grads"]["nonfinite"] == {"rnn": {"1": "nan", "2": "inf"}}
    # an old log without the new fields reads as empty ones
    assert read_jsonl(write_jsonl(tmp_path / "old.jsonl", [StepRecord(step=0)], RunMeta())).meta.parameters == []
