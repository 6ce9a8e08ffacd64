"""``__all__`` is honest: every listed name exists, and every public module lists what it exports."""
from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

MODULES = ["gradhealth", "gradhealth.layers", "gradhealth.models", "gradhealth.monitor", "gradhealth.errors",
           "gradhealth.remedies", "gradhealth.report", "gradhealth.diagnose.findings", "gradhealth.diagnose.rules",
           "gradhealth.diagnose.theory", "gradhealth.train.loop", "gradhealth.checkup", "gradhealth.vocabulary"]


@pytest.mark.parametrize("module_name", MODULES)
def test_every_name_in_all_exists(module_name):
    module = importlib.import_module(module_name)
    for name in module.__all__:
        assert getattr(module, name) is not None, name
    assert len(set(module.__all__)) == len(module.__all__)


def test_top_level_exports_the_core_api():
    import gradhealth

    for name in ("create_model", "list_models", "register_model", "GradHealthError", "ConfigError",
                 "GradientMonitor", "fit", "checkup", "diagnose_log", "read_jsonl"):
        assert name in gradhealth.__all__


def test_importing_gradhealth_does_not_import_torch():
    code = "import sys, gradhealth, gradhealth.cli; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
