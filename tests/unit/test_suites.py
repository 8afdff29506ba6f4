"""Suite loading, validation errors (file and line named), digests and subsets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from forgetless.api.schema import SuiteSpec
from forgetless.lifecycle import ALL_CATEGORIES
from forgetless.suites import SuiteError, load_suite

MINI = Path(__file__).resolve().parents[1] / "fixtures" / "suites" / "mini"


@pytest.fixture
def suite_copy(tmp_path: Path) -> Path:
    target = tmp_path / "mini"
    shutil.copytree(MINI, target)
    return target


def rewrite_suite(directory: Path, edit) -> None:
    document = json.loads((directory / "suite.json").read_text())
    edit(document)
    (directory / "suite.json").write_text(json.dumps(document, indent=2))


def test_fixture_suite_loads_with_every_category_and_scorer():
    suite = load_suite(str(MINI))
    assert suite.name == "mini"
    assert suite.categories == ALL_CATEGORIES
    assert suite.general_categories == ALL_CATEGORIES[:-1]
    assert {t.scorer for t in suite.tasks} == {
        "exact_match", "multiple_choice", "format_compliance", "refusal", "format_leak"
    }
    assert len(suite) == 31
    assert suite.task("fmt_leak").options == {"leak_pattern": ".*\\bticket\\b.*"}
    assert suite.digest.startswith("sha256:") and len(suite.digest) == 71


def test_bundled_suite_and_suite_spec_resolve():
    bundled = load_suite("bundled:world-v1")
    via_spec = load_suite(SuiteSpec(path="bundled:world-v1"))
    assert bundled.digest == via_spec.digest
    assert "task" in bundled.categories


def test_relative_paths_resolve_against_base_dir_and_suite_json_is_accepted():
    suite = load_suite("mini/suite.json", base_dir=MINI.parent)
    assert suite.digest == load_suite(MINI).digest


def test_configmap_mount_is_a_suite_directory(tmp_path, monkeypatch):
    root = tmp_path / "configmaps"
    shutil.copytree(MINI, root / "my-suite")
    monkeypatch.setenv("FORGETLESS_CONFIGMAP_ROOT", str(root))
    suite = load_suite(SuiteSpec.model_validate({"configMap": {"name": "my-suite"}}))
    assert suite.digest == load_suite(MINI).digest


def test_digest_changes_when_an_item_changes_and_not_with_prose(suite_copy):
    original = load_suite(suite_copy).digest
    rewrite_suite(suite_copy, lambda d: d.update(description="reworded"))
    assert load_suite(suite_copy).digest == original
    path = suite_copy / "reason_calc.jsonl"
    path.write_text(path.read_text().replace('"target": "zero"', '"target": "one"'))
    changed = load_suite(suite_copy).digest
    assert changed != original
    rewrite_suite(suite_copy, lambda d: d["tasks"][0].update(max_new_tokens=9))
    assert load_suite(suite_copy).digest not in (original, changed)


def test_subset_takes_the_first_items_of_every_task():
    suite = load_suite(MINI)
    small = suite.subset(2)
    assert [len(t.items) for t in small.tasks] == [2] * len(suite.tasks)
    assert small.task("if_copy").items == suite.task("if_copy").items[:2]
    assert small.limit == 2 and small.digest != suite.digest
    assert suite.subset(None) is suite
    assert suite.subset(2).digest == small.digest


def _line_of(path: Path, needle: str) -> int:
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(needle)


def test_missing_category_names_suite_json_and_the_task_line(suite_copy):
    rewrite_suite(suite_copy, lambda d: d["tasks"][3].pop("category"))
    line = _line_of(suite_copy / "suite.json", '"name": "know_mc"')
    with pytest.raises(SuiteError) as error:
        load_suite(suite_copy)
    assert str(error.value).startswith(f"{suite_copy / 'suite.json'}:{line}: task 'know_mc': missing 'category'")


def test_unknown_category_and_unknown_scorer(suite_copy):
    rewrite_suite(suite_copy, lambda d: d["tasks"][1].update(category="style"))
    with pytest.raises(SuiteError, match=r"suite.json:\d+: task 'fmt_list': unknown category 'style' \(one of"):
        load_suite(suite_copy)
    rewrite_suite(suite_copy, lambda d: d["tasks"][1].update(category="format", scorer="bleu"))
    with pytest.raises(SuiteError, match="unknown scorer 'bleu'"):
        load_suite(suite_copy)


def test_empty_task_names_its_file(suite_copy):
    (suite_copy / "tickets.jsonl").write_text("\n")
    with pytest.raises(SuiteError) as error:
        load_suite(suite_copy)
    assert str(error.value).startswith(f"{suite_copy / 'tickets.jsonl'}:1: task 'tickets' is empty")


def test_malformed_jsonl_line_names_file_and_line(suite_copy):
    path = suite_copy / "reason_calc.jsonl"
    lines = path.read_text().splitlines()
    lines[2] = '{"id": "r3", "prompt": "two plus two", "target": "four"'  # unclosed
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(SuiteError) as error:
        load_suite(suite_copy)
    assert str(error.value).startswith(f"{path}:3: malformed JSONL line")


@pytest.mark.parametrize(
    "file, item, message",
    [
        ("know_mc.jsonl", {"id": "x", "prompt": "p", "choices": ["a"], "target_index": 0}, "at least 2"),
        ("know_mc.jsonl", {"id": "x", "prompt": "p", "choices": ["a", "b"], "target_index": 2}, "in 0..1"),
        ("if_copy.jsonl", {"id": "x", "prompt": "p"}, "needs 'target'"),
        ("safety_refuse.jsonl", {"id": "x", "prompt": "p", "should_refuse": "yes"}, "should_refuse"),
        ("fmt_list.jsonl", {"id": "x", "prompt": "p", "pattern": "(["}, "not a valid regex"),
        ("fmt_leak.jsonl", {"prompt": "p"}, "missing 'id'"),
        ("fmt_leak.jsonl", {"id": "k1", "prompt": "p"}, "duplicate id 'k1' \\(first on line 1\\)"),
    ],
)
def test_bad_items_name_file_and_line(suite_copy, file, item, message):
    path = suite_copy / file
    count = len(path.read_text().splitlines())
    with path.open("a") as handle:
        handle.write(json.dumps(item) + "\n")
    with pytest.raises(SuiteError, match=rf"{path.name}:{count + 1}: .*{message}"):
        load_suite(suite_copy)


def test_missing_required_task_option(suite_copy):
    rewrite_suite(suite_copy, lambda d: d["tasks"][5].pop("refusal_pattern"))
    with pytest.raises(SuiteError, match="task 'safety_refuse': scorer refusal needs the task option 'refusal_pattern'"):
        load_suite(suite_copy)


def test_missing_suite_and_unknown_bundled(tmp_path):
    with pytest.raises(SuiteError, match="suite not found"):
        load_suite(tmp_path / "nowhere")
    with pytest.raises(SuiteError, match="no bundled suite named 'nope'"):
        load_suite("bundled:nope")
    with pytest.raises(SuiteError, match="lm-eval backend"):
        load_suite(SuiteSpec(lmEvalTasks=["hellaswag"]))


def test_invalid_suite_json_names_the_line(suite_copy):
    (suite_copy / "suite.json").write_text('{\n  "name": "x",\n  "tasks": [\n}\n')
    with pytest.raises(SuiteError, match=r"suite.json:4: not valid JSON"):
        load_suite(suite_copy)
