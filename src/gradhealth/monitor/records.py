"""What the monitor measured, as plain data: no torch here.

A run's log is a JSONL file. Its first line may carry the run's metadata (``{"meta": {...}}``: the
layers in forward order with their type and role, the model, the config); every other line is
one ``StepRecord``::

    {"step": 10, "loss": 2.3, "lr": 0.1, "global_grad_norm": 0.7, "skipped": false,
     "layers": {"blocks.0.conv1": {"grad_norm": 0.02, "weight_norm": 3.1, ...}},
     "activations": {"blocks.0.act1": {"mean": 0.5, "saturation": 0.9, ...}}}

The file is strict JSON: a NaN or infinite number is written as ``null`` and named in the
object's ``nonfinite`` map (``{"grad_norm": "nan"}``), from which the reader restores it.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from gradhealth.errors import RecordError
from gradhealth.io import atomic_write

__all__ = [
    "LayerStats",
    "ActivationStats",
    "NonFiniteEvent",
    "StepRecord",
    "LayerInfo",
    "ParamInfo",
    "BlockInfo",
    "RunMeta",
    "RunLog",
    "record_to_json",
    "record_from_json",
    "JsonlWriter",
    "read_jsonl",
    "write_jsonl",
    "write_csv",
    "LAYER_METRICS",
    "ACTIVATION_METRICS",
]

SCHEMA_VERSION = 1


# slots: a history of 10,000 steps of a 150-layer net holds 1.5 million of these
@dataclass(slots=True)
class LayerStats:
    """One parameter-owning module at one optimizer step; norms are L2 over its own parameters."""

    grad_norm: float | None = None
    grad_norm_post_clip: float | None = None
    grad_max: float | None = None
    weight_norm: float | None = None
    # ||w_after - w_before|| / ||w_before|| of the real optimizer step
    update_ratio: float | None = None
    # gradient elements that were NaN or +-Inf
    grad_nonfinite: int = 0


@dataclass(slots=True)
class ActivationStats:
    """One activation module's outputs at one step, pooled over every call in the forward pass."""

    mean: float | None = None
    std: float | None = None
    # fraction of elements where the derivative is < 1 % of its maximum (the activation's own rule)
    saturation: float | None = None
    # ReLU family: fraction of units (channels/features) off for every example of the batch
    dead_fraction: float | None = None
    nonfinite: int = 0


@dataclass
class NonFiniteEvent:
    """Where NaN/Inf first showed: ``kind`` is input, activation, loss or gradient."""

    kind: str
    layer: str | None = None
    batch: int | None = None
    step: int | None = None
    # sharded models: the lowest rank whose piece of the gradient was NaN/Inf
    rank: int | None = None


@dataclass
class StepRecord:
    step: int
    loss: float | None = None
    lr: float | None = None
    global_grad_norm: float | None = None
    global_grad_norm_post_clip: float | None = None
    # the optimizer did not step (AMP found inf/NaN, or the non-finite policy skipped it)
    skipped: bool = False
    # index of the last batch that went into this step (counts micro-batches)
    batch: int | None = None
    layers: dict[str, LayerStats] = field(default_factory=dict)
    activations: dict[str, ActivationStats] = field(default_factory=dict)
    first_nonfinite: NonFiniteEvent | None = None
    # anything else the loop measured: val_loss, accuracy, grad_scale, clipped (0/1) ...
    metrics: dict[str, float | None] = field(default_factory=dict)
    # detailed steps: per recurrent module (or user-named sequence tensor), ||dL/dx_t|| for t = 0..T-1,
    # the gradient that reaches the module's input at time step t (L2 over batch and features)
    time_grads: dict[str, list[float]] = field(default_factory=dict)


@dataclass
class LayerInfo:
    """A module of the model: ``role`` is weight (Linear/Conv), norm, activation, or other."""

    name: str
    type: str
    role: str
    params: int = 0
    # the activation rule's name (sigmoid, relu, ...) for role == activation
    activation: str | None = None
    # other module names that share this layer's parameters (tied weights: lm_head and wte)
    tied: list[str] = field(default_factory=list)
    # the repeated block this layer belongs to; left None by the monitor (the diagnosis derives it)
    block: str | None = None


@dataclass
class ParamInfo:
    """One parameter tensor of ``named_parameters(remove_duplicate=False)``: ``layer`` is the measured
    layer it was counted in (None: not measured), ``role`` that layer's role or "unmeasured"."""

    name: str
    shape: list[int]
    layer: str | None
    role: str
    trainable: bool = True
    tied: list[str] = field(default_factory=list)


@dataclass
class BlockInfo:
    """A repeated block (``h.3``, ``layers.K``, ``encoder.layer.K``, ``blocks.K``); ``residual``:
    whether its autograd graph has a skip path from input to output (None: could not tell)."""

    name: str
    residual: bool | None = None


@dataclass
class RunMeta:
    """Facts about the run that do not change per step; ``layers`` are in forward order."""

    layers: list[LayerInfo] = field(default_factory=list)
    model: str | None = None
    data: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    version: int = SCHEMA_VERSION
    # every parameter tensor, measured or not (coverage)
    parameters: list[ParamInfo] = field(default_factory=list)
    # activations that are not measured, with why: classes that look like activations but have no
    # rule, functions torch's transformer layers call in place of a module
    unhooked: list[str] = field(default_factory=list)
    # recurrent modules / user-named tensors whose gradient through time is measured
    time_series: list[str] = field(default_factory=list)
    blocks: list[BlockInfo] = field(default_factory=list)
    # sequences whose gradient through time could not be measured, with why (a PackedSequence input)
    time_unmeasured: list[str] = field(default_factory=list)

    def names(self, role: str) -> list[str]:
        return [layer.name for layer in self.layers if layer.role == role]


@dataclass
class RunLog:
    meta: RunMeta
    records: list[StepRecord]


LAYER_METRICS = tuple(f.name for f in fields(LayerStats))
ACTIVATION_METRICS = tuple(f.name for f in fields(ActivationStats))


# ---- strict-JSON encoding of floats -------------------------------------------------------------

def _encode_obj(values: dict[str, Any]) -> dict[str, Any]:
    """Copy with NaN/Inf replaced by null and listed under ``nonfinite``; Nones dropped."""
    out: dict[str, Any] = {}
    bad: dict[str, str] = {}
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            bad[key] = "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
            out[key] = None
        else:
            out[key] = value
    if bad:
        out["nonfinite"] = bad
    return out


def _decode_obj(values: dict[str, Any]) -> dict[str, Any]:
    out = dict(values)
    bad = out.pop("nonfinite", None) or {}
    if not isinstance(bad, dict):
        raise ValueError("'nonfinite' must map field names to nan, inf or -inf")
    for key, text in bad.items():
        out[key] = float(text)
    return out


def _typed(key: str, value: Any, annotation: str) -> Any:
    """``value`` checked against a field's annotation (numbers, integers, text; None where optional)."""
    if value is None and "None" in annotation:
        return None
    if annotation.startswith("list["):
        if not isinstance(value, list):
            raise TypeError(f"{key!r} must be a list, not {type(value).__name__}")
        return [_typed(key, item, annotation[5:-1]) for item in value]
    if annotation.startswith("bool"):
        if not isinstance(value, bool):
            raise TypeError(f"{key!r} must be true or false, not {type(value).__name__}")
        return value
    if annotation.startswith("str"):
        if not isinstance(value, str):
            raise TypeError(f"{key!r} must be text, not {type(value).__name__}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{key!r} must be a number, not {type(value).__name__}")
    return int(value) if annotation.startswith("int") else float(value)


def _build(cls: type, values: dict[str, Any]) -> Any:
    if not isinstance(values, dict):
        raise TypeError(f"a {cls.__name__} must be an object, not {type(values).__name__}")
    kinds = {f.name: str(f.type) for f in fields(cls)}
    return cls(**{k: _typed(k, v, kinds[k]) for k, v in _decode_obj(values).items() if k in kinds})


def record_to_json(record: StepRecord) -> dict[str, Any]:
    """A StepRecord as a strict-JSON-ready dict."""
    top = {
        "step": record.step,
        "loss": record.loss,
        "lr": record.lr,
        "global_grad_norm": record.global_grad_norm,
        "global_grad_norm_post_clip": record.global_grad_norm_post_clip,
        "skipped": record.skipped,
        "batch": record.batch,
    }
    out = _encode_obj(top)
    out["skipped"] = bool(record.skipped)
    out["layers"] = {name: _encode_obj(asdict(s)) for name, s in record.layers.items()}
    if record.activations:
        out["activations"] = {name: _encode_obj(asdict(s)) for name, s in record.activations.items()}
    if record.first_nonfinite is not None:
        out["first_nonfinite"] = _encode_obj(asdict(record.first_nonfinite))
    if record.metrics:
        out["metrics"] = _encode_obj(dict(record.metrics))
    if record.time_grads:
        out["time_grads"] = _encode_series(record.time_grads)
    return out


def _encode_series(series: dict[str, list[float]]) -> dict[str, Any]:
    """Lists of floats per name; a NaN/Inf is null and named in ``nonfinite`` as {name: {index: text}}."""
    out: dict[str, Any] = {}
    bad: dict[str, dict[str, str]] = {}
    for name, values in series.items():
        encoded = _encode_obj({str(i): float(v) for i, v in enumerate(values)})
        if "nonfinite" in encoded:
            bad[name] = encoded.pop("nonfinite")
        out[name] = [encoded[str(i)] for i in range(len(values))]
    if bad:
        out["nonfinite"] = bad
    return out


def _decode_series(obj: Any) -> dict[str, list[float]]:
    body = dict(_object(obj))
    bad = _object(body.pop("nonfinite", None) or {})
    out = {}
    for name, values in body.items():
        if not isinstance(values, list):
            raise TypeError(f"time_grads of {name!r} must be a list")
        restored = _decode_obj({**{str(i): v for i, v in enumerate(values)}, "nonfinite": bad.get(name) or {}})
        out[str(name)] = [_typed(name, restored[str(i)], "float") for i in range(len(values))]
    return out


def record_from_json(obj: dict[str, Any]) -> StepRecord:
    """The inverse of ``record_to_json``; raises ValueError/TypeError/KeyError on a malformed object."""
    if not isinstance(obj, dict) or "step" not in obj:
        raise ValueError("a step record needs a 'step'")
    top = _decode_obj({k: v for k, v in obj.items()
                       if k not in ("layers", "activations", "first_nonfinite", "metrics", "time_grads")})
    layers = obj.get("layers", {})
    acts = obj.get("activations", {})
    if not isinstance(layers, dict) or not isinstance(acts, dict):
        raise ValueError("'layers' and 'activations' must be objects")
    event = obj.get("first_nonfinite")
    floats = {key: _typed(key, top.get(key), "float | None")
              for key in ("loss", "lr", "global_grad_norm", "global_grad_norm_post_clip")}
    return StepRecord(
        step=_typed("step", top["step"], "int"),
        **floats,
        skipped=bool(top.get("skipped", False)),
        batch=_typed("batch", top.get("batch"), "int | None"),
        layers={str(k): _build(LayerStats, v) for k, v in layers.items()},
        activations={str(k): _build(ActivationStats, v) for k, v in acts.items()},
        first_nonfinite=None if event is None else _build(NonFiniteEvent, event),
        metrics={str(k): _typed(k, v, "float | None") for k, v in _decode_obj(_object(obj.get("metrics") or {})).items()},
        time_grads=_decode_series(obj.get("time_grads") or {}),
    )


def _object(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError(f"expected an object, not {type(value).__name__}")
    return value


def meta_to_json(meta: RunMeta) -> dict[str, Any]:
    return {"meta": asdict(meta)}


def meta_from_json(obj: dict[str, Any]) -> RunMeta:
    body = dict(_object(obj["meta"]))
    layers = body.pop("layers", [])
    if not isinstance(layers, list):
        raise TypeError("'layers' of the meta line must be a list")
    for key in ("model", "data"):
        if body.get(key) is not None and not isinstance(body[key], str):
            raise TypeError(f"{key!r} of the meta line must be text")
    _object(body.get("config") or {})
    nested = {"layers": LayerInfo, "parameters": ParamInfo, "blocks": BlockInfo}
    for key in nested:
        if not isinstance(body.get(key) or [], list):
            raise TypeError(f"{key!r} of the meta line must be a list")
    known = {f.name for f in fields(RunMeta)}
    return RunMeta(layers=[_build(LayerInfo, layer) for layer in layers],
                   parameters=[_build(ParamInfo, p) for p in body.pop("parameters", None) or []],
                   blocks=[_build(BlockInfo, b) for b in body.pop("blocks", None) or []],
                   **{k: v for k, v in body.items() if k in known and k not in nested})


# ---- files ---------------------------------------------------------------------------------------

def _dumps(obj: dict[str, Any]) -> str:
    # allow_nan=False: a stray NaN must fail here rather than write a file other tools reject
    return json.dumps(obj, allow_nan=False, separators=(",", ":"))


class JsonlWriter:
    """Appends records to a JSONL file, one flushed line each, so a crash loses at most one line."""

    def __init__(self, path: str | os.PathLike, meta: RunMeta | None = None, append: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        has_content = append and self.path.exists() and self.path.stat().st_size > 0
        self._file = open(self.path, "a" if append else "w", encoding="utf-8")
        if meta is not None and not has_content:
            self.write_meta(meta)

    def write_meta(self, meta: RunMeta) -> None:
        self._file.write(_dumps(meta_to_json(meta)) + "\n")
        self._file.flush()

    def write(self, record: StepRecord) -> None:
        self._file.write(_dumps(record_to_json(record)) + "\n")
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_jsonl(path: str | os.PathLike, records: Iterable[StepRecord], meta: RunMeta | None = None) -> Path:
    """Write a whole log at once (to a temp file, then renamed, so a reader never sees half)."""
    path = Path(path)
    with atomic_write(path) as handle:
        if meta is not None:
            handle.write(_dumps(meta_to_json(meta)) + "\n")
        for record in records:
            handle.write(_dumps(record_to_json(record)) + "\n")
    return path


def _iter_lines(path: Path) -> Iterator[tuple[int, str, bool]]:
    # utf-8-sig: a byte-order mark some editors add is read past
    with open(path, encoding="utf-8-sig") as handle:
        lines = handle.readlines()
    for index, line in enumerate(lines):
        yield index + 1, line, index == len(lines) - 1


def read_jsonl(path: str | os.PathLike) -> RunLog:
    """Read a log; a broken line raises RecordError naming the file and line.

    A last line without its newline that does not parse is what a killed run leaves behind;
    it is dropped rather than failing the whole log.
    """
    path = Path(path)
    if path.is_dir():
        hint = " pass its metrics.jsonl" if (path / "metrics.jsonl").is_file() else " pass a metrics.jsonl file"
        raise RecordError(f"{str(path)!r} is a folder, not a metrics log;{hint}.")
    if not path.is_file():
        raise RecordError(f"metrics log {str(path)!r} does not exist.")
    meta = RunMeta()
    records: list[StepRecord] = []
    try:
        lines = list(_iter_lines(path))
    except UnicodeDecodeError:
        raise RecordError(f"{path.name} is not a text JSONL log (it is not UTF-8).") from None
    for number, line, last in lines:
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            if isinstance(obj, dict) and "meta" in obj:
                meta = meta_from_json(obj)
            else:
                records.append(record_from_json(obj))
        except (ValueError, TypeError, KeyError, OverflowError, RecursionError) as exc:
            if last and not line.endswith("\n"):
                break
            raise RecordError(f"line {number} of {path.name} is not a valid step record ({exc}).") from None
    if not records:
        raise RecordError(f"{path.name} holds no step records.")
    return RunLog(meta, records)


def write_csv(path: str | os.PathLike | io.TextIOBase, records: Iterable[StepRecord]) -> None:
    """One row per (step, module): step, loss, lr, layer, kind, then every metric column."""
    columns = ["step", "loss", "lr", "skipped", "layer", "kind", *LAYER_METRICS,
               *(f"act_{m}" for m in ACTIVATION_METRICS)]

    def rows() -> Iterator[dict[str, Any]]:
        for r in records:
            base = {"step": r.step, "loss": r.loss, "lr": r.lr, "skipped": int(r.skipped)}
            for name, s in r.layers.items():
                yield {**base, "layer": name, "kind": "layer", **asdict(s)}
            for name, a in r.activations.items():
                yield {**base, "layer": name, "kind": "activation",
                       **{f"act_{k}": v for k, v in asdict(a).items()}}

    if isinstance(path, (str, os.PathLike)):
        with atomic_write(path, newline="") as handle:
            writer = csv.DictWriter(handle, columns)
            writer.writeheader()
            writer.writerows(rows())
    else:
        writer = csv.DictWriter(path, columns)
        writer.writeheader()
        writer.writerows(rows())
