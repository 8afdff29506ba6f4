"""What a pure reconcile decides (`Decision`: actions, the new status, events) and the generic
actions on API objects; a controller applies them (a controller may add actions of its own)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from forgetless_operator.kit.events import Event


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
    """A JSON merge patch (application/merge-patch+json) of an object's main resource."""

    api_version: str
    kind: str
    namespace: str
    name: str
    patch: dict


@dataclass
class Decision:
    actions: list[Any]
    status: dict
    events: list[Event]


def requested(action: Any) -> tuple[str, str, str]:
    """(verb, resource kind, namespace) of the API request a generic action makes: what a 403 names."""
    if isinstance(action, CreateObject):
        return "create", action.obj.get("kind", "?"), (action.obj.get("metadata") or {}).get("namespace", "")
    if isinstance(action, DeleteObject):
        return "delete", action.kind, action.namespace
    if isinstance(action, PatchObject):
        return "patch", action.kind, action.namespace
    return "apply", type(action).__name__, ""
