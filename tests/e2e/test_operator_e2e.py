"""A FineTuneJob on a real cluster: the operator creates each stage Job, reads the stage results
from pod termination messages (written here the way kubelet does), and runs the gate.

No trainer image runs: for each stage this test creates a pod with the stage's labels that no
kubelet will touch (a scheduling gate keeps it off every node) and writes its status subresource,
as kubelet would after the container exited.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

import pytest

from forgetless.api.schema import RegressionSpec
from forgetless.gate import evaluate_gate
import yaml

from tests.e2e.conftest import wait as e2e_wait

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
GROUP, VERSION, PLURAL = "forgetless.dev", "v1alpha1", "finetunejobs"
PAIRED = {"knowledge_qa": {"category": "knowledge", "n11": 40, "n10": 0, "n01": 0, "n00": 0},
          "support_tickets": {"category": "task", "n11": 5, "n10": 0, "n01": 30, "n00": 5}}
SUMMARIES = {
    "baseline": {"stage": "baseline", "scores": {"knowledge": 1.0, "task": 0.125}, "tasks": {}, "items": 80,
                 "cacheKey": "e2e", "cached": False},
    "train": {"stage": "train", "steps": 10, "totalSteps": 10, "epochs": 1.0, "finalLoss": 0.5,
              "stoppedReason": "completed", "tokensPerSecond": 1.0, "outputPath": "/o", "method": "lora"},
    "evaluate": {"stage": "evaluate", "scores": {"knowledge": 1.0, "task": 0.875}, "tasks": {}, "items": 80,
                 "paired": PAIRED,
                 # the stage ran the gate (forgetless.gate, same seed) and promoted the model
                 "gate": evaluate_gate(PAIRED, RegressionSpec()).to_status(),
                 "promotedModel": {"path": "/mnt/pvc/outputs/p", "claimName": "outputs", "pathInVolume": "p",
                                   "uri": "pvc://outputs/p", "digest": "sha256:" + "0" * 64}},
}


def wait(check: Callable[[], Any], what: str, timeout: float = 90.0, period: float = 0.5) -> Any:
    return e2e_wait(check, what, timeout, period)


def play_kubelet(core, namespace: str, job, summary: dict) -> None:
    """A pod of the stage that exited 0 with the stage summary as its termination message."""
    template = job.spec.template
    name = f"{job.metadata.name}-e2e"
    core.create_namespaced_pod(namespace, {
        "metadata": {"name": name, "labels": dict(template.metadata.labels)},
        "spec": {"schedulingGates": [{"name": "forgetless.dev/e2e"}], "restartPolicy": "Never",
                 "containers": [{"name": "stage", "image": template.spec.containers[0].image}]},
    })
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    core.patch_namespaced_pod_status(name, namespace, {"status": {"phase": "Succeeded", "containerStatuses": [{
        "name": "stage", "image": template.spec.containers[0].image, "imageID": "", "ready": False,
        "restartCount": 0, "started": False,
        "state": {"terminated": {"exitCode": 0, "reason": "Completed", "message": json.dumps(summary),
                                 "startedAt": now, "finishedAt": now}},
    }]}})


def run_stages(kube, namespace: str, ftj: dict) -> dict:
    """Play the node for each stage Job the operator creates; the FineTuneJob's status once finished."""
    core, batch, custom = kube.client.CoreV1Api(), kube.client.BatchV1Api(), kube.client.CustomObjectsApi()
    name = ftj["metadata"]["name"]

    def status() -> dict:
        return custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name).get("status") or {}

    for stage, phase in (("baseline", "Baseline"), ("train", "Training"), ("evaluate", "Evaluating")):
        job_name = f"{name}-{stage}"
        job = wait(lambda: next(iter(batch.list_namespaced_job(namespace, field_selector=f"metadata.name={job_name}").items), None),
                   f"Job {job_name}")
        (owner,) = job.metadata.owner_references
        assert (owner.kind, owner.uid, owner.controller, owner.block_owner_deletion) == (
            "FineTuneJob", ftj["metadata"]["uid"], True, True)
        assert job.metadata.labels["forgetless.dev/stage"] == stage
        wait(lambda: status().get("phase") == phase, f"phase {phase}")
        play_kubelet(core, namespace, job, SUMMARIES[stage])
    return wait(lambda: status().get("phase") in ("Succeeded", "Blocked", "Failed") and status(), "the gate")


def test_finetunejob_runs_to_the_gate(kube, namespace: str, operator):
    core, batch = kube.client.CoreV1Api(), kube.client.BatchV1Api()
    custom = kube.client.CustomObjectsApi()
    core.create_namespaced_persistent_volume_claim(namespace, {
        "metadata": {"name": "outputs"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    })
    manifest = yaml.safe_load((REPO / "examples" / "recommended.yaml").read_text())
    manifest["spec"]["output"] = {"pvc": {"claimName": "outputs", "readOnly": False}}
    name = manifest["metadata"]["name"]
    ftj = custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest)

    def status() -> dict:
        return custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name).get("status") or {}

    final = run_stages(kube, namespace, ftj)
    assert final["phase"] == "Succeeded", final.get("message")
    assert final["gate"]["verdict"] == "Passed" and final["promoted"] is True
    ready = next(c for c in final["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"
    def event_reasons() -> set[str]:
        events = core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}").items
        return {e.reason for e in events}

    reasons = wait(lambda: {"BaselineStarted", "GatePassed"} <= event_reasons() and event_reasons(), "events")
    assert {"TrainSucceeded", "EvaluateSucceeded", "Promoted"} <= reasons
    with urllib.request.urlopen(f"http://127.0.0.1:{operator.port}/metrics", timeout=5) as response:
        assert f'forgetless_gate_passed{{finetunejob="{name}",namespace="{namespace}"}} 1.0' in response.read().decode()

    # Deleting the FineTuneJob completes at once (the operator holds no finalizer); garbage collection
    # takes the children.
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name,
                                           body={"propagationPolicy": "Background"})
    wait(lambda: not custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"],
         "the FineTuneJob to be deleted")
    wait(lambda: not batch.list_namespaced_job(namespace, label_selector=f"forgetless.dev/job={name}").items,
         "garbage collection of the stage Jobs", timeout=120)


SERVING = ("serving.kserve.io", "v1beta1", "inferenceservices")
OLD_URI = "pvc://models/support-bot/v1"


def test_editing_the_hand_off_after_the_job_finished_changes_nothing(kube, namespace: str, operator,
                                                                     inference_service_crd):
    """The hand-off follows the spec the job ran (status.startedSpec). A user who edits
    spec.output.handOff after the job finished, while its InferenceService is still missing, neither
    redirects the hand-off nor stalls it: the edited target is never touched, and the one the job ran
    with is patched as soon as it exists (before, the reconcile read the edited one and looked for the
    started one, "not looked up in this pass", and the resync loop kept the job for ever)."""
    core, custom = kube.client.CoreV1Api(), kube.client.CustomObjectsApi()
    core.create_namespaced_persistent_volume_claim(namespace, {
        "metadata": {"name": "outputs"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    })
    manifest = yaml.safe_load((REPO / "examples" / "recommended.yaml").read_text())
    manifest["spec"]["output"] = {"pvc": {"claimName": "outputs"},
                                  "handOff": {"inferenceService": {"name": "support-bot"}}}
    name = manifest["metadata"]["name"]
    ftj = custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest)

    def status() -> dict:
        return custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name).get("status") or {}

    def serving(service: str) -> dict:
        body = {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService", "metadata": {"name": service},
                "spec": {"predictor": {"model": {"modelFormat": {"name": "huggingface"}, "storageUri": OLD_URI}}}}
        return custom.create_namespaced_custom_object(*SERVING[:2], namespace, SERVING[2], body)

    def served(service: str) -> dict:
        return custom.get_namespaced_custom_object(*SERVING[:2], namespace, SERVING[2], service)

    final = run_stages(kube, namespace, ftj)
    assert final["phase"] == "Succeeded" and final["promoted"] is True, final.get("message")
    handed = wait(lambda: (status().get("handOff") or {}).get("inferenceService"), "the hand-off attempt")
    assert (handed["name"], handed["phase"]) == ("support-bot", "NotFound")

    # the user points the finished job at another InferenceService
    serving("other-bot")
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, {
        "spec": {"output": {"handOff": {"inferenceService": {"name": "other-bot"}}}}})
    time.sleep(12)  # two resync periods (5 s) and the watch event of the edit
    assert served("other-bot")["spec"]["predictor"]["model"]["storageUri"] == OLD_URI
    assert not (served("other-bot")["metadata"].get("annotations") or {}).get("forgetless.dev/promoted-by")
    assert status()["handOff"]["inferenceService"]["name"] == "support-bot"

    # the InferenceService the job ran with appears: the next resync hands off to it
    serving("support-bot")
    wait(lambda: served("support-bot")["spec"]["predictor"]["model"]["storageUri"] == "pvc://outputs/p",
         "the started spec's InferenceService to serve the promoted model", timeout=60)
    handed = wait(lambda: (h := status()["handOff"]["inferenceService"])["phase"] == "Patched" and h, "Patched")
    assert (handed["name"], handed["previousStorageUri"]) == ("support-bot", OLD_URI)
    assert served("other-bot")["spec"]["predictor"]["model"]["storageUri"] == OLD_URI


def test_deleting_a_finetunejob_needs_no_operator(kube, namespace: str, operator):
    """Reconciled by the operator, then the operator is gone (uninstalled, crashed): deleting the
    FineTuneJob still completes, because the operator never put a finalizer on it."""
    custom = kube.client.CustomObjectsApi()
    manifest = yaml.safe_load((REPO / "examples" / "recommended.yaml").read_text())
    name = manifest["metadata"]["name"]
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest)

    def body() -> dict:
        return custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)

    wait(lambda: (body().get("status") or {}).get("phase"), "the operator's first reconcile")
    time.sleep(2)  # a few more watch rounds in which the operator could have written a finalizer
    assert not body()["metadata"].get("finalizers")
    operator.kill()
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    wait(lambda: not custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"],
         "the FineTuneJob gone with no operator running", timeout=15)


def _service_account_kubeconfig(kube, namespace: str, account: str, path: Path) -> Path:
    """A kubeconfig for the cluster of $KUBECONFIG that authenticates as ServiceAccount `account`."""
    import os

    core = kube.client.CoreV1Api()
    core.create_namespaced_service_account(namespace, {"metadata": {"name": account}})
    token = core.create_namespaced_service_account_token(
        account, namespace, {"spec": {"expirationSeconds": 3600}}).status.token
    config = yaml.safe_load(Path(os.environ["KUBECONFIG"]).read_text())
    context = next(c for c in config["contexts"] if c["name"] == config["current-context"])
    context["context"]["user"] = account
    config["users"] = [{"name": account, "user": {"token": token}}]
    path.write_text(yaml.safe_dump(config))
    return path


def test_missing_rbac_is_a_condition_and_a_log_line_not_a_crash_loop(kube, crd, namespace: str, tmp_path: Path):
    from tests.e2e.conftest import OperatorProcess

    rbac, custom = kube.client.RbacAuthorizationV1Api(), kube.client.CustomObjectsApi()
    # everything the operator needs in its namespace, except creating Jobs and events (the first
    # requests a new job makes: its stage Job; it makes no spec ConfigMap since the spec annotation)
    rules = [
        {"apiGroups": [GROUP], "resources": ["finetunejobs", "finetunejobs/status", "finetunesweeps",
                                             "finetunesweeps/status"], "verbs": ["*"]},
        {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get", "list", "watch", "patch", "update", "delete"]},
        {"apiGroups": [""], "resources": ["pods", "persistentvolumeclaims"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["services"], "verbs": ["*"]},
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["*"]},
    ]
    rbac.create_namespaced_role(namespace, {"metadata": {"name": "operator"}, "rules": rules})
    rbac.create_namespaced_role_binding(namespace, {
        "metadata": {"name": "operator"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "operator"},
        "subjects": [{"kind": "ServiceAccount", "name": "restricted", "namespace": namespace}]})
    # what kopf reads at cluster scope even when it watches one namespace (the chart's ClusterRole grants it)
    cluster_name = f"{namespace}-kopf"
    rbac.create_cluster_role({"metadata": {"name": cluster_name}, "rules": [
        {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]}]})
    rbac.create_cluster_role_binding({
        "metadata": {"name": cluster_name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": cluster_name},
        "subjects": [{"kind": "ServiceAccount", "name": "restricted", "namespace": namespace}]})
    kube.client.CoreV1Api().create_namespaced_persistent_volume_claim(namespace, {
        "metadata": {"name": "outputs"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})
    kubeconfig = _service_account_kubeconfig(kube, namespace, "restricted", tmp_path / "restricted.kubeconfig")
    operator = OperatorProcess(namespace, tmp_path / "operator.log", env={"KUBECONFIG": str(kubeconfig)}).start()
    try:
        manifest = yaml.safe_load((REPO / "examples" / "recommended.yaml").read_text())
        manifest["spec"]["output"] = {"pvc": {"claimName": "outputs"}}
        name = manifest["metadata"]["name"]
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest)

        def status() -> dict:
            return custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name).get("status") or {}

        ready = e2e_wait(lambda: next((c for c in status().get("conditions") or []
                                       if c["type"] == "Ready" and c["reason"] == "PermissionDenied"), None),
                         "the PermissionDenied condition", timeout=60)
        assert ready["status"] == "False" and "create jobs in namespace " + namespace in ready["message"]
        e2e_wait(lambda: "forbidden: the operator may not create jobs" in operator.log(), "the log line")
        time.sleep(12)  # two resyncs later: still running, still saying why, nothing half-created
        assert operator.proc.poll() is None, operator.log()[-2000:]
        assert "PermissionDenied" == next(c for c in status()["conditions"] if c["type"] == "Ready")["reason"]
        # granted: the next resync goes on by itself
        rules[1]["verbs"].append("create")
        rbac.patch_namespaced_role("operator", namespace, {"rules": rules})
        e2e_wait(lambda: status().get("phase") == "Baseline", "the baseline stage once permitted", timeout=60)
        assert next(c for c in status()["conditions"] if c["type"] == "Ready")["reason"] != "PermissionDenied"
        assert "forbidden: the operator may not create events" in operator.log()  # events: still denied, logged
    finally:
        custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "support-recommended")
        operator.stop()
        rbac.delete_cluster_role_binding(cluster_name)
        rbac.delete_cluster_role(cluster_name)
