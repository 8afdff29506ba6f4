"""Self-rehearsal: which general data a job uses, the bundled prompt pool, the cache key, what is kept
(the generation itself, through a real model: tests/component/test_self_rehearsal.py)."""

from __future__ import annotations

import json
import re

import pytest

from forgetless import bundled
from forgetless.api.manifests import ManifestError, validate_document
from forgetless.api.schema import DataSource
from forgetless.errors import StageError
from forgetless.general_data import general_data, named_sources, trains_on_general_data
from forgetless.suites import load_suite
from forgetless_trainer.evaluation.evaluator import Answer
from forgetless_trainer.self_rehearsal import general_examples, kept_records, read_prompts, rehearsal_key

POOL = bundled.resolve("bundled:rehearsal-prompts-en", "data") / "prompts.jsonl"


def job(model: str = "bundled:smollm2-135m-instruct", mitigation: dict | None = None, **dataset) -> object:
    return validate_document({
        "apiVersion": "forgetless.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "j"},
        "spec": {"model": {"name": model}, "dataset": {"task": {"path": "bundled:support-triage-en"}, **dataset},
                 "mitigation": mitigation or {}},
    })


def normal(text: str) -> str:
    return re.sub(r"\s+", " ", text.lower()).strip()


def test_the_bundled_prompt_pool_is_disjoint_from_every_bundled_suite():
    pool = [json.loads(line)["prompt"] for line in POOL.read_text(encoding="utf-8").splitlines()]
    assert len(pool) == len(set(pool)) >= 256  # the default size fits in it
    items = {normal(item["prompt"]) for name in bundled.available("suite") if name != "standard-v1"
             for task in load_suite(f"bundled:{name}").tasks for item in task.items if item.get("prompt")}
    assert len(items) > 1000
    clashes = [p for p in pool if normal(p) in items]
    assert clashes == []
    # nor does a pool prompt hold a whole suite question (an instruction wrapped around it)
    long_items = [i for i in items if len(i) >= 25]
    assert [p for p in pool if any(i in normal(p) for i in long_items)] == []


def test_named_general_data_wins():
    choice = general_data(job(general={"path": "mine.jsonl"}).spec)
    assert choice.kind == "named" and choice.source.path == "mine.jsonl"
    assert "mine.jsonl (dataset.general)" == choice.describe()


def test_every_model_but_the_tiny_world_defaults_to_self_rehearsal():
    choice = general_data(job().spec)
    assert choice.kind == "selfRehearsal" and choice.prompts.path == "bundled:rehearsal-prompts-en"
    assert choice.rehearsal.size == 256 and choice.rehearsal.max_new_tokens == 64
    assert "first 256 prompts of bundled:rehearsal-prompts-en" in choice.describe()
    world = general_data(job("bundled:tiny-world").spec)
    assert world.kind == "world" and world.source.path == "bundled:general"


def test_naming_self_rehearsal_asks_for_it_for_any_model_and_sizes_it():
    spec = job("bundled:tiny-world", selfRehearsal={"size": 40, "maxNewTokens": 16,
                                                    "prompts": {"configMap": {"name": "p", "key": "p.jsonl"}}}).spec
    choice = general_data(spec)
    assert choice.kind == "selfRehearsal" and choice.rehearsal.size == 40 and choice.prompts.config_map.name == "p"
    assert [s.config_map.name for s in named_sources(spec) if s.config_map] == ["p"]


def test_general_data_and_self_rehearsal_together_are_refused_naming_both():
    with pytest.raises(ManifestError) as err:
        job(general={"path": "mine.jsonl"}, selfRehearsal={"size": 64})
    assert "dataset.general and dataset.selfRehearsal" in str(err.value.lines)


def test_a_rehearsal_size_below_the_minimum_is_refused():
    with pytest.raises(ManifestError) as err:
        job(selfRehearsal={"size": 4})
    assert "selfRehearsal.size" in str(err.value.lines)


def test_which_jobs_train_on_general_data():
    assert trains_on_general_data(job().spec)  # dataMixing defaults to 20 %
    assert not trains_on_general_data(job(mitigation={"dataMixing": {"generalFraction": 0.0}}).spec)
    assert trains_on_general_data(job(mitigation={"dataMixing": {"generalFraction": 0.0}, "ewc": {}}).spec)


def test_the_cache_key_follows_model_prompts_budget_and_format():
    base = rehearsal_key("m", "v1", ["a", "b"], 64, None)
    assert base == rehearsal_key("m", "v1", ["a", "b"], 64, None) and base.startswith("r-")
    others = {rehearsal_key("m", "v2", ["a", "b"], 64, None), rehearsal_key("m", "v1", ["a", "c"], 64, None),
              rehearsal_key("m", "v1", ["a", "b"], 32, None), rehearsal_key("other", "v1", ["a", "b"], 64, None),
              rehearsal_key("m", "v1", ["a", "b"], 64, {"format": "chat", "chatTemplate": None})}
    assert base not in others and len(others) == 5


def test_only_answers_that_ended_and_say_something_are_kept():
    records = kept_records(["p1", "p2", "p3", "p4"],
                           [Answer("yes.", True), Answer("cut off mid", False), Answer("", True), Answer("ok", True)])
    assert [r["messages"][0]["content"] for r in records] == ["p1", "p4"]
    assert records[0]["messages"][1] == {"role": "assistant", "content": "yes."}


def test_the_pool_is_read_up_to_size_and_bad_records_name_the_field(tmp_path):
    assert read_prompts(DataSource(path="bundled:rehearsal-prompts-en"), 20) == \
        [json.loads(line)["prompt"] for line in POOL.read_text().splitlines()[:20]]
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"prompt": "fine"}\n{"text": "no prompt"}\n')
    with pytest.raises(StageError, match=r'p.jsonl:2: a rehearsal prompt record needs a non-empty string "prompt"'):
        read_prompts(DataSource(path=str(bad)), 20)
    few = tmp_path / "few.jsonl"
    few.write_text('{"prompt": "one"}\n')
    with pytest.raises(StageError, match=r"dataset.selfRehearsal.prompts: .* holds 1 prompts"):
        read_prompts(DataSource(path=str(few)), 20)


def test_training_without_the_baseline_stages_rehearsal_file_says_what_to_do(tmp_path):
    with pytest.raises(StageError, match="the baseline stage writes it"):
        general_examples(job().spec, tmp_path)


def test_the_forecast_measures_against_the_models_own_answers_whatever_general_data_is_named():
    from forgetless.general_data import forecast_reference

    assert forecast_reference(job(general={"path": "mine.jsonl"}).spec).kind == "selfRehearsal"
    assert forecast_reference(job().spec).kind == "selfRehearsal"
    world = forecast_reference(job("bundled:tiny-world", general={"path": "mine.jsonl"}).spec)
    assert world.kind == "world" and world.source.path == "bundled:general"
    assert forecast_reference(job("bundled:tiny-world", selfRehearsal={"size": 32}).spec).kind == "selfRehearsal"


def test_jobs_that_render_prompts_alike_share_the_cache_key(tmp_path):
    """dataset.format decides the template only for a model without one of its own; the key follows the template."""
    from forgetless_trainer.self_rehearsal import prompt_format
    from tests.support.tiny_models import word_level_llama

    model = word_level_llama(tmp_path / "m")  # no chat template of its own
    spec = lambda **d: job(str(model), **d).spec  # noqa: E731
    raw, chat = prompt_format(spec()), prompt_format(spec(format="chat"))
    assert raw == {"chatTemplate": None} and chat["chatTemplate"] is not None  # ChatML for chat data
    assert prompt_format(spec(format="text")) == raw  # rendered alike: one entry
    assert prompt_format(spec(format="chat", chatTemplate="{{ messages }}")) != chat
