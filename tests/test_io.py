"""Atomic writes: the whole new file or the old one, never half, and no temp file left behind."""
from __future__ import annotations

import json
import math
import os
import stat

import numpy as np
import pytest

from gradhealth.io import atomic_write, strict_json, write_json_atomic, write_text_atomic


def test_write_text_replaces_the_file_and_keeps_its_mode(tmp_path):
    target = tmp_path / "deep" / "page.html"
    write_text_atomic(target, "old")
    assert target.read_text() == "old"
    os.chmod(target, 0o640)
    write_text_atomic(target, "new ✓")
    assert target.read_text(encoding="utf-8") == "new ✓"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert [p.name for p in target.parent.iterdir()] == ["page.html"]


def test_a_new_file_gets_the_mode_open_would_give_it(tmp_path):
    previous = os.umask(0o027)
    try:
        write_text_atomic(tmp_path / "a.txt", "x")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o640  # 0o666 minus the umask, not mkstemp's 0o600


def test_a_failure_inside_the_block_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "ckpt.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="serializer broke"):
        with atomic_write(target, "wb", durable=True) as handle:
            handle.write(b"half of the new")
            raise RuntimeError("serializer broke")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.bin"]


def test_a_failing_rename_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "findings.json"
    write_json_atomic(target, {"a": 1})

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        write_json_atomic(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["findings.json"]


def test_strict_json_writes_null_for_nan_and_inf(tmp_path):
    target = write_json_atomic(tmp_path / "summary.json", {"loss": math.nan, "runs": [(1, math.inf)], "n": np.int64(3),
                                                          "path": tmp_path}, strict=True)
    text = target.read_text()
    assert json.loads(text) == {"loss": None, "runs": [[1, None]], "n": 3, "path": str(tmp_path)}
    assert "NaN" not in text and "Infinity" not in text
    assert strict_json({1: np.float32(0.5), "b": True}) == {"1": 0.5, "b": True}
