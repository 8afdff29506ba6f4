"""The RBAC rules the operator needs, in Kubernetes PolicyRule form.

The Helm chart renders its ClusterRole (``--all-namespaces``) or Role (``--namespace``) from these
lists; nothing else grants the operator rights. Stage pods get no rights at all (they mount no
service-account token).

- ``NAMESPACED_RULES``: what the operator does inside a watched namespace (usable in a Role).
- ``CLUSTER_RULES``: cluster-scoped reads kopf needs when it watches all namespaces or a
  namespace glob (CRD and namespace observation, ClusterKopfPeering). Only in a ClusterRole.
- ``RULES``: both together, for a single ClusterRole.
"""

from __future__ import annotations

from typing import Any

READ = ["get", "list", "watch"]

NAMESPACED_RULES: list[dict[str, Any]] = [
    # The custom resource: read, delete after ttlSecondsAfterFinished, kopf finalizer/annotations (merge patches).
    # Sweeps create their trials (and the best trial's promotion job) and replace a continued trial.
    {"apiGroups": ["forgetless.dev"], "resources": ["finetunejobs"], "verbs": READ + ["create", "patch", "delete"]},
    {"apiGroups": ["forgetless.dev"], "resources": ["finetunejobs/status"], "verbs": ["get", "patch"]},
    # FineTuneSweeps: read, write their status.
    {"apiGroups": ["forgetless.dev"], "resources": ["finetunesweeps"], "verbs": READ},
    {"apiGroups": ["forgetless.dev"], "resources": ["finetunesweeps/status"], "verbs": ["get", "patch"]},
    # Stage Jobs: create, mirror spec.suspend (patch), delete on deadline / spec reset.
    {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": READ + ["create", "patch", "delete"]},
    # Stage results are read from the pods' termination messages; failures from waiting reasons.
    {"apiGroups": [""], "resources": ["pods"], "verbs": READ},
    # The forgetless-baseline-cache ConfigMap (created, then merge-patched; never updated or deleted).
    {"apiGroups": [""], "resources": ["configmaps"], "verbs": READ + ["create", "patch"]},
    # Headless Service of multi-worker training.
    {"apiGroups": [""], "resources": ["services"], "verbs": READ + ["create", "delete"]},
    # Operator-side check that the volumes a job names exist (reported as a condition).
    {"apiGroups": [""], "resources": ["persistentvolumeclaims"], "verbs": ["get"]},
    # Events at every transition and rejection (core/v1 Events; kopf posts the same kind).
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
    # kopf peering inside a namespace (--namespace mode, not --standalone).
    {"apiGroups": ["kopf.dev"], "resources": ["kopfpeerings"], "verbs": READ + ["patch"]},
]

CLUSTER_RULES: list[dict[str, Any]] = [
    # kopf observes CRDs and namespaces at run time (cluster-wide or namespace-glob watching).
    {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"], "verbs": ["list", "watch"]},
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
    # kopf peering across the cluster (--all-namespaces mode, not --standalone).
    {"apiGroups": ["kopf.dev"], "resources": ["clusterkopfpeerings"], "verbs": READ + ["patch"]},
]

RULES: list[dict[str, Any]] = NAMESPACED_RULES + CLUSTER_RULES

HAND_OFF_RULES: list[dict[str, Any]] = [
    # output.handOff.inferenceService: read the InferenceService, point it at the promoted model. Granted only
    # when the chart's handOff.kserve.enabled is true.
    {"apiGroups": ["serving.kserve.io"], "resources": ["inferenceservices"], "verbs": ["get", "patch"]},
]
