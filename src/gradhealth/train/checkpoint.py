"""Checkpoints that survive a crash mid-save and never run code when loaded.

* ``save_checkpoint`` writes a temp file ``.NAME.XXXX.tmp`` next to NAME, fsyncs it and renames it
  over NAME, so NAME is always either the old or the new checkpoint. A process killed mid-save
  leaves its temp file behind; the next save to NAME removes it (one writer per NAME).
* ``load_checkpoint`` uses ``torch.load(weights_only=True)`` only: tensors and plain data.
* ``build_checkpoint`` / ``restore_checkpoint`` hold everything a bit-exact resume needs, RNG included.
"""
from __future__ import annotations

import contextlib
import errno
import io
import os
import random
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gradhealth.errors import CheckpointError
from gradhealth.io import atomic_write, signals_deferred, temp_prefix

__all__ = ["FORMAT", "save_checkpoint", "load_checkpoint", "build_checkpoint", "restore_checkpoint",
           "capture_rng_state", "restore_rng_state", "unwrap_model"]

FORMAT = {"name": "gradhealth", "version": 1}


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any], *, verify: bool = False) -> Path:
    """Write ``state`` to ``path`` atomically; on any failure the previous file is left as it was.

    ``verify`` first reads the bytes back as ``load_checkpoint`` will (weights only), so a state that
    could not be resumed from is refused at once, naming its entry, and nothing is written.
    """
    # a second Ctrl-C waits for the checkpoint being written, the read-back check included
    with signals_deferred():
        return _save(Path(path), state, verify)


def _save(path: Path, state: dict[str, Any], verify: bool) -> Path:
    folder = path.parent
    if verify:
        data = io.BytesIO()
        torch.save(state, data)
        _check_loadable(state, data.getvalue())
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _remove_stale_temps(path)
    except OSError as err:
        raise _unwritable(folder, err) from None
    opened = False
    try:
        with atomic_write(path, "wb", durable=True) as handle:
            opened = True
            if verify:
                handle.write(data.getbuffer())
            else:
                torch.save(state, handle)
    except (OSError, RuntimeError) as err:
        if _disk_full(err):
            raise CheckpointError(f"the disk holding {str(path)!r} is full; the previous one is unchanged.",
                                  disk_full=True) from None
        if isinstance(err, RuntimeError):
            raise
        if not opened:  # the temp file could not even be created
            raise _unwritable(folder, err) from None
        raise CheckpointError(f"writing checkpoint {str(path)!r} failed ({err}); "
                              "the previous one is unchanged.") from None
    return path


def _disk_full(err: BaseException) -> bool:
    """ENOSPC as an OSError, or as torch.save's zip writer reports it (a RuntimeError about its
    write position, raised from inline_container.cc)."""
    if isinstance(err, OSError):
        return err.errno == errno.ENOSPC
    text = str(err)
    return "unexpected pos" in text or "inline_container.cc" in text or "No space left on device" in text


def _check_loadable(state: dict[str, Any], data: bytes) -> None:
    """Raise a CheckpointError naming the first entry a weights-only load refuses."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        return
    except Exception as err:  # noqa: BLE001 - any refusal is the answer; which entry is found below
        reason = _short_reason(err)
    entry = next((name for name, value in _entries(state) if not _loads_alone(value)), "an entry")
    raise CheckpointError(f"the checkpoint's {entry} cannot be read back by the weights-only load that --resume "
                          f"uses ({reason}); keep only tensors and plain data in the model's state_dict "
                          "(e.g. what get_extra_state returns).")


def _entries(state: dict[str, Any], prefix: str = ""):
    """(dotted name, value) of every leaf of the state, the model's entries first."""
    keys = sorted(state, key=lambda k: k != "model") if not prefix else list(state)
    for key in keys:
        value, name = state[key], f"{prefix}{key}"
        if isinstance(value, dict) and value:
            yield from _entries(value, f"{name}.")
        else:
            yield (f"entry {name!r}", value)


def _loads_alone(value: Any) -> bool:
    data = io.BytesIO()
    try:
        torch.save(value, data)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.load(io.BytesIO(data.getvalue()), map_location="cpu", weights_only=True)
        return True
    except Exception:  # noqa: BLE001
        return False


def _unwritable(folder: Path, err: OSError) -> CheckpointError:
    return CheckpointError(f"cannot write a checkpoint in {str(folder)!r} ({err}); choose a writable --out.")


def _remove_stale_temps(path: Path) -> None:
    prefix = temp_prefix(path)
    for entry in path.parent.iterdir():
        if entry.name.startswith(prefix) and entry.name.endswith(".tmp") and entry.is_file():
            with contextlib.suppress(OSError):
                entry.unlink()


def load_checkpoint(path: str | os.PathLike, *, map_location: Any = "cpu") -> dict[str, Any]:
    """The checkpoint at ``path``, loaded with ``weights_only=True``; any problem is a CheckpointError."""
    path = Path(path)
    where = repr(str(path))
    if not path.exists():
        raise CheckpointError(f"checkpoint {where} does not exist; "
                              "check the path (runs write OUT/checkpoints/last.pt).")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {where} is a folder; pass the .pt file inside it.")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {where} is empty (0 bytes); use an earlier checkpoint.")
    try:
        with warnings.catch_warnings():
            # what torch warns about a file that is not a checkpoint becomes the one sentence below
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # zip, pickle, EOF and storage errors all mean the bytes are not a checkpoint
        # torch names the refused global as "Unsupported global: GLOBAL x.y" or "unsupported GLOBAL x.y"
        refused = re.search(r"unsupported (?:global: )?GLOBAL ([\w.]+)", str(err), re.IGNORECASE)
        if refused:
            raise CheckpointError(f"checkpoint {where} holds a {refused.group(1)} object, which a weights-only load "
                                  "refuses because loading it could run code; "
                                  "save only tensors and plain data.") from None
        raise CheckpointError(f"checkpoint {where} is corrupt or truncated ({_short_reason(err)}); "
                              "use an earlier checkpoint.") from None
    marker = ckpt.get("format") if isinstance(ckpt, dict) else None
    if not isinstance(marker, dict) or marker.get("name") != FORMAT["name"] or "model" not in ckpt:
        raise CheckpointError(f"{where} is not a gradhealth checkpoint (no gradhealth format marker and model state); "
                              "pass a file written by gradhealth train.")
    version = marker.get("version")
    if not isinstance(version, int) or version > FORMAT["version"]:
        raise CheckpointError(f"checkpoint {where} has format version {version!r}, newer than the {FORMAT['version']} "
                              "this gradhealth reads; upgrade gradhealth to load it.")
    problem = _field_problem(ckpt)
    if problem:
        raise CheckpointError(f"checkpoint {where} is corrupt: {problem}; use an earlier checkpoint.")
    return ckpt


# the fields a resume reads, with the types gradhealth writes them as (None: not saved)
_MAPPINGS = ("model", "optimizer", "scheduler", "scaler", "clipper", "monitor", "config", "extra", "rng")


def _field_problem(ckpt: dict[str, Any]) -> str | None:
    """What is wrong with the checkpoint's fields, if anything (a forged or damaged file)."""
    step = ckpt.get("step")
    if isinstance(step, bool) or not isinstance(step, int):
        return f"its step is {step!r}, not a whole number"
    if step < 0:
        return f"its step is {step}, which is negative"
    epoch = ckpt.get("epoch")
    if epoch is not None and (isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0):
        return f"its epoch is {epoch!r}, not a non-negative whole number"
    for key in _MAPPINGS:
        value = ckpt.get(key)
        if value is not None and not isinstance(value, dict):
            return f"its {key} is a {type(value).__name__}, not a mapping"
    if not isinstance(ckpt.get("model"), dict):
        return "it holds no model state"
    return None


def _short_reason(err: Exception) -> str:
    """The gist of a torch.load failure, without its paragraphs of advice about weights_only."""
    text = str(err)
    match = re.search(r"WeightsUnpickler error:\s*(\S.*)", text)
    first = (match.group(1) if match else text).strip().split("\n")[0].split(". ")[0]
    return f"{type(err).__name__}: {first}"[:120]


# ---- random number generators ------------------------------------------------------------------

def capture_rng_state() -> dict[str, Any]:
    """Python, numpy (global), torch CPU and every CUDA device's RNG state, as a weights-only-loadable dict."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, torch.tensor(internal, dtype=torch.int64), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Undo ``capture_rng_state``; CUDA states are restored for the devices present here."""
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(v) for v in internal.tolist()), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.cpu().numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    # a checkpoint loaded with map_location="cuda" moves these to the GPU; the setters want CPU bytes
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available():
        for device, device_state in enumerate(cuda[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(device_state.cpu(), device)


# ---- full training state ------------------------------------------------------------------------

def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside DDP/DataParallel and torch.compile wrappers, so state keys carry no prefixes."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def _state(obj: Any) -> Any:
    return obj.state_dict() if obj is not None else None


def build_checkpoint(*, model: nn.Module, optimizer: Any = None, scheduler: Any = None, scaler: Any = None,
                     clipper: Any = None, monitor_state: dict[str, Any] | None = None, step: int,
                     epoch: int | None = None, config: dict[str, Any] | None = None,
                     extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything a resume needs, as a dict that ``save_checkpoint`` writes and ``load_checkpoint`` reads."""
    return {
        "format": dict(FORMAT), "model": unwrap_model(model).state_dict(), "optimizer": _state(optimizer),
        "scheduler": _state(scheduler), "scaler": _state(scaler), "clipper": _state(clipper),
        "monitor": monitor_state, "step": int(step), "epoch": epoch, "config": config, "extra": extra,
        "rng": capture_rng_state(),
    }


def _model_mismatch(model: nn.Module, saved: dict[str, Any]) -> str | None:
    """The first missing key, unexpected key or shape difference between ``saved`` and ``model``."""
    own = model.state_dict()
    missing = [k for k in own if k not in saved]
    unexpected = [k for k in saved if k not in own]
    if missing:
        return f"this model's {missing[0]!r} is missing from it"
    if unexpected:
        return f"it has {unexpected[0]!r}, which this model lacks"
    for key, value in own.items():
        other = saved[key]
        if isinstance(value, torch.Tensor) and isinstance(other, torch.Tensor) and value.shape != other.shape:
            return f"{key!r} has shape {tuple(other.shape)} there but {tuple(value.shape)} here"
    return None


def restore_checkpoint(ckpt: dict[str, Any], *, model: nn.Module, optimizer: Any = None, scheduler: Any = None,
                       scaler: Any = None, clipper: Any = None) -> dict[str, Any]:
    """Load every given object's state and the RNG state from ``ckpt``; returns step, epoch, config,
    monitor and extra.

    A given optimizer or scheduler must have saved state; a scaler or clipper without one (the run
    was saved without AMP or clipping) keeps its fresh state.
    """
    target = unwrap_model(model)
    saved = ckpt.get("model")
    problem = _model_mismatch(target, saved) if isinstance(saved, dict) else "it holds no model state"
    if problem is None:
        try:
            target.load_state_dict(saved, strict=True)
        except RuntimeError as err:
            problem = str(err).strip().splitlines()[-1].strip()
    if problem:
        raise CheckpointError(f"the checkpoint was made for a different model ({problem}); "
                              "resume with the model it was saved from.")
    for key, obj, required in (("optimizer", optimizer, True), ("scheduler", scheduler, True),
                               ("scaler", scaler, False), ("clipper", clipper, False)):
        if obj is None or (ckpt.get(key) is None and not required):
            continue
        if ckpt.get(key) is None:
            raise CheckpointError(f"the checkpoint holds no {key} state; "
                                  "resume without one or from a full training checkpoint.")
        try:
            obj.load_state_dict(ckpt[key])
        except (ValueError, KeyError, RuntimeError, TypeError) as err:
            raise CheckpointError(f"the checkpoint's {key} state does not fit this {key} ({err}); "
                                  "resume with the settings the run was started with.") from None
    if ckpt.get("rng") is not None:
        try:
            restore_rng_state(ckpt["rng"])
        except (TypeError, ValueError, KeyError, IndexError, RuntimeError, AttributeError) as err:
            raise CheckpointError(f"the checkpoint's random number generator state is corrupt ({err}); "
                                  "use an earlier checkpoint.") from None
    return {key: ckpt.get(key) for key in ("step", "epoch", "config", "monitor", "extra")}
