"""The package's shape: imports flow one way through the stages, modules stay small."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import extensions_doc  # noqa: E402,F401
import module_sizes  # noqa: E402


def test_imports_flow_one_way_through_the_stages():
    if importlib.util.find_spec("importlinter") is None:
        pytest.fail("import-linter is not installed (it is in the test extra: "
                    "bash scripts/setup.sh)", pytrace=False)
    proc = subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports_command;"
                           " lint_imports_command()"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def test_modules_and_functions_stay_within_the_size_limits():
    assert module_sizes.over_limits() == []


def test_a_long_module_must_say_why(tmp_path):
    pkg = tmp_path / "jointopt"
    pkg.mkdir()
    (pkg / "long.py").write_text("x = 1\n" * (module_sizes.MAX_MODULE_LINES + 1))
    (pkg / "said.py").write_text("# long because: one table\n" + "x = 1\n" * 500)
    body = "".join(f"    x{i} = {i}\n" for i in range(module_sizes.MAX_FUNCTION_LINES + 1))
    (pkg / "fn.py").write_text("def f():\n" + body)
    problems = module_sizes.over_limits(pkg)
    assert any("long.py" in p for p in problems) and any("fn.py" in p for p in problems)
    assert not any("said.py" in p for p in problems)


def test_extension_docs_are_generated_from_the_registries():
    import extensions_doc

    assert extensions_doc.render() == extensions_doc.DOC.read_text(encoding="utf-8"), (
        "docs/extensions.md is out of date: run .venv/bin/python scripts/extensions_doc.py")


def test_the_contributing_table_names_every_extension_point_with_a_contract_suite():
    """Each registry whose base class has a contract suite in jointopt.testing has its row
    in CONTRIBUTING.md's extension table: base class, registry and suite."""
    import jointopt.testing
    from jointopt import _registry

    rows = [line for line in (ROOT / "CONTRIBUTING.md").read_text().splitlines()
            if line.startswith("|")]
    checked = []
    for attr, registry in vars(_registry).items():
        if not isinstance(registry, _registry.Registry):
            continue
        suite = registry.base.rpartition(":")[2] + "Contract"
        if not hasattr(jointopt.testing, suite):
            continue
        cells = (f"`{registry.base.replace(':', '.')}`", f"`_registry.{attr}`",
                 f"`jointopt.testing.{suite}`")
        assert any(all(c in row for c in cells) for row in rows), (attr, cells)
        checked.append(attr)
    assert {"STRATEGIES", "BACKENDS", "DIFFICULTY_SOURCES", "EXPORTERS"} <= set(checked)
