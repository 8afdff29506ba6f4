"""Status writing and object metadata, for any custom resource: the one place kopf's keys are stripped
(`status_of`), the RFC 7386 merge patch, the status-subresource write (`write_status`), the one
`set_condition` (lastTransitionTime moves only when the condition's status changes, as the Kubernetes
API conventions say), the one `owner_reference`, and the `fingerprint` of what a reconcile reads of
an object."""

from __future__ import annotations

import copy
import json
from typing import Any, Iterable, Mapping, Optional

from forgetless_operator.kit.client import KubeClient

KOPF_KEYS = ("kopf",)
"""What kopf may keep in an object's status (its progress storage): never ours to compare or write."""
MESSAGE_LIMIT = 1024


def status_of(obj: Mapping[str, Any]) -> dict:
    """A deep copy of the object's status without kopf's keys."""
    status = copy.deepcopy(dict(obj.get("status") or {}))
    for key in KOPF_KEYS:
        status.pop(key, None)
    return status


def short(text: str) -> str:
    """A message cut to what a condition or event holds."""
    text = text.strip()
    return text if len(text) <= MESSAGE_LIMIT else text[: MESSAGE_LIMIT - 3] + "..."


def merge_patch(old: Any, new: Any) -> dict:
    """The RFC 7386 merge patch turning `old` into `new` (both dicts)."""
    patch: dict[str, Any] = {key: None for key in old if key not in new}
    for key, value in new.items():
        before = old.get(key, _MISSING)
        if isinstance(value, dict) and isinstance(before, dict):
            sub = merge_patch(before, value)
            if sub:
                patch[key] = sub
        elif value != before:
            patch[key] = value
    return patch


_MISSING = object()


async def write_status(kube: KubeClient, api_version: str, kind: str, namespace: str, name: str,
                       old: Mapping[str, Any], new: Mapping[str, Any],
                       resource_version: Optional[str] = None) -> dict | None:
    """PATCH the status subresource from `old` to `new` (a merge patch; with `resource_version`, an
    optimistic-locked one: 409 when the object changed since). Returns the written object, or None
    when there was nothing to write. Raises ApiError."""
    patch = merge_patch(dict(old), dict(new))
    if not patch:
        return None
    body: dict[str, Any] = {"status": patch}
    if resource_version is not None:
        body["metadata"] = {"resourceVersion": resource_version}
    return await kube.patch(api_version, kind, namespace, name, body, subresource="status")


def condition(status: Mapping[str, Any], type_: str) -> dict | None:
    return next((c for c in status.get("conditions") or [] if c.get("type") == type_), None)


def set_condition(status: dict, type_: str, value: str, reason: str, message: str, now_s: str,
                  generation: Any) -> None:
    """Set condition `type_` in `status` (lastTransitionTime moves only when its status changes)."""
    conditions = status.setdefault("conditions", [])
    for cond in conditions:
        if cond["type"] == type_:
            if cond["status"] != value:
                cond["lastTransitionTime"] = now_s
            cond.update(status=value, reason=reason, message=short(message), observedGeneration=generation)
            return
    conditions.append({"type": type_, "status": value, "reason": reason, "message": short(message),
                       "lastTransitionTime": now_s, "observedGeneration": generation})


def owner_reference(owner: Mapping[str, Any], api_version: str, kind: str) -> dict[str, Any]:
    """The controller owner reference to `owner` (deleting it garbage-collects what it owns)."""
    meta = owner["metadata"]
    return {"apiVersion": api_version, "kind": kind, "name": meta["name"], "uid": meta["uid"],
            "controller": True, "blockOwnerDeletion": True}


def owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in (obj.get("metadata") or {}).get("ownerReferences") or [])


def fingerprint(body: Mapping[str, Any], paths: Iterable[tuple[str, ...]]) -> str:
    """The values at `paths` of an object (the status without kopf's keys): what its reconcile reads of
    it, so a watch event whose fingerprint is the one last written needs no reconcile."""
    values = []
    for path in paths:
        value: Any = status_of(body) if path == ("status",) else body
        if path != ("status",):
            for key in path:
                value = (value or {}).get(key) if isinstance(value, Mapping) else None
        values.append(value)
    return json.dumps(values, sort_keys=True, default=str)
