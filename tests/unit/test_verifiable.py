"""The `verifiable` scorer (IFEval-style checks), its validation in suites, length-normalised
multiple choice, and the shipped general-en-v1 suite's shape."""

from __future__ import annotations

import json

import pytest

from forgetless import suites
from forgetless_trainer.evaluation import scorers


def score(answer: str, *checks: dict) -> float:
    return scorers.verifiable({}, {"id": "x", "checks": list(checks)}, answer)


@pytest.mark.parametrize("answer, expected", [
    ("Yes, the sky is blue.", 1.0), ("no.", 1.0), ("NO", 1.0), ("Nope", 0.0), ("The answer is yes", 0.0), ("", 0.0),
])
def test_starts_with(answer, expected):
    assert score(answer, {"type": "starts_with", "words": ["yes", "no"]}) == expected


@pytest.mark.parametrize("answer, expected", [
    ('{"answer": "Paris"}', 1.0),
    ('```json\n{\n  "answer": "Paris"\n}\n```', 1.0),
    ('Here it is:\n```json\n{"answer": "water"}\n```\nDone.', 1.0),
    ('The answer: {"answer": 7} as asked', 1.0),
    ('```json\n{\n  "answer": "The sky is blue because', 0.0),  # cut off: not JSON
    ('{"name": "Felicia"}', 0.0),  # the wrong key
    ('["answer"]', 0.0),  # not an object
    ("Paris", 0.0),
])
def test_json_keys(answer, expected):
    assert score(answer, {"type": "json_keys", "keys": ["answer"]}) == expected


def test_title_numbered_list_words_and_case():
    assert score("<<Bees: The Architects>>\n\nBees make honey.", {"type": "title"}) == 1.0
    assert score("<<>> nothing", {"type": "title"}) == 0.0 and score("<Title>", {"type": "title"}) == 0.0
    numbered = {"type": "numbered_list", "min_items": 2}
    assert score("1. Apple\n2. Banana\n3. Cherry", numbered) == 1.0
    assert score("Here:\n1) Apple\n2) Banana", numbered) == 1.0
    assert score("1. Apple\n3. Banana", numbered) == 0.0 and score("- Apple\n- Banana", numbered) == 0.0
    assert score("Paris is the capital.", {"type": "max_words", "max": 4}) == 1.0
    assert score("Paris is the capital of France.", {"type": "max_words", "max": 4}) == 0.0
    assert score("bees make honey.", {"type": "lowercase"}) == 1.0 and score("Bees", {"type": "lowercase"}) == 0.0
    assert score("I like a Banana.", {"type": "includes", "words": ["banana"]}) == 1.0
    assert score("I like bananas.", {"type": "includes", "words": ["banana"]}) == 0.0  # whole words only
    both = ({"type": "starts_with", "words": ["yes"]}, {"type": "max_words", "max": 2})
    assert score("Yes.", *both) == 1.0 and score("Yes, it is blue.", *both) == 0.0  # every check must hold


def test_every_check_the_suite_format_names_is_implemented():
    assert set(scorers.VERIFIABLE_CHECKS) == set(suites.VERIFIABLE_CHECKS)
    assert "verifiable" in scorers.GENERATION and "verifiable" in suites.GENERATION_SCORERS


@pytest.mark.parametrize("item, message", [
    ({"id": "a", "prompt": "p"}, "verifiable needs 'checks'"),
    ({"id": "a", "prompt": "p", "checks": []}, "verifiable needs 'checks'"),
    ({"id": "a", "prompt": "p", "checks": [{"type": "rhymes"}]}, "unknown check type 'rhymes' (one of starts_with"),
    ({"id": "a", "prompt": "p", "checks": [{"type": "max_words"}]}, "check 'max_words' needs 'max'"),
])
def test_bad_verifiable_items_name_the_file_line_and_fix(tmp_path, item, message):
    (tmp_path / "t.jsonl").write_text(json.dumps(item) + "\n")
    (tmp_path / "suite.json").write_text(json.dumps({"name": "s", "tasks": [
        {"name": "t", "category": "instruction_following", "path": "t.jsonl", "scorer": "verifiable"}]}))
    with pytest.raises(suites.SuiteError, match=r"t\.jsonl:1: .*" + message.replace("(", r"\(")):
        suites.load_suite(tmp_path)


def test_general_en_v1_has_the_five_categories_and_enough_items():
    suite = suites.load_suite("bundled:general-en-v1")
    assert suite.categories == ("instruction_following", "format", "knowledge", "reasoning", "safety", "task")
    per_category: dict[str, int] = {}
    for task in suite.tasks:
        per_category[task.category] = per_category.get(task.category, 0) + len(task.items)
    assert all(count >= 100 for count in per_category.values()), per_category
    assert suite.task("safety_harmless").options == {"length_normalized": True}
