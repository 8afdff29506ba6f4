"""docs/reference/*.md is generated from the API models: the committed pages equal what the models
render, every field of the models is on its page, and the check command notices a hand edit."""

from __future__ import annotations

from pathlib import Path

import pytest

from forgetless.api import reference, schema, sweep
from forgetless.api.crd import model_schema

REPO = Path(__file__).resolve().parents[2]


def _first_difference(committed: str, expected: str) -> str:
    old, new = committed.splitlines(), expected.splitlines()
    for number, (a, b) in enumerate(zip(old, new), 1):
        if a != b:
            return f"line {number}:\n  committed: {a}\n  generated: {b}"
    if len(old) != len(new):
        extra = new[len(old)] if len(new) > len(old) else old[len(new)]
        return f"line {min(len(old), len(new)) + 1}: only in the {'generated' if len(new) > len(old) else 'committed'} page: {extra}"
    return "identical"


@pytest.mark.parametrize("name", ["finetunejob.md", "finetunesweep.md"])
def test_committed_reference_matches_the_schema(name):
    path = REPO / reference.REFERENCE_DIR / name
    expected = reference.reference_files(REPO)[path]
    committed = path.read_text(encoding="utf-8") if path.exists() else ""
    assert committed == expected, (
        f"{path.relative_to(REPO)} has drifted from the API models; regenerate it with "
        f"`{reference.REGENERATE}` (or `forgetless crd --write`). First difference at "
        + _first_difference(committed, expected)
    )


def _wire_paths(node: dict, path: str, stop: set[str]) -> set[str]:
    found = set()
    for name, child in (node.get("properties") or {}).items():
        child_path = f"{path}.{name}"
        found.add(child_path)
        if child_path in stop:
            continue
        if child.get("type") == "array" and child.get("items"):
            found |= _wire_paths(child["items"], child_path + "[]", stop)
        found |= _wire_paths(child, child_path, stop)
    return found


def _rule_messages(node: dict, path: str, stop: set[str]) -> list[str]:
    if path in stop:
        return []
    found = [rule.get("message") or rule["rule"] for rule in node.get(schema.CEL) or []]
    for name, child in (node.get("properties") or {}).items():
        found += _rule_messages(child.get("items") or {}, f"{path}.{name}[]", stop) if child.get("type") == "array" else []
        found += _rule_messages(child, f"{path}.{name}", stop)
    return found


@pytest.mark.parametrize("page, models, stop", [
    (reference.finetunejob_page, (schema.FineTuneJobSpec, schema.FineTuneJobStatus), set()),
    (reference.finetunesweep_page, (sweep.FineTuneSweepSpec, sweep.FineTuneSweepStatus), {"spec.template"}),
])
def test_every_field_and_rule_is_on_the_page(page, models, stop):
    text = page()
    for model, root in zip(models, ("spec", "status")):
        node = model_schema(model)
        for path in _wire_paths(node, root, stop):
            assert f"`{path}`" in text, f"{path} is missing from the generated reference"
        for message in _rule_messages(node, root, stop):
            assert " ".join(message.split()).replace("|", "\\|") in text, f"rule {message!r} is missing"


def test_check_command_names_the_stale_page_and_the_fix(tmp_path, capsys):
    assert reference.main(["--write", "--root", str(tmp_path)]) == 0
    assert reference.main(["--check", "--root", str(tmp_path)]) == 0
    page = tmp_path / reference.REFERENCE_DIR / "finetunesweep.md"
    page.write_text(page.read_text().replace("| `spec.maxParallel`", "| `spec.maxparallel`"))
    capsys.readouterr()
    assert reference.main(["--check", "--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "finetunesweep.md: out of date" in err and reference.REGENERATE in err
