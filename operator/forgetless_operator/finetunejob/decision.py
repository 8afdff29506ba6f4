"""What the reconciler sees (`Observed`) and what it decides (`Decision`: actions, the new status,
events). Plain data; `controller.FineTuneJobController` gathers the one (`observe`, as the read plan
says: readplan.py) and applies the other."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

from forgetless_operator.kit import actions
from forgetless_operator.kit.actions import CreateObject, Decision, DeleteObject, PatchObject
from forgetless_operator.kit.events import Event


@dataclass
class Observed:
    """What `FineTuneJobController.observe` read from the API for one FineTuneJob (readplan.Reads says what)."""

    jobs: dict[str, dict] = field(default_factory=dict)
    """stage -> batch/v1 Job (by label forgetless.dev/stage; the newest attempt, see `index_jobs`)."""
    superseded_jobs: list[dict] = field(default_factory=list)
    """Jobs of earlier attempts of a stage (a multi-worker group that was restarted)."""
    pods: dict[str, list[dict]] = field(default_factory=dict)
    """stage -> pods of that stage."""
    services: dict[str, dict] = field(default_factory=dict)
    baseline_cache: dict[str, str] = field(default_factory=dict)
    """data of the `forgetless-baseline-cache` ConfigMap: cache key -> entry JSON."""
    missing_claims: frozenset[str] = frozenset()
    """PersistentVolumeClaims the spec names that do not exist."""
    inference_services: dict[tuple[str, str], dict | None] = field(default_factory=dict)
    """(namespace, name) -> the InferenceService named by output.handOff (None: it does not exist);
    a key is present only when the read plan named it."""


@dataclass(frozen=True)
class RecordBaselineCache:
    """Merge `data` into the baseline-cache ConfigMap (created when missing; None values delete keys)."""

    namespace: str
    name: str
    data: dict


Action = Union[CreateObject, DeleteObject, PatchObject, RecordBaselineCache]


def requested(action: Any) -> tuple[str, str, str]:
    """(verb, resource kind, namespace) of the API request an action makes: what a 403 names."""
    if isinstance(action, RecordBaselineCache):
        return "patch", "ConfigMap", action.namespace
    return actions.requested(action)


__all__ = ["Action", "CreateObject", "Decision", "DeleteObject", "Event", "Observed", "PatchObject",
           "RecordBaselineCache", "requested"]
