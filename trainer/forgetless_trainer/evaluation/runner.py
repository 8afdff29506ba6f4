"""What the baseline and evaluate stages (and `forgetless evaluate`) share: resolving the job's
suite (a suite directory or lm-eval tasks), identifying the base model for the cache, loading a
model and evaluating it, and the baseline lookup both stages use (`baseline_for`: the cache, else
the base model evaluated and stored; the evaluate stage looks in its work dir first)."""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass, field, replace
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
    """A loaded suite, or lm-eval task names (plus, for a job, a suite holding its own held-out task);
    either way a name and a content digest."""

    name: str
    digest: str
    suite: Suite | None = None
    lm_eval_tasks: tuple[str, ...] = ()
    lm_eval_limit: int | None = None
    """Documents per lm-eval task when spec.regression.limit is not set (an lm-eval suite's default)."""
    learned_tasks: tuple[str, ...] = ()
    """format_leak tasks of `suite` scored by the format detector learned at baseline."""
    split: Any = field(default=None, compare=False)
    """The job's HeldOutSplit (forgetless_trainer.evaluation.own_task) when its own task is scored."""
    notes: tuple[str, ...] = ()
    """What the scores rest on (the gate's notes): the task's source and scorer, the format detector."""

    def result_digest(self, limit: int | None) -> str:
        """The digest an EvaluationResult of this target at `limit` carries (the evaluated subset's)."""
        if self.suite is None:
            return self.digest
        if self.lm_eval_tasks:
            return combined_digest(self.digest, self.suite.subset(limit).digest)
        return self.suite.subset(limit).digest

    def accepted_digests(self, limit: int | None) -> tuple[str, ...]:
        """Digests a stored baseline of this target may carry: the whole target's, or the target without its
        learned format items (a baseline whose detector was not usable, which left them out)."""
        digests = (self.result_digest(limit),)
        return digests + ((self.without_learned().result_digest(limit),) if self.learned_tasks else ())

    def with_learned(self, names: list[str] | tuple[str, ...]) -> "EvalTarget":
        return replace(self, learned_tasks=tuple(names))

    def without_learned(self, note: str | None = None) -> "EvalTarget":
        """This target without its learned format items (the detector cannot tell the task's format apart)."""
        if not self.learned_tasks or self.suite is None:
            return self
        suite = self.suite.with_tasks(tuple(t for t in self.suite.tasks if t.name not in self.learned_tasks))
        notes = self.notes + ((note,) if note else ())
        return replace(self, digest=suite.digest, suite=suite, learned_tasks=(), notes=notes)


def combined_digest(*digests: str) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256("\n".join(digests).encode()).hexdigest()


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


def job_target(spec: FineTuneJobSpec, base_dir: Path | None = None) -> EvalTarget:
    """The target a FineTuneJob is gated on: its regression suite with the job's own held-out task as the `task`
    category (forgetless_trainer.evaluation.own_task) and the suite's format_leak tasks that the learned detector
    scores (regression.formatLeak). Raises StageError (bad suite, too few task records)."""
    from forgetless.suites import Suite as _Suite
    from forgetless_trainer.evaluation import own_task

    base = resolve_target(spec.regression, base_dir)
    if base.lm_eval_tasks:
        notes = ["format: lm-eval tasks have no open-ended prompts, so format leaks are not looked for"]
        if not own_task.uses_held_out(spec):
            return replace(base, notes=tuple(["task: the lm-eval tasks' own task category, if any"] + notes))
        split, task, note = own_task.own_task(spec, base_dir)
        return replace(base, suite=_Suite("own-task", "1", (task,)), split=split, notes=tuple([note] + notes))
    composed, split, notes = own_task.compose_suite(base.suite, spec, base_dir)
    mode = spec.regression.format_leak.detector
    learned = tuple(t.name for t in composed.tasks if t.needs_learned_detector(mode))
    unpatterned = [t.name for t in composed.tasks if t.scorer == "format_leak" and not t.options.get("leak_pattern")]
    if mode == "Pattern" and unpatterned:
        composed = composed.with_tasks(tuple(t for t in composed.tasks if t.name not in unpatterned))
        notes.append(f"format: {', '.join(unpatterned)} not scored (regression.formatLeak.detector: Pattern, and "
                     "they have no leak_pattern)")
    target = EvalTarget(name=composed.name, digest=composed.digest, suite=composed, learned_tasks=learned,
                        split=split, notes=tuple(notes))
    if learned and split is None:
        return target.without_learned("format: no held-out task answers to calibrate a format detector on "
                                      "(regression.task.source: Suite): the open-ended format items are not scored")
    if not learned and not any(t.scorer == "format_leak" for t in composed.tasks):
        target = replace(target, notes=target.notes + (f"format: the suite {composed.name} has no open-ended prompts, "
                                                       "so format leaks are not looked for",))
    return target


def learn_format(target: EvalTarget, baseline: EvaluationResult, limit: int | None,
                 refit_only: bool = False) -> tuple[EvaluationResult, Any, Any]:
    """The format detector learned from the job's task answers against the base model's answers to the target's
    learned format items: (the baseline with those items scored by it — or left out when it is not usable —,
    the detector or None, its Calibration or None). `refit_only`: the baseline is already scored (a cache hit);
    only the detector is fitted again (deterministic: the same detector)."""
    from forgetless_trainer.evaluation import format_detector

    if not target.learned_tasks or target.split is None:
        return baseline, None, None
    learned = set(target.learned_tasks)
    items = [i for i in baseline.items if i.task in learned]
    task_answers = [e.response for e in target.split.train]
    held_out = [e.response for e in target.split.held_out]
    if refit_only:
        recorded = baseline.meta.get("formatDetector")
        calibration = format_detector.Calibration.from_dict(recorded) if recorded else None
        if not items:  # a baseline that left them out: the detector was not usable
            return baseline, None, calibration
        return baseline, format_detector.refit(task_answers, [i.answer for i in items]), calibration
    budget = max(t.max_new_tokens for t in target.suite.tasks if t.name in learned)
    detector, calibration, out_of_fold = format_detector.learn(task_answers, [i.answer for i in items], held_out,
                                                               budget_tokens=budget)
    if calibration.usable:
        result = baseline.rescored({(i.task, i.id): float(not flag) for i, flag in zip(items, out_of_fold)})
    else:
        reduced = target.without_learned()
        result = baseline.without_tasks(learned, reduced.result_digest(limit))
        detector = None
    result.meta["formatDetector"] = calibration.to_dict()
    return result, detector, calibration


def evaluation_basis(target: EvalTarget, calibration: Any = None) -> dict[str, Any]:
    """What a stage summary says of what the scores rest on: `notes` (the gate's), `taskHoldout`, `formatDetector`."""
    notes = list(target.notes)
    if calibration is not None:
        notes.append(calibration.sentence())
    out: dict[str, Any] = {"notes": notes}
    if target.split is not None:
        out["taskHoldout"] = target.split.describe()
    if calibration is not None:
        out["formatDetector"] = calibration.to_dict()
    return out


_DIRECTORY_VERSIONS: dict[tuple[Any, ...], str] = {}


def _directory_version(path: Path) -> str:
    """directory_digest of a model directory, hashed once per process while its files (names, sizes,
    mtimes) stay as they are: the baseline stage keys both the baseline and the self-rehearsal caches
    on it, and hashing a large model's weights takes seconds to minutes."""
    files = sorted(p for p in path.rglob("*") if p.is_file())
    signature = (str(path.resolve()), tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files))
    if signature not in _DIRECTORY_VERSIONS:
        _DIRECTORY_VERSIONS[signature] = directory_digest(path)
    return _DIRECTORY_VERSIONS[signature]


def model_identity(model_spec: ModelSpec, base_dir: Path | None = None) -> tuple[str, str]:
    """(model id, model version) for the weights cache key: a digest of a local model directory,
    the commit of a cached hub snapshot, else the requested revision."""
    from forgetless_trainer.modeling import resolve_model_location

    location = resolve_model_location(model_spec, base_dir)
    path = Path(location)
    if path.is_dir():
        return model_spec.name, _directory_version(path)
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
    task_digest = None
    if target.learned_tasks and target.split is not None:
        task_digest = combined_digest(*(e.response for e in target.split.train))
    return (weights_cache_key(model_id, version, target.digest, spec.regression.limit, prompt=prompt,
                              task_digest=task_digest),
            spec_cache_key(spec))


def evaluate_model(
    model: Any, tokenizer: Any, target: EvalTarget, *, limit: int | None = None, batch_size: int = 32,
    stage: str = "evaluate", detector: Any = None,
) -> EvaluationResult:
    """`stage` names the progress display (`[baseline] item 96/858 …`). `detector` (a FormatDetector) scores the
    target's learned format items; without one they stay unscored (NaN) for `learn_format`."""
    from forgetless_trainer.evaluation.evaluator import evaluate_suite

    if target.lm_eval_tasks:
        from forgetless_trainer.evaluation import lmeval

        result = lmeval.evaluate_lm_eval(model, tokenizer, target.lm_eval_tasks, batch_size=batch_size,
                                         limit=limit if limit is not None else target.lm_eval_limit)
        result.limit = limit  # the spec's limit (cache keys and comparisons use it); the suite's default is in the digest
        if target.suite is not None:  # the job's own held-out task, scored by forgetless's evaluator
            own = evaluate_suite(model, tokenizer, target.suite, limit=limit, batch_size=batch_size)
            result.items.extend(own.items)
            result.tasks.update(own.tasks)
            result.seconds += own.seconds
            result.digest = target.result_digest(limit)
        return result

    display: StageProgress | None = None
    began = time.monotonic()  # the total is known at the first report, the rate counts from here

    def report(done: int, total: int) -> None:
        nonlocal display
        if display is None:
            display = StageProgress(stage, total, unit="answer", started=began)
        display.update(done)

    try:
        return evaluate_suite(model, tokenizer, target.suite, limit=limit, batch_size=batch_size, progress=report,
                              learned_tasks=target.learned_tasks,
                              leak_detector=detector.task_like if detector is not None else None)
    finally:
        if display is not None:
            display.close()


def load_and_evaluate(
    model_spec: ModelSpec, target: EvalTarget, *, adapter_path: Path | None = None,
    limit: int | None = None, batch_size: int = 32, base_dir: Path | None = None, dataset: Any = None,
    stage: str = "evaluate", detector: Any = None,
) -> EvaluationResult:
    """`dataset` (the job's DatasetSpec): its chatTemplate / chat format decide the prompt format, as in
    training (forgetless_trainer.chat.install_template)."""
    from forgetless_trainer.chat import install_template
    from forgetless_trainer.modeling import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(model_spec, adapter_path=adapter_path, base_dir=base_dir)
    install_template(tokenizer, dataset, base_dir)
    result = evaluate_model(model, tokenizer, target, limit=limit, batch_size=batch_size, stage=stage, detector=detector)
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
    digests = target.accepted_digests(limit)
    for key in keys:
        entry = None
        for digest in digests:
            entry = entry or cache.get(key, suite_digest=digest)
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
    detector: Any = None
    """The format detector (FormatDetector) when the target has learned format items and it is usable."""
    calibration: Any = None
    """Its Calibration."""


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
    result, detector, calibration = learn_format(target, result, limit, refit_only=cached)
    if restore_hit or not cached:
        store_baseline(cache, keys, result, spec.model.name)
    return BaselineLookup(result, cached, keys, detector, calibration)
