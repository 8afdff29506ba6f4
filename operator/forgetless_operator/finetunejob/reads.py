"""The shape of a read plan: what one concern of the FineTuneJob reconcile reads (`Reads`, for one job
as it is now) and the declaration each concern makes (`Concern`). readplan.py combines them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

Body = Mapping[str, Any]


@dataclass(frozen=True)
class Reads:
    """What to read from the API for one FineTuneJob before its reconcile."""

    children: bool = False
    """Its stage Jobs, Pods and Services (label forgetless.dev/job=<name>)."""
    baseline_cache: bool = False
    """The baseline-cache ConfigMap (a shared read)."""
    claims: frozenset[str] = frozenset()
    """PersistentVolumeClaims whose existence is checked (shared reads)."""
    inference_services: frozenset[tuple[str, str]] = frozenset()
    """(namespace, name) of the InferenceServices to GET."""

    def __or__(self, other: "Reads") -> "Reads":
        return Reads(self.children or other.children, self.baseline_cache or other.baseline_cache,
                     self.claims | other.claims, self.inference_services | other.inference_services)


NOTHING = Reads()


@dataclass(frozen=True)
class Concern:
    """One concern of the reconcile, declaring what it reads:
    - `reads(ftj)`: the objects it needs for this job now;
    - `job_facts(job)` / `pod_facts(pod)`: the parts of a stage Job / Pod its decisions depend on (a
      child event that changes none of any concern's facts needs no reconcile);
    - `resync(ftj)`: whether the job has work for it that no watch event announces (time-based, or
      waiting for an object it reads), so the resync loop must reconcile it."""

    name: str
    reads: Callable[[Body], Reads] = field(default=lambda ftj: NOTHING)
    job_facts: Optional[Callable[[Body], tuple]] = None
    pod_facts: Optional[Callable[[Body], tuple]] = None
    resync: Optional[Callable[[Body], bool]] = None


def status(ftj: Body) -> Mapping[str, Any]:
    return ftj.get("status") or {}


def started(ftj: Body) -> bool:
    return bool(status(ftj).get("specHash"))


def stage_phase(ftj: Body, stage: str) -> Optional[str]:
    return ((status(ftj).get("stages") or {}).get(stage) or {}).get("phase")
