"""What the baseline and evaluate stages (and `forgetless evaluate`) share: resolving the job's
suite (a suite directory or lm-eval tasks), identifying the base model for the cache, loading a
model and evaluating it, and the baseline lookup both stages use (`baseline_for`: the cache, else
the base model evaluated and stored; the evaluate stage looks in its work dir first)."""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forgetless.api.schema import FineTuneJobSpec, ModelSpec, RegressionSpec
from forgetless.baseline_cache import BaselineCache, directory_digest, prompt_identity, spec_cache_key, weights_cache_key
from forgetless.suites import LmEvalSuite, Suite, SuiteError, resolve_suite
from forgetless_trainer.evaluation.results import EvaluationResult
from forgetless_trainer.progress import StageProgress
from forgetless.errors import StageError

_COMMIT = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class EvalTarget:
    """A loaded suite, or lm-eval task names; either way a name and a content digest."""

    name: str
    digest: str
    suite: Suite | None = None
    lm_eval_tasks: tuple[str, ...] = ()
    lm_eval_limit: int | None = None
    """Documents per lm-eval task when spec.regression.limit is not set (an lm-eval suite's default)."""

    def result_digest(self, limit: int | None) -> str:
        """The digest an EvaluationResult of this target at `limit` carries (the evaluated subset's)."""
        return self.suite.subset(limit).digest if self.suite is not None else self.digest


def resolve_target(regression: RegressionSpec, base_dir: Path | None = None) -> EvalTarget:
    spec = regression.suite
    if spec.lm_eval_tasks:
        from forgetless_trainer.evaluation import lmeval

        tasks = tuple(spec.lm_eval_tasks)
        return EvalTarget(name="lm-eval", digest=lmeval.tasks_digest(tasks), lm_eval_tasks=tasks)
    try:
        suite = resolve_suite(spec, base_dir=base_dir)
    except SuiteError as exc:
        raise StageError(f"spec.regression.suite: {exc}") from exc
    if isinstance(suite, LmEvalSuite):  # bundled:standard-v1: lm-eval tasks with a default limit
        from forgetless_trainer.evaluation import lmeval

        digest = lmeval.tasks_digest(suite.tasks + (f"limit={suite.limit}",))
        return EvalTarget(name=suite.name, digest=digest, lm_eval_tasks=suite.tasks, lm_eval_limit=suite.limit)
    return EvalTarget(name=suite.name, digest=suite.digest, suite=suite)


def model_identity(model_spec: ModelSpec, base_dir: Path | None = None) -> tuple[str, str]:
    """(model id, model version) for the weights cache key: a digest of a local model directory,
    the commit of a cached hub snapshot, else the requested revision."""
    from forgetless_trainer.modeling import resolve_model_location

    location = resolve_model_location(model_spec, base_dir)
    path = Path(location)
    if path.is_dir():
        return model_spec.name, directory_digest(path)
    revision = model_spec.revision or "main"
    if _COMMIT.match(revision):
        return location, revision
    try:
        from huggingface_hub import snapshot_download

        snapshot = Path(snapshot_download(location, revision=revision, local_files_only=True))
        return location, snapshot.name
    except Exception:  # not cached yet (or no hub client): the revision name is all we know
        return location, revision


def cache_keys(spec: FineTuneJobSpec, target: EvalTarget, base_dir: Path | None = None) -> tuple[str, str]:
    """(weights key, spec key) of the job's baseline."""
    model_id, version = model_identity(spec.model, base_dir)
    prompt = prompt_identity(spec)
    return (weights_cache_key(model_id, version, target.digest, spec.regression.limit, prompt=prompt),
            spec_cache_key(spec))


def evaluate_model(
    model: Any, tokenizer: Any, target: EvalTarget, *, limit: int | None = None, batch_size: int = 32,
    stage: str = "evaluate",
) -> EvaluationResult:
    """`stage` names the progress display (`[baseline] item 96/858 …`)."""
    if target.lm_eval_tasks:
        from forgetless_trainer.evaluation import lmeval

        result = lmeval.evaluate_lm_eval(model, tokenizer, target.lm_eval_tasks, batch_size=batch_size,
                                         limit=limit if limit is not None else target.lm_eval_limit)
        result.limit = limit  # the spec's limit (cache keys and comparisons use it); the suite's default is in the digest
        return result
    from forgetless_trainer.evaluation.evaluator import evaluate_suite

    display: StageProgress | None = None
    began = time.monotonic()  # the total is known at the first report, the rate counts from here

    def report(done: int, total: int) -> None:
        nonlocal display
        if display is None:
            display = StageProgress(stage, total, unit="answer", started=began)
        display.update(done)

    try:
        return evaluate_suite(model, tokenizer, target.suite, limit=limit, batch_size=batch_size, progress=report)
    finally:
        if display is not None:
            display.close()


def load_and_evaluate(
    model_spec: ModelSpec, target: EvalTarget, *, adapter_path: Path | None = None,
    limit: int | None = None, batch_size: int = 32, base_dir: Path | None = None, dataset: Any = None,
    stage: str = "evaluate",
) -> EvaluationResult:
    """`dataset` (the job's DatasetSpec): its chatTemplate / chat format decide the prompt format, as in
    training (forgetless_trainer.chat.install_template)."""
    from forgetless_trainer.chat import install_template
    from forgetless_trainer.modeling import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(model_spec, adapter_path=adapter_path, base_dir=base_dir)
    install_template(tokenizer, dataset, base_dir)
    result = evaluate_model(model, tokenizer, target, limit=limit, batch_size=batch_size, stage=stage)
    result.meta.update({"model": model_spec.name, "adapter": str(adapter_path) if adapter_path else None})
    return result


def store_baseline(cache: BaselineCache, keys: tuple[str, ...], result: EvaluationResult, model: str) -> None:
    """Cache failures (read-only or full volume) never fail a stage: the result is in the work dir."""
    try:
        cache.put(keys, result.to_dict(), model=model)
    except OSError as exc:
        print(f"warning: could not write the baseline cache in {cache.directory}: {exc}", file=sys.stderr)


def cached_baseline(cache: BaselineCache, keys: tuple[str, ...], target: EvalTarget, limit: int | None) -> EvaluationResult | None:
    """The cached baseline under the first key that holds one for exactly this suite content and limit."""
    for key in keys:
        entry = cache.get(key, suite_digest=target.result_digest(limit))
        if entry is not None and entry.get("limit") != limit:
            continue
        if entry is not None:
            try:
                return EvaluationResult.from_json(entry)
            except ValueError:
                continue
    return None


@dataclass(frozen=True)
class BaselineLookup:
    result: EvaluationResult
    cached: bool
    """Found in the cache (else evaluated here)."""
    keys: tuple[str, str]
    """(weights key, spec key)."""


def baseline_for(spec: FineTuneJobSpec, target: EvalTarget, *, restore_hit: bool = False) -> BaselineLookup:
    """The base model's results on `target`, the one lookup the baseline and evaluate stages share:
    the cache (weights key, then spec key, each checked against the suite digest and limit), else the
    base model evaluated here and stored under both keys. `restore_hit`: store a hit again too, so a
    hit under one key fills in the other (the baseline stage does)."""
    keys = cache_keys(spec, target)
    cache = BaselineCache()
    limit = spec.regression.limit
    result = cached_baseline(cache, keys, target, limit)
    cached = result is not None
    if result is None:
        result = load_and_evaluate(spec.model, target, limit=limit, dataset=spec.dataset, stage="baseline")
    if restore_hit or not cached:
        store_baseline(cache, keys, result, spec.model.name)
    return BaselineLookup(result, cached, keys)
