"""The job's own task as the gate's task category: the held-out split (never trained on), the scorer
chosen from the answers, the suite composed around it, and the default suite per model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from forgetless.api.schema import FineTuneJobSpec, default_suite_path
from forgetless.errors import StageError
from forgetless.suites import load_suite
from forgetless_trainer.evaluation import own_task
from forgetless_trainer.evaluation.scorers import json_match, similarity, token_f1


def _spec(task_path: str, **regression) -> FineTuneJobSpec:
    return FineTuneJobSpec.model_validate({
        "model": {"name": "bundled:tiny-world"},
        "dataset": {"task": {"path": task_path}},
        "regression": regression,
    })


def _records(path: Path, n: int, start: int = 0) -> Path:
    path.write_text("".join(json.dumps({"prompt": f"order {i} please", "response": f"ORDER {i} | OPEN"}) + "\n"
                            for i in range(start, start + n)))
    return path


def test_a_single_file_is_split_deterministically_and_the_held_out_records_are_never_trained_on(tmp_path):
    data = _records(tmp_path / "task.jsonl", 500)
    split = own_task.held_out_split(_spec(str(data)))
    assert split.source == "split" and len(split.held_out) == 50 and len(split.train) == 450  # 10 %
    held = {e.prompt for e in split.held_out}
    assert held.isdisjoint(e.prompt for e in split.train)
    # what the train stage reads is exactly the rest
    assert [e.prompt for e in own_task.training_records(_spec(str(data)))] == [e.prompt for e in split.train]
    # the same records whatever the training seed (the test set and the baseline must not move with it)
    other_seed = FineTuneJobSpec.model_validate({**_spec(str(data)).to_wire(), "training": {"seed": 7}})
    assert {e.prompt for e in own_task.held_out_split(other_seed).held_out} == held


def test_the_share_is_at_least_20_and_at_most_max_items(tmp_path):
    small = own_task.held_out_split(_spec(str(_records(tmp_path / "a.jsonl", 60))))
    assert len(small.held_out) == 20 and len(small.train) == 40
    capped = own_task.held_out_split(_spec(str(_records(tmp_path / "b.jsonl", 5000)), task={"maxItems": 100}))
    assert len(capped.held_out) == 100 and len(capped.train) == 4900


def test_too_few_records_is_an_error_naming_the_field_and_the_number_needed(tmp_path):
    data = _records(tmp_path / "task.jsonl", 30)
    with pytest.raises(StageError) as error:
        own_task.held_out_split(_spec(str(data)))
    assert "dataset.task" in str(error.value) and "at least 40 records" in str(error.value)
    # the suite's own task needs nothing held out
    assert len(own_task.training_records(_spec(str(data), task={"source": "Suite"}))) == 30


def test_a_test_jsonl_beside_train_jsonl_is_the_held_out_set(tmp_path):
    directory = tmp_path / "task"
    directory.mkdir()
    _records(directory / "train.jsonl", 100)
    _records(directory / "validation.jsonl", 10, start=100)
    _records(directory / "test.jsonl", 30, start=200)
    split = own_task.held_out_split(_spec(str(directory)))
    assert split.source == "test.jsonl"
    assert [e.prompt for e in split.held_out] == [f"order {i} please" for i in range(200, 230)]
    assert len(split.train) == 100  # train*.jsonl only
    with pytest.raises(StageError, match="at least 20"):
        _records(directory / "test.jsonl", 5, start=200)
        own_task.held_out_split(_spec(str(directory)))


@pytest.mark.parametrize("targets, scorer", [
    (['{"category": "billing", "priority": "low"}'] * 9 + ["not json"], "json_match"),
    (["ACTION: CANCEL | EVENT: DEMO | DAY: MONDAY | TIME: 10:00"] * 10, "exact_match"),
    (["dear ugo | product : tablet | issue : crash | action : update | status : closed"] * 10, "exact_match"),
    (["Thanks for reaching out. " * 8 + "\nWe will look into it."] * 10, "similarity"),
])
def test_the_scorer_fits_the_answers(targets, scorer):
    assert own_task.choose_scorer(targets)[0] == scorer
    assert own_task.choose_scorer(targets, "Similarity")[0] == "similarity"


def test_json_match_is_structural_and_similarity_is_token_f1():
    item = {"target": '{"category": "billing", "priority": "low", "product": "smart thermostat"}'}
    assert json_match({}, item, '{"product": "Smart thermostat", "priority": "low", "category": "billing"}') == 1.0
    assert json_match({}, item, 'Sure! ```json\n{"category": "billing", "priority": "low", "product": "smart thermostat"}```') == 1.0
    assert json_match({}, item, '{"category": "billing", "priority": "high", "product": "smart thermostat"}') == 0.0
    assert json_match({}, item, "billing, low, smart thermostat") == 0.0
    assert token_f1("the cat sat", "the cat sat") == 1.0 and token_f1("dog", "the cat") == 0.0
    assert similarity({"min_similarity": 0.5}, {"target": "we will refund your order today"}, "we refund your order") == 1.0
    assert similarity({"min_similarity": 0.9}, {"target": "we will refund your order today"}, "we refund your order") == 0.0


def test_the_held_out_task_replaces_the_suites_own_task_unless_the_spec_keeps_it():
    suite = load_suite("bundled:world-v1")
    spec = _spec("bundled:support-tickets")
    composed, split, notes = own_task.compose_suite(suite, spec)
    task_tasks = [t for t in composed.tasks if t.category == "task"]
    assert [t.name for t in task_tasks] == [own_task.OWN_TASK] and task_tasks[0].scorer == "exact_match"
    assert len(task_tasks[0].items) == 150 and split.source == "test.jsonl"
    assert task_tasks[0].items[0]["target"] == split.held_out[0].response
    assert any("support_tickets" in note and "not scored" in note for note in notes)
    kept, none, _ = own_task.compose_suite(suite, _spec("bundled:support-tickets", task={"source": "Suite"}))
    assert none is None and kept.digest == suite.digest


def test_chat_items_keep_their_system_prompt_and_earlier_turns():
    from forgetless_trainer.data import parse_record

    example = parse_record({"system": "Be terse.", "messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "cancel the demo"}, {"role": "assistant", "content": "ACTION: CANCEL"}]}, "chat", "x:1")
    item = own_task.item_of(example, 3)
    assert item["target"] == "ACTION: CANCEL" and item["id"] == "own_task-00003"
    assert item["messages"] == [["system", "Be terse."], ["user", "hi"], ["assistant", "hello"], ["user", "cancel the demo"]]
    single = own_task.item_of(parse_record({"messages": [{"role": "user", "content": "q"},
                                                         {"role": "assistant", "content": "a"}]}, "chat", "x:2"), 0)
    assert single == {"id": "own_task-00000", "prompt": "q", "target": "a"}


def test_an_omitted_suite_is_the_default_for_the_model():
    assert _spec("bundled:support-tickets").regression.suite.path == "bundled:world-v1"
    chat = FineTuneJobSpec.model_validate({"model": {"name": "bundled:smollm2-135m-instruct"},
                                           "dataset": {"task": {"path": "bundled:support-triage-en"}}})
    assert chat.regression.suite.path == "bundled:general-en-v2" == default_suite_path("org/any-chat-model")
    general = load_suite(chat.regression.suite.path)
    assert "task" not in general.categories
    assert all(not t.options.get("leak_pattern") for t in general.tasks if t.scorer == "format_leak")
    assert [t.name for t in general.tasks if t.needs_learned_detector()] == ["format_leak"]
