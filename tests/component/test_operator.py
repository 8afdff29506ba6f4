"""The operator (kopf + handlers + kube client) against the in-memory fake Kubernetes API.

Each test runs the real `run_operator` (kopf watches, the resync loop, the metrics server) in the
test's event loop, plays kubelet and job controller by writing pod termination messages and Job
conditions into the fake, and proves the HTTP requests the operator made.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

import aiohttp
import kubernetes_validate
import pytest

from forgetless.api.schema import RegressionSpec
from forgetless.gate import evaluate_gate

from forgetless.api.schema import FineTuneJobStatus
from forgetless.vocabulary import LABEL_JOB
from forgetless_operator.finetunejob.children import OperatorConfig
from tests.support.fakeapi import FakeApi, free_port, kubeconfig, serve
from forgetless_operator.handlers import Options, run_operator
from tests.conftest import tool_or_skip

NS = "default"
FTJ = ("forgetless.dev/v1alpha1", "FineTuneJob")
PAIRED_NO_DROP = {
    "knowledge_qa": {"category": "knowledge", "n11": 40, "n10": 0, "n01": 0, "n00": 0},
    "format_kv": {"category": "format", "n11": 40, "n10": 0, "n01": 0, "n00": 0},
    "support_tickets": {"category": "task", "n11": 5, "n10": 0, "n01": 30, "n00": 5},
}
SUMMARIES = {
    "baseline": {"stage": "baseline", "scores": {"knowledge": 1.0, "format": 1.0, "task": 0.125}, "tasks": {},
                 "items": 120, "cacheKey": "s-x", "cached": False},
    "train": {"stage": "train", "steps": 50, "totalSteps": 50, "epochs": 1.0, "finalLoss": 0.3,
              "stoppedReason": "completed", "tokensPerSecond": 1000.0, "outputPath": "/o", "method": "lora"},
    "evaluate": {"stage": "evaluate", "scores": {"knowledge": 1.0, "format": 1.0, "task": 0.875}, "tasks": {},
                 "items": 120, "paired": PAIRED_NO_DROP,
                 # the stage ran the gate (forgetless.gate, same seed) and promoted the model
                 "gate": evaluate_gate(PAIRED_NO_DROP, RegressionSpec()).to_status(),
                 "promotedModel": {"path": "/mnt/pvc/outputs/p", "claimName": "outputs", "pathInVolume": "p",
                                   "uri": "pvc://outputs/p", "digest": "sha256:" + "0" * 64}},
}



async def until(check: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


class Operator:
    """`run_operator` in its own thread and event loop (kopf cancels tasks it did not start when it stops)."""

    def __init__(self, port: int, progress_seconds: float = 0.0) -> None:
        self.port = port
        self.progress_seconds = progress_seconds
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stop_flag: asyncio.Event | None = None
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def _main(self) -> None:
        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            self.stop_flag = asyncio.Event()
            options = Options(namespaces=[NS], metrics_port=self.port, metrics_host="127.0.0.1", resync_seconds=2.0,
                              progress_seconds=self.progress_seconds,
                              config=OperatorConfig(trainer_image="ghcr.io/forgetless/trainer:test"))
            await run_operator(options, stop_flag=self.stop_flag)

        try:
            asyncio.run(main())
        except asyncio.CancelledError:  # kopf cancels its root task on a graceful stop
            pass
        except BaseException as exc:  # noqa: BLE001 - surfaced by the test
            self.error = exc

    async def start(self) -> None:
        self.thread = threading.Thread(target=self._main, name="operator", daemon=True)
        self.thread.start()
        await until(self._ready, what="operator ready")

    def _ready(self) -> bool:
        if self.error is not None:
            raise self.error
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return True
        except OSError:
            return False

    async def get(self, path: str) -> tuple[int, str]:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{self.port}{path}") as response:
                return response.status, await response.text()

    async def stop(self) -> None:
        if self.thread is not None and self.thread.is_alive():
            assert self.loop is not None and self.stop_flag is not None
            self.loop.call_soon_threadsafe(self.stop_flag.set)
            await asyncio.to_thread(self.thread.join, 20)
            assert not self.thread.is_alive(), "the operator did not stop within 20 s"
        if self.error is not None:
            raise self.error


@pytest.fixture
async def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    fake = FakeApi()
    runner, url = await serve(fake)
    config = tmp_path / "kubeconfig"
    config.write_text(json.dumps(kubeconfig(url)))
    monkeypatch.setenv("KUBECONFIG", str(config))
    fake.create({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "outputs", "namespace": NS},
                 "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})
    yield fake
    await runner.cleanup()


@pytest.fixture
async def operator(api: FakeApi):
    op = Operator(free_port())
    await op.start()
    yield op
    await op.stop()


async def metrics_with(operator: Operator, *needles: str, timeout: float = 10.0) -> str:
    """/metrics once it shows every needle (series are updated right after the status patch)."""
    deadline = time.monotonic() + timeout
    while True:
        code, text = await operator.get("/metrics")
        if code == 200 and all(n in text for n in needles):
            return text
        if time.monotonic() > deadline:
            raise AssertionError(f"/metrics lacks {[n for n in needles if n not in text]}:\n{text}")
        await asyncio.sleep(0.05)


def submit(api: FakeApi, name: str = "ft", **spec: Any) -> dict:
    return api.create({
        "apiVersion": "forgetless.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": name, "namespace": NS},
        "spec": {"model": {"name": "bundled:tiny-world"}, "dataset": {"task": {"path": "bundled:support-tickets"}},
                 "output": {"pvc": {"claimName": "outputs", "readOnly": False}}, **spec},
    })



def _finished_at(rank: int) -> str:
    """A kubelet-style finish time: now (plus the rank in seconds), never a fixed date in the past."""
    finished = datetime.now(timezone.utc) + timedelta(seconds=rank + 1)
    return finished.strftime("%Y-%m-%dT%H:%M:%SZ")


def finish_stage(api: FakeApi, job_name: str, summary: dict | None, exit_code: int = 0, failed: bool = False,
                 ranks: int = 1) -> None:
    """What kubelet + the job controller would write: terminated pods (one per rank of an Indexed Job,
    rank 0 holding the summary) and the Job's final condition."""
    job = api.get("batch/v1", "Job", NS, job_name)
    labels = job["spec"]["template"]["metadata"]["labels"]
    for rank in range(ranks):
        message = "stage failed: data path /x missing" if summary is None else json.dumps(
            summary if rank == 0 else {"stage": summary["stage"], "rank": rank})
        meta: dict[str, Any] = {
            "name": f"{job_name}-{rank}-abcde", "namespace": NS,
            "labels": {**labels, "batch.kubernetes.io/job-name": job_name},
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": job_name,
                                 "uid": job["metadata"]["uid"], "controller": True}],
        }
        if ranks > 1:
            meta["annotations"] = {"batch.kubernetes.io/job-completion-index": str(rank)}
        api.create({
            "apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": job["spec"]["template"]["spec"],
            "status": {"phase": "Failed" if failed else "Succeeded", "containerStatuses": [{
                "name": "stage", "ready": False, "restartCount": 0, "image": "x", "imageID": "", "state": {
                    "terminated": {"exitCode": exit_code, "reason": "Error" if exit_code else "Completed",
                                   "message": message, "finishedAt": _finished_at(rank)}}}]},
        })
    condition = {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "backoff limit"} \
        if failed else {"type": "Complete", "status": "True"}
    api.update("batch/v1", "Job", NS, job_name,
               {"status": {"succeeded": 0 if failed else ranks, "failed": 1 if failed else 0, "conditions": [condition]}},
               subresource="status")


def status(api: FakeApi, name: str = "ft") -> dict:
    return (api.get(*FTJ, NS, name) or {}).get("status") or {}


def event_reasons(api: FakeApi) -> list[str]:
    return [e["reason"] for e in api.list("v1", "Event", NS) if e["source"]["component"] == "forgetless-operator"]


async def run_to_the_gate(api: FakeApi) -> dict:
    """Submit a job and finish each stage as it appears; returns the final status."""
    submit(api)
    for stage, job_name, phase in (("baseline", "ft-baseline", "Baseline"), ("train", "ft-train", "Training"),
                                   ("evaluate", "ft-evaluate", "Evaluating")):
        await until(lambda: api.get("batch/v1", "Job", NS, job_name), what=f"Job {job_name}")
        await until(lambda: status(api).get("phase") == phase, what=f"phase {phase}")
        finish_stage(api, job_name, SUMMARIES[stage])
    return await until(lambda: status(api).get("phase") in ("Succeeded", "Blocked", "Failed") and status(api),
                       what="final phase")


async def test_job_runs_through_all_stages_to_the_gate(api: FakeApi, operator: Operator):
    final = await run_to_the_gate(api)
    FineTuneJobStatus.model_validate(final)
    assert final["phase"] == "Succeeded", final.get("message")
    assert final["gate"]["verdict"] == "Passed" and final["promoted"] is True
    assert final["baselineScores"]["task"] == 0.125 and final["finalScores"]["task"] == 0.875
    ready = next(c for c in final["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "Succeeded")

    # The requests: each child created once, valid for Kubernetes 1.35; status via the subresource.
    posts = api.requests_for("POST", "/jobs")
    assert sorted(r.body["metadata"]["name"] for r in posts) == ["ft-baseline", "ft-evaluate", "ft-train"]
    for request in posts + api.requests_for("POST", "/configmaps"):
        kubernetes_validate.validate(request.body, "1.35", strict=True)
    # The frozen spec: in each stage pod's annotation and in status.startedSpec; no spec ConfigMap read or made.
    for request in posts:
        document = json.loads(request.body["spec"]["template"]["metadata"]["annotations"]["forgetless.dev/spec"])
        assert document["spec"] == final["startedSpec"]
    made = [r.body["metadata"]["name"] for r in api.requests_for("POST", "/configmaps")]
    assert made == ["forgetless-baseline-cache"] and not api.requests_for("GET", "/configmaps/ft-spec")
    watches = {r.path.rsplit("/", 1)[-1]: r.query for r in api.requests if r.query.get("watch") == "true"}
    assert watches["jobs"]["labelSelector"] == watches["pods"]["labelSelector"] == LABEL_JOB  # server-side filter
    status_patches = api.requests_for("PATCH", "/finetunejobs/ft/status")
    assert status_patches and all(r.content_type == "application/merge-patch+json" for r in status_patches)
    assert all(set(r.body) == {"status"} for r in status_patches)
    ours = [r.body for r in api.requests_for("POST", "/events") if r.body.get("source", {}).get("component") == "forgetless-operator"]
    for event in ours:
        kubernetes_validate.validate(event, "1.35", strict=True)
        assert event["involvedObject"]["uid"] == api.get(*FTJ, NS, "ft")["metadata"]["uid"]
    await until(lambda: "Promoted" in event_reasons(api), what="events posted after the status")
    reasons = event_reasons(api)
    for reason in ("BaselineStarted", "BaselineSucceeded", "TrainStarted", "TrainSucceeded",
                   "EvaluateStarted", "EvaluateSucceeded", "GatePassed", "Promoted"):
        assert reasons.count(reason) == 1, (reason, reasons)
    # The baseline result went into the namespace's baseline cache.
    cache = api.get("v1", "ConfigMap", NS, "forgetless-baseline-cache")
    (entry,) = cache["data"].values()
    assert json.loads(entry)["claimName"] == "outputs"

    await metrics_with(
        operator,
        'forgetless_gate_passed{finetunejob="ft",namespace="default"} 1.0',
        'forgetless_gate_verdicts_total{namespace="default",verdict="Passed"} 1.0',
        'forgetless_finetunejobs{namespace="default",phase="Succeeded"} 1.0',
        'forgetless_finetunejobs{namespace="default",phase="Evaluating"} 0.0',
        'forgetless_stage_duration_seconds_count{namespace="default",stage="train"} 1.0',
        'forgetless_forgetting_ratio{category="mean",finetunejob="ft",namespace="default"} 0.0',
    )
    assert (await operator.get("/healthz"))[0] == 200 and (await operator.get("/readyz"))[0] == 200


async def test_replayed_events_and_a_restart_create_no_duplicates(api: FakeApi, operator: Operator):
    submit(api)
    await until(lambda: status(api).get("phase") == "Baseline", what="baseline")
    await until(lambda: "BaselineStarted" in event_reasons(api), what="the BaselineStarted event")
    events_before = len(event_reasons(api))
    # The same FineTuneJob and Job events again (annotation touches re-deliver MODIFIED events).
    for i in range(3):
        api.update(*FTJ, NS, "ft", {"metadata": {"annotations": {"touch": str(i)}}})
        api.update("batch/v1", "Job", NS, "ft-baseline", {"metadata": {"annotations": {"touch": str(i)}}})
    await asyncio.sleep(0.5)
    await operator.stop()
    await operator.start()  # a restarted operator replays everything from the API
    await asyncio.sleep(0.5)
    assert len(api.requests_for("POST", "/jobs")) == 1
    assert not api.requests_for("POST", "/configmaps/ft-spec")  # the spec travels in the pod template
    assert not [r for r in api.requests_for("POST", "/configmaps") if r.body["metadata"]["name"] == "ft-spec"]
    assert len(event_reasons(api)) == events_before
    # ...and loses no stage result: the baseline finishing while it is down is still picked up.
    await operator.stop()
    finish_stage(api, "ft-baseline", SUMMARIES["baseline"])
    await operator.start()
    await until(lambda: status(api).get("phase") == "Training", what="training after restart")
    assert status(api)["stages"]["baseline"]["result"] == SUMMARIES["baseline"]


async def test_failed_stage_fails_the_job_with_its_message(api: FakeApi, operator: Operator):
    submit(api)
    await until(lambda: api.get("batch/v1", "Job", NS, "ft-baseline"), what="baseline Job")
    finish_stage(api, "ft-baseline", None, exit_code=4, failed=True)
    final = await until(lambda: status(api).get("phase") == "Failed" and status(api), what="Failed")
    assert "data path /x missing" in final["message"]
    await until(lambda: "BaselineFailed" in event_reasons(api), what="the BaselineFailed event")
    await metrics_with(operator, 'forgetless_finetunejobs{namespace="default",phase="Failed"} 1.0')


async def test_missing_volume_is_a_condition_until_the_claim_appears(api: FakeApi, operator: Operator):
    submit(api, output={"pvc": {"claimName": "not-yet", "readOnly": False}})
    pending = await until(lambda: status(api).get("message") and status(api), what="pending status")
    assert pending["phase"] == "Pending" and "not-yet" in pending["message"]
    assert api.list("batch/v1", "Job", NS) == []
    api.create({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "not-yet", "namespace": NS},
                "spec": {}})
    await until(lambda: api.get("batch/v1", "Job", NS, "ft-baseline"), timeout=10, what="start after resync")
    assert event_reasons(api).count("VolumeNotFound") == 1


async def test_deleting_the_finetunejob_removes_children_and_its_series(api: FakeApi, operator: Operator):
    submit(api)
    await until(lambda: api.get("batch/v1", "Job", NS, "ft-baseline"), what="baseline Job")
    finish_stage(api, "ft-baseline", SUMMARIES["baseline"])
    await until(lambda: status(api).get("baselineScores"), what="baseline scores")
    await metrics_with(operator, 'forgetless_baseline_score_ratio{category="knowledge",finetunejob="ft",namespace="default"}')
    meta = api.get(*FTJ, NS, "ft")["metadata"]
    assert not meta.get("finalizers"), f"the operator must not hold a finalizer: {meta.get('finalizers')}"
    assert not any(k.startswith("forgetless.dev/last-handled") for k in meta.get("annotations") or {})
    api.delete(*FTJ, NS, "ft")
    assert api.get(*FTJ, NS, "ft") is None, "deletion must complete at once: nothing to release"
    assert [j for j in api.list("batch/v1", "Job", NS) if (j["metadata"].get("labels") or {}).get(LABEL_JOB) == "ft"] == []
    assert api.list("v1", "ConfigMap", NS) == [api.get("v1", "ConfigMap", NS, "forgetless-baseline-cache")]
    deadline = time.monotonic() + 10
    while 'finetunejob="ft"' in (text := (await operator.get("/metrics"))[1]) or \
            'forgetless_finetunejobs{namespace="default",phase="Training"} 0.0' not in text:
        assert time.monotonic() < deadline, "per-job series still served after the FineTuneJob was deleted"
        await asyncio.sleep(0.05)


async def test_metrics_pass_promtool(api: FakeApi, operator: Operator, tmp_path: Path):
    promtool = tool_or_skip("promtool")
    await run_to_the_gate(api)
    text = await metrics_with(operator, "forgetless_baseline_score_ratio", "forgetless_stage_duration_seconds_bucket",
                              "forgetless_gate_verdicts_total", "forgetless_task_gain_ratio")
    proc = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr


async def test_suspend_deadline_and_ttl_through_the_api(api: FakeApi, operator: Operator):
    submit(api, activeDeadlineSeconds=3, ttlSecondsAfterFinished=0)
    await until(lambda: api.get("batch/v1", "Job", NS, "ft-baseline"), what="baseline Job")
    api.update(*FTJ, NS, "ft", {"spec": {"suspend": True}})
    await until(lambda: (api.get("batch/v1", "Job", NS, "ft-baseline") or {}).get("spec", {}).get("suspend"),
                what="the stage Job suspended")
    (suspend,) = [r for r in api.requests_for("PATCH", "/jobs/ft-baseline")]
    assert suspend.content_type == "application/merge-patch+json" and suspend.body["spec"] == {"suspend": True}
    await until(lambda: status(api).get("phase") == "Suspended", what="phase Suspended")  # patched after the Job
    # The deadline (3 s from the start) passes while suspended: the resync loop fails the job,
    # deletes its running stage Job, and the TTL of 0 then deletes the FineTuneJob itself.
    await until(lambda: api.get(*FTJ, NS, "ft") is None, timeout=20, what="deadline, then TTL deletion")
    deletes = {r.path.rsplit("/", 1)[-1]: r.body for r in api.requests_for("DELETE")}
    assert deletes["ft-baseline"]["propagationPolicy"] == "Background"
    assert deletes["ft"]["propagationPolicy"] == "Background"
    # the reconcile that deletes the FineTuneJob posts its events after the delete: wait for them
    await until(lambda: {"Suspended", "DeadlineExceeded", "Expired"} <= set(event_reasons(api)),
                what="the Suspended, DeadlineExceeded and Expired events")
    assert api.list("batch/v1", "Job", NS) == []


def test_merge_patch_turns_old_into_new():
    from tests.support.fakeapi import merge
    from forgetless_operator.kit.status import merge_patch

    old = {"phase": "Baseline", "stages": {"baseline": {"phase": "Running", "message": "pulling"}}, "gone": 1}
    new = {"phase": "Training", "stages": {"baseline": {"phase": "Succeeded"}, "train": {"phase": "Running"}}}
    patch = merge_patch(old, new)
    assert patch == {"phase": "Training", "gone": None,
                     "stages": {"baseline": {"phase": "Succeeded", "message": None}, "train": {"phase": "Running"}}}
    assert merge(old, patch) == new
    assert merge_patch(new, new) == {}


def test_cli_needs_a_scope_and_a_valid_port(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    from forgetless_cli.main import main

    monkeypatch.delenv("FORGETLESS_NAMESPACE", raising=False)
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    assert main(["operator"]) == 2
    assert "--namespace" in capsys.readouterr().err
    assert main(["operator", "-n", "a", "--metrics-port", "70000"]) == 2
    assert "--metrics-port 70000" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["operator", "--namespace", "a", "--all-namespaces"])


async def test_multi_worker_training_gets_an_indexed_job_and_a_headless_service(api: FakeApi, operator: Operator):
    submit(api, resources={"workers": 3, "gpusPerWorker": 1})
    await until(lambda: api.get("batch/v1", "Job", NS, "ft-baseline"), what="baseline Job")
    finish_stage(api, "ft-baseline", SUMMARIES["baseline"])
    job = await until(lambda: api.get("batch/v1", "Job", NS, "ft-train-workers"), what="the workers Job")
    service = await until(lambda: api.get("v1", "Service", NS, "ft-train-workers"), what="the headless Service")
    for request in api.requests_for("POST", "/jobs") + api.requests_for("POST", "/services"):
        kubernetes_validate.validate(request.body, "1.35", strict=True)
    assert (job["spec"]["completionMode"], job["spec"]["completions"], job["spec"]["parallelism"]) == ("Indexed", 3, 3)
    assert job["spec"]["template"]["spec"]["subdomain"] == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None"
    finish_stage(api, "ft-train-workers", SUMMARIES["train"], ranks=3)  # rank 0 finished first, rank 2 last
    await until(lambda: status(api).get("phase") == "Evaluating", what="evaluation after all ranks")
    assert status(api)["stages"]["train"]["result"] == SUMMARIES["train"]
    assert status(api)["stages"]["train"]["jobName"] == "ft-train-workers"


async def test_first_reconcile_uses_the_watch_body(api: FakeApi, operator: Operator):
    """A new job's first reconcile works from its ADDED event (no GET before the first child); later
    reconciles re-read the object."""
    submit(api)
    await until(lambda: api.get("batch/v1", "Job", NS, "ft-baseline"), what="baseline Job")
    first_post = next(i for i, r in enumerate(api.requests) if r.method == "POST" and r.path.endswith("/jobs"))
    gets = [r for r in api.requests[:first_post] if r.method == "GET" and r.path.endswith("/finetunejobs/ft")]
    assert gets == []
    finish_stage(api, "ft-baseline", SUMMARIES["baseline"])
    await until(lambda: status(api).get("phase") == "Training", what="training")
    assert any(r.method == "GET" and r.path.endswith("/finetunejobs/ft") for r in api.requests[first_post:])


class StagePodMetrics:
    """A stage pod's /metrics (what forgetless_trainer.live_metrics serves), with text the test sets."""

    def __init__(self) -> None:
        self.text = ""
        self.port = free_port()
        self.scrapes = 0

    async def __aenter__(self) -> "StagePodMetrics":
        from aiohttp import web

        async def metrics(_: web.Request) -> web.Response:
            self.scrapes += 1
            return web.Response(text=self.text, content_type="text/plain")

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()

    def progress(self, stage: str, done: int, total: int, remaining: float, **train: float) -> None:
        lines = [f'forgetless_stage_done_units{{finetunejob="ft",namespace="default",stage="{stage}"}} {done}',
                 f'forgetless_stage_total_units{{finetunejob="ft",namespace="default",stage="{stage}"}} {total}',
                 f'forgetless_stage_progress_ratio{{finetunejob="ft",namespace="default",stage="{stage}"}} {done / total}',
                 f'forgetless_stage_remaining_seconds{{finetunejob="ft",namespace="default",stage="{stage}"}} {remaining}']
        lines += [f'{name}{{finetunejob="ft",namespace="default"}} {value}' for name, value in train.items()]
        self.text = "\n".join(lines) + "\n"


def running_pod(api: FakeApi, job_name: str, port: int) -> dict:
    """What kubelet reports for a started stage pod: Running, with an IP, serving /metrics on `port`."""
    job = api.get("batch/v1", "Job", NS, job_name)
    template = job["spec"]["template"]
    container = {**template["spec"]["containers"][0], "ports": [{"name": "metrics", "containerPort": port}]}
    return api.create({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": f"{job_name}-run", "namespace": NS,
                     "labels": {**template["metadata"]["labels"], "batch.kubernetes.io/job-name": job_name,
                                "job-name": job_name},
                     "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": job_name,
                                          "uid": job["metadata"]["uid"], "controller": True}]},
        "spec": {**template["spec"], "containers": [container]},
        "status": {"phase": "Running", "podIP": "127.0.0.1"},
    })


async def test_a_running_stage_progress_is_read_into_trainer_status_only_when_it_changes(api: FakeApi):
    trainer_status = lambda: status(api).get("trainerStatus") or {}  # noqa: E731
    operator = Operator(free_port(), progress_seconds=0.2)
    await operator.start()
    try:
        async with StagePodMetrics() as pod_metrics:
            submit(api)
            await until(lambda: api.get("batch/v1", "Job", NS, "ft-baseline"), what="Job ft-baseline")
            await until(lambda: trainer_status().get("stage") == "baseline", what="baseline progress at 0")
            assert trainer_status()["progressPercentage"] == 0
            pod_metrics.progress("baseline", 20, 80, 12.4)
            running_pod(api, "ft-baseline", pod_metrics.port)
            await until(lambda: trainer_status().get("progressPercentage") == 25, what="25 % read from the pod")
            now = trainer_status()
            assert now["estimatedRemainingSeconds"] == 12 and now["estimatedRemaining"] == "12s"
            assert {m["name"]: m["value"] for m in now["metrics"]} == {"answers": "20", "totalAnswers": "80"}
            FineTuneJobStatus.model_validate(status(api))
            pod_metrics.progress("baseline", 60, 80, 3.0)
            await until(lambda: trainer_status().get("progressPercentage") == 75, what="75 %")
            assert trainer_status()["estimatedRemaining"] == "3s"
            await metrics_with(operator, 'forgetless_job_progress_ratio{finetunejob="ft",namespace="default"} 0.75',
                               'forgetless_job_remaining_seconds{finetunejob="ft",namespace="default"} 3.0')
            # Unchanged progress is read again and again but never written again.
            progress_patches = lambda: [r for r in api.requests_for("PATCH", "/finetunejobs/ft/status")  # noqa: E731
                                        if "trainerStatus" in (r.body.get("status") or {}) and "metadata" in r.body]
            written, scrapes = len(progress_patches()), pod_metrics.scrapes
            await until(lambda: pod_metrics.scrapes >= scrapes + 4, what="four more reads")
            assert len(progress_patches()) == written
            # Each write carries the version it was computed from (a reconcile that wrote meanwhile wins).
            assert all(r.body["metadata"].get("resourceVersion") for r in progress_patches())

            api.delete("v1", "Pod", NS, "ft-baseline-run")
            finish_stage(api, "ft-baseline", SUMMARIES["baseline"])
            await until(lambda: trainer_status().get("stage") == "train", what="the train stage's progress")
            assert trainer_status()["progressPercentage"] == 0 and "estimatedRemainingSeconds" not in trainer_status()
            pod_metrics.progress("train", 30, 120, 45.0, forgetless_train_loss=0.25)
            running_pod(api, "ft-train", pod_metrics.port)
            await until(lambda: trainer_status().get("progressPercentage") == 25, what="train at 25 %")
            metrics = {m["name"]: m["value"] for m in trainer_status()["metrics"]}
            assert metrics == {"step": "30", "totalSteps": "120", "loss": "0.25"}
            api.delete("v1", "Pod", NS, "ft-train-run")
            finish_stage(api, "ft-train", SUMMARIES["train"])
            await until(lambda: api.get("batch/v1", "Job", NS, "ft-evaluate"), what="Job ft-evaluate")
            finish_stage(api, "ft-evaluate", SUMMARIES["evaluate"])
            await until(lambda: status(api).get("phase") == "Succeeded", what="Succeeded")
            final = trainer_status()
            assert (final["stage"], final["progressPercentage"], final["estimatedRemainingSeconds"]) == ("evaluate", 100, 0)
    finally:
        await operator.stop()
