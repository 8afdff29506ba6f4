"""Live progress of a FineTuneJob's running stage: `status.trainerStatus`, pure functions.

The shape is Kubeflow Trainer's `TrainJob.status.trainerStatus` (KEP-2779: progressPercentage,
estimatedRemainingSeconds, metrics[] of {name, value}, lastUpdatedTime), plus `stage` and a readable
`estimatedRemaining` for the ETA printer column.

Where it comes from: every stage pod serves /metrics (forgetless_trainer.live_metrics); its progress
display publishes the `forgetless_stage_*` gauges (done, total, share, seconds left), the train loop
its loss, learning rate, throughput, KL and probe scores. The operator *pulls* them from the rank-0
pod of the running stage (the pull variant KEP-2779 considered; the push variant would need a
service-account token in trainer pods, which forgetless pods do not mount). `LiveProgress` does the
I/O at most every `--progress-seconds` per job; the pure functions decide what is read and written:

- `scrape_target(status, pods)`: the running stage and its rank-0 pod's metrics URL, or None;
- `trainer_status(stage, text, now)`: the trainerStatus a /metrics text gives;
- `settle(status, now_s)`: what a reconcile does to it on transitions (a new stage starts at 0, a
  finished job shows 100 with nothing left, a failed one keeps its last values without an ETA).

Reads (its `Concern`): of a pod, where its progress can be read (`metrics_url`: a pod going Running
with an IP is news to a reconcile, which then tracks it).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Awaitable, Callable, Iterable, Mapping, Optional

from forgetless.api.schema import API_VERSION, KIND
from forgetless.lifecycle import STAGES
from forgetless.timefmt import fmt_time, format_duration
from forgetless.vocabulary import COMPLETION_INDEX_ANNOTATION

from forgetless_operator.finetunejob.children import METRICS_PORT
from forgetless_operator.finetunejob.reads import Concern
from forgetless_operator.kit.client import ApiError, KubeClient
from forgetless_operator.kit.status import write_status
from forgetless_operator.metrics import OperatorMetrics

log = logging.getLogger("forgetless.operator")

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


CONCERN = Concern("progress", pod_facts=lambda pod: (metrics_url(pod),))


# --------------------------------------------------------------------------- the live reads


@dataclass
class LiveTarget:
    """A job with a running stage whose progress can be read: where, and the object version it was seen at."""

    stage: str
    url: str
    resource_version: str
    trainer_status: Optional[dict]


class LiveProgress:
    """The running stages' progress, read from their rank-0 pods' /metrics into status.trainerStatus:
    `track` (after each reconcile: where to read, or nothing) and `read_pass` (the progress loop)."""

    def __init__(self, kube: KubeClient, metrics: OperatorMetrics, clock: Callable[[], datetime],
                 wrote: Callable[[str, str, Any], None], scrape: Optional[Callable[[str], Awaitable[str]]] = None,
                 timeout: float = 3.0) -> None:
        self.kube, self.metrics, self.clock, self.wrote = kube, metrics, clock, wrote
        self.scrape, self.timeout = scrape, timeout  # scrape: a pod's /metrics text (tests inject one)
        self._live: dict[tuple[str, str], LiveTarget] = {}
        self._session: Any = None  # aiohttp.ClientSession of the progress reads (no API credentials)

    def track(self, namespace: str, name: str, written: Mapping[str, Any],
              pods: Mapping[str, Iterable[Mapping[str, Any]]]) -> None:
        """Remember where the running stage's progress can be read (or forget it: no stage running)."""
        status = written.get("status") or {}
        target = scrape_target(status, pods)
        version = (written.get("metadata") or {}).get("resourceVersion")
        if target is None or not version:
            self._live.pop((namespace, name), None)
            return
        self._live[(namespace, name)] = LiveTarget(target[0], target[1], version, status.get("trainerStatus"))

    def forget(self, namespace: str, name: str) -> None:
        self._live.pop((namespace, name), None)

    async def _read(self, url: str) -> str:
        """A pod's /metrics text, GET with a plain session (never the API server's credentials)."""
        if self.scrape is not None:
            return await self.scrape(url)
        import aiohttp

        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        async with self._session.get(url, timeout=aiohttp.ClientTimeout(total=self.timeout)) as response:
            response.raise_for_status()
            return await response.text()

    async def read_pass(self, concurrency: int = 32) -> int:
        """Read each running stage's progress and write the changed ones to status.trainerStatus (the
        PATCH carries the resourceVersion the job was seen at: a reconcile that wrote meanwhile wins, and
        the next one re-tracks). A pod that does not answer is skipped; returns how many were written."""
        gate = asyncio.Semaphore(concurrency)

        async def one(key: tuple[str, str], target: LiveTarget) -> bool:
            async with gate:
                try:
                    text = await self._read(target.url)
                except Exception as exc:  # noqa: BLE001 - a pod still loading, or gone: next pass
                    log.debug("progress of %s/%s: %s unreachable: %s", *key, target.url, exc)
                    return False
            new = trainer_status(target.stage, text, fmt_time(self.clock()), job=key[1])
            if new is None or same_progress(new, target.trainer_status) or self._live.get(key) is not target:
                return False
            try:
                written = await write_status(self.kube, API_VERSION, KIND, key[0], key[1],
                                             {"trainerStatus": target.trainer_status or {}}, {"trainerStatus": new},
                                             resource_version=target.resource_version)
            except ApiError as exc:
                if exc.status in (404, 409):  # deleted, or written meanwhile: the next reconcile re-tracks
                    if self._live.get(key) is target:
                        self._live.pop(key, None)
                    return False
                raise
            if written is None:
                return False
            self.wrote(key[0], key[1], written)
            if self._live.get(key) is target:
                target.resource_version = (written.get("metadata") or {}).get("resourceVersion", "")
                target.trainer_status = (written.get("status") or {}).get("trainerStatus")
            self.metrics.progress(key[0], key[1], (written.get("status") or {}).get("trainerStatus"))
            return True

        results = await asyncio.gather(*(one(k, t) for k, t in list(self._live.items())), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                self.metrics.error("")
                log.warning("progress update failed: %s", result)
        return sum(1 for r in results if r is True)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
