"""bundled:standard-v1: lm-eval tasks for the five categories, resolved offline (no data downloaded)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from forgetless.api.schema import CATEGORIES, RegressionSpec
from forgetless.suites import LmEvalSuite, SuiteError, resolve_suite


def registered_lm_eval_tasks() -> set[str]:
    """Every `task:` name in the installed lm-eval's task YAML files (what TaskManager indexes)."""
    lm_eval = pytest.importorskip("lm_eval")
    root = Path(lm_eval.__file__).parent / "tasks"
    names = set()
    for path in root.rglob("*.yaml"):
        names.update(re.findall(r"^task:\s*([\w.\-]+)\s*$", path.read_text(errors="replace"), re.M))
    return names


def test_standard_suite_covers_the_five_categories_with_registered_tasks():
    suite = resolve_suite("bundled:standard-v1")
    assert isinstance(suite, LmEvalSuite) and suite.name == "standard-v1"
    assert suite.categories == tuple(CATEGORIES)
    assert suite.limit == 100
    registered = registered_lm_eval_tasks()
    assert len(registered) > 1000  # the scan found the registry
    names = [entry.rsplit(":", 1)[0] for entry in suite.tasks]
    assert not [n for n in names if n not in registered], "tasks missing from the installed lm-eval"
    by_category = {c: [e.rsplit(":", 1)[0] for e in suite.tasks if e.endswith(":" + c)] for c in CATEGORIES}
    assert by_category["instruction_following"] == ["ifeval"] and by_category["reasoning"] == ["gsm8k"]
    assert by_category["format"] == ["jsonschema_bench_easy"]


def test_standard_suite_resolves_to_lm_eval_tasks_with_their_categories():
    pytest.importorskip("torch")
    from forgetless_trainer.evaluation import lmeval
    from forgetless_trainer.evaluation.runner import resolve_target

    target = resolve_target(RegressionSpec(suite={"path": "bundled:standard-v1"}))
    assert target.lm_eval_tasks and target.lm_eval_limit == 100 and target.suite is None
    overrides = lmeval.parse_task_names(target.lm_eval_tasks)
    assert {lmeval.category_for(name, overrides) for name in overrides} == set(CATEGORIES)
    plain = resolve_target(RegressionSpec(suite={"lmEvalTasks": list(target.lm_eval_tasks)}))
    assert plain.digest != target.digest  # the suite's default limit is part of what a baseline is keyed on


def test_lm_eval_suite_errors_name_the_file_and_the_fix(tmp_path):
    folder = tmp_path / "s"
    folder.mkdir()
    (folder / "suite.json").write_text(json.dumps({"name": "x", "lm_eval": {"tasks": ["ifeval"]}}))
    with pytest.raises(SuiteError, match=r"suite.json: lm_eval task 'ifeval' needs a category: write `task:category`"):
        resolve_suite(folder)
    (folder / "suite.json").write_text(json.dumps({"name": "x", "lm_eval": {"tasks": ["ifeval:format"], "limit": 0}}))
    with pytest.raises(SuiteError, match="lm_eval.limit"):
        resolve_suite(folder)
    assert resolve_suite("bundled:world-v1").name == "world-v1"  # native suites still load


def test_llama_chat_example_validates_and_uses_the_standard_suite():
    import yaml

    from forgetless.api.schema import parse_job

    path = Path(__file__).resolve().parents[2] / "examples" / "llama-3.2-1b-chat.yaml"
    job = parse_job(yaml.safe_load(path.read_text()))
    spec = job.spec
    assert spec.regression.suite.path == "bundled:standard-v1" and spec.dataset.format == "chat"
    assert spec.method.type == "lora" and spec.mitigation.data_mixing.general_fraction == 0.25
    assert spec.dataset.task.pvc is not None and spec.training.packing and spec.training.gradient_checkpointing
