"""What the reconciler sees (`Observed`) and what it decides (`Decision`: actions, the new status,
events). Plain data; `runtime.Runtime` gathers the one (`observe`) and applies the other (the kopf
handlers in handlers.py only pass it the events that call for a reconcile)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union


@dataclass
class Observed:
    """What `Runtime.observe` read from the API for one FineTuneJob."""

    jobs: dict[str, dict] = field(default_factory=dict)
    """stage -> batch/v1 Job (by label forgetless.dev/stage; the newest attempt, see `index_jobs`)."""
    superseded_jobs: list[dict] = field(default_factory=list)
    """Jobs of earlier attempts of a stage (a multi-worker group that was restarted)."""
    pods: dict[str, list[dict]] = field(default_factory=dict)
    """stage -> pods of that stage."""
    configmaps: dict[str, dict] = field(default_factory=dict)
    """name -> ConfigMap (the `<job>-spec` one)."""
    services: dict[str, dict] = field(default_factory=dict)
    baseline_cache: dict[str, str] = field(default_factory=dict)
    """data of the `forgetless-baseline-cache` ConfigMap: cache key -> entry JSON."""
    missing_claims: frozenset[str] = frozenset()
    """PersistentVolumeClaims the spec names that do not exist."""
    inference_services: dict[tuple[str, str], dict | None] = field(default_factory=dict)
    """(namespace, name) -> the InferenceService named by output.handOff (None: it does not exist);
    a key is present only when `Runtime.observe` looked it up."""


@dataclass(frozen=True)
class CreateObject:
    obj: dict


@dataclass(frozen=True)
class DeleteObject:
    api_version: str
    kind: str
    namespace: str
    name: str
    propagation_policy: str = "Background"


@dataclass(frozen=True)
class PatchObject:
    """A JSON merge patch (application/merge-patch+json) of a child's main resource."""

    api_version: str
    kind: str
    namespace: str
    name: str
    patch: dict


@dataclass(frozen=True)
class RecordBaselineCache:
    """Merge `data` into the baseline-cache ConfigMap (created when missing; None values delete keys)."""

    namespace: str
    name: str
    data: dict


Action = Union[CreateObject, DeleteObject, PatchObject, RecordBaselineCache]


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class Decision:
    actions: list[Action]
    status: dict
    events: list[Event]


def requested(action: Any) -> tuple[str, str, str]:
    """(verb, resource kind, namespace) of the API request an action makes: what a 403 names."""
    if isinstance(action, CreateObject):
        return "create", action.obj.get("kind", "?"), (action.obj.get("metadata") or {}).get("namespace", "")
    if isinstance(action, DeleteObject):
        return "delete", action.kind, action.namespace
    if isinstance(action, PatchObject):
        return "patch", action.kind, action.namespace
    if isinstance(action, RecordBaselineCache):
        return "patch", "ConfigMap", action.namespace
    return "apply", type(action).__name__, ""
