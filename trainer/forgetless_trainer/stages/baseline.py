"""The baseline stage: the base model's item-level results on the regression suite.

Looks the baseline up in the cache first (weights key, then spec key; both checked against the
suite digest, see forgetless.baseline_cache); on a miss evaluates the base model and stores the
result under both keys. Writes WORKDIR/baseline/results.json (item level) either way.

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
from forgetless_trainer.stages.base import Stage
from forgetless.baseline_cache import BaselineCache
from forgetless.contract import BASELINE_RESULTS
from forgetless_trainer.evaluation.runner import (
    cache_keys, cached_baseline, load_and_evaluate, resolve_target, store_baseline,
)

RESULTS = BASELINE_RESULTS


def run(job: FineTuneJob, workdir: Path) -> dict[str, Any]:
    spec = job.spec
    target = resolve_target(spec.regression)
    weights_key, spec_key = cache_keys(spec, target)
    cache = BaselineCache()
    result = cached_baseline(cache, (weights_key, spec_key), target, spec.regression.limit)
    cached = result is not None
    if result is None:
        result = load_and_evaluate(spec.model, target, limit=spec.regression.limit, dataset=spec.dataset,
                                   stage="baseline")
    # (re)store under both keys: a hit under one key fills in the other
    store_baseline(cache, (weights_key, spec_key), result, spec.model.name)
    result.save(Path(workdir) / RESULTS)
    summary = result.summary("baseline")
    summary.update({"cacheKey": spec_key, "cached": cached})
    from forgetless_trainer.forecast import run_forecast

    forecast = run_forecast(spec, log=lambda text: print(f"[baseline] {text}", file=sys.stderr))
    if forecast is not None:
        summary["forecast"] = forecast
    return summary


class Baseline(Stage):
    name = "baseline"

    def run(self, workdir: Path) -> dict[str, Any]:
        return run(self.job, workdir)
