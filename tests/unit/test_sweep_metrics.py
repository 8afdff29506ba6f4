"""Sweep metrics: trials by verdict (zeros kept), the best trial's scores, removal on delete."""

from __future__ import annotations

from forgetless.api.sweep import BestTrialStatus, TrialStatus
from forgetless.sweep_metrics import SweepMetrics


def _value(metrics: SweepMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_trials_by_verdict_and_best_scores():
    metrics = SweepMetrics()
    trials = [TrialStatus(name="s-t0", index=0, verdict="Passed"), TrialStatus(name="s-t1", index=1, verdict="Failed"),
              TrialStatus(name="s-t2", index=2, verdict="Passed"), TrialStatus(name="s-t3", index=3, phase="Running")]
    metrics.record("ns", "s", trials, BestTrialStatus(name="s-t2", task_score=0.98, mean_kept=0.991))
    labels = {"namespace": "ns", "finetunesweep": "s"}
    assert _value(metrics, "forgetless_sweep_trials", **labels, verdict="Passed") == 2
    assert _value(metrics, "forgetless_sweep_trials", **labels, verdict="Failed") == 1
    assert _value(metrics, "forgetless_sweep_trials", **labels, verdict="None") == 1
    assert _value(metrics, "forgetless_sweep_trials", **labels, verdict="NoTaskGain") == 0
    assert _value(metrics, "forgetless_sweep_best_task_score", **labels) == 0.98
    assert _value(metrics, "forgetless_sweep_best_kept_ratio", **labels) == 0.991
    metrics.forget("ns", "s")
    assert _value(metrics, "forgetless_sweep_trials", **labels, verdict="Passed") is None
    assert _value(metrics, "forgetless_sweep_best_task_score", **labels) is None
