"""Live metrics of a training run: Prometheus gauges/counters and a progress display.

Metric names are fixed in docs/contracts.md. They live in their own `REGISTRY` (not the
process-global default) so tests can read them with `REGISTRY.get_sample_value(...)` and several
runs in one process do not collide. Labels: namespace / finetunejob from env `FORGETLESS_NAMESPACE`
/ `FORGETLESS_JOB` (the job's name when unset), plus `category` on the probe score.

`serve()` starts the HTTP endpoint on env `FORGETLESS_METRICS_PORT` (unset: no server; bound to
`FORGETLESS_METRICS_ADDRESS` when set, else all interfaces); with several ranks on one machine only
local rank 0 serves. Every stage serves (`forgetless_trainer.stages.run_stage`): the `forgetless_stage_*`
gauges carry a stage's progress through its loop (training steps, suite answers), set by the
progress display (`forgetless_trainer.progress`, what the user watches on the console), and the
operator reads them into `status.trainerStatus`.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from forgetless.metrics import LOCAL_NAMESPACE
from forgetless.contract import JOB_ENV, METRICS_ADDRESS_ENV, METRICS_PORT_ENV, NAMESPACE_ENV

LABELS = ("namespace", "finetunejob")

log = logging.getLogger("forgetless.train")

REGISTRY = CollectorRegistry(auto_describe=True)

STEPS = Counter("forgetless_train_steps", "Optimizer steps taken.", LABELS, registry=REGISTRY)
LOSS = Gauge("forgetless_train_loss", "Training loss of the last step (task loss + EWC penalty).", LABELS, registry=REGISTRY)
LEARNING_RATE = Gauge("forgetless_train_learning_rate", "Learning rate of the last step.", LABELS, registry=REGISTRY)
TOKENS_PER_SECOND = Gauge(
    "forgetless_train_tokens_per_second", "Tokens per second (all ranks) over the last log interval.", LABELS, registry=REGISTRY
)
TOKENS = Counter("forgetless_train_tokens", "Tokens processed by this rank.", LABELS, registry=REGISTRY)
BUDGET_ADJUSTMENTS = Counter(
    "forgetless_train_budget_adjustments",
    "Forgetting-budget breaches answered by a gentler policy (lower learning rate, more general data).",
    LABELS, registry=REGISTRY,
)
EWC_PENALTY = Gauge("forgetless_train_ewc_penalty", "EWC penalty λ/2·Σ F(θ−θ*)² of the last step.", LABELS, registry=REGISTRY)
GRAD_NORM = Gauge("forgetless_train_grad_norm", "Global gradient norm of the last step (before clipping).", LABELS, registry=REGISTRY)
LAST_STEP = Gauge(
    "forgetless_train_last_step_timestamp_seconds", "Unix time of the last optimizer step.", LABELS, registry=REGISTRY
)
GENERAL_KL = Gauge(
    "forgetless_train_general_kl",
    "Mean per-token forward KL(base || model) in nats on the general probe items' answers "
    "(step 0, every forgetting-budget probe, the end of training).",
    LABELS, registry=REGISTRY,
)
PROBE_SCORE = Gauge(
    "forgetless_probe_score_ratio",
    "Forgetting-budget probe score per category (category mean = mean general score).",
    LABELS + ("category",),
    registry=REGISTRY,
)

STAGE_LABELS = LABELS + ("stage",)
STAGE_PROGRESS = Gauge(
    "forgetless_stage_progress_ratio", "Share of the running stage's work done (training steps, suite answers).",
    STAGE_LABELS, registry=REGISTRY,
)
STAGE_DONE = Gauge("forgetless_stage_done_units", "Units of the stage's work done (steps, answers).", STAGE_LABELS,
                   registry=REGISTRY)
STAGE_TOTAL = Gauge("forgetless_stage_total_units", "Units of the stage's work in all (steps, answers).", STAGE_LABELS,
                    registry=REGISTRY)
STAGE_REMAINING = Gauge(
    "forgetless_stage_remaining_seconds",
    "Estimated seconds left in the stage's loop, from its rate so far (absent until a unit is done).",
    STAGE_LABELS, registry=REGISTRY,
)

_server_started: dict[int, Any] = {}


def stage_progress(stage: str, done: int, total: int, remaining_seconds: float | None) -> None:
    """Publish a stage's progress (called by the progress display on every update)."""
    where = {**labels(), "stage": stage}
    STAGE_DONE.labels(**where).set(done)
    STAGE_TOTAL.labels(**where).set(total)
    STAGE_PROGRESS.labels(**where).set(min(1.0, done / total) if total > 0 else 1.0)
    if remaining_seconds is not None:
        STAGE_REMAINING.labels(**where).set(max(0.0, remaining_seconds))


def labels(job_name: str | None = None, namespace: str | None = None) -> dict[str, str]:
    return {
        "namespace": os.environ.get(NAMESPACE_ENV) or namespace or LOCAL_NAMESPACE,
        "finetunejob": os.environ.get(JOB_ENV) or job_name or "local",
    }


def serve(local_rank: int = 0) -> int | None:
    """Start the /metrics server on $FORGETLESS_METRICS_PORT (once per process); returns the port."""
    value = os.environ.get(METRICS_PORT_ENV)
    if not value or local_rank != 0:
        return None
    try:
        port = int(value)
    except ValueError:
        print(f"warning: {METRICS_PORT_ENV}={value!r} is not a port number; training goes on without live metrics",
              file=sys.stderr)
        return None
    if port not in _server_started:
        try:
            _server_started[port] = start_http_server(port, addr=os.environ.get(METRICS_ADDRESS_ENV) or "0.0.0.0",
                                                      registry=REGISTRY)
        except OSError as exc:  # metrics are an aid: a taken port must never cost a training run
            print(f"warning: cannot serve live metrics on port {port} ({exc}); training goes on without them",
                  file=sys.stderr)
            return None
    return port


class TrainMetrics:
    """Updates the metrics of one job's run."""

    def __init__(self, job_name: str | None = None, namespace: str | None = None):
        self.labels = labels(job_name, namespace)

    def step(self, *, loss: float, lr: float, grad_norm: float | None, tokens: int, ewc_penalty: float | None) -> None:
        STEPS.labels(**self.labels).inc()
        LOSS.labels(**self.labels).set(loss)
        LEARNING_RATE.labels(**self.labels).set(lr)
        TOKENS.labels(**self.labels).inc(tokens)
        if grad_norm is not None:
            GRAD_NORM.labels(**self.labels).set(grad_norm)
        if ewc_penalty is not None:
            EWC_PENALTY.labels(**self.labels).set(ewc_penalty)
        LAST_STEP.labels(**self.labels).set(time.time())

    def throughput(self, tokens_per_second: float) -> None:
        TOKENS_PER_SECOND.labels(**self.labels).set(tokens_per_second)

    def probe(self, scores: dict[str, float]) -> None:
        for category, value in scores.items():
            PROBE_SCORE.labels(**self.labels, category=category).set(value)

    def general_kl(self, nats: float) -> None:
        GENERAL_KL.labels(**self.labels).set(nats)

    def budget_adjustment(self) -> None:
        BUDGET_ADJUSTMENTS.labels(**self.labels).inc()
