"""Reading what Kubernetes reports about a stage: Job conditions, pod phases, container exit states,
termination messages, ranks and attempts. Pure functions over API objects (dicts); the reconciler
(reconcile.py) decides what to do with what they find."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping

from forgetless.vocabulary import COMPLETION_INDEX_ANNOTATION, LABEL_ATTEMPT, LABEL_STAGE

from forgetless_operator.finetunejob.children import CONTAINER
from forgetless_operator.kit.status import short

WAITING_PROBLEMS = {
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "CrashLoopBackOff",
}
ALIVE_POD_PHASES = ("Pending", "Running", "Unknown")


def job_condition(job: Mapping[str, Any], type_: str) -> dict | None:
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_ and cond.get("status") == "True":
            return cond
    return None


def container_state(pod: Mapping[str, Any]) -> dict:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == CONTAINER:
            return status.get("state") or {}
    return {}


def _rank(pod: Mapping[str, Any]) -> int:
    meta = pod.get("metadata") or {}
    for source in (meta.get("annotations") or {}, meta.get("labels") or {}):
        value = source.get(COMPLETION_INDEX_ANNOTATION)
        if value is not None:
            try:
                return int(value)
            except ValueError:
                return -1
    return 0


def job_attempt(job: Mapping[str, Any]) -> int:
    """The attempt a stage Job runs (label forgetless.dev/attempt; 1 when absent)."""
    value = ((job.get("metadata") or {}).get("labels") or {}).get(LABEL_ATTEMPT, "1")
    try:
        return max(1, int(value))
    except ValueError:
        return 1


def index_jobs(jobs: list[dict]) -> tuple[dict[str, dict], list[dict]]:
    """stage -> its newest attempt's Job, and the Jobs of earlier attempts."""
    current: dict[str, dict] = {}
    superseded: list[dict] = []
    for job in sorted(jobs, key=job_attempt):
        stage = ((job.get("metadata") or {}).get("labels") or {}).get(LABEL_STAGE)
        if not stage:
            continue
        if stage in current:
            superseded.append(current[stage])
        current[stage] = job
    return current, superseded


def pod_job_name(pod: Mapping[str, Any]) -> str | None:
    labels = (pod.get("metadata") or {}).get("labels") or {}
    return labels.get("batch.kubernetes.io/job-name") or labels.get("job-name")


def pods_of(job_name: str, pods: list[dict]) -> list[dict]:
    """The pods of one Job (by the Job controller's job-name label; pods without it are kept)."""
    return [p for p in pods if pod_job_name(p) in (None, job_name)]


def alive(pod: Mapping[str, Any]) -> bool:
    return ((pod.get("status") or {}).get("phase") or "Pending") in ALIVE_POD_PHASES


def _finished(terminated: Mapping[str, Any]) -> str:
    return terminated.get("finishedAt") or ""


def _tail(text: str, limit: int) -> str:
    """The end of a long text (a log tail's last lines hold the error)."""
    text = " ".join(text.split())
    return text if len(text) <= limit else "..." + text[-(limit - 3):]


def memory_limit(pod: Mapping[str, Any]) -> str | None:
    for container in (pod.get("spec") or {}).get("containers") or []:
        if container.get("name") == CONTAINER:
            return ((container.get("resources") or {}).get("limits") or {}).get("memory")
    return None


def failure_text(terminated: Mapping[str, Any], pod: Mapping[str, Any] | None = None) -> str:
    """What a failed container said: OOMKilled with the memory limit it hit; else the stage's
    `{"error": ...}` summary, else the message (or log tail, FallbackToLogsOnError), else the
    container's reason (Error, ...)."""
    if terminated.get("reason") == "OOMKilled":
        limit = memory_limit(pod or {})
        where = (f"its memory limit {limit}" if limit else "the node's memory (no memory limit set)")
        return (f"OOMKilled: the container was killed for exceeding {where} (exit code {terminated.get('exitCode')}); "
                "raise spec.resources.container.limits.memory if it happens again")
    text = (terminated.get("message") or "").strip()
    try:
        document = json.loads(text) if text.startswith("{") else None
    except ValueError:
        document = None
    if isinstance(document, dict) and document.get("error"):
        return str(document["error"])
    if text:
        return text
    code = f"exit code {terminated.get('exitCode')}"
    return f"{terminated['reason']} ({code})" if terminated.get("reason") else code


@dataclass
class StageObservation:
    state: str  # Running | Succeeded | Failed
    result: dict | None = None
    message: str | None = None
    failed_pods: int = 0
    completion_time: str | None = None


def observe_stage(stage: str, job: Mapping[str, Any], pods: list[dict], workers: int) -> StageObservation:
    """The state of one stage Job from the Job's conditions and its pods' termination messages."""
    status = job.get("status") or {}
    failed_pods = int(status.get("failed") or 0)
    ranked = [p for p in pods if workers == 1 or _rank(p) == 0]
    ok = sorted(
        (
            (_finished(t), t)
            for t in (container_state(p).get("terminated") for p in ranked)
            if t is not None and t.get("exitCode") == 0
        ),
        key=lambda pair: pair[0],
    )
    bad = sorted(  # (finished at, rank, terminated state, pod) of every failed container, earliest first
        (
            (_finished(t), _rank(p), t, p)
            for p, t in ((p, container_state(p).get("terminated")) for p in pods)
            if t is not None and t.get("exitCode") not in (0, None)
        ),
        key=lambda entry: entry[:2],
    )
    complete = job_condition(job, "Complete")
    failed = job_condition(job, "Failed")
    if failed is not None:
        reason = failed.get("reason") or "Failed"
        message = f"{reason}: {failed.get('message') or 'the stage Job failed'}"
        if workers > 1 and bad:  # every failed rank, earliest first: the first one is usually the cause
            message += "; failed ranks: " + "; ".join(
                f"rank {rank} exit code {terminated.get('exitCode')}: {_tail(failure_text(terminated, pod), 200)}"
                for _, rank, terminated, pod in bad
            )
        elif bad:
            message += f"; last pod: {failure_text(bad[-1][2], bad[-1][3])}"
        return StageObservation("Failed", message=short(message), failed_pods=failed_pods)
    # Multi-worker: only the Job's Complete condition says all ranks finished; one worker: the pod suffices.
    if ok and (complete is not None or workers == 1):
        finished_at, terminated = ok[-1]
        raw = terminated.get("message") or ""
        try:
            # NaN/Infinity (a diverged loss) would make the status patch invalid JSON for the API server
            result = json.loads(raw, parse_constant=lambda _constant: None)
        except ValueError:
            return StageObservation(
                "Failed",
                message=short(f"ResultUnreadable: the {stage} pod's termination message is not JSON: {raw[:200]!r}"),
                failed_pods=failed_pods,
            )
        if not isinstance(result, dict) or result.get("stage", stage) != stage:
            return StageObservation(
                "Failed",
                message=f"ResultUnreadable: the {stage} pod's termination message is not a {stage} summary",
                failed_pods=failed_pods,
            )
        completion = status.get("completionTime") or finished_at or None
        return StageObservation("Succeeded", result=result, failed_pods=failed_pods, completion_time=completion)
    if complete is not None:
        return StageObservation(
            "Failed",
            message=f"ResultMissing: the {stage} Job completed but no pod holds its termination message",
            failed_pods=failed_pods,
        )
    message = None
    if job_condition(job, "Suspended") is not None or (job.get("spec") or {}).get("suspend"):
        message = f"the {stage} Job is suspended (waiting for admission or resume)"
    for pod in pods:
        waiting = container_state(pod).get("waiting") or {}
        if waiting.get("reason") in WAITING_PROBLEMS:
            name = (pod.get("metadata") or {}).get("name", "?")
            message = short(f"pod {name}: {waiting['reason']}: {waiting.get('message') or ''}".rstrip(": "))
            break
        for cond in (pod.get("status") or {}).get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False" and cond.get("reason"):
                name = (pod.get("metadata") or {}).get("name", "?")
                message = short(f"pod {name}: {cond['reason']}: {cond.get('message') or ''}".rstrip(": "))
    if bad and message is None:
        message = short(f"retrying after a failed pod: {failure_text(bad[-1][2], bad[-1][3])}")
    return StageObservation("Running", message=message, failed_pods=failed_pods)
