"""Forgetting metrics, shared by the operator's /metrics and `forgetless run --metrics-port`.

Names follow the Prometheus conventions: prefix `forgetless_`, base units, counters end in
`_total`; labels are bounded (namespace, finetunejob, stage, category, phase, verdict).
The Grafana dashboard and the alert rules use only names defined here or in
`forgetless_trainer.live_metrics`; tests/component/test_dashboard_metrics.py enforces that.
"""

from __future__ import annotations

from typing import Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from forgetless.lifecycle import PHASES, PROMOTING_VERDICTS, mean_general_score

LOCAL_NAMESPACE = "local"
"""The `namespace` label of a run outside a cluster (`forgetless run`) whose manifest names none."""

STAGE_DURATION_BUCKETS = (10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800, 86400)


class ForgettingMetrics:
    """One set of forgetting metrics bound to a registry (a fresh one per test)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.jobs_by_phase = Gauge(
            "forgetless_finetunejobs", "FineTuneJobs by phase.", ["namespace", "phase"], registry=r
        )
        self.stage_duration = Histogram(
            "forgetless_stage_duration_seconds",
            "Wall time of finished stages (baseline, train, evaluate).",
            ["namespace", "stage"],
            buckets=STAGE_DURATION_BUCKETS,
            registry=r,
        )
        self.gate_verdicts = Counter(
            "forgetless_gate_verdicts_total", "Gate verdicts by outcome.", ["namespace", "verdict"], registry=r
        )
        self.baseline_score = Gauge(
            "forgetless_baseline_score_ratio",
            "Score (0-1) of the base model per category, before fine-tuning.",
            ["namespace", "finetunejob", "category"],
            registry=r,
        )
        self.final_score = Gauge(
            "forgetless_final_score_ratio",
            "Score (0-1) of the fine-tuned model per category.",
            ["namespace", "finetunejob", "category"],
            registry=r,
        )
        self.forgetting = Gauge(
            "forgetless_forgetting_ratio",
            "Drop of the score (baseline - final, 0-1) per category; category 'mean' is the mean general drop.",
            ["namespace", "finetunejob", "category"],
            registry=r,
        )
        self.task_gain = Gauge(
            "forgetless_task_gain_ratio",
            "Improvement of the target task score (final - baseline).",
            ["namespace", "finetunejob"],
            registry=r,
        )
        self.gate_passed = Gauge(
            "forgetless_gate_passed",
            "1 when the job's gate let the model through (passed, warned or rescued), 0 when it blocked promotion.",
            ["namespace", "finetunejob"],
            registry=r,
        )
        self.rescue_alpha = Gauge(
            "forgetless_rescue_alpha",
            "regression.rescue: the interpolation weight α promoted (θ₀ + α·(θ − θ₀)); 0 when no α was confirmed.",
            ["namespace", "finetunejob"],
            registry=r,
        )
        self.rescue_evaluations = Gauge(
            "forgetless_rescue_evaluations",
            "regression.rescue: half-suite evaluations the search spent.",
            ["namespace", "finetunejob"],
            registry=r,
        )
        self.job_progress = Gauge(
            "forgetless_job_progress_ratio",
            "Share done of the job's running stage (status.trainerStatus.progressPercentage / 100; 1 when finished).",
            ["namespace", "finetunejob"],
            registry=r,
        )
        self.job_remaining = Gauge(
            "forgetless_job_remaining_seconds",
            "Estimated seconds left in the job's running stage (status.trainerStatus.estimatedRemainingSeconds).",
            ["namespace", "finetunejob"],
            registry=r,
        )
        self.reconcile_errors = Counter(
            "forgetless_reconcile_errors_total", "Reconcile attempts that raised an error.", ["namespace"], registry=r
        )
        self._categories: dict[tuple[str, str], set[str]] = {}

    def set_phase_counts(self, counts: Mapping[tuple[str, str], int], namespaces: Iterable[str]) -> None:
        """Set jobs-by-phase for every phase of every namespace (zeros included, so series do not vanish)."""
        for namespace in set(namespaces) | {ns for ns, _ in counts}:
            for phase in PHASES:
                self.jobs_by_phase.labels(namespace, phase).set(counts.get((namespace, phase), 0))

    def record_scores(
        self,
        namespace: str,
        job: str,
        baseline: Mapping[str, float],
        final: Mapping[str, float],
        task_gain: float | None = None,
    ) -> None:
        key = (namespace, job)
        categories = self._categories.setdefault(key, set())
        mean_base, mean_final = mean_general_score(baseline, among=final), mean_general_score(final, among=baseline)
        if mean_base is not None and mean_final is not None:  # category "mean", as the gate's mean drop sees it
            baseline, final = {**baseline, "mean": mean_base}, {**final, "mean": mean_final}
        for category, value in baseline.items():
            self.baseline_score.labels(namespace, job, category).set(value)
            categories.add(category)
        for category, value in final.items():
            self.final_score.labels(namespace, job, category).set(value)
            categories.add(category)
            if category in baseline:
                self.forgetting.labels(namespace, job, category).set(baseline[category] - value)
        if task_gain is not None:
            self.task_gain.labels(namespace, job).set(task_gain)

    def record_verdict(self, namespace: str, job: str, verdict: str) -> None:
        self.gate_verdicts.labels(namespace, verdict).inc()
        self.gate_passed.labels(namespace, job).set(1 if verdict in PROMOTING_VERDICTS else 0)

    def record_rescue(self, namespace: str, job: str, rescue: Mapping[str, object] | None) -> None:
        """The rescue's α (0 when none was confirmed) and the evaluations spent; nothing without one."""
        if not rescue:
            return
        self.rescue_alpha.labels(namespace, job).set(float(rescue.get("alpha") or 0.0))
        self.rescue_evaluations.labels(namespace, job).set(float(rescue.get("evaluations") or 0))

    def record_progress(self, namespace: str, job: str, trainer_status: Mapping[str, object] | None) -> None:
        """The running stage's share done and time left (status.trainerStatus); an unknown ETA drops its series."""
        if not trainer_status or trainer_status.get("progressPercentage") is None:
            return
        self.job_progress.labels(namespace, job).set(float(trainer_status["progressPercentage"]) / 100)  # type: ignore[arg-type]
        remaining = trainer_status.get("estimatedRemainingSeconds")
        if remaining is None:
            try:
                self.job_remaining.remove(namespace, job)
            except KeyError:
                pass
        else:
            self.job_remaining.labels(namespace, job).set(float(remaining))  # type: ignore[arg-type]

    def forget_job(self, namespace: str, job: str) -> None:
        """Remove every per-job series (called when the FineTuneJob is deleted)."""
        key = (namespace, job)
        for category in self._categories.pop(key, set()):
            for gauge in (self.baseline_score, self.final_score, self.forgetting):
                try:
                    gauge.remove(namespace, job, category)
                except KeyError:
                    pass
        for gauge in (self.task_gain, self.gate_passed, self.rescue_alpha, self.rescue_evaluations,
                      self.job_progress, self.job_remaining):
            try:
                gauge.remove(namespace, job)
            except KeyError:
                pass
