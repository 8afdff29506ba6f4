"""Builders for the Kubernetes objects a FineTuneJob owns (pure: dicts in, dicts out).

Names are deterministic (docs/contracts.md "Children in the cluster"): Jobs `<job>-baseline`, `<job>-train` (one worker) or `<job>-train-workers` (Indexed Job + headless
Service of the same name; a restarted group's attempt N is `<job>-train-workers-g<N>`, label
`forgetless.dev/attempt`), `<job>-evaluate`. The frozen spec travels in the stage pod template's
annotation `forgetless.dev/spec`, which a downwardAPI volume projects to the file the stage reads
(JOB_SPEC_MOUNT/SPEC_KEY). Every child carries the labels `forgetless.dev/job`,
`forgetless.dev/stage` and a controller owner reference to the FineTuneJob, so deleting the
FineTuneJob garbage-collects all of them.

Stage pods meet Pod Security "restricted": non-root (uid 1000), read-only root filesystem with
emptyDirs at /tmp and $HOME, no capabilities, no privilege escalation, RuntimeDefault seccomp,
no service-account token.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from forgetless import __version__, contract
from forgetless.api.schema import API_VERSION, KIND, FineTuneJobSpec
from forgetless.general_data import named_sources
from forgetless.lifecycle import STAGES
from forgetless.locations import JOB_SPEC_MOUNT, configmap_mount_path, pvc_mount_path
from forgetless.vocabulary import (
    COMPLETION_INDEX_ANNOTATION, LABEL_ATTEMPT, LABEL_JOB, LABEL_STAGE, MANAGED_BY, QUEUE_LABEL, SPEC_ANNOTATION,
)

from forgetless_operator.kit.status import owner_reference

ANNOTATIONS_LIMIT = 256 * 1024
"""Kubernetes' limit on all of an object's annotations together (keys and values, bytes)."""

SPEC_KEY = contract.JOB_FILE
CONTAINER = "stage"
METRICS_PORT = 9400
MASTER_PORT = 29500
TERMINATION_LOG = contract.TERMINATION_LOG
HOME = "/home/forgetless"
CACHE_SUBDIR = ".forgetless-cache"
RUN_AS_USER = 1000
DEFAULT_TRAINER_IMAGE = f"ghcr.io/forgetless/trainer:{__version__}"
"""The image of the same release (the chart passes its own default through FORGETLESS_TRAINER_IMAGE)."""


@dataclass(frozen=True)
class OperatorConfig:
    """Operator-wide settings (from CLI flags / env)."""

    trainer_image: str = DEFAULT_TRAINER_IMAGE
    image_pull_policy: str = "IfNotPresent"
    baseline_cache_configmap: str = "forgetless-baseline-cache"
    baseline_cache_max_entries: int = 200


# --------------------------------------------------------------------------- names


def stage_job_name(job: str, stage: str, workers: int = 1, attempt: int = 1) -> str:
    """`attempt` counts group restarts of multi-worker training (single pods are retried by the Job)."""
    if stage == "train" and workers > 1:
        return f"{job}-train-workers" + (f"-g{attempt}" if attempt > 1 else "")
    return f"{job}-{stage}"


def workers_service_name(job: str) -> str:
    return f"{job}-train-workers"


# --------------------------------------------------------------------------- metadata


def child_labels(ftj: dict[str, Any], stage: str | None = None, queue: bool = True) -> dict[str, str]:
    """Labels of a child; `queue=False` for pod templates (Kueue queues the Job, not its pods)."""
    meta = ftj["metadata"]
    labels = {**MANAGED_BY, LABEL_JOB: meta["name"]}
    if stage:
        labels[LABEL_STAGE] = stage
        labels["app.kubernetes.io/component"] = stage
    queue_name = (meta.get("labels") or {}).get(QUEUE_LABEL)
    if queue and queue_name:
        labels[QUEUE_LABEL] = queue_name
    return labels


def child_metadata(ftj: dict[str, Any], name: str, stage: str | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": ftj["metadata"]["namespace"],
        "labels": child_labels(ftj, stage),
        "ownerReferences": [owner_reference(ftj, API_VERSION, KIND)],
    }


# --------------------------------------------------------------------------- the frozen spec


def job_document(ftj: dict[str, Any], spec: FineTuneJobSpec) -> dict[str, Any]:
    """The manifest stage pods read (`forgetless stage --job job.json` loads a whole FineTuneJob)."""
    meta = ftj["metadata"]
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
        "spec": spec.to_wire(),
    }


def spec_document_text(ftj: dict[str, Any], spec: FineTuneJobSpec) -> str:
    """The job document as the stage pods read it (compact JSON: it counts against the annotation limit)."""
    return json.dumps(job_document(ftj, spec), sort_keys=True, separators=(",", ":"))


class SpecTooLarge(ValueError):
    """The spec does not fit in the stage pod's annotation."""


def spec_annotation_text(ftj: dict[str, Any], spec: FineTuneJobSpec) -> str:
    """The SPEC_ANNOTATION value of a stage pod template; raises SpecTooLarge (naming the largest field)
    when it does not fit in the pod's annotations (ANNOTATIONS_LIMIT, keys included, with room for the
    other annotations)."""
    text = spec_document_text(ftj, spec)
    size = len(SPEC_ANNOTATION) + len(text.encode())
    room = ANNOTATIONS_LIMIT - 4096  # for annotations others add to the pod (the Job controller's, Kueue's)
    if size <= room:
        return text
    wire = spec.to_wire()
    fields: list[tuple[int, str]] = []
    for key, value in wire.items():
        fields.append((len(json.dumps(value, separators=(",", ":")).encode()), f"spec.{key}"))
        if isinstance(value, dict):
            fields += [(len(json.dumps(v, separators=(",", ":")).encode()), f"spec.{key}.{k}") for k, v in value.items()]
    largest = sorted(fields, reverse=True)
    leaf = [f for f in largest if f[1].count(".") == 2][:1] or largest[:1]
    raise SpecTooLarge(
        f"the spec is {size} bytes as JSON, over the {room} bytes a stage pod can carry in its annotation "
        f"{SPEC_ANNOTATION} (Kubernetes allows {ANNOTATIONS_LIMIT} bytes of annotations per object); the largest "
        f"field is {leaf[0][1]} ({leaf[0][0]} bytes): move large inline data to a ConfigMap or volume "
        f"(e.g. dataset.task.configMap or .pvc)")


def spec_from_document(document: Any) -> FineTuneJobSpec:
    """The spec of `status.startedSpec` (an object) or a job document's `spec`."""
    return FineTuneJobSpec.model_validate(document)


# --------------------------------------------------------------------------- volumes


def output_claim(spec: FineTuneJobSpec) -> str | None:
    return spec.output.pvc.claim_name if spec.output.pvc else None


def workdir(ftj: dict[str, Any], spec: FineTuneJobSpec) -> str:
    """The stages' shared work dir: `output.path` inside the output volume (default `<namespace>/<job>`)."""
    meta = ftj["metadata"]
    claim = output_claim(spec)
    if claim is None:  # rejected before any stage starts (reconcile's preflight)
        return f"/tmp/forgetless/{meta['name']}"
    root = pvc_mount_path(claim)
    if spec.output.pvc and spec.output.pvc.sub_path:
        root = f"{root}/{spec.output.pvc.sub_path.strip('/')}"
    path = (spec.output.path or f"forgetless/{meta['namespace']}/{meta['name']}").strip("/")
    return f"{root}/{path}"


def claims(spec: FineTuneJobSpec) -> dict[str, bool]:
    """Every PVC the job names -> read-only? (read-write wins; the output volume is always writable)."""
    refs = [spec.model.pvc, *(source.pvc for source in named_sources(spec)), spec.regression.suite.pvc]
    out: dict[str, bool] = {}
    for ref in refs:
        if ref is not None:
            out[ref.claim_name] = out.get(ref.claim_name, True) and ref.read_only
    if spec.output.pvc is not None:
        out[spec.output.pvc.claim_name] = False
    return out


def configmaps(spec: FineTuneJobSpec) -> list[str]:
    refs = [*(source.config_map for source in named_sources(spec)), spec.regression.suite.config_map]
    return sorted({ref.name for ref in refs if ref is not None})


def _volumes(ftj: dict[str, Any], spec: FineTuneJobSpec, stage: str) -> tuple[list[dict], list[dict]]:
    spec_file = {"path": SPEC_KEY, "fieldRef": {"fieldPath": f"metadata.annotations['{SPEC_ANNOTATION}']"}}
    volumes: list[dict[str, Any]] = [
        {"name": "job-spec", "downwardAPI": {"items": [spec_file]}},
        {"name": "tmp", "emptyDir": {}},
        {"name": "home", "emptyDir": {}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "job-spec", "mountPath": JOB_SPEC_MOUNT, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "home", "mountPath": HOME},
    ]
    if stage == "train":  # NCCL / DataLoader workers need more than the default 64 MiB of /dev/shm
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory"}})
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    for index, (claim, read_only) in enumerate(sorted(claims(spec).items())):
        volume = f"pvc-{index}"
        volumes.append({"name": volume, "persistentVolumeClaim": {"claimName": claim, "readOnly": read_only}})
        mounts.append({"name": volume, "mountPath": pvc_mount_path(claim), "readOnly": read_only})
    for index, cm in enumerate(configmaps(spec)):
        volume = f"cm-{index}"
        volumes.append({"name": volume, "configMap": {"name": cm}})
        mounts.append({"name": volume, "mountPath": configmap_mount_path(cm), "readOnly": True})
    return volumes, mounts


# --------------------------------------------------------------------------- stage Jobs


def _env(ftj: dict[str, Any], spec: FineTuneJobSpec, stage: str, attempt: int = 1) -> list[dict[str, Any]]:
    meta = ftj["metadata"]
    claim = output_claim(spec)
    cache_root = f"{pvc_mount_path(claim)}/{CACHE_SUBDIR}" if claim else f"/tmp/{CACHE_SUBDIR}"
    env: list[dict[str, Any]] = [
        {"name": contract.TERMINATION_MESSAGE_PATH_ENV, "value": TERMINATION_LOG},
        {"name": contract.METRICS_PORT_ENV, "value": str(METRICS_PORT)},
        {"name": contract.NAMESPACE_ENV, "value": meta["namespace"]},
        {"name": contract.JOB_ENV, "value": meta["name"]},
        {"name": contract.STAGE_ENV, "value": stage},
        {"name": contract.CACHE_DIR_ENV, "value": f"{cache_root}/baselines"},
        {"name": contract.MODEL_CACHE_DIR_ENV, "value": f"{cache_root}/models"},  # GGUF conversions, once per volume
        {"name": "HF_HOME", "value": f"{cache_root}/huggingface"},
        {"name": "HOME", "value": HOME},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    token = spec.model.token_secret_ref
    if token is not None:
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": token.name, "key": token.key}}})
    workers = spec.resources.workers
    if stage == "train" and workers > 1:
        service = workers_service_name(meta["name"])
        env += [
            {
                "name": "RANK",
                "valueFrom": {
                    "fieldRef": {"fieldPath": f"metadata.annotations['{COMPLETION_INDEX_ANNOTATION}']"}
                },
            },
            {"name": "WORLD_SIZE", "value": str(workers)},
            {"name": "MASTER_ADDR", "value": f"{stage_job_name(meta['name'], 'train', workers, attempt)}-0.{service}"},
            {"name": "MASTER_PORT", "value": str(MASTER_PORT)},
            {"name": "LOCAL_RANK", "value": "0"},
        ]
    return env


def _resources(spec: FineTuneJobSpec) -> dict[str, Any]:
    requests = dict(spec.resources.container.requests)
    limits = dict(spec.resources.container.limits)
    gpus = spec.resources.gpus_per_worker
    if gpus:
        limits["nvidia.com/gpu"] = str(gpus)
        requests.pop("nvidia.com/gpu", None)  # extended resources: request defaults to the limit
    out: dict[str, Any] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


POD_SECURITY_CONTEXT = {
    "runAsNonRoot": True,
    "runAsUser": RUN_AS_USER,
    "runAsGroup": RUN_AS_USER,
    "fsGroup": RUN_AS_USER,
    "fsGroupChangePolicy": "OnRootMismatch",  # large model volumes: no recursive chown on every start
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY_CONTEXT = {
    "runAsNonRoot": True,
    "runAsUser": RUN_AS_USER,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def stage_job(
    ftj: dict[str, Any], spec: FineTuneJobSpec, stage: str, config: OperatorConfig, attempt: int = 1
) -> dict[str, Any]:
    """The batch/v1 Job running `forgetless stage <stage>` (an Indexed Job for multi-worker training).

    The spec reaches the pod as its template's annotation SPEC_ANNOTATION (see `_volumes`); raises
    SpecTooLarge when it does not fit (reconcile checks before the job starts).
    Multi-worker: backoffLimit 0, so one failed rank fails the Job and the operator restarts the whole
    group as attempt N+1 (a retried index alone would wait for peers that are gone)."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")
    name = ftj["metadata"]["name"]
    workers = spec.resources.workers if stage == "train" else 1
    job_name = stage_job_name(name, stage, workers, attempt)
    volumes, mounts = _volumes(ftj, spec, stage)
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": spec.resources.trainer_image or config.trainer_image,
        "imagePullPolicy": config.image_pull_policy,
        "args": ["stage", stage, "--job", f"{JOB_SPEC_MOUNT}/{SPEC_KEY}", "--workdir", workdir(ftj, spec)],
        "env": _env(ftj, spec, stage, attempt),
        "resources": _resources(spec),
        "securityContext": CONTAINER_SECURITY_CONTEXT,
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": mounts,
    }
    # every stage serves /metrics: live metrics, and the progress the operator reads into status.trainerStatus
    container["ports"] = [{"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}]
    if stage == "train":
        if workers > 1:
            container["ports"].append({"name": "master", "containerPort": MASTER_PORT, "protocol": "TCP"})
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": POD_SECURITY_CONTEXT,
        "containers": [container],
        "volumes": volumes,
    }
    resources = spec.resources
    if resources.node_selector:
        pod_spec["nodeSelector"] = dict(resources.node_selector)
    if resources.tolerations:
        pod_spec["tolerations"] = [t.to_wire() for t in resources.tolerations]
    if resources.priority_class_name:
        pod_spec["priorityClassName"] = resources.priority_class_name
    pod_labels = child_labels(ftj, stage, queue=False)
    job_spec: dict[str, Any] = {
        "suspend": False,
        "backoffLimit": spec.backoff_limit,
        "template": {"metadata": {"labels": pod_labels,
                                  "annotations": {SPEC_ANNOTATION: spec_annotation_text(ftj, spec)}},
                     "spec": pod_spec},
    }
    metadata = child_metadata(ftj, job_name, stage)
    if workers > 1:
        pod_spec["subdomain"] = workers_service_name(name)
        job_spec.update({"completionMode": "Indexed", "completions": workers, "parallelism": workers,
                         "backoffLimit": 0})
        pod_labels[LABEL_ATTEMPT] = metadata["labels"][LABEL_ATTEMPT] = str(attempt)
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": job_spec}


def workers_service(ftj: dict[str, Any]) -> dict[str, Any]:
    """Headless Service giving Indexed-Job pods stable DNS names (`<job>-train-workers-<i>.<service>`)."""
    name = ftj["metadata"]["name"]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": child_metadata(ftj, workers_service_name(name), "train"),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {LABEL_JOB: name, LABEL_STAGE: "train"},
            "ports": [{"name": "master", "port": MASTER_PORT, "targetPort": MASTER_PORT, "protocol": "TCP"}],
        },
    }
