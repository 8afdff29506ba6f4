"""The operator image has no torch; the trainer never imports kopf; `forgetless validate` stays light."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HEAVY_ML = ["torch", "transformers", "peft", "deepspeed"]


def _modules(package_dir: Path, package: str) -> list[str]:
    names = [package]
    for info in pkgutil.walk_packages([str(package_dir)], prefix=f"{package}."):
        if not info.name.endswith("__main__"):
            names.append(info.name)
    return names


def _imported_after(modules: list[str]) -> set[str]:
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print('\\n'.join(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return set(proc.stdout.split())


def test_core_imports_neither_torch_nor_kopf():
    loaded = _imported_after(_modules(REPO / "core" / "forgetless", "forgetless"))
    assert not loaded & set(HEAVY_ML + ["kopf"]), loaded & set(HEAVY_ML + ["kopf"])


def test_operator_never_imports_torch():
    modules = _modules(REPO / "operator" / "forgetless_operator", "forgetless_operator")
    loaded = _imported_after(modules)
    assert not loaded & set(HEAVY_ML), loaded & set(HEAVY_ML)


def test_trainer_never_imports_kopf():
    pytest.importorskip("torch")
    modules = _modules(REPO / "trainer" / "forgetless_trainer", "forgetless_trainer")
    loaded = _imported_after(modules)
    assert "kopf" not in loaded


def test_cli_help_does_not_load_the_ml_stack():
    code = "import sys\nfrom forgetless_cli.main import build_parser\nbuild_parser()\nprint(' '.join(sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    loaded = {m.split(".")[0] for m in proc.stdout.split()}
    assert not loaded & set(HEAVY_ML + ["kopf", "kubernetes"])


# --------------------------------------------------------------------------- import direction
# Static (every import statement, lazy ones inside functions included): core <- trainer,
# core <- operator, and the CLI above all three. Runtime packages never import test or build code.

PACKAGES = {
    "forgetless": REPO / "core" / "forgetless",
    "forgetless_trainer": REPO / "trainer" / "forgetless_trainer",
    "forgetless_operator": REPO / "operator" / "forgetless_operator",
    "forgetless_cli": REPO / "cli" / "forgetless_cli",
}
NOT_RUNTIME = {"tests", "benchmarks", "benchlib", "world", "conftest", "pytest"}
FORBIDDEN = {
    "forgetless": {"forgetless_trainer", "forgetless_operator", "forgetless_cli", "kopf", *HEAVY_ML, *NOT_RUNTIME},
    "forgetless_trainer": {"forgetless_operator", "forgetless_cli", "kopf", *NOT_RUNTIME},
    "forgetless_operator": {"forgetless_trainer", "forgetless_cli", *HEAVY_ML, *NOT_RUNTIME},
    "forgetless_cli": {*NOT_RUNTIME},
}


def _static_imports(path: Path) -> set[str]:
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_imports_run_one_way(package: str):
    violations = []
    for path in sorted(PACKAGES[package].rglob("*.py")):
        bad = _static_imports(path) & FORBIDDEN[package]
        if bad:
            violations.append(f"{path.relative_to(REPO)} imports {', '.join(sorted(bad))}")
    assert not violations, "\n".join(violations)


def test_the_direction_check_catches_a_lazy_import(tmp_path: Path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from forgetless_trainer.stages import run_stage\n    import kopf.on\n")
    assert _static_imports(module) >= {"forgetless_trainer", "kopf"}
