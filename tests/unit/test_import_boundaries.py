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


# --------------------------------------------------------------------------- no import circles
# Between modules of our packages, module-level and function-level imports alike: a circle that
# works today only because one side imports lazily is still two modules that cannot be read apart.


def _module_files() -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package's __init__)."""
    found = {}
    for package, directory in PACKAGES.items():
        for path in directory.rglob("*.py"):
            parts = [package, *path.relative_to(directory).with_suffix("").parts]
            is_package = parts[-1] == "__init__"
            found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def import_graph(modules: dict[str, tuple[Path, bool]]) -> dict[str, set[str]]:
    """Module -> the modules of ours it imports (`from a.b import c` counts as a.b.c when that is a
    module, else as a.b; relative imports resolved)."""
    import ast

    graph = {}
    for name, (path, is_package) in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                edges |= {alias.name for alias in node.names if alias.name in modules}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:
                    if f"{target}.{alias.name}" in modules:
                        edges.add(f"{target}.{alias.name}")
                    elif target in modules:
                        edges.add(target)
        edges.discard(name)
        graph[name] = edges
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))
    return cycles


def test_no_import_circles():
    cycles = import_cycles(import_graph(_module_files()))
    assert not cycles, "import circles (break each: move the shared part down):\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_circle_check_catches_a_lazy_circle(tmp_path: Path):
    (tmp_path / "a.py").write_text("from pkg.b import f\n")
    (tmp_path / "b.py").write_text("def f():\n    from pkg import a\n")
    (tmp_path / "c.py").write_text("from . import a\n")
    modules = {f"pkg.{n}": (tmp_path / f"{n}.py", False) for n in "abc"}
    assert import_cycles(import_graph(modules)) == [["pkg.a", "pkg.b"]]


def test_the_controller_kit_knows_nothing_of_finetunejobs():
    """operator/forgetless_operator/kit/ is generic: it imports neither the API models, nor the
    vocabulary, nor the controllers built on it, and spells no FineTuneJob."""
    import ast

    kit = REPO / "operator" / "forgetless_operator" / "kit"
    for path in kit.glob("*.py"):
        text = path.read_text()
        assert "FineTune" not in text, path
        for node in ast.walk(ast.parse(text)):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert not name.startswith(("forgetless.api", "forgetless.vocabulary", "forgetless.lifecycle",
                                            "forgetless_operator.finetune", "forgetless_operator.runtime",
                                            "forgetless_operator.handlers")), (path.name, name)
