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
    code = "import sys\nfrom forgetless.cli import build_parser\nbuild_parser()\nprint(' '.join(sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    loaded = {m.split(".")[0] for m in proc.stdout.split()}
    assert not loaded & set(HEAVY_ML + ["kopf", "kubernetes"])
