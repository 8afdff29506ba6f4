"""The cluster path end to end on a real API server: the operator (`forgetless operator`, a
subprocess), the real stage code in every pod (`python -m forgetless stage ...` run by the stand-in
node), the output PVC as one shared folder. Each test is one FineTuneJob on the bundled world,
kept small (`maxSteps`, `regression.limit`) so the tier stays well under 15 minutes on 2 cores.

Cases (issue "The cluster path, proven on a real API server"):
- a LoRA job succeeds and its model is promoted onto the volume, `status.promotedModel` set;
- a naive job is Blocked, nothing is promoted, the gate's reasons in status and a Warning event;
- `workers: 2` succeeds and both ranks end with the same weights;
- rank 1 killed mid-training: the whole group restarts from the checkpoint, the job succeeds;
- the operator SIGKILLed mid-stage and restarted: no duplicate child, no lost result;
- a 60-task suite through the termination-message channel: the operator's verdict is the gate's;
- self-rehearsal: made in the baseline pod, read by both train ranks, cached for the next job.
"""

from __future__ import annotations

import copy
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from tests.e2e.conftest import STAGE_TIMES, wait

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # each case trains through real stage pods: 20-60 s

GROUP, VERSION, PLURAL = "forgetless.dev", "v1alpha1", "finetunejobs"
CLAIM = "outputs"
REPO = Path(__file__).resolve().parents[2]
JOB_TIMEOUT = 420.0

BASE: dict[str, Any] = {
    "apiVersion": f"{GROUP}/{VERSION}",
    "kind": "FineTuneJob",
    "spec": {
        "model": {"name": "bundled:tiny-world"},
        "dataset": {"task": {"path": "bundled:support-tickets"}, "general": {"path": "bundled:general"}},
        "training": {"maxSteps": 30, "learningRate": 1.0e-4, "batchSize": 32, "maxSeqLength": 64,
                     "checkpointIntervalSteps": 10},
        # 10-40 steps are too few to learn the task: minTaskGain 0 says these jobs test the cluster path and
        # the forgetting gate, not learning (by default a model that learned nothing is NoTaskGain)
        "regression": {"suite": {"path": "bundled:world-v1"}, "limit": 25, "thresholds": {"minTaskGain": 0}},
        "output": {"pvc": {"claimName": CLAIM}},
        "backoffLimit": 2,
    },
}
LORA = {"method": {"type": "lora", "lora": {"r": 8, "alpha": 16, "targetModules": ["all-linear"]}},
        "mitigation": {"dataMixing": {"generalFraction": 0.3}}}
# full fine-tuning at a high learning rate on the task alone (examples/naive.yaml, shortened)
NAIVE = {"method": {"type": "full"}, "mitigation": {"dataMixing": {"generalFraction": 0.0}},
         "training": {"maxSteps": 40, "learningRate": 1.0e-3}}


def manifest(name: str, *parts: dict) -> dict:
    document = copy.deepcopy(BASE)
    document["metadata"] = {"name": name}
    for part in parts:
        for key, value in part.items():
            if isinstance(value, dict) and isinstance(document["spec"].get(key), dict):
                document["spec"][key] = {**document["spec"][key], **value}
            else:
                document["spec"][key] = value
    return document




class Cluster:
    """One test's view: its namespace, the API, the operator, the stand-in node, the shared volume."""

    def __init__(self, kube: Any, namespace: str, operator: Any, node: Any, test: str) -> None:
        self.kube, self.namespace, self.operator, self.node, self.test = kube, namespace, operator, node, test
        self.core = kube.client.CoreV1Api()
        self.batch = kube.client.BatchV1Api()
        self.custom = kube.client.CustomObjectsApi()
        self.core.create_namespaced_persistent_volume_claim(namespace, {
            "metadata": {"name": CLAIM},
            "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}},
        })
        self.volume = node.root / "pvc" / CLAIM

    def apply(self, document: dict) -> str:
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, document)
        return document["metadata"]["name"]

    def get(self, name: str) -> dict:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)

    def status(self, name: str) -> dict:
        return self.get(name).get("status") or {}

    def workdir(self, name: str) -> Path:
        return self.volume / "forgetless" / self.namespace / name

    def diagnostics(self) -> str:
        node_log = (self.node.root / "node.log").read_text() if (self.node.root / "node.log").exists() else ""
        pods = "\n".join(f"--- {r.name} (exit {r.exit_code})\n{self.node.log(r.namespace, r.name)[-1500:]}"
                         for r in self.node.pods() if r.exit_code not in (None, 0))
        return (f"\n=== operator log (tail)\n{self.operator.log()[-3000:]}\n=== node log (tail)\n{node_log[-2000:]}"
                f"\n=== failed pods\n{pods[-4000:]}")

    def finish(self, name: str, timeout: float = JOB_TIMEOUT) -> dict:
        """Wait for a terminal phase; record each stage's wall time; return the status."""
        try:
            status = wait(lambda: (s := self.status(name)).get("phase") in ("Succeeded", "Blocked", "Failed") and s,
                          f"FineTuneJob {name} to finish", timeout=timeout, period=1.0)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; status: {json.dumps(self.status(name))[:2000]}{self.diagnostics()}") from None
        for stage, record in (status.get("stages") or {}).items():
            start, end = record.get("startTime"), record.get("completionTime")
            if start and end:
                seconds = _seconds(end) - _seconds(start)
                STAGE_TIMES.append((self.test, stage, seconds))
        return status

    def events(self, name: str) -> list[Any]:
        return self.core.list_namespaced_event(self.namespace, field_selector=f"involvedObject.name={name}").items

    def stage_pods(self, name: str, stage: str) -> list[Any]:
        return self.core.list_namespaced_pod(
            self.namespace, label_selector=f"forgetless.dev/job={name},forgetless.dev/stage={stage}").items


def _seconds(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def termination_message(pod: Any) -> dict:
    (status,) = [s for s in pod.status.container_statuses if s.name == "stage"]
    return json.loads(status.state.terminated.message)


@pytest.fixture
def cluster(kube, namespace, operator, node, request) -> Cluster:
    return Cluster(kube, namespace, operator, node, request.node.name)


SERVING = ("serving.kserve.io", "v1beta1", "inferenceservices")
OLD_URI = "pvc://models/support-bot/v1"
HAND_OFF = {"output": {"pvc": {"claimName": CLAIM}, "handOff": {"inferenceService": {"name": "support-bot"}}}}


def serving(cluster: Cluster) -> dict:
    """An InferenceService serving an older model (what a team runs before the fine-tune)."""
    body = {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService", "metadata": {"name": "support-bot"},
            "spec": {"predictor": {"model": {"modelFormat": {"name": "huggingface"}, "storageUri": OLD_URI}}}}
    return cluster.custom.create_namespaced_custom_object(*SERVING[:2], cluster.namespace, SERVING[2], body)


def served_uri(cluster: Cluster) -> tuple[str, dict]:
    found = cluster.custom.get_namespaced_custom_object(*SERVING[:2], cluster.namespace, SERVING[2], "support-bot")
    return found["spec"]["predictor"]["model"]["storageUri"], found["metadata"].get("annotations") or {}


def expect_succeeded(cluster: Cluster, name: str, status: dict) -> None:
    assert status["phase"] == "Succeeded", f"{status.get('message')}{cluster.diagnostics()}"


def expect_each_stage_once(cluster: Cluster, name: str, status: dict) -> None:
    """No duplicate children and no lost result: one Job, one pod and a result per stage, no spec ConfigMap
    (the stage pods carry the spec in their annotation; status.startedSpec keeps it)."""
    selector = f"forgetless.dev/job={name}"
    jobs = sorted(j.metadata.name for j in cluster.batch.list_namespaced_job(cluster.namespace, label_selector=selector).items)
    assert jobs == [f"{name}-baseline", f"{name}-evaluate", f"{name}-train"]
    configmaps = [c.metadata.name for c in cluster.core.list_namespaced_config_map(cluster.namespace, label_selector=selector).items]
    assert configmaps == []
    assert status["startedSpec"]["model"]
    for stage in ("baseline", "train", "evaluate"):
        assert status["stages"][stage]["phase"] == "Succeeded" and status["stages"][stage]["result"]
        assert len(cluster.stage_pods(name, stage)) == 1  # each stage ran once


# --------------------------------------------------------------------------- the six cases


def test_lora_job_succeeds_and_the_promoted_model_is_on_the_volume(cluster: Cluster, inference_service_crd):
    from forgetless.atomic import directory_digest

    serving(cluster)
    name = cluster.apply(manifest("e2e-lora", LORA, HAND_OFF))
    status = cluster.finish(name)
    expect_succeeded(cluster, name, status)
    assert status["gate"]["verdict"] == "Passed" and status["promoted"] is True
    promoted = status["promotedModel"]
    assert promoted["path"] == f"forgetless/{cluster.namespace}/{name}/promoted"
    assert promoted["uri"] == f"pvc://{CLAIM}/{promoted['path']}" and promoted["claimName"] == CLAIM
    on_volume = cluster.volume / promoted["path"]
    assert (on_volume / "config.json").is_file() and (on_volume / "adapter" / "adapter_config.json").is_file()
    assert directory_digest(on_volume) == promoted["digest"]  # exactly what passed the gate
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(on_volume)  # a plain, deployable (merged) model
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"
    # the hand-off: the InferenceService now serves the promoted model; the old URI is kept for a rollback
    uri, annotations = wait(lambda: (found := served_uri(cluster))[0] != OLD_URI and found, "the hand-off")
    assert uri == promoted["uri"] and annotations["forgetless.dev/previous-storage-uri"] == OLD_URI
    handed = wait(lambda: (cluster.status(name).get("handOff") or {}).get("inferenceService"), "status.handOff")
    assert (handed["phase"], handed["previousStorageUri"]) == ("Patched", OLD_URI)
    reasons = wait(lambda: "InferenceServiceUpdated" in (r := {e.reason for e in cluster.events(name)}) and r,
                   "the InferenceServiceUpdated event")
    assert {"BaselineStarted", "TrainStarted", "EvaluateStarted", "GatePassed", "Promoted"} <= reasons


def printed_columns(cluster: Cluster, name: str) -> dict[str, Any]:
    """What `kubectl get ftj NAME` prints: the API server's Table rendering of the CRD's printer columns."""
    client = cluster.custom.api_client
    request = client.param_serialize("GET", f"/apis/{GROUP}/{VERSION}/namespaces/{cluster.namespace}/{PLURAL}/{name}",
                                     header_params={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"},
                                     auth_settings=["BearerToken"])
    response = client.call_api(*request)
    response.read()
    table = json.loads(response.data)
    names = [c["name"] for c in table["columnDefinitions"]]
    return dict(zip(names, table["rows"][0]["cells"]))


def test_kubectl_get_shows_the_training_progress_rising_and_its_eta_falling(cluster: Cluster):
    name = cluster.apply(manifest("e2e-progress", LORA, {"training": {"maxSteps": 60, "checkpointIntervalSteps": 30}}))
    seen: list[tuple[int, int | None, dict]] = []  # (percent, seconds left, printed columns) while training
    suite_progress: set[str] = set()  # the stages read while answering the suite (baseline, evaluate)

    def watch_training() -> bool:
        status = cluster.status(name)
        progress = status.get("trainerStatus") or {}
        if progress.get("stage") in ("baseline", "evaluate") and progress.get("progressPercentage"):
            if {"answers", "totalAnswers"} <= {m["name"] for m in progress.get("metrics", [])}:
                suite_progress.add(progress["stage"])
        if progress.get("stage") == "train" and status["stages"]["train"].get("phase") == "Running":
            point = (progress.get("progressPercentage"), progress.get("estimatedRemainingSeconds"))
            if not seen or point != seen[-1][:2]:
                seen.append((*point, printed_columns(cluster, name)))
        return status.get("phase") in ("Succeeded", "Blocked", "Failed")

    wait(watch_training, "the job to finish, its progress watched", timeout=JOB_TIMEOUT, period=0.5)
    status = cluster.finish(name)
    expect_succeeded(cluster, name, status)
    percents = [p for p, _, _ in seen if p]
    assert len(set(percents)) >= 3, f"too few progress readings while training: {seen}{cluster.diagnostics()}"
    assert percents == sorted(percents), seen  # it only rises
    etas = [e for _, e, _ in seen if e is not None]
    assert len(etas) >= 2 and etas[-1] < etas[0], seen  # and the time left falls
    columns = next(c for p, e, c in reversed(seen) if p and e is not None)
    assert columns["Phase"] == "Training"
    assert isinstance(columns["Progress"], int) and 0 < columns["Progress"] <= 100
    assert columns["ETA"] and columns["ETA"][-1] in "smh", columns  # e.g. 12s, 1m05s
    assert suite_progress, "no baseline or evaluate progress through the suite was read"
    final = status["trainerStatus"]
    assert (final["stage"], final["progressPercentage"], final["estimatedRemainingSeconds"]) == ("evaluate", 100, 0)
    assert printed_columns(cluster, name)["Progress"] == 100


def test_naive_job_is_blocked_and_nothing_is_promoted(cluster: Cluster, inference_service_crd):
    serving(cluster)
    name = cluster.apply(manifest("e2e-naive", NAIVE, HAND_OFF))
    status = cluster.finish(name)
    assert status["phase"] == "Blocked", f"{status.get('message')}{cluster.diagnostics()}"
    assert status["gate"]["verdict"] == "Failed" and status["promoted"] is False
    assert "promotedModel" not in status
    assert status["gate"]["reasons"] and all(r in status["message"] for r in status["gate"]["reasons"])
    assert not (cluster.workdir(name) / "promoted").exists()
    assert (cluster.workdir(name) / "report" / "gate.json").is_file()  # the evidence is kept
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Ready"]["status"] == "False" and conditions["Stalled"]["status"] == "True"
    assert status["forgettingPoints"].endswith(" pts")
    blocked = [e for e in cluster.events(name) if e.reason == "GateBlocked"]
    assert blocked and blocked[0].type == "Warning"
    time.sleep(6)  # a resync later: serving is untouched by a blocked job
    assert served_uri(cluster) == (OLD_URI, {}) and "handOff" not in cluster.status(name)


def test_a_blocked_naive_job_is_rescued_by_interpolation_in_the_evaluate_pod(cluster: Cluster):
    rescue = {"regression": {**BASE["spec"]["regression"], "rescue": {"interpolation": {"maxEvaluations": 4}}}}
    name = cluster.apply(manifest("e2e-rescue", NAIVE, rescue))
    status = cluster.finish(name)
    expect_succeeded(cluster, name, status)
    gate = status["gate"]
    assert gate["verdict"] == "Rescued" and status["promoted"] is True, gate
    record = gate["rescue"]
    assert record["outcome"] == "Rescued" and 0 < record["alpha"] < 1
    assert record["evaluations"] == len(record["trials"]) <= 4
    assert [t["half"] for t in record["trials"]][-1] == "confirmation"
    assert any("α = 1) was blocked" in r for r in gate["reasons"])
    workdir = cluster.workdir(name)
    assert len(list((workdir / "rescue" / "trials").glob("*.json"))) == record["evaluations"]
    # what was promoted is θ₀ + α·(θ − θ₀), not the fine-tuned model
    from safetensors.torch import load_file

    from forgetless_trainer.modeling import resolve_model_location
    from forgetless.api.schema import ModelSpec

    base_dir = Path(resolve_model_location(ModelSpec(name="bundled:tiny-world")))
    base, tuned = load_file(base_dir / "model.safetensors"), load_file(workdir / "train" / "output" / "model.safetensors")
    promoted = load_file(cluster.volume / status["promotedModel"]["path"] / "model.safetensors")
    key = next(k for k in tuned if k.endswith("q_proj.weight"))
    expected = base[key] + record["alpha"] * (tuned[key] - base[key])
    assert (promoted[key] - expected).abs().max().item() < 1e-5
    assert (promoted[key] - tuned[key]).abs().max().item() > 1e-4
    assert "GateRescued" in {e.reason for e in cluster.events(name)}


def test_bad_suite_data_on_the_volume_fails_the_job_before_anything_is_trained(cluster: Cluster):
    import shutil

    suite = cluster.volume / "suites" / "broken"
    shutil.copytree(REPO / "core" / "forgetless" / "bundled" / "suites" / "world-v1", suite)
    lines = (suite / "knowledge_qa.jsonl").read_text().splitlines()
    lines[6] = '{"id": "knowledge_qa-broken", "prompt": "unterminated'
    (suite / "knowledge_qa.jsonl").write_text("\n".join(lines) + "\n")
    bad = {"regression": {**BASE["spec"]["regression"],
                          "suite": {"path": "suites/broken", "pvc": {"claimName": CLAIM}}}}
    name = cluster.apply(manifest("e2e-bad-suite", LORA, bad))
    status = cluster.finish(name)
    assert status["phase"] == "Failed", status.get("message")
    assert "knowledge_qa.jsonl:7: malformed JSONL line" in status["message"], status["message"]
    assert "spec.regression.suite" in status["message"]
    assert [c["reason"] for c in status["conditions"] if c["type"] == "Ready"] == ["BaselineFailed"]
    jobs = {j.metadata.name for j in cluster.batch.list_namespaced_job(
        cluster.namespace, label_selector=f"forgetless.dev/job={name}").items}
    assert jobs == {f"{name}-baseline"}  # nothing was trained
    assert not (cluster.workdir(name) / "train").exists()


def test_two_workers_succeed_with_identical_weights(cluster: Cluster):
    name = cluster.apply(manifest("e2e-two", LORA, {"resources": {"workers": 2}}))
    status = cluster.finish(name)
    expect_succeeded(cluster, name, status)
    train = status["stages"]["train"]
    assert train["jobName"] == f"{name}-train-workers" and train["attempts"] == 1
    messages = sorted((termination_message(p) for p in cluster.stage_pods(name, "train")), key=lambda m: m["rank"])
    assert [m["rank"] for m in messages] == [0, 1] and all(m["worldSize"] == 2 for m in messages)
    assert messages[0]["weightsFingerprint"] == messages[1]["weightsFingerprint"]
    assert status["promotedModel"]["digest"].startswith("sha256:")


def test_a_killed_rank_restarts_the_whole_group_from_the_checkpoint(cluster: Cluster):
    spec = manifest("e2e-kill", LORA, {"resources": {"workers": 2}},
                    {"training": {"maxSteps": 40, "checkpointIntervalSteps": 5}})
    name = cluster.apply(spec)
    checkpoints = cluster.workdir(name) / "train" / "checkpoints"
    wait(lambda: any(checkpoints.glob("step-*/COMPLETE")), "the first checkpoint", timeout=300, period=0.2)
    rank1 = wait(lambda: next((r for r in cluster.node.pods() if r.name.startswith(f"{name}-train-workers-1-")
                               and r.exit_code is None), None), "rank 1 running")
    cluster.node.kill(cluster.namespace, rank1.name)
    status = cluster.finish(name)
    expect_succeeded(cluster, name, status)
    train = status["stages"]["train"]
    assert train["attempts"] == 2 and train["jobName"] == f"{name}-train-workers-g2"
    (restart,) = train["restarts"]
    assert restart["attempt"] == 1 and "rank 1 exit code 137" in restart["message"], restart
    final = [termination_message(p) for p in cluster.stage_pods(name, "train")
             if p.metadata.labels.get("forgetless.dev/attempt") == "2"]
    assert len(final) == 2 and all(m["resumedFromStep"] >= 5 for m in final)  # resumed, not started over
    assert final[0]["weightsFingerprint"] == final[1]["weightsFingerprint"]
    assert "TrainGroupRestarted" in {e.reason for e in cluster.events(name)}
    # the failed attempt's Job was cleaned up; one Job per stage is left
    jobs = {j.metadata.name for j in cluster.batch.list_namespaced_job(
        cluster.namespace, label_selector=f"forgetless.dev/job={name}").items}
    assert jobs == {f"{name}-baseline", f"{name}-train-workers-g2", f"{name}-evaluate"}


def test_an_oom_killed_evaluate_pod_is_retried_and_gives_the_uninterrupted_verdict(cluster: Cluster):
    limits = {"resources": {"container": {"limits": {"memory": "6Gi"}}}}
    killed = cluster.apply(manifest("e2e-oom", LORA, limits))
    straight = cluster.apply(manifest("e2e-oom-ref", LORA, limits))  # the same job, left alone
    pod = wait(lambda: next((r for r in cluster.node.pods() if r.name.startswith(f"{killed}-evaluate-")
                             and r.exit_code is None), None), "the evaluate pod running", timeout=360, period=0.2)
    time.sleep(2)  # into the evaluation
    cluster.node.oom_kill(cluster.namespace, pod.name)
    status, reference = cluster.finish(killed), cluster.finish(straight)
    expect_succeeded(cluster, killed, status)
    expect_succeeded(cluster, straight, reference)
    assert status["stages"]["evaluate"]["attempts"] == 2 and len(cluster.stage_pods(killed, "evaluate")) == 2
    assert status["gate"] == reference["gate"] and status["finalScores"] == reference["finalScores"]
    (warning,) = [e for e in cluster.events(killed) if e.reason == "EvaluateRetrying"]
    assert warning.type == "Warning" and "OOMKilled" in warning.message and "memory limit 6Gi" in warning.message


K8S_DIR = os.environ.get("FORGETLESS_E2E_K8S_DIR")  # set by .ci/run: the control plane this session may restart
K8S_SCRIPTS = Path(__file__).resolve().parents[3] / "shared" / "k8s"


@pytest.mark.skipif(not K8S_DIR or not (K8S_SCRIPTS / "up").exists(),
                    reason="restarting the API server needs the project's test control plane (FORGETLESS_E2E_K8S_DIR, "
                           "set by .ci/run); a user's cluster is not restarted by a test")
def test_the_api_server_restarting_mid_training_loses_nothing(cluster: Cluster):
    import subprocess

    name = cluster.apply(manifest("e2e-apiserver", LORA, {"training": {"maxSteps": 60, "checkpointIntervalSteps": 10}}))
    wait(lambda: any(r.name.startswith(f"{name}-train-") and r.exit_code is None for r in cluster.node.pods()),
         "the train pod running", timeout=300, period=0.2)
    subprocess.run([str(K8S_SCRIPTS / "down"), K8S_DIR], check=True, timeout=120, capture_output=True)
    time.sleep(30)  # the control plane is away; the train pod goes on (or finishes) on the node
    subprocess.run([str(K8S_SCRIPTS / "up"), K8S_DIR], check=True, timeout=240, capture_output=True)
    status = cluster.finish(name)
    expect_succeeded(cluster, name, status)
    assert cluster.operator.proc.poll() is None  # the same operator process: it reconnected by itself
    expect_each_stage_once(cluster, name, status)
    assert status["stages"]["train"]["result"]["steps"] == 60 and status["gate"]["verdict"]


def test_operator_killed_mid_stage_restarts_without_duplicates_or_lost_results(cluster: Cluster):
    name = cluster.apply(manifest("e2e-restart", LORA))
    wait(lambda: any(r.name.startswith(f"{name}-train-") for r in cluster.node.pods()), "the train pod", timeout=300)
    cluster.operator.kill()  # SIGKILL: no cleanup, kopf's state is whatever it wrote
    time.sleep(3)
    cluster.operator.start()
    status = cluster.finish(name)
    expect_succeeded(cluster, name, status)
    expect_each_stage_once(cluster, name, status)
    started = [e.reason for e in cluster.events(name) if e.reason.endswith("Started")]
    assert sorted(started) == ["BaselineStarted", "EvaluateStarted", "TrainStarted"]


def write_suite(root: Path, tasks_per_source: int = 5, items_per_task: int = 5) -> int:
    """A 60-task suite on the volume: world-v1's 12 tasks, each split into 5 tasks of 5 items."""
    from forgetless import bundled

    source = bundled.resolve("bundled:world-v1", "suite")
    document = json.loads((source / "suite.json").read_text())
    tasks = []
    root.mkdir(parents=True, exist_ok=True)
    for task in document["tasks"]:
        lines = (source / task["path"]).read_text().splitlines()
        for part in range(tasks_per_source):
            chunk = lines[part * items_per_task:(part + 1) * items_per_task]
            name = f"{task['name']}_part{part}"
            (root / f"{name}.jsonl").write_text("\n".join(chunk) + "\n")
            tasks.append({**task, "name": name, "path": f"{name}.jsonl"})
    (root / "suite.json").write_text(json.dumps({**document, "name": "world-v1-split60", "tasks": tasks}, indent=1))
    return len(tasks)


def test_a_60_task_suite_goes_through_the_cluster_result_channel(cluster: Cluster):
    from forgetless.api.schema import RegressionSpec
    from forgetless.gate import evaluate_gate

    assert write_suite(cluster.volume / "suites" / "split60") == 60
    # task.source Suite: the suite's own 60 tasks, its task parts included (not the job's held-out records)
    spec = manifest("e2e-suite60", LORA, {"training": {"maxSteps": 10},
                                          "regression": {"suite": {"path": "suites/split60", "pvc": {"claimName": CLAIM}},
                                                         "task": {"source": "Suite"}}})
    assert spec["spec"]["regression"]["thresholds"] == {"minTaskGain": 0}
    name = cluster.apply(spec)
    status = cluster.finish(name)
    assert status["phase"] in ("Succeeded", "Blocked"), f"{status.get('message')}{cluster.diagnostics()}"
    (pod,) = cluster.stage_pods(name, "evaluate")
    message = pod.status.container_statuses[0].state.terminated.message
    assert len(message.encode()) <= 4096 and "truncated" not in json.loads(message)
    # the gate, run here on the stage's full per-task tables from the volume, decides as the cluster did
    summary = json.loads((cluster.workdir(name) / "evaluate" / "summary.json").read_text())
    assert len(summary["paired"]) == 60
    local = evaluate_gate(summary["paired"], RegressionSpec.model_validate(spec["spec"]["regression"]))
    local.notes = summary["gate"]["notes"]  # what the scores rest on: the stage's, which knows the target
    assert status["gate"] == local.to_status()
    assert status["phase"] == ("Blocked" if local.verdict == "Failed" else "Succeeded")


def test_a_job_without_a_suite_is_gated_on_its_own_held_out_task_and_learned_format(cluster: Cluster):
    """No regression.suite, the team's own task data on the volume (one JSONL file, no test split): the baseline
    pod sets a share aside, learns the task's format and stores the detector with the baseline; the train pod never
    trains on the held-out records; the evaluate pod scores them and finds leaks with the stored detector."""
    data = cluster.volume / "data" / "orders.jsonl"
    data.parent.mkdir(parents=True, exist_ok=True)
    source = REPO / "core" / "forgetless" / "bundled" / "data" / "order-requests" / "train.jsonl"
    data.write_text("".join(source.read_text().splitlines(keepends=True)[:300]))
    regression = {k: v for k, v in BASE["spec"]["regression"].items() if k != "suite"}
    own = {"dataset": {"task": {"path": "data/orders.jsonl", "pvc": {"claimName": CLAIM}}, "general": {"path": "bundled:general"}},
           "regression": {**regression, "formatLeak": {"detector": "Learned"}}}
    document = manifest("e2e-own-task", NAIVE, own)
    del document["spec"]["regression"]["suite"]  # no suite: the default for the model (bundled:world-v1)
    name = cluster.apply(document)
    status = cluster.finish(name)
    assert status["phase"] in ("Blocked", "Succeeded"), f"{status.get('message')}{cluster.diagnostics()}"
    assert "suite" not in (cluster.get(name)["spec"].get("regression") or {})
    baseline = status["stages"]["baseline"]["result"]
    assert baseline["taskHoldout"] == {"source": "split", "heldOut": 30, "trainRecords": 270}
    assert baseline["formatDetector"]["usable"] is True
    notes = status["gate"]["notes"]
    assert any("30 of the 300 task records set aside before training" in n for n in notes), notes
    assert any(n.startswith("format: leaks found by the detector") for n in notes), notes
    workdir = cluster.workdir(name)
    assert (workdir / "baseline" / "format_detector.json").is_file()
    train = json.loads((workdir / "train" / "summary.json").read_text())
    assert train["trainExamples"] + train["validationExamples"] == 270  # the held-out 30 were never trained on
    evaluate = json.loads((workdir / "evaluate" / "summary.json").read_text())
    assert "own_task" in evaluate["tasks"] and "support_tickets" not in evaluate["tasks"]
    assert "format_leak" in evaluate["tasks"]
    assert (workdir / "report" / "report.md").read_text().count("What the scores rest on") == 1


def test_self_rehearsal_is_made_in_the_baseline_pod_and_read_by_every_train_pod(cluster: Cluster):
    """General data in the base model's own words (dataset.selfRehearsal, a prompt pool on the volume): the baseline
    pod generates it once onto the volume and into the rehearsal cache; both train ranks mix it in; a second job on
    the same model and pool runs its baseline pod (not skipped by the baseline cache) and takes it from the cache."""
    pool = cluster.volume / "data" / "pool.jsonl"
    pool.parent.mkdir(parents=True, exist_ok=True)
    general = REPO / "core" / "forgetless" / "bundled" / "data" / "general" / "train.jsonl"
    pool.write_text("".join(json.dumps({"prompt": json.loads(line)["prompt"]}) + "\n"
                            for line in general.read_text().splitlines()[:48]))
    rehearsal = {"dataset": {"task": {"path": "bundled:support-tickets"},
                             "selfRehearsal": {"prompts": {"path": "data/pool.jsonl", "pvc": {"claimName": CLAIM}},
                                               "size": 48, "maxNewTokens": 32}}}
    first = manifest("e2e-rehearsal", LORA, rehearsal, {"resources": {"workers": 2}})
    del first["spec"]["dataset"]["general"]  # BASE names the world's general data
    name = cluster.apply(first)
    status = cluster.finish(name)
    expect_succeeded(cluster, name, status)
    made = status["stages"]["baseline"]["result"]["selfRehearsal"]
    assert made["prompts"] == 48 and made["kept"] >= 16 and made["cached"] is False, made
    workdir = cluster.workdir(name)
    records = (workdir / "baseline" / "self_rehearsal.jsonl").read_text().splitlines()
    assert len(records) == made["kept"]
    assert (cluster.volume / ".forgetless-cache" / "rehearsal" / f"{made['key']}.jsonl").is_file()
    messages = [termination_message(p) for p in cluster.stage_pods(name, "train")]
    assert sorted(m["rank"] for m in messages) == [0, 1]
    train = json.loads((workdir / "train" / "summary.json").read_text())
    assert train["epochComposition"]["general"] > 0 and train["worldSize"] == 2
    assert any(n.startswith(f"general data: self-rehearsal, {made['kept']} of 48") for n in status["gate"]["notes"])

    document = manifest("e2e-rehearsal-2", LORA, rehearsal, {"training": {"maxSteps": 10}})
    del document["spec"]["dataset"]["general"]
    second = cluster.apply(document)
    status = cluster.finish(second)
    expect_succeeded(cluster, second, status)
    baseline = status["stages"]["baseline"]
    assert baseline["phase"] == "Succeeded" and baseline["result"]["selfRehearsal"]["cached"] is True
    assert baseline["result"]["selfRehearsal"]["key"] == made["key"]
    assert (cluster.workdir(second) / "baseline" / "self_rehearsal.jsonl").read_text().splitlines() == records
