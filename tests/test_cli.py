"""The command line: one sentence and exit 2 for every usage error, never a traceback."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from gradhealth.cli import main


def test_list_models_prints_every_model(capsys):
    assert main(["list-models"]) == 0
    out = capsys.readouterr().out
    for name in ("mlp", "resnet20", "resnet1202", "plain110", "resnet152", "preact_resnet164"):
        assert f"\n{name} " in "\n" + out


def test_list_models_json_with_pattern(capsys):
    assert main(["list-models", "plain*", "--json"]) == 0
    names = [e["name"] for e in json.loads(capsys.readouterr().out)]
    assert names and all(n.startswith("plain") for n in names)


@pytest.mark.parametrize("argv", [["no-such-command"], [], ["list-models", "--bogus"]])
def test_usage_errors_exit_2_with_one_error_line(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err


def test_console_script_and_module_entry_points():
    result = subprocess.run([sys.executable, "-m", "gradhealth", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("gradhealth ")
