"""The batched evaluator and the baseline / evaluate stages on the tiny word-level Llama (CPU).

`taught_model_dir` is the tiny model overfitted on the fixture suite's right answers, so every
scorer sees real right answers; `forgetful_model_dir` is the same model taught the wrong
knowledge answers (a real regression for the gate to catch).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from forgetless.api.schema import FineTuneJob
from forgetless.suites import load_suite

torch = pytest.importorskip("torch")

MINI = Path(__file__).resolve().parents[1] / "fixtures" / "suites" / "mini"
REFUSAL = "sorry can not help with that"


def right_answer(task, item) -> str:
    if task.scorer == "exact_match":
        return item["target"]
    if task.scorer == "multiple_choice":
        return item["choices"][item["target_index"]]
    if task.scorer == "format_compliance":
        return item["prompt"]  # "list alpha beta" is itself a well-formed list
    if task.scorer == "refusal":
        return REFUSAL if item["should_refuse"] else "yes"
    return "no"  # format_leak: anything without the house format


def teach(model_dir: Path, out: Path, answers: dict[tuple[str, str], str], steps: int = 60) -> Path:
    """Overfit the tiny model on `prompt => answer </s>` for the given items (loss on the answer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    suite = load_suite(MINI)
    rows = []
    for task in suite.tasks:
        for item in task.items:
            prompt = tokenizer(f"{item['prompt']} =>")["input_ids"]
            answer = tokenizer(" " + answers[(task.name, item["id"])], add_special_tokens=False)["input_ids"]
            rows.append((prompt + answer + [tokenizer.eos_token_id], len(prompt)))
    width = max(len(r[0]) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    labels = torch.full((len(rows), width), -100)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (seq, prompt_len) in enumerate(rows):
        ids[i, : len(seq)] = torch.tensor(seq)
        labels[i, prompt_len: len(seq)] = torch.tensor(seq[prompt_len:])
        mask[i, : len(seq)] = 1
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _answers(wrong_knowledge: bool = False) -> dict[tuple[str, str], str]:
    answers = {}
    for task in load_suite(MINI).tasks:
        for item in task.items:
            answer = right_answer(task, item)
            if wrong_knowledge and task.scorer == "multiple_choice":
                answer = item["choices"][(item["target_index"] + 1) % len(item["choices"])]
            answers[(task.name, item["id"])] = answer
    return answers


@pytest.fixture(scope="module")
def taught_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    return teach(tiny_model_dir, tmp_path_factory.mktemp("taught"), _answers())


@pytest.fixture(scope="module")
def forgetful_model_dir(taught_model_dir, tmp_path_factory) -> Path:
    """The taught model, then a few steps on the same items with the knowledge answers wrong."""
    return teach(taught_model_dir, tmp_path_factory.mktemp("forgetful"), _answers(wrong_knowledge=True), steps=25)


def load(model_dir: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)


# --------------------------------------------------------------------------- evaluator


def test_taught_model_scores_full_marks_with_real_answers(taught_model_dir):
    from forgetless_trainer.evaluation import evaluate_suite

    model, tokenizer = load(taught_model_dir)
    result = evaluate_suite(model, tokenizer, load_suite(MINI))
    assert result.category_scores() == {c: 1.0 for c in load_suite(MINI).categories}
    answers = {(i.task, i.id): i.answer for i in result.items}
    assert answers[("if_copy", "c3")] == "gamma beta alpha"
    assert answers[("safety_refuse", "s1")] == REFUSAL
    assert answers[("know_mc", "m3")] == "eight"  # the chosen choice
    assert answers[("tickets", "t2")] == "sorry reply closed"
    assert result.mean_general_score() == 1.0


def test_wrong_answers_score_zero(forgetful_model_dir):
    from forgetless_trainer.evaluation import evaluate_suite

    model, tokenizer = load(forgetful_model_dir)
    result = evaluate_suite(model, tokenizer, load_suite(MINI))
    assert result.category_scores()["knowledge"] == 0.0
    assert result.category_scores()["reasoning"] == 1.0


def test_batched_equals_one_at_a_time_and_respects_each_tasks_max_new_tokens(tiny_model_dir):
    """A random model babbles to max_new_tokens: rows of different tasks share batches, yet each
    answer is cut at its own task's limit and equals the unbatched greedy answer."""
    from forgetless_trainer.evaluation import evaluate_suite
    from tests.support.evaluation_oracles import naive_generate, scores_equal

    torch.set_num_threads(2)
    model, tokenizer = load(tiny_model_dir)
    suite = load_suite(MINI)
    batched = evaluate_suite(model, tokenizer, suite, batch_size=7)
    assert scores_equal(batched, evaluate_suite(model, tokenizer, suite, batch_size=32)) == []
    for task in suite.tasks:
        if not task.is_generation:
            continue
        for item in task.items:
            answer = next(i.answer for i in batched.items if (i.task, i.id) == (task.name, item["id"]))
            assert len(answer.split()) <= task.max_new_tokens
            assert answer == naive_generate(model, tokenizer, item["prompt"], task.max_new_tokens)


def test_loglikelihood_matches_a_plain_forward_pass(tiny_model_dir, monkeypatch):
    from forgetless_trainer.evaluation import evaluator
    from forgetless_trainer.evaluation.evaluator import _loglikelihoods

    def no_fallback(*args, **kwargs):
        raise AssertionError("the shared-context path fell back to full rows")

    monkeypatch.setattr(evaluator, "_full_loglikelihoods", no_fallback)

    model, tokenizer = load(tiny_model_dir)
    rows = []
    for prompt in ("what is the alpha =>", "name the city of the friend of beta =>", "why =>"):
        context = tokenizer(prompt)["input_ids"]  # contexts of different lengths: left padding, shared caches
        rows += [(context, tokenizer(" " + c, add_special_tokens=False)["input_ids"]) for c in ("one", "yes no", "two")]
    rows.append((tokenizer("first word : gamma =>")["input_ids"], tokenizer(" gamma delta epsilon", add_special_tokens=False)["input_ids"]))
    batched = _loglikelihoods(model, tokenizer, rows, batch_size=2)  # several batches of contexts
    assert _loglikelihoods(model, tokenizer, rows, batch_size=8) == pytest.approx(batched, abs=1e-4)
    for (ctx, cont), value in zip(rows, batched):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ctx + cont])).logits[0]
        logprobs = torch.log_softmax(logits, -1)
        expected = sum(float(logprobs[len(ctx) - 1 + j, t]) for j, t in enumerate(cont))
        assert value == pytest.approx(expected, abs=1e-4)


def test_limit_mode_restore_and_json_round_trip(tiny_model_dir):
    from forgetless_trainer.evaluation import EvaluationResult, evaluate_suite

    model, tokenizer = load(tiny_model_dir)
    model.train()
    result = evaluate_suite(model, tokenizer, load_suite(MINI), limit=2)
    assert model.training  # restored for the trainer's probe
    assert len(result.items) == 2 * len(load_suite(MINI).tasks) and result.limit == 2
    assert result.digest == load_suite(MINI).subset(2).digest
    again = EvaluationResult.from_json(result.to_json())
    assert again.items == result.items and again.category_scores() == result.category_scores()
    assert set(result.category_scores()) == {"instruction_following", "format", "knowledge", "reasoning", "safety", "task"}


# --------------------------------------------------------------------------- stages


def make_job(manifest, model_dir: Path, **regression) -> FineTuneJob:
    # the mini suite's own task category is what these cache tests score (the job's held-out task is
    # tests/unit/test_own_task.py's and the run-pipeline tests')
    regression = {"task": {"source": "Suite"}, **regression}
    # the world's general data, named: a model given by path would otherwise make its own (self-rehearsal)
    document = manifest(spec={"model": {"name": str(model_dir)},
                              "dataset": {"task": {"path": "bundled:support-tickets"},
                                          "general": {"path": "bundled:general"}},
                              "regression": {"task": {"source": "Suite"}, "suite": {"path": str(MINI)}, **regression}})
    return FineTuneJob.model_validate(document)


@pytest.fixture
def cache_env(tmp_path, monkeypatch) -> Path:
    directory = tmp_path / "cache"
    monkeypatch.setenv("FORGETLESS_CACHE_DIR", str(directory))
    return directory


def test_baseline_stage_caches_and_second_job_skips_the_model(manifest, taught_model_dir, tmp_path, cache_env, monkeypatch):
    from forgetless_trainer.evaluation import runner
    from forgetless_trainer.stages import baseline

    job = make_job(manifest, taught_model_dir)
    first = baseline.run(job, tmp_path / "job1")
    assert first["stage"] == "baseline" and first["cached"] is False
    assert first["scores"]["knowledge"] == 1.0 and first["items"] == 31
    assert first["cacheKey"].startswith("s-")
    assert len(list(cache_env.glob("*.json"))) == 2  # weights key and spec key
    assert (tmp_path / "job1" / "baseline" / "results.json").exists()

    limited = make_job(manifest, taught_model_dir, limit=2)
    assert baseline.run(limited, tmp_path / "lim1")["cached"] is False

    def no_model(*args, **kwargs):
        raise AssertionError("a cache hit must not evaluate the model")

    monkeypatch.setattr(runner, "load_and_evaluate", no_model)
    second = baseline.run(job, tmp_path / "job2")
    assert second["cached"] is True and second["scores"] == first["scores"]
    # the spec key alone is enough (the operator's view)
    for entry in cache_env.glob("w-*.json"):
        entry.unlink()
    assert baseline.run(job, tmp_path / "job3")["cached"] is True
    # the same limit again is a hit; another limit is another baseline: a miss
    hit = baseline.run(limited, tmp_path / "lim2")
    assert hit["cached"] is True and hit["items"] == 2 * 7
    with pytest.raises(AssertionError, match="must not evaluate"):
        baseline.run(make_job(manifest, taught_model_dir, limit=3), tmp_path / "job4")


def test_suite_edited_in_place_is_a_cache_miss(manifest, taught_model_dir, tmp_path, cache_env, monkeypatch):
    """Same spec (same suite path), different items: the spec key matches, the digest does not."""
    from forgetless_trainer.stages import baseline

    suite_dir = tmp_path / "suite"
    shutil.copytree(MINI, suite_dir)
    job = FineTuneJob.model_validate(
        manifest(spec={"model": {"name": str(taught_model_dir)},
                       "dataset": {"task": {"path": "bundled:support-tickets"}, "general": {"path": "bundled:general"}},
                       "regression": {"task": {"source": "Suite"}, "suite": {"path": str(suite_dir)}}})
    )
    first = baseline.run(job, tmp_path / "a")
    items = suite_dir / "if_copy.jsonl"
    items.write_text(items.read_text().replace('"target": "gamma"', '"target": "delta"'))
    second = baseline.run(job, tmp_path / "b")
    assert second["cacheKey"] == first["cacheKey"] and second["cached"] is False
    assert second["tasks"]["if_copy"] < first["tasks"]["if_copy"]


def test_baseline_stage_bad_suite_is_a_stage_error(manifest, taught_model_dir, tmp_path, cache_env):
    from forgetless.errors import StageError
    from forgetless_trainer.stages import baseline

    broken = tmp_path / "broken"
    shutil.copytree(MINI, broken)
    (broken / "tickets.jsonl").write_text('{"id": "t1", "prompt": "x"\n')
    job = FineTuneJob.model_validate(
        manifest(spec={"model": {"name": str(taught_model_dir)}, "regression": {"task": {"source": "Suite"}, "suite": {"path": str(broken)}}})
    )
    with pytest.raises(StageError, match=r"spec.regression.suite: .*tickets.jsonl:1: malformed JSONL line"):
        baseline.run(job, tmp_path / "w")


def test_evaluate_stage_full_model_regression_fails_the_gate(manifest, taught_model_dir, forgetful_model_dir, tmp_path, cache_env):
    from forgetless.gate import evaluate_gate
    from forgetless_trainer.stages import baseline, evaluate

    job = make_job(manifest, taught_model_dir, limit=4)  # the baseline of a limited run is reused too
    workdir = tmp_path / "w"
    baseline.run(job, workdir)
    shutil.copytree(forgetful_model_dir, workdir / "train" / "output")
    summary = evaluate.run(job, workdir)
    assert summary["stage"] == "evaluate" and summary["baselineSource"] == "workdir"
    assert summary["paired"]["know_mc"] == {"category": "knowledge", "n11": 0, "n10": 4, "n01": 0, "n00": 0}
    assert len(json.dumps(summary)) < 4096
    gate = evaluate_gate(summary["paired"], job.spec.regression)  # what the operator does
    assert gate.verdict == "Failed" and not gate.category("knowledge").passed
    report = json.loads((workdir / "report" / "gate.json").read_text())
    gate.notes = summary["gate"]["notes"]  # what the scores rest on: known to the stage, which knows the target
    assert report["status"] == gate.to_status()
    assert summary["gate"]["notes"] == ["task: the suite's own task category (regression.task.source: Suite)",
                                        "general data: bundled:general (dataset.general)"]  # it trains on 20 %
    assert (workdir / "report" / "report.png").stat().st_size > 1000
    assert (workdir / "evaluate" / "results.json").exists()


def test_evaluate_stage_with_adapter_and_no_baseline_in_workdir(manifest, taught_model_dir, tmp_path, cache_env):
    """A zero-initialised LoRA adapter changes nothing: every item concordant, nothing forgotten and
    nothing learned, so the stage's gate says NoTaskGain and promotes nothing. With no baseline in the
    work dir and an empty cache the stage evaluates the base model itself."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from forgetless.gate import evaluate_gate
    from forgetless_trainer.stages import evaluate

    model = AutoModelForCausalLM.from_pretrained(taught_model_dir)
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    peft_model.save_pretrained(tmp_path / "w" / "train" / "output")
    job = make_job(manifest, taught_model_dir)
    summary = evaluate.run(job, tmp_path / "w")
    assert summary["baselineSource"] == "evaluated"
    assert all(t["n10"] == 0 and t["n01"] == 0 for t in summary["paired"].values())
    gate = evaluate_gate(summary["paired"], job.spec.regression)
    gate.notes = summary["gate"]["notes"]
    assert summary["gate"] == gate.to_status() and gate.verdict == "NoTaskGain"
    assert all(c["passed"] for c in summary["gate"]["categories"])  # not a forgetting failure
    assert summary["promotedModel"] is None and not (tmp_path / "w" / "promoted").exists()
    assert (tmp_path / "w" / "baseline" / "results.json").exists()


def test_evaluate_stage_without_training_output(manifest, taught_model_dir, tmp_path, cache_env):
    from forgetless_trainer.stages import StageError, evaluate

    with pytest.raises(StageError, match="run the train stage first"):
        evaluate.run(make_job(manifest, taught_model_dir), tmp_path / "w")


def test_forgetless_evaluate_command(taught_model_dir, capsys):
    import argparse

    from forgetless_cli.commands import evaluate as command

    parser = argparse.ArgumentParser()
    command.configure(parser)
    code = command.main(parser.parse_args(["--model", str(taught_model_dir), "--suite", str(MINI), "--json", "--limit", "3"]))
    assert code == 0
    document = json.loads(capsys.readouterr().out)
    assert document["items"] == 3 * 7 and document["scores"]["format"] == 1.0  # 7 tasks, 3 items each
    code = command.main(parser.parse_args(["--model", str(taught_model_dir), "--suite", "/nonexistent/suite"]))
    assert code == 1
    assert "suite not found" in capsys.readouterr().err


# --------------------------------------------------------------------------- lm-eval backend

LMEVAL_FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "suites" / "lmeval"


@pytest.fixture(scope="module")
def lmeval_include(tmp_path_factory):
    """The fixture task YAMLs, pointed at the mini suite's JSONL, as an offline include path
    (module-scoped: lm-eval's task index for one include path is built once and reused)."""
    include = tmp_path_factory.mktemp("lmeval-tasks")
    for template in LMEVAL_FIXTURES.glob("*.yaml.in"):
        (include / template.name[: -len(".in")]).write_text(template.read_text().replace("@MINI@", str(MINI)))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FORGETLESS_LMEVAL_INCLUDE_PATH", str(include))
        patch.setenv("HF_DATASETS_OFFLINE", "1")
        patch.setenv("HF_HUB_OFFLINE", "1")
        yield include


def test_lm_eval_category_table_and_overrides():
    from forgetless_trainer.evaluation.lmeval import LmEvalError, category_for, parse_task_names

    overrides = parse_task_names(["hellaswag", "mmlu", "arc_challenge:knowledge", "my_task:task"])
    assert category_for("hellaswag", overrides) == "knowledge"
    assert category_for("mmlu_anatomy", overrides) == "knowledge"  # by prefix
    assert category_for("arc_challenge", overrides) == "knowledge"  # overridden (table: reasoning)
    assert category_for("gsm8k", {}) == "reasoning"
    assert category_for("ifeval", {}) == "instruction_following"
    assert category_for("truthfulqa_mc1", {}) == "safety"
    assert category_for("child", {"grp": "format"}, parents={"child": "grp"}) == "format"  # via its group
    with pytest.raises(LmEvalError, match="write it as 'my_bench:<category>'"):
        category_for("my_bench", {})
    with pytest.raises(LmEvalError, match="unknown category 'cooking'"):
        parse_task_names(["x:cooking"])


def test_lm_eval_backend_offline_on_local_tasks(taught_model_dir, forgetful_model_dir, lmeval_include):
    pytest.importorskip("lm_eval")
    from forgetless.api.schema import RegressionSpec
    from forgetless.gate import paired_counts
    from forgetless_trainer.evaluation.runner import evaluate_model, resolve_target

    entries = ["fl_mini_mc:knowledge", "fl_mini_copy:instruction_following"]
    target = resolve_target(RegressionSpec.model_validate({"suite": {"lmEvalTasks": entries}}))
    assert target.suite is None and target.digest.startswith("sha256:")
    model, tokenizer = load(taught_model_dir)
    result = evaluate_model(model, tokenizer, target)
    assert result.tasks == {"fl_mini_copy": "instruction_following", "fl_mini_mc": "knowledge"}
    assert result.category_scores() == {"instruction_following": 1.0, "knowledge": 1.0}
    answers = {(i.task, i.id): i.answer for i in result.items}
    assert answers[("fl_mini_copy", "2")] == "gamma beta alpha"
    assert answers[("fl_mini_mc", "2")] == "2"  # the index of the chosen option
    # the forgetful model through lm-eval: the knowledge regression shows up item by item
    forgetful = evaluate_model(*load(forgetful_model_dir), target)
    paired = paired_counts(result.items, forgetful.items)
    assert paired["fl_mini_mc"] == {"category": "knowledge", "n11": 0, "n10": 4, "n01": 0, "n00": 0}
    assert paired["fl_mini_copy"]["n11"] == 6


def test_lm_eval_unknown_task_is_a_clear_error(taught_model_dir, lmeval_include):
    pytest.importorskip("lm_eval")
    from forgetless_trainer.evaluation.lmeval import LmEvalError, evaluate_lm_eval

    model, tokenizer = load(taught_model_dir)
    with pytest.raises(LmEvalError, match="lm-eval could not run no_such_task"):
        evaluate_lm_eval(model, tokenizer, ["no_such_task:knowledge"])
