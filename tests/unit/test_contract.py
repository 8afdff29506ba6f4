"""The stage contract has one home: `forgetless.contract`.

A work-dir file or folder name (summary.json, results.json, train/output, ...) or a pod env name
(FORGETLESS_*) spelled as a literal anywhere else in the runtime packages fails here: import the
name from forgetless.contract instead. Docstrings are prose and may mention them.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("core", "trainer", "operator", "cli")
CONTRACT = ROOT / "core" / "forgetless" / "contract"

ENV_NAME = re.compile(r"FORGETLESS_[A-Z0-9_]+")
FILE_NAMES = ("summary.json", "results.json", "job.json")
WORKDIR_PATHS = re.compile(r"\b(train|rescue)/(output|checkpoints|trials)\b|\b(baseline|evaluate|rescue)/results\.json\b")
PATH_PARTS = {"train", "baseline", "evaluate", "report", "rescue", "promoted", "output", "checkpoints", "trials"}
"""Folder names of the work dir: a literal one joined with `/` (or passed to Path()) is a work-dir path."""


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
        else:
            continue
        for statement in body:  # a module/class/function docstring, and attribute docstrings after assignments
            if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant) \
                    and isinstance(statement.value.value, str):
                ids.add(id(statement.value))
    return ids


def _is_str(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str)


def violations(source: str, name: str) -> list[str]:
    tree = ast.parse(source, name)
    prose = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        if _is_str(node) and id(node) not in prose:
            text = node.value
            if ENV_NAME.fullmatch(text.strip()) or (ENV_NAME.search(text) and "=" in text):
                found.append(f"{name}:{node.lineno}: env name {text!r}")
            elif any(file in text for file in FILE_NAMES) or WORKDIR_PATHS.search(text):
                found.append(f"{name}:{node.lineno}: work-dir path {text!r}")
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            for side in (node.left, node.right):
                if _is_str(side) and side.value in PATH_PARTS:
                    found.append(f"{name}:{node.lineno}: work-dir path part {side.value!r} joined with /")
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Path":
            for arg in node.args:
                if _is_str(arg) and arg.value in PATH_PARTS:
                    found.append(f"{name}:{node.lineno}: work-dir path Path({arg.value!r})")
    return found


def test_the_contract_is_spelled_only_in_forgetless_contract():
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if CONTRACT in path.parents:
                continue
            found += violations(path.read_text(), str(path.relative_to(ROOT)))
    assert not found, "spell these with the names in forgetless.contract:\n" + "\n".join(found)


def test_the_scan_finds_what_it_should():
    bad = '''
import os
from pathlib import Path
a = os.environ.get("FORGETLESS_JOB")
b = Path("train") / "output"
c = workdir / "evaluate" / "summary.json"
d = f"{workdir}/baseline/results.json"
e = Path("rescue")
'''
    found = violations(bad, "bad.py")
    assert len([line for line in found if "bad.py:4" in line]) == 1
    assert any("bad.py:5" in line for line in found)
    assert any("bad.py:6" in line for line in found)
    assert any("bad.py:7" in line for line in found)
    assert any("bad.py:8" in line for line in found)
    fine = '''
"""Writes WORKDIR/train/output and reads FORGETLESS_JOB (prose)."""
from forgetless import contract
a = workdir / contract.TRAIN_OUTPUT
'''
    assert violations(fine, "fine.py") == []
