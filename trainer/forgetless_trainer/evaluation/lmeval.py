"""lm-evaluation-harness backend (optional extra `lmeval`: `pip install lm-eval`).

When `regression.suite.lmEvalTasks` names lm-eval tasks, they run through lm-eval's Python API
(`lm_eval.simple_evaluate` with an `HFLM` wrapping the already loaded model — the base model, or
the base model with its peft adapter, used as loaded: nothing is merged or mutated, so the same
call is safe mid-training) with `log_samples=True`, and every logged sample becomes
one binary item result, so the paired bootstrap gate works exactly as with native suites.

Categories: each task maps to a forgetless category through CATEGORY_TABLE (longest matching
prefix, so `mmlu_anatomy` is knowledge via `mmlu`). Override or extend it per task in the spec
by writing `name:category`, e.g. `lmEvalTasks: [arc_challenge:reasoning, my_task:task]`.

Item score: the first per-sample metric present of ITEM_METRICS (acc, exact_match, ...);
values are binarised at 0.5 (for non-binary metrics such as mc2 that is "more than half right").

Custom / offline tasks: set env FORGETLESS_LMEVAL_INCLUDE_PATH to a folder of lm-eval task YAML
files (passed to `lm_eval.tasks.TaskManager(include_path=…)`); hub datasets need network or a
populated HF datasets cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any, Iterable, Mapping, Sequence

from forgetless.contract import LMEVAL_INCLUDE_PATH_ENV
from forgetless.lifecycle import ALL_CATEGORIES
from forgetless_trainer.evaluation.results import EvaluationResult, ItemResult
from forgetless.errors import StageError


CATEGORY_TABLE: dict[str, str] = {
    "hellaswag": "knowledge",
    "arc_easy": "knowledge",
    "arc_challenge": "reasoning",
    "mmlu": "knowledge",
    "triviaqa": "knowledge",
    "nq_open": "knowledge",
    "openbookqa": "knowledge",
    "piqa": "knowledge",
    "sciq": "knowledge",
    "lambada": "knowledge",
    "winogrande": "reasoning",
    "gsm8k": "reasoning",
    "boolq": "reasoning",
    "logiqa": "reasoning",
    "bbh": "reasoning",
    "math": "reasoning",
    "minerva_math": "reasoning",
    "ifeval": "instruction_following",
    "truthfulqa": "safety",
    "toxigen": "safety",
    "bbq": "safety",
    "crows_pairs": "safety",
}
"""Default lm-eval task (prefix) -> forgetless category; see the module doc for overrides."""

ITEM_METRICS = ("acc", "exact_match", "prompt_level_strict_acc", "em", "acc_norm", "mc2", "f1")


class LmEvalError(StageError):
    """lm-eval is missing, or a task cannot be mapped or run."""


def parse_task_names(entries: Sequence[str]) -> dict[str, str | None]:
    """`name` or `name:category` entries -> {name: explicit category or None}."""
    parsed: dict[str, str | None] = {}
    for entry in entries:
        name, _, category = entry.partition(":")
        name, category = name.strip(), category.strip() or None
        if not name:
            raise LmEvalError(f"regression.suite.lmEvalTasks: empty task name in {entry!r}")
        if category is not None and category not in ALL_CATEGORIES:
            raise LmEvalError(
                f"regression.suite.lmEvalTasks: {entry!r} names unknown category {category!r} "
                f"(one of {', '.join(ALL_CATEGORIES)})"
            )
        parsed[name] = category
    return parsed


def category_for(
    task: str, overrides: Mapping[str, str | None], table: Mapping[str, str] = CATEGORY_TABLE,
    parents: Mapping[str, str] | None = None,
) -> str:
    """Category of an lm-eval task: an explicit `name:category` for it or for a group it belongs to
    (`parents`: subtask -> group, from lm-eval's group_subtasks), else CATEGORY_TABLE by the
    longest prefix of its name or its groups' names. Raises LmEvalError naming the fix."""
    lineage = [task]
    while parents and lineage[-1] in parents and parents[lineage[-1]] not in lineage:
        lineage.append(parents[lineage[-1]])
    for name in lineage:
        if overrides.get(name):
            return overrides[name]
    for name in lineage:
        keys = [k for k in table if name.startswith(k)]
        if keys:
            return table[max(keys, key=len)]
    raise LmEvalError(
        f"regression.suite.lmEvalTasks: no category known for lm-eval task {task!r}; "
        f"write it as '{task}:<category>' with one of {', '.join(ALL_CATEGORIES)}"
    )


def tasks_digest(entries: Iterable[str]) -> str:
    """Content digest of an lm-eval 'suite': the task entries, the table and lm-eval's version."""
    try:
        from importlib.metadata import version

        lm_eval_version = version("lm-eval")
    except Exception:
        lm_eval_version = "not-installed"
    document = {"tasks": sorted(entries), "table": CATEGORY_TABLE, "lm_eval": lm_eval_version,
                "include": os.environ.get(LMEVAL_INCLUDE_PATH_ENV)}
    return "sha256:" + hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()


def _import_lm_eval():
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as exc:
        raise LmEvalError(
            "regression.suite.lmEvalTasks needs lm-evaluation-harness: pip install 'forgetless[lmeval]' "
            f"(or pip install lm-eval) — import failed: {exc}"
        ) from exc
    return lm_eval, HFLM, TaskManager


_TASK_MANAGERS: dict[str | None, Any] = {}


def _task_manager(factory: Any, include: str | None) -> Any:
    """One TaskManager per include path (indexing every lm-eval task takes seconds)."""
    if include not in _TASK_MANAGERS:
        _TASK_MANAGERS[include] = factory(include_path=include) if include else factory()
    return _TASK_MANAGERS[include]


def _item_score(sample: Mapping[str, Any]) -> float:
    for metric in ITEM_METRICS:
        if metric in sample:
            value = sample[metric]
            if isinstance(value, (list, tuple)):
                value = value[0] if value else 0.0
            return float(float(value) >= 0.5)
    raise LmEvalError(f"lm-eval sample has none of the metrics {ITEM_METRICS}: {sorted(sample)}")


def _answer(sample: Mapping[str, Any]) -> str:
    """The generated text, or for log-likelihood tasks the index of the best-scoring choice."""
    responses = list(sample.get("filtered_resps") or [])
    if responses and all(isinstance(r, (list, tuple)) and r and isinstance(r[0], (int, float)) for r in responses):
        return str(max(range(len(responses)), key=lambda i: (responses[i][0], -i)))
    while responses and isinstance(responses[0], (list, tuple)):
        responses = list(responses[0])
    text = str(responses[0]) if responses else ""
    return text if len(text) <= 200 else text[:197] + "..."


def uses_chat_template(tokenizer: Any) -> bool:
    """An instruct model (its tokenizer carries a chat template, chat.install_template) is prompted
    through it (lm-eval's `apply_chat_template=True`); a base model gets raw prompts."""
    return bool(getattr(tokenizer, "chat_template", None))


def evaluate_lm_eval(
    model: Any, tokenizer: Any, entries: Sequence[str], *, limit: int | None = None, batch_size: int = 32
) -> EvaluationResult:
    overrides = parse_task_names(entries)
    for name in overrides:
        category_for(name, overrides)  # fail before any compute
    lm_eval, HFLM, TaskManager = _import_lm_eval()
    began = time.perf_counter()
    was_training = getattr(model, "training", False)
    model.eval()
    include = os.environ.get(LMEVAL_INCLUDE_PATH_ENV)
    try:
        wrapped = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        output = lm_eval.simple_evaluate(
            model=wrapped,
            tasks=list(overrides),
            limit=limit,
            log_samples=True,
            task_manager=_task_manager(TaskManager, include),
            bootstrap_iters=0,
            apply_chat_template=uses_chat_template(tokenizer),
        )
    except LmEvalError:
        raise
    except Exception as exc:  # lm-eval raises many kinds (KeyError for unknown tasks, dataset errors)
        raise LmEvalError(f"lm-eval could not run {', '.join(overrides)}: {type(exc).__name__}: {exc}") from exc
    finally:
        if was_training:
            model.train()
    samples = (output or {}).get("samples") or {}
    parents = {child: group for group, children in ((output or {}).get("group_subtasks") or {}).items() for child in children}
    tasks: dict[str, str] = {}
    items: list[ItemResult] = []
    for task in sorted(samples):
        category = category_for(task, overrides, parents=parents)
        tasks[task] = category
        for sample in sorted(samples[task], key=lambda s: s["doc_id"]):
            items.append(ItemResult(task, str(sample["doc_id"]), category, _item_score(sample), _answer(sample)))
    if not items:
        raise LmEvalError(f"lm-eval returned no samples for {', '.join(overrides)}")
    return EvaluationResult(
        suite="lm-eval", digest=tasks_digest(entries), tasks=tasks, items=items, limit=limit,
        seconds=time.perf_counter() - began, meta={"lmEvalTasks": list(entries)},
    )
