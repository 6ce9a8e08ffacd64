"""``__all__`` is honest both ways: every listed name exists, and every public name a package binds
(defines, or imports from gradhealth to re-export) is listed; public modules list what they export."""
from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE_FILES = sorted((SRC / "gradhealth").rglob("__init__.py"))
PACKAGES = [".".join(p.parent.relative_to(SRC).parts) for p in PACKAGE_FILES]
# modules whose names users import directly (besides the packages)
MODULES = ["gradhealth.errors", "gradhealth.diagnose.findings", "gradhealth.diagnose.rules",
           "gradhealth.diagnose.theory", "gradhealth.train.loop", "gradhealth.train.config", "gradhealth.checkup",
           "gradhealth.trials", "gradhealth.io", "gradhealth.validate",
           "gradhealth.vocabulary"]
# modules that import an optional framework
OPTIONAL = {"gradhealth.integrations.lightning": "lightning"}


def _is_type_checking(test: ast.expr) -> bool:
    return isinstance(test, ast.Name) and test.id == "TYPE_CHECKING"


def bound_at_package_level(path: Path) -> set[str]:
    """Public names an ``__init__`` binds: its own defs, classes and assignments, and every name it
    imports from gradhealth (an import into a package is a re-export; a private one takes a ``_`` alias).

    The errors are the one exception: ``gradhealth`` re-exports them, a subpackage imports one to raise it.
    """
    top = path.parent == SRC / "gradhealth"
    names: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("gradhealth")):
            if node.module == "gradhealth.errors" and not top:
                continue
            names |= {alias.asname or alias.name for alias in node.names}
        elif isinstance(node, ast.Import):
            names |= {alias.asname for alias in node.names if alias.asname and alias.name.startswith("gradhealth")}
    return {name for name in names if not name.startswith("_")}


def reexports(path: Path) -> dict[str, list[str]]:
    """module -> the names an ``__init__`` imports from it (absolute ``from gradhealth.x import ...``)."""
    found: dict[str, list[str]] = {}
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").startswith("gradhealth."):
            found.setdefault(node.module, []).extend(a.name for a in node.names if not (a.asname or "").startswith("_"))
    return found


@pytest.mark.parametrize("module_name", PACKAGES + MODULES)
def test_every_name_in_all_exists(module_name):
    module = importlib.import_module(module_name)
    assert isinstance(module.__all__, list)
    for name in module.__all__:
        assert getattr(module, name) is not None, name
    assert len(set(module.__all__)) == len(module.__all__)


@pytest.mark.parametrize("path", PACKAGE_FILES, ids=PACKAGES)
def test_every_public_name_of_a_package_is_in_all(path):
    name = ".".join(path.parent.relative_to(SRC).parts)
    missing = sorted(bound_at_package_level(path) - set(importlib.import_module(name).__all__))
    assert missing == [], f"{name} binds public names its __all__ does not list: {missing}"


@pytest.mark.parametrize("path", PACKAGE_FILES, ids=PACKAGES)
def test_a_package_reexports_only_what_its_modules_export(path):
    for module_name, names in reexports(path).items():
        exported = set(importlib.import_module(module_name).__all__)
        assert sorted(set(names) - exported) == [], f"{module_name} does not list these in __all__"


def test_the_checks_see_a_name_missing_from_all(tmp_path):
    init = tmp_path / "__init__.py"
    init.write_text("from gradhealth.report.svg import Figure, standalone_svg as _svg\n"
                    "from gradhealth.errors import ConfigError\n"
                    "from typing import Any\nLIMIT = 3\ndef helper(): pass\n__all__ = ['Figure']\n")
    assert bound_at_package_level(init) == {"Figure", "LIMIT", "helper"}
    assert reexports(init) == {"gradhealth.report.svg": ["Figure"], "gradhealth.errors": ["ConfigError"]}


def test_top_level_exports_the_core_api():
    import gradhealth

    for name in ("create_model", "list_models", "register_model", "GradHealthError", "ConfigError",
                 "GradientMonitor", "fit", "checkup", "diagnose_log", "read_jsonl", "run_trials"):
        assert name in gradhealth.__all__


def test_importing_gradhealth_does_not_import_torch():
    code = ("import sys, gradhealth, gradhealth.cli, gradhealth.diagnose, gradhealth.train, gradhealth.train.config; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
