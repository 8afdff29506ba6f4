"""The read plan of the FineTuneJob reconcile: what it reads, declared once per concern (`CONCERNS`,
each a `reads.Concern` next to the decisions that use it) and everything derived from it:

- `plan(ftj)`: the objects `FineTuneJobController.observe` reads for this job now;
- `child_signature(kind, child)` / `quiet_pod(pod)`: what any concern reads of a stage Job or Pod
  (the controller kit's ChildFilter skips an event that changes none of it);
- `needs_resync(ftj)`: whether any concern has work no watch event announces;
- `fingerprint(ftj)`: what a reconcile reads of the FineTuneJob itself (the kit's WorkQueue skips the
  echo of our own writes).

A new read is added to its concern's declaration, and nowhere else."""

from __future__ import annotations

import json
from typing import Any, Mapping

from forgetless.vocabulary import COMPLETION_INDEX_ANNOTATION

from forgetless_operator.finetunejob import stages
from forgetless_operator.finetunejob.features import baseline_cache, group_restart, hand_off, progress, run_controls
from forgetless_operator.finetunejob.reads import NOTHING, Concern, Reads
from forgetless_operator.kit import status as kit_status

CONCERNS: tuple[Concern, ...] = (
    stages.CONCERN, run_controls.CONCERN, group_restart.CONCERN, baseline_cache.CONCERN, hand_off.CONCERN,
    progress.CONCERN,
)

OBJECT_READS = (("metadata", "uid"), ("metadata", "generation"), ("metadata", "labels"),
                ("metadata", "deletionTimestamp"), ("spec",), ("status",))
"""What a reconcile reads of the FineTuneJob itself (the status without kopf's keys)."""


def plan(ftj: Mapping[str, Any]) -> Reads:
    """What to read for this FineTuneJob now: the union of every concern's reads; nothing for a job
    being deleted (its children go by garbage collection)."""
    if (ftj.get("metadata") or {}).get("deletionTimestamp"):
        return NOTHING
    reads = NOTHING
    for concern in CONCERNS:
        reads = reads | concern.reads(ftj)
    return reads


def needs_resync(ftj: Mapping[str, Any]) -> bool:
    """Whether the resync loop reconciles this FineTuneJob: one being deleted never; else when any
    concern has work left that no watch event announces (an unfinished job, a TTL to wait for, a
    hand-off pending)."""
    if (ftj.get("metadata") or {}).get("deletionTimestamp"):
        return False
    return any(concern.resync(ftj) for concern in CONCERNS if concern.resync is not None)


def fingerprint(ftj: Mapping[str, Any]) -> str:
    return kit_status.fingerprint(ftj, OBJECT_READS)


def _identity(child: Mapping[str, Any]) -> tuple:
    """What every concern reads of any child: which object, whether it is going, its labels (stage,
    attempt, the Job controller's job-name), its owners."""
    meta = child.get("metadata") or {}
    return (meta.get("uid"), meta.get("deletionTimestamp"), json.dumps(meta.get("labels") or {}, sort_keys=True),
            tuple(sorted(ref.get("uid") or "" for ref in meta.get("ownerReferences") or [])))


def _rank(pod: Mapping[str, Any]) -> Any:
    return ((pod.get("metadata") or {}).get("annotations") or {}).get(COMPLETION_INDEX_ANNOTATION)


def _pod_news(pod: Mapping[str, Any]) -> tuple:
    return tuple(concern.pod_facts(pod) for concern in CONCERNS if concern.pod_facts is not None)


def child_signature(kind: str, child: Mapping[str, Any]) -> tuple:
    """The part of a stage Job or Pod the reconcile reads: two bodies with the same signature lead to the
    same Decision, so a watch event that leaves it unchanged needs no reconcile."""
    if kind == "Job":
        return _identity(child) + tuple(concern.job_facts(child) for concern in CONCERNS
                                        if concern.job_facts is not None)
    return _identity(child) + (_rank(child),) + _pod_news(child)


_NEW_POD = {"status": {"phase": "Pending"}}


def quiet_pod(child: Mapping[str, Any]) -> bool:
    """A pod that is alive and tells no concern anything a new Pending pod does not (no progress to
    read, no terminated container, no waiting or scheduling problem): to the reconcile the same as no
    pod at all (it neither finishes nor fails a stage; an alive pod of another attempt can only make a
    start wait), so its first sight needs no reconcile."""
    return not (child.get("metadata") or {}).get("deletionTimestamp") and _pod_news(child) == _pod_news(_NEW_POD)


def child_is_quiet(kind: str, child: Mapping[str, Any]) -> bool:
    return kind == "Pod" and quiet_pod(child)
