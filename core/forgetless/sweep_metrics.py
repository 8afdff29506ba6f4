"""FineTuneSweep metrics, for the operator's /metrics (and anything else that runs sweeps).

In the style of forgetless.metrics: prefix `forgetless_`, bounded labels (namespace,
finetunesweep, verdict), one class bound to a registry. The operator calls `record(...)` with the
sweep's `status.trials` and `status.best` after each reconcile, and `forget(...)` when a sweep is
deleted. tests/component/test_dashboard_metrics.py checks every name the dashboard queries.
"""

from __future__ import annotations

from typing import Iterable, Optional

from prometheus_client import CollectorRegistry, Gauge

from forgetless.api.sweep import BestTrialStatus, TrialStatus
from forgetless.lifecycle import GATE_VERDICTS

PENDING = "None"
"""The verdict label of trials not evaluated yet (running, pending, failed before the gate)."""
SWEEP_VERDICTS = GATE_VERDICTS + (PENDING,)


class SweepMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.trials = Gauge("forgetless_sweep_trials", "Trials of a FineTuneSweep by gate verdict ('None': not evaluated).",
                            ["namespace", "finetunesweep", "verdict"], registry=r)
        self.best_task_score = Gauge("forgetless_sweep_best_task_score",
                                     "Task score (0-1) of the sweep's best trial.", ["namespace", "finetunesweep"], registry=r)
        self.best_kept_ratio = Gauge("forgetless_sweep_best_kept_ratio",
                                     "Share of the base model's mean general score the best trial kept.",
                                     ["namespace", "finetunesweep"], registry=r)

    def record(self, namespace: str, sweep: str, trials: Iterable[TrialStatus],
               best: Optional[BestTrialStatus | TrialStatus] = None) -> None:
        counts = {verdict: 0 for verdict in SWEEP_VERDICTS}
        for trial in trials:
            verdict = trial.verdict if trial.verdict in GATE_VERDICTS else PENDING
            counts[verdict] += 1
        for verdict, count in counts.items():  # zeros too, so a series does not vanish
            self.trials.labels(namespace, sweep, verdict).set(count)
        if best is not None and best.task_score is not None:
            self.best_task_score.labels(namespace, sweep).set(best.task_score)
        if best is not None and best.mean_kept is not None:
            self.best_kept_ratio.labels(namespace, sweep).set(best.mean_kept)

    def forget(self, namespace: str, sweep: str) -> None:
        for verdict in SWEEP_VERDICTS:
            try:
                self.trials.remove(namespace, sweep, verdict)
            except KeyError:
                pass
        for gauge in (self.best_task_score, self.best_kept_ratio):
            try:
                gauge.remove(namespace, sweep)
            except KeyError:
                pass
