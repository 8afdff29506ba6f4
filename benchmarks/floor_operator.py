"""The floor for benchmarks/operator_scale.py: a minimal kopf operator that creates one Job per
FineTuneJob and nothing else (no spec ConfigMap, no status, no events).

    kopf run --standalone --namespace NS --liveness http://127.0.0.1:PORT/healthz benchmarks/floor_operator.py
"""

from __future__ import annotations

import asyncio

import kopf
from kubernetes import client, config

_batch: client.BatchV1Api | None = None


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_) -> None:
    global _batch
    settings.posting.enabled = False  # no events: the floor does nothing but the child
    config.load_kube_config()
    _batch = client.BatchV1Api()


@kopf.on.create("forgetless.dev", "v1alpha1", "finetunejobs")
async def child(name: str, namespace: str, **_) -> None:
    body = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": f"{name}-baseline", "namespace": namespace},
            "spec": {"template": {"spec": {"restartPolicy": "Never",
                                           "containers": [{"name": "stage", "image": "forgetless.invalid/x"}]}}}}
    await asyncio.to_thread(_batch.create_namespaced_job, namespace, body)
