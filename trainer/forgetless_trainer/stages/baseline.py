"""The baseline stage: the base model's item-level results on the regression suite.

The target is the job's (forgetless_trainer.evaluation.runner.job_target): the regression suite with the
job's own held-out task records as its task category. When the suite has open-ended format prompts
without a pattern, the format detector is learned here from the task's answers against the base
model's answers (forgetless_trainer.evaluation.format_detector) and stored beside the results
(WORKDIR/baseline/format_detector.json), its calibration in the results' meta and the summary.

Looks the baseline up in the cache first (weights key, then spec key; both checked against the
suite digest, see forgetless.baseline_cache); on a miss evaluates the base model and stores the
result under both keys. Writes WORKDIR/baseline/results.json (item level) either way.

Then, for every model but the tiny world (forgetless.general_data: the job's general data unless
dataset.general names data, and the forecast's reference in any case), the base model's own answers
to the rehearsal prompts (forgetless_trainer.self_rehearsal): from the cache or generated here, once,
into WORKDIR/baseline/self_rehearsal.jsonl for the train pods; one line and `selfRehearsal` in the
summary. A job that trains on them fails here when they cannot be made; any other job goes on
without them (its forecast then measures against its named general data, or is skipped).

Then the forecast (forgetless_trainer.forecast): the base model's loss on a sample of the task and
of the general data, the task's distance from what the model knows and the mitigation strength it
suggests — one printed line and `forecast` in the summary (skipped, with a line, when the data
cannot be read).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from forgetless.api.schema import FineTuneJob
from forgetless.errors import StageError
from forgetless.general_data import general_data, trains_on_general_data
from forgetless_trainer import self_rehearsal
from forgetless_trainer.stages.base import Stage
from forgetless.contract import BASELINE_RESULTS
from forgetless_trainer.evaluation.runner import baseline_for, evaluation_basis, job_target

RESULTS = BASELINE_RESULTS


def run(job: FineTuneJob, workdir: Path) -> dict[str, Any]:
    spec = job.spec
    log = lambda text: print(f"[baseline] {text}", file=sys.stderr)  # noqa: E731
    target = job_target(spec)
    lookup = baseline_for(spec, target, restore_hit=True)  # a hit under one key fills in the other
    results = Path(workdir) / RESULTS
    lookup.result.save(results)
    if lookup.detector is not None:
        lookup.detector.save(results.parent)
    summary = lookup.result.summary("baseline")
    summary.update({"cacheKey": lookup.keys[1], "cached": lookup.cached})
    summary.update(evaluation_basis(target, lookup.calibration))
    for note in summary["notes"]:
        log(note)
    loaded: list[Any] = []

    def load_model() -> tuple[Any, Any]:
        if not loaded:
            from forgetless_trainer.chat import install_template
            from forgetless_trainer.modeling import load_model_and_tokenizer

            model, tokenizer = load_model_and_tokenizer(spec.model)
            install_template(tokenizer, spec.dataset)
            loaded.extend((model, tokenizer))
        return loaded[0], loaded[1]

    if self_rehearsal.rehearsal_choice(spec) is not None:
        try:
            summary["selfRehearsal"] = self_rehearsal.prepare(spec, workdir, load_model=load_model, log=log)
        except StageError as exc:
            if general_data(spec).kind == "selfRehearsal" and trains_on_general_data(spec):
                raise
            log(f"self-rehearsal skipped (this job does not train on it, only the forecast would use it): {exc}")
    from forgetless_trainer.forecast import run_forecast

    model, tokenizer = (loaded[0], loaded[1]) if loaded else (None, None)
    forecast = run_forecast(spec, workdir=workdir, model=model, tokenizer=tokenizer, log=log)
    if forecast is not None:
        summary["forecast"] = forecast
    return summary


class Baseline(Stage):
    name = "baseline"

    def run(self, workdir: Path) -> dict[str, Any]:
        return run(self.job, workdir)
