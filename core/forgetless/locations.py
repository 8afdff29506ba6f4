"""Where a spec's locations are inside a stage pod (and locally): the mount roots and `resolve_path`.

The operator mounts every PersistentVolumeClaim a job names at `PVC_ROOT/<claimName>` and every
ConfigMap at `CONFIGMAP_ROOT/<name>`; the trainer resolves spec paths against the same roots
(overridable by the env names in forgetless.contract, which holds the rest of the stage contract:
the work-dir layout and the pod env). Locally (`forgetless run`) nothing is mounted: plain paths are
used as they are, so a relative path resolves against the current directory (a caller may pass
`base_dir` to anchor it elsewhere; the stages do not).
"""

from __future__ import annotations

import os
from pathlib import Path

from forgetless import bundled
from forgetless.contract import CONFIGMAP_ROOT_ENV, PVC_ROOT_ENV
from forgetless.api.schema import ConfigMapKeyRef, PvcRef

DEFAULT_PVC_ROOT = "/mnt/pvc"
DEFAULT_CONFIGMAP_ROOT = "/etc/forgetless/configmaps"
JOB_SPEC_MOUNT = "/etc/forgetless/job"
"""The job document (the stage pod's annotation `forgetless.dev/spec`, projected by a downwardAPI
volume as job.json) is mounted here in every stage pod."""


def pvc_root() -> Path:
    return Path(os.environ.get(PVC_ROOT_ENV, DEFAULT_PVC_ROOT))


def configmap_root() -> Path:
    return Path(os.environ.get(CONFIGMAP_ROOT_ENV, DEFAULT_CONFIGMAP_ROOT))


def pvc_mount_path(claim_name: str) -> str:
    return f"{DEFAULT_PVC_ROOT}/{claim_name}"


def configmap_mount_path(name: str) -> str:
    return f"{DEFAULT_CONFIGMAP_ROOT}/{name}"


def resolve_path(
    path: str | None,
    *,
    pvc: PvcRef | None = None,
    config_map: ConfigMapKeyRef | None = None,
    kind: str = "data",
    base_dir: Path | None = None,
) -> Path:
    """A spec location -> a filesystem path. `kind` (model, data, suite) picks the bundled folder."""
    if config_map is not None:
        root = configmap_root() / config_map.name
        return root / config_map.key if config_map.key else root
    if path is None:
        raise ValueError("no location given (set path or configMap)")
    if bundled.is_bundled(path):
        return bundled.resolve(path, kind)
    if pvc is not None:
        root = pvc_root() / pvc.claim_name
        if pvc.sub_path:
            root = root / pvc.sub_path
        return root / path.lstrip("/")
    resolved = Path(path).expanduser()
    if not resolved.is_absolute() and base_dir is not None:
        resolved = base_dir / resolved
    return resolved
