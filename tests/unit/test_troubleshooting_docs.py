"""docs/troubleshooting.md lists every condition type and reason, every event reason, every
CamelCase stage-failure prefix and every exit code the code can produce.

The names are found by scanning the source (operator/, core/, cli/) rather than by importing
operator modules, so the test survives the operator being reorganised: every CamelCase string
that reaches a condition or event helper (a call named `event`, `*_event`, `condition`,
`set_condition`, `fail`, `reject`, `ready`, `finish`, `Event`, ...), directly, through a module or
class constant, a conditional or a dict lookup; every f-string family such as
`f"{title}Started"` (documented as `<Stage>Started`); and every constant of a vocabulary module
(a file named `*vocab*`, `reasons.py`, `conditions.py` or `events.py`), if one exists.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from forgetless import exit_codes
from forgetless.lifecycle import PHASES

REPO = Path(__file__).resolve().parents[2]
PAGE = REPO / "docs" / "troubleshooting.md"
SCANNED = ("operator", "core", "cli")

CAMEL = re.compile(r"^[A-Z][a-z0-9]+(?:[A-Z][a-z0-9]*)*$")
NOT_REASONS = {"True", "False", "Unknown", "Normal", "Warning"}
HELPER = re.compile(r"^(?:event|events|[a-z_]*_event|condition|set_condition|[a-z_]*_condition|fail|reject|ready|finish|"
                    r"Event|Condition)$")
NOT_HELPERS = re.compile(r"^(?:job|pod)_condition$")  # Kubernetes' own Job / Pod conditions, read, not written
VOCABULARY_FILE = re.compile(r"(vocab[a-z_]*|reasons|conditions|events)\.py$")
FAILURE_PREFIX = re.compile(r"^([A-Z][A-Za-z]+): ")


def _sources() -> list[tuple[Path, ast.Module]]:
    found = []
    for top in SCANNED:
        for path in sorted((REPO / top).rglob("*.py")):
            if "bundled" in path.parts:
                continue
            found.append((path, ast.parse(path.read_text(encoding="utf-8"), filename=str(path))))
    return found


def _constants(trees: list[tuple[Path, ast.Module]]) -> dict[str, set[str]]:
    """Every `NAME = "Text"` at module or class level, by NAME (values of a name, in any file)."""
    table: dict[str, set[str]] = {}
    for _, tree in trees:
        bodies = [tree.body] + [node.body for node in ast.walk(tree) if isinstance(node, ast.ClassDef)]
        for body in bodies:
            for node in body:
                targets = node.targets if isinstance(node, ast.Assign) else \
                    [node.target] if isinstance(node, ast.AnnAssign) and node.value is not None else []
                value = node.value if targets else None
                if isinstance(value, ast.Constant) and isinstance(value.value, str):
                    for target in targets:
                        if isinstance(target, ast.Name):
                            table.setdefault(target.id, set()).add(value.value)
    return table


def _names_in(node: ast.AST, constants: dict[str, set[str]]) -> set[str]:
    """CamelCase names an argument expression can evaluate to; f-string families as `<X>Suffix`."""
    if isinstance(node, ast.Constant):
        return {node.value} if isinstance(node.value, str) and CAMEL.match(node.value) else set()
    if isinstance(node, ast.JoinedStr):
        parts = node.values
        if any(isinstance(p, ast.Constant) and not re.fullmatch(r"[A-Za-z]+", str(p.value)) for p in parts):
            return set()  # a message, not a reason
        return {"".join("<X>" if isinstance(p, ast.FormattedValue) else str(p.value) for p in parts)}
    if isinstance(node, (ast.Name, ast.Attribute)):
        name = node.id if isinstance(node, ast.Name) else node.attr
        return {v for v in constants.get(name, ()) if CAMEL.match(v)}
    if isinstance(node, ast.IfExp):
        return _names_in(node.body, constants) | _names_in(node.orelse, constants)
    if isinstance(node, ast.Dict):
        return set().union(*(_names_in(v, constants) for v in node.values))
    if isinstance(node, ast.Compare):
        return set()
    if isinstance(node, ast.Call):  # {"Passed": "GatePassed", ...}.get(verdict, "GateWarned")
        receiver = node.func.value if isinstance(node.func, ast.Attribute) else node.func
        return set().union(_names_in(receiver, constants), *(_names_in(a, constants) for a in node.args))
    return set().union(set(), *(_names_in(child, constants) for child in ast.iter_child_nodes(node)))


def _vocabulary(tree: ast.Module) -> set[str]:
    """CamelCase strings assigned to a name (or inside a class) that speaks of reasons, conditions or
    events, e.g. `REASON_DEADLINE = "DeadlineExceeded"`, `CONDITION_TYPES = ("Ready", ...)`,
    `class EventReason(str, Enum): ...` (label keys and kinds in the same module are not reasons)."""
    wanted = re.compile(r"reason|condition|event", re.I)
    found: set[str] = set()
    scopes = [("", tree.body)] + [(n.name, n.body) for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]
    for scope, body in scopes:
        for node in body:
            if not isinstance(node, (ast.Assign, ast.AnnAssign)) or node.value is None:
                continue
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            labels = [scope] + [t.id for t in targets if isinstance(t, ast.Name)]
            if any(wanted.search(label) for label in labels):
                found |= {c.value for c in ast.walk(node.value)
                          if isinstance(c, ast.Constant) and isinstance(c.value, str) and CAMEL.match(c.value)}
    return found


def emitted_names() -> set[str]:
    trees = _sources()
    constants = _constants(trees)
    names: set[str] = set()
    for path, tree in trees:
        if VOCABULARY_FILE.search(path.name):
            names |= _vocabulary(tree)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func.id if isinstance(node.func, ast.Name) else \
                node.func.attr if isinstance(node.func, ast.Attribute) else ""
            if not HELPER.match(func) or NOT_HELPERS.match(func):
                continue
            for arg in [*node.args, *(k.value for k in node.keywords if k.arg != "message")]:
                names |= _names_in(arg, constants)
    # the phases are the Ready / Progressing reasons while a job runs (set from a variable)
    return (names | set(PHASES)) - NOT_REASONS


def failure_prefixes() -> set[str]:
    """`Prefix: ...` of the stage-failure messages the operator writes (ResultMissing: ...)."""
    found = set()
    for path, tree in _sources():
        if "operator" not in path.parts:
            continue
        for node in ast.walk(tree):
            text = node.value if isinstance(node, ast.Constant) else \
                node.values[0].value if isinstance(node, ast.JoinedStr) and node.values and \
                isinstance(node.values[0], ast.Constant) else None
            match = FAILURE_PREFIX.match(text) if isinstance(text, str) else None
            if match and sum(c.isupper() for c in match.group(1)) >= 2:
                found.add(match.group(1))
    return found


def _listed(name: str, page: str) -> bool:
    if "<X>" in name:
        pattern = re.escape(name).replace(re.escape("<X>"), r"<[A-Z][a-z]+>")
        return re.search(rf"`{pattern}`", page) is not None
    return f"`{name}`" in page


def test_the_scan_finds_the_operators_vocabulary():
    # guards the scan itself: a refactor that hides the reasons from it must fail here, not pass vacuously
    names = emitted_names()
    assert len(names) >= 50, sorted(names)
    for known in ("Ready", "Stalled", "GateBlocked", "GatePassed", "DeadlineExceeded", "<X>Started", "TrialPruned",
                  "InferenceServiceNotFound", "PermissionDenied"):
        assert known in names, f"{known} not found by the scan: {sorted(names)}"
    assert {"ResultMissing", "ResultUnreadable", "OOMKilled"} <= failure_prefixes()


def test_every_condition_and_event_reason_is_on_the_page():
    page = PAGE.read_text(encoding="utf-8")
    missing = sorted(name for name in emitted_names() if not _listed(name, page))
    assert not missing, (
        f"docs/troubleshooting.md does not list {missing}: the code emits these as a condition type/reason or an "
        "event reason; add each (as `Name`, or `<Stage>Suffix` for a family) with its cause and fix")


def test_every_stage_failure_prefix_is_on_the_page():
    page = PAGE.read_text(encoding="utf-8")
    missing = sorted(p for p in failure_prefixes() if f"`{p}`" not in page)
    assert not missing, f"docs/troubleshooting.md does not list the stage failure messages starting {missing}"


@pytest.mark.parametrize("name", [n for n in dir(exit_codes) if n.isupper() and isinstance(getattr(exit_codes, n), int)])
def test_every_exit_code_is_on_the_page(name):
    page = PAGE.read_text(encoding="utf-8")
    section = page.split("## `forgetless run` exit codes", 1)[-1].split("\n## ", 1)[0]
    code = getattr(exit_codes, name)
    assert re.search(rf"^\| `{code}` \|", section, re.M), f"exit code {code} ({name}) is not in the exit-code table"
