"""Live progress of a FineTuneJob's running stage: `status.trainerStatus`, pure functions.

The shape is Kubeflow Trainer's `TrainJob.status.trainerStatus` (KEP-2779: progressPercentage,
estimatedRemainingSeconds, metrics[] of {name, value}, lastUpdatedTime), plus `stage` and a readable
`estimatedRemaining` for the ETA printer column.

Where it comes from: every stage pod serves /metrics (forgetless_trainer.live_metrics); its progress
display publishes the `forgetless_stage_*` gauges (done, total, share, seconds left), the train loop
its loss, learning rate, throughput, KL and probe scores. The operator *pulls* them from the rank-0
pod of the running stage (the pull variant KEP-2779 considered; the push variant would need a
service-account token in trainer pods, which forgetless pods do not mount). runtime.Runtime does the
I/O at most every `--progress-seconds` per job; this module decides what is read and what is written:

- `scrape_target(status, pods)`: the running stage and its rank-0 pod's metrics URL, or None;
- `trainer_status(stage, text, now)`: the trainerStatus a /metrics text gives;
- `settle(status, now_s)`: what a reconcile does to it on transitions (a new stage starts at 0, a
  finished job shows 100 with nothing left, a failed one keeps its last values without an ETA).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional

from forgetless.lifecycle import STAGES
from forgetless.timefmt import format_duration

from forgetless_operator.children import COMPLETION_INDEX_ANNOTATION, METRICS_PORT

# /metrics family -> trainerStatus metric name (the train loop's values; samples without a stage label)
TRAIN_METRICS = {
    "forgetless_train_loss": "loss",
    "forgetless_train_learning_rate": "learningRate",
    "forgetless_train_tokens_per_second": "tokensPerSecond",
    "forgetless_train_general_kl": "generalKL",
}
UNITS = {"train": ("step", "totalSteps")}
DEFAULT_UNITS = ("answers", "totalAnswers")  # baseline, evaluate: the suite's answers


def running_stage(status: Mapping[str, Any]) -> Optional[str]:
    stages = status.get("stages") or {}
    return next((s for s in STAGES if (stages.get(s) or {}).get("phase") == "Running"), None)


def metrics_url(pod: Mapping[str, Any]) -> Optional[str]:
    """http://<podIP>:<metrics port>/metrics of a running pod (the container port named `metrics`)."""
    status = pod.get("status") or {}
    ip = status.get("podIP")
    if status.get("phase") != "Running" or not ip:
        return None
    port = METRICS_PORT
    for container in (pod.get("spec") or {}).get("containers") or []:
        for entry in container.get("ports") or []:
            if entry.get("name") == "metrics":
                port = int(entry.get("containerPort") or port)
    host = f"[{ip}]" if ":" in ip else ip
    return f"http://{host}:{port}/metrics"


def scrape_target(status: Mapping[str, Any], pods: Mapping[str, Iterable[Mapping[str, Any]]]) -> Optional[tuple[str, str]]:
    """(stage, URL) of the running stage's rank-0 pod, if one is running and has an IP."""
    stage = running_stage(status)
    if stage is None:
        return None
    job_name = ((status.get("stages") or {}).get(stage) or {}).get("jobName")
    for pod in pods.get(stage) or []:
        meta = pod.get("metadata") or {}
        labels = meta.get("labels") or {}
        if job_name and labels.get("job-name", labels.get("batch.kubernetes.io/job-name", job_name)) != job_name:
            continue
        if (meta.get("annotations") or {}).get(COMPLETION_INDEX_ANNOTATION, "0") != "0":
            continue  # multi-worker training: rank 0 speaks for the group
        if meta.get("deletionTimestamp"):
            continue
        url = metrics_url(pod)
        if url:
            return stage, url
    return None


def _samples(text: str) -> Iterable[tuple[str, dict[str, str], float]]:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            yield sample.name, dict(sample.labels), float(sample.value)


def _number(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.4g}"


def trainer_status(stage: str, text: str, now_s: str, job: Optional[str] = None) -> Optional[dict[str, Any]]:
    """The trainerStatus of `stage` (of FineTuneJob `job`: samples of other jobs are ignored) from a
    /metrics text; None when it has no progress of that stage yet (the pod is loading its model) or the
    text is not Prometheus exposition."""
    done = total = share = remaining = None
    train: dict[str, float] = {}
    probe_mean = None
    try:
        samples = list(_samples(text))
    except (ValueError, TypeError, IndexError):
        return None
    for name, labels, value in samples:
        if value != value or (job is not None and labels.get("finetunejob", job) != job):  # NaN: nothing yet
            continue
        if labels.get("stage") == stage:
            if name == "forgetless_stage_done_units":
                done = value
            elif name == "forgetless_stage_total_units":
                total = value
            elif name == "forgetless_stage_progress_ratio":
                share = value
            elif name == "forgetless_stage_remaining_seconds":
                remaining = value
        elif stage == "train" and name in TRAIN_METRICS:
            train[TRAIN_METRICS[name]] = value
        elif stage == "train" and name == "forgetless_probe_score_ratio" and labels.get("category") == "mean":
            probe_mean = value
    if share is None:
        return None
    out: dict[str, Any] = {"stage": stage, "progressPercentage": max(0, min(100, int(share * 100)))}
    if remaining is not None:
        out["estimatedRemainingSeconds"] = max(0, int(round(remaining)))
        out["estimatedRemaining"] = format_duration(out["estimatedRemainingSeconds"])
    done_name, total_name = UNITS.get(stage, DEFAULT_UNITS)
    metrics = []
    if done is not None:
        metrics.append({"name": done_name, "value": _number(done)})
    if total is not None:
        metrics.append({"name": total_name, "value": _number(total)})
    for name in TRAIN_METRICS.values():
        if name in train:
            metrics.append({"name": name, "value": _number(train[name])})
    if probe_mean is not None:
        metrics.append({"name": "probeMeanScore", "value": _number(probe_mean)})
    if metrics:
        out["metrics"] = metrics
    out["lastUpdatedTime"] = now_s
    return out


def same_progress(a: Optional[Mapping[str, Any]], b: Optional[Mapping[str, Any]]) -> bool:
    """Equal but for lastUpdatedTime: nothing to write."""
    strip = lambda s: {k: v for k, v in (s or {}).items() if k != "lastUpdatedTime"}  # noqa: E731
    return strip(a) == strip(b)


def settle(status: dict[str, Any], now_s: str) -> None:
    """A reconcile's part: the trainerStatus of a stage that just started, a job that just finished."""
    current = status.get("trainerStatus")
    phase = status.get("phase")
    if phase in ("Succeeded", "Blocked"):  # the evaluate stage ran to its end
        current = current or {"stage": "evaluate"}
        if current.get("progressPercentage") != 100 or current.get("estimatedRemainingSeconds") != 0:
            status["trainerStatus"] = {**current, "progressPercentage": 100, "estimatedRemainingSeconds": 0,
                                       "estimatedRemaining": format_duration(0), "lastUpdatedTime": now_s}
        return
    if phase == "Failed":
        if current is not None and "estimatedRemainingSeconds" in current:  # no ETA for what will not finish
            status["trainerStatus"] = {k: v for k, v in current.items()
                                       if k not in ("estimatedRemainingSeconds", "estimatedRemaining")}
        return
    stage = running_stage(status)
    if stage is not None and (current is None or current.get("stage") != stage):
        status["trainerStatus"] = {"stage": stage, "progressPercentage": 0, "lastUpdatedTime": now_s}
