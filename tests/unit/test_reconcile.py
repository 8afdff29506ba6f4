"""reconcile(): a table of cases over the whole lifecycle, plus the objects it builds (kubernetes-validate)."""

from __future__ import annotations

import copy
import json
from datetime import datetime, timedelta, timezone
from typing import Any

import kubernetes_validate
import pytest

from forgetless import vocabulary
from forgetless.api.schema import FineTuneJobSpec, FineTuneJobStatus
from forgetless_operator.finetunejob import children
from forgetless_operator.finetunejob.children import OperatorConfig
from forgetless_operator.finetunejob.decision import CreateObject, DeleteObject, Observed, PatchObject, RecordBaselineCache
from forgetless.timefmt import fmt_time
from forgetless_operator.finetunejob.reconcile import reconcile, spec_hash

T0 = datetime(2026, 11, 29, 9, 0, 0, tzinfo=timezone.utc)
UID = "0b1c2d3e-0000-4000-8000-000000000001"
K8S = "1.35"
CONFIG = OperatorConfig(trainer_image="ghcr.io/forgetless/trainer:test")

SPEC: dict[str, Any] = {
    "model": {"name": "bundled:tiny-world"},
    "dataset": {"task": {"path": "bundled:support-tickets"}},
    "output": {"pvc": {"claimName": "outputs", "readOnly": False}},
}

BASELINE = {"stage": "baseline", "scores": {"knowledge": 0.9, "format": 1.0, "task": 0.1}, "tasks": {}, "items": 40,
            "cacheKey": "s-abc", "cached": False}
TRAIN = {"stage": "train", "steps": 120, "totalSteps": 120, "epochs": 2.0, "finalLoss": 0.42,
         "stoppedReason": "completed", "tokensPerSecond": 900.0, "outputPath": "/x", "method": "lora"}
EVALUATE = {"stage": "evaluate", "scores": {"knowledge": 0.85, "format": 1.0, "task": 0.7}, "tasks": {}, "items": 40,
            "paired": {"knowledge_qa": {"category": "knowledge", "n11": 17, "n10": 1, "n01": 0, "n00": 2}}}


PROMOTED = {"path": "/mnt/pvc/outputs/forgetless/team/ft/promoted", "claimName": "outputs",
            "pathInVolume": "forgetless/team/ft/promoted", "uri": "pvc://outputs/forgetless/team/ft/promoted",
            "digest": "sha256:" + "ab" * 32, "format": "merged+adapter"}


def evaluate_result(verdict: str = "Passed", promoted: dict | None = PROMOTED) -> dict:
    """An evaluate summary as the stage reports it: the gate ran in the stage, the model promoted unless blocked."""
    reasons = [] if verdict == "Passed" else ["knowledge dropped 0.05 (interval 0.01..0.09) > 0.02"]
    gate = {"verdict": verdict, "reasons": reasons, "meanDrop": 0.025, "taskGain": 0.6, "categories": [
        {"category": "knowledge", "baseline": 0.9, "final": 0.85, "drop": 0.05, "dropUpper": 0.09,
         "dropLower": 0.01, "threshold": 0.05, "passed": verdict == "Passed"}]}
    if verdict == "Rescued":
        gate["rescue"] = {"strategy": "interpolation", "outcome": "Rescued", "alpha": 0.5, "taskScore": 0.9,
                          "kept": 0.99, "evaluations": 5, "maxEvaluations": 6,
                          "trials": [{"alpha": 0.5, "half": "choice", "verdict": "Passed"},
                                     {"alpha": 0.5, "half": "confirmation", "verdict": "Passed"}]}
    return {**EVALUATE, "gate": gate, "promotedModel": promoted if verdict in ("Passed", "Warned", "Rescued") else None}


def cache_key(spec: Any) -> str:
    return "s-" + spec.model.name.replace(":", "-")


def ftj(spec: dict | None = None, status: dict | None = None, **meta: Any) -> dict:
    body = {
        "apiVersion": "forgetless.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "ft", "namespace": "team", "uid": UID, "generation": 1, "resourceVersion": "7", **meta},
        "spec": copy.deepcopy(spec if spec is not None else SPEC),
    }
    if status is not None:
        body["status"] = copy.deepcopy(status)
    return body


def run(job: dict, observed: Observed | None = None, now: datetime = T0):
    decision = reconcile(job, observed or Observed(), now, CONFIG, cache_key=cache_key)
    FineTuneJobStatus.model_validate(decision.status)  # the exact wire shape of the CRD status
    for action in decision.actions:
        if isinstance(action, CreateObject):
            kubernetes_validate.validate(action.obj, K8S, strict=True)
    return decision


def created(decision) -> dict[str, dict]:
    return {a.obj["metadata"]["name"]: a.obj for a in decision.actions if isinstance(a, CreateObject)}


def reasons(decision) -> list[str]:
    return [e.reason for e in decision.events]


def cond(status: dict, type_: str) -> dict:
    return next(c for c in status["conditions"] if c["type"] == type_)


def stage_job(job: dict, stage: str, *, complete: bool = False, failed: bool = False, failed_pods: int = 0,
              active: int = 0) -> dict:
    obj = children.stage_job(job, FineTuneJobSpec.model_validate(job["spec"]), stage, CONFIG)
    obj["metadata"]["creationTimestamp"] = fmt_time(T0)
    conditions = []
    if complete:
        conditions.append({"type": "Complete", "status": "True"})
    if failed:
        conditions.append({"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                           "message": "Job has reached the specified backoff limit"})
    obj["status"] = {"failed": failed_pods, "active": active, "conditions": conditions}
    return obj


def pod(stage: str, *, message: str | None = None, exit_code: int = 0, rank: int | None = None,
        waiting: str | None = None) -> dict:
    state: dict[str, Any]
    if waiting:
        state = {"waiting": {"reason": waiting, "message": "secret \"hf\" not found"}}
    else:
        state = {"terminated": {"exitCode": exit_code, "message": message or "", "finishedAt": fmt_time(T0 + timedelta(minutes=5))}}
    meta: dict[str, Any] = {"name": f"ft-{stage}-x", "labels": {vocabulary.LABEL_JOB: "ft", vocabulary.LABEL_STAGE: stage}}
    if rank is not None:
        meta["annotations"] = {vocabulary.COMPLETION_INDEX_ANNOTATION: str(rank)}
    return {"metadata": meta, "status": {"containerStatuses": [{"name": children.CONTAINER, "state": state}]}}


def started(decision_job: dict, decision) -> dict:
    """The FineTuneJob after the edge patched the decision's status."""
    job = copy.deepcopy(decision_job)
    job["status"] = decision.status
    return job


def through(stage_done: str, verdict: str = "Passed", spec: dict | None = None):
    """Drive a job from creation through `stage_done` succeeding; returns (job, observed, decision)."""
    job = ftj(spec)
    decision = run(job)
    job = started(job, decision)
    observed = Observed()
    results = {"baseline": BASELINE, "train": TRAIN, "evaluate": evaluate_result(verdict)}
    for stage in children.STAGES:
        observed.jobs[stage] = stage_job(job, stage, complete=True)
        observed.pods[stage] = [pod(stage, message=json.dumps(results[stage]))]
        decision = run(job, observed, T0 + timedelta(minutes=10))
        job = started(job, decision)
        if stage == stage_done:
            break
    return job, observed, decision


# --------------------------------------------------------------------------- start and preflight


def test_new_job_creates_the_baseline_job_carrying_the_frozen_spec():
    decision = run(ftj())
    objs = created(decision)
    assert set(objs) == {"ft-baseline"}  # no spec ConfigMap: the pod template carries the spec
    assert decision.status["phase"] == "Baseline"
    assert decision.status["specHash"] == spec_hash(FineTuneJobSpec.model_validate(SPEC).to_wire())
    assert decision.status["startTime"] == fmt_time(T0)
    assert reasons(decision) == ["BaselineStarted"]
    assert cond(decision.status, "Ready")["status"] == "False"
    assert cond(decision.status, "Progressing") == {
        "type": "Progressing", "status": "True", "reason": "Baseline", "message": "baseline running (Job ft-baseline)",
        "lastTransitionTime": fmt_time(T0), "observedGeneration": 1,
    }
    template = objs["ft-baseline"]["spec"]["template"]
    document = json.loads(template["metadata"]["annotations"][vocabulary.SPEC_ANNOTATION])
    assert document["kind"] == "FineTuneJob" and document["spec"]["output"]["pvc"]["claimName"] == "outputs"
    assert decision.status["startedSpec"] == document["spec"]  # written with the status patch of the start
    volume = next(v for v in template["spec"]["volumes"] if v["name"] == "job-spec")
    assert volume == {"downwardAPI": {"items": [{"path": "job.json", "fieldRef": {
        "fieldPath": f"metadata.annotations['{vocabulary.SPEC_ANNOTATION}']"}}]}, "name": "job-spec"}
    container = template["spec"]["containers"][0]
    assert container["args"][3] == "/etc/forgetless/job/job.json"  # the file the stage reads, as before


def test_a_started_job_builds_its_next_stage_from_status_started_spec_not_the_edited_spec():
    job = ftj()
    job = started(job, run(job))
    job["spec"]["resources"] = {"trainerImage": "evil:latest"}  # edited after the start
    observed = Observed(jobs={"baseline": stage_job(job, "baseline", complete=True)},
                        pods={"baseline": [pod("baseline", message=json.dumps(BASELINE))]})
    train = created(run(job, observed, T0 + timedelta(minutes=5)))["ft-train"]
    assert train["spec"]["template"]["spec"]["containers"][0]["image"] == CONFIG.trainer_image
    document = json.loads(train["spec"]["template"]["metadata"]["annotations"][vocabulary.SPEC_ANNOTATION])
    assert "trainerImage" not in document["spec"].get("resources", {})


def test_a_started_job_without_its_started_spec_fails_as_spec_lost():
    job = ftj()
    job = started(job, run(job))
    job["status"].pop("startedSpec")
    observed = Observed(jobs={"baseline": stage_job(job, "baseline", complete=True)},
                        pods={"baseline": [pod("baseline", message=json.dumps(BASELINE))]})
    lost = run(job, observed, T0 + timedelta(minutes=5))
    assert lost.status["phase"] == "Failed" and cond(lost.status, "Failed")["reason"] == "SpecLost"


def test_a_spec_too_large_for_the_pod_annotation_is_refused_naming_the_field():
    big = copy.deepcopy(SPEC)
    big["resources"] = {"nodeSelector": {f"example.com/label-{i:05d}-{'x' * 200}": "y" * 60 for i in range(1200)}}
    decision = run(ftj(big))
    assert created(decision) == {} and decision.status["phase"] == "Pending"
    assert "specHash" not in decision.status
    ready = cond(decision.status, "Ready")
    assert ready["reason"] == "SpecTooLarge"
    assert "spec.resources.nodeSelector" in ready["message"] and "forgetless.dev/spec" in ready["message"]
    assert reasons(decision) == ["SpecTooLarge"]


def test_replaying_a_running_stage_creates_nothing_and_emits_nothing():
    job = ftj()
    first = run(job)
    job = started(job, first)
    observed = Observed(jobs={"baseline": stage_job(job, "baseline", active=1)})
    again = run(job, observed, T0 + timedelta(seconds=30))
    assert again.actions == [] and again.events == []
    assert again.status["conditions"] == first.status["conditions"]  # lastTransitionTime unchanged


def test_a_quiet_pod_or_the_job_controllers_counts_change_no_decision():
    """What the kit's ChildFilter skips (readplan.quiet_pod, an unchanged child_signature) must not
    change reconcile's Decision."""
    from forgetless_operator.finetunejob.readplan import child_signature, quiet_pod

    job = ftj()
    job = started(job, run(job))
    fresh = stage_job(job, "baseline")
    counted = copy.deepcopy(fresh)
    counted["status"].update(active=1, ready=0, startTime=fmt_time(T0))
    assert child_signature("Job", fresh) == child_signature("Job", counted)
    quiet = {"metadata": {"name": "ft-baseline-x", "labels": {vocabulary.LABEL_JOB: "ft", vocabulary.LABEL_STAGE: "baseline",
                                                              "batch.kubernetes.io/job-name": "ft-baseline"}},
             "status": {"phase": "Pending"}}
    assert quiet_pod(quiet)
    base = Observed(jobs={"baseline": fresh})
    with_pod = Observed(jobs={"baseline": counted}, pods={"baseline": [quiet]})
    later = T0 + timedelta(seconds=30)
    a, b = run(job, base, later), run(job, with_pod, later)
    assert (a.actions, a.status, a.events) == (b.actions, b.status, b.events)


@pytest.mark.parametrize(
    "spec_patch, missing, reason",
    [
        ({"output": {}}, frozenset(), "OutputVolumeRequired"),
        ({}, frozenset({"outputs"}), "VolumeNotFound"),
        ({"training": {"epochs": -1}}, frozenset(), "InvalidSpec"),
    ],
)
def test_preflight_rejections_are_conditions_with_one_event(spec_patch, missing, reason):
    job = ftj({**SPEC, **spec_patch})
    decision = run(job, Observed(missing_claims=missing))
    assert decision.actions == []
    assert decision.status["phase"] == "Pending"
    ready = cond(decision.status, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", reason)
    assert [(e.type, e.reason) for e in decision.events] == [("Warning", reason)]
    assert "specHash" not in decision.status
    replay = run(started(job, decision), Observed(missing_claims=missing), T0 + timedelta(minutes=1))
    assert replay.events == [] and replay.actions == []


def test_missing_volume_message_names_the_claim_and_the_fix():
    decision = run(ftj(), Observed(missing_claims=frozenset({"outputs"})))
    assert "outputs" in decision.status["message"] and "create it" in decision.status["message"]


# --------------------------------------------------------------------------- stages and the gate


def test_baseline_success_records_scores_caches_and_starts_training():
    job, observed, decision = through("baseline")
    assert decision.status["phase"] == "Training"
    assert decision.status["baselineScores"] == BASELINE["scores"]
    assert decision.status["stages"]["baseline"]["phase"] == "Succeeded"
    assert decision.status["stages"]["baseline"]["result"] == BASELINE
    assert "ft-train" in created(decision)
    assert reasons(decision) == ["BaselineSucceeded", "TrainStarted"]
    (record,) = [a for a in decision.actions if isinstance(a, RecordBaselineCache)]
    assert record.name == CONFIG.baseline_cache_configmap
    entry = json.loads(record.data["s-bundled-tiny-world"])
    assert entry["claimName"] == "outputs" and entry["scores"] == BASELINE["scores"]


def test_train_success_records_progress_and_starts_evaluation():
    job, observed, decision = through("train")
    assert decision.status["phase"] == "Evaluating"
    assert decision.status["progress"] == {"step": 120, "totalSteps": 120, "epoch": 2.0, "loss": 0.42,
                                           "stoppedReason": "completed"}
    assert "ft-evaluate" in created(decision)


def test_train_progress_carries_the_general_kl(monkeypatch):
    monkeypatch.setitem(TRAIN, "generalKL", 0.1234)
    _, _, decision = through("train")
    assert decision.status["progress"]["generalKL"] == 0.1234
    from forgetless.api.schema import FineTuneJobStatus

    status = FineTuneJobStatus.model_validate({"progress": decision.status["progress"]})
    assert status.progress.general_kl == 0.1234


@pytest.mark.parametrize("verdict, phase, promoted, ready, event", [
    ("Passed", "Succeeded", True, "True", "GatePassed"),
    ("Warned", "Succeeded", True, "True", "GateWarned"),
    ("Rescued", "Succeeded", True, "True", "GateRescued"),
    ("Failed", "Blocked", False, "False", "GateBlocked"),
    ("NoTaskGain", "Blocked", False, "False", "GateNoTaskGain"),
])
def test_gate_verdict_decides_the_final_phase(verdict, phase, promoted, ready, event):
    job, observed, decision = through("evaluate", verdict)
    status = decision.status
    assert status["phase"] == phase and status["promoted"] is promoted
    assert status["gate"]["verdict"] == verdict
    assert cond(status, "Ready")["status"] == ready
    assert cond(status, "Progressing")["status"] == "False"
    assert status["finalScores"] == EVALUATE["scores"]
    assert status["forgetting"] == pytest.approx({"knowledge": 0.05, "format": 0.0})  # task is gain, not forgetting
    assert event in reasons(decision)
    assert ("Promoted" in reasons(decision)) is promoted
    assert status["completionTime"]
    assert status["forgettingPoints"] == "2.5 pts"  # the printer column: readable at a glance
    if phase == "Blocked":  # the reason says which: forgetting, or no evidence of learning the task
        assert cond(status, "Ready")["reason"] == event.removeprefix("Gate").replace("Blocked", "GateBlocked")
    # kstatus: a blocked job will not progress without a change (Flux fails fast on Stalled=True)
    assert cond(status, "Stalled")["status"] == ("True" if phase == "Blocked" else "False")
    replay = run(job, observed, T0 + timedelta(minutes=20))
    assert replay.events == [] and replay.actions == [] and replay.status == status


def test_a_rescued_job_records_the_alpha_and_evaluations_in_status_and_metrics():
    from forgetless_operator.metrics import OperatorMetrics

    job, observed, decision = through("evaluate", "Rescued")
    rescue = decision.status["gate"]["rescue"]
    assert rescue["alpha"] == 0.5 and rescue["evaluations"] == 5 and rescue["kept"] == 0.99
    assert cond(decision.status, "Ready")["status"] == "True"
    metrics = OperatorMetrics()
    metrics.observe("team", "ft", {}, decision.status)
    registry = metrics.metrics.registry
    assert registry.get_sample_value("forgetless_rescue_alpha", {"namespace": "team", "finetunejob": "ft"}) == 0.5
    assert registry.get_sample_value("forgetless_rescue_evaluations", {"namespace": "team", "finetunejob": "ft"}) == 5
    assert registry.get_sample_value("forgetless_gate_passed", {"namespace": "team", "finetunejob": "ft"}) == 1


def test_promoted_model_is_recorded_with_its_volume_path_uri_and_digest():
    job, observed, decision = through("evaluate", "Passed")
    assert decision.status["promotedModel"] == {
        "path": "forgetless/team/ft/promoted", "uri": "pvc://outputs/forgetless/team/ft/promoted",
        "claimName": "outputs", "digest": PROMOTED["digest"], "format": "merged+adapter"}
    (event,) = [e for e in decision.events if e.reason == "Promoted"]
    assert "pvc://outputs/forgetless/team/ft/promoted" in event.message and PROMOTED["digest"] in event.message


def finish_evaluate(result: dict, spec: dict | None = None):
    job, observed, _ = through("train", spec=spec)
    observed.jobs["evaluate"] = stage_job(job, "evaluate", complete=True)
    observed.pods["evaluate"] = [pod("evaluate", message=json.dumps(result))]
    return run(job, observed, T0 + timedelta(minutes=10))


def test_the_operator_records_the_stage_verdict_and_never_recomputes_it():
    # the paired table says "no forgetting", the stage's gate said Failed: the stage's verdict stands
    blocked = {**evaluate_result("Failed"), "paired": {"knowledge_qa": {"category": "knowledge", "n11": 20,
                                                                         "n10": 0, "n01": 0, "n00": 0}}}
    assert finish_evaluate(blocked).status["phase"] == "Blocked"


@pytest.mark.parametrize("result, reason", [
    ({**EVALUATE}, "ResultInvalid"),  # no gate verdict at all
    ({**evaluate_result(), "gate": {"verdict": "Maybe", "meanDrop": 0.0}}, "ResultInvalid"),
    ({**evaluate_result(), "truncated": True, "gate": None}, "ResultInvalid"),
    ({**evaluate_result("Failed"), "promotedModel": PROMOTED}, "ResultInvalid"),  # a blocked model reported promoted
    (evaluate_result("Passed", promoted=None), "PromotionMissing"),  # promote: true but nothing written
])
def test_an_inconsistent_evaluate_result_fails_with_a_clear_reason(result, reason):
    decision = finish_evaluate(result)
    assert decision.status["phase"] == "Failed"
    assert cond(decision.status, "Failed")["reason"] == reason
    assert cond(decision.status, "Stalled")["status"] == "True"
    assert "promotedModel" not in decision.status


def test_promote_false_succeeds_without_a_promoted_model():
    spec = {**SPEC, "output": {**SPEC["output"], "promote": False}}
    decision = finish_evaluate(evaluate_result("Passed", promoted=None), spec=spec)
    assert decision.status["phase"] == "Succeeded" and decision.status["promoted"] is False
    assert "promotedModel" not in decision.status and "Promoted" not in reasons(decision)


def test_baseline_cache_hit_skips_the_baseline():
    entry = json.dumps({**BASELINE, "claimName": "outputs", "storedAt": fmt_time(T0)})
    decision = run(ftj(), Observed(baseline_cache={"s-bundled-tiny-world": entry}))
    baseline = decision.status["stages"]["baseline"]
    assert baseline["phase"] == "Skipped" and baseline["result"]["cached"] is True
    assert decision.status["baselineScores"] == BASELINE["scores"]
    assert set(created(decision)) == {"ft-train"}
    assert reasons(decision) == ["BaselineCacheHit", "TrainStarted"]


def test_a_self_rehearsal_job_runs_its_baseline_pod_even_on_a_cache_hit():
    """Its baseline pod writes the self-rehearsal data the train pods read; skipping it would leave none."""
    entry = json.dumps({**BASELINE, "claimName": "outputs", "storedAt": fmt_time(T0)})
    spec = copy.deepcopy(SPEC)
    spec["dataset"]["selfRehearsal"] = {"size": 32}
    decision = run(ftj(spec), Observed(baseline_cache={"s-bundled-tiny-world": entry}))
    assert "ft-baseline" in created(decision)
    assert "BaselineCacheHit" not in reasons(decision)


def test_a_self_rehearsal_prompt_pool_on_a_configmap_is_mounted_in_the_stage_pods():
    spec = copy.deepcopy(SPEC)
    spec["dataset"]["selfRehearsal"] = {"prompts": {"configMap": {"name": "my-prompts", "key": "prompts.jsonl"}}}
    pod_spec = created(run(ftj(spec)))["ft-baseline"]["spec"]["template"]["spec"]
    assert "my-prompts" in {v.get("configMap", {}).get("name") for v in pod_spec["volumes"]}


def test_cache_entry_on_another_volume_is_not_a_hit():
    entry = json.dumps({**BASELINE, "claimName": "other-volume", "storedAt": fmt_time(T0)})
    decision = run(ftj(), Observed(baseline_cache={"s-bundled-tiny-world": entry}))
    assert "ft-baseline" in created(decision)


def test_cache_keeps_at_most_max_entries_dropping_the_oldest():
    config = OperatorConfig(baseline_cache_max_entries=2)
    job = ftj()
    job = started(job, run(job))
    observed = Observed(
                        jobs={"baseline": stage_job(job, "baseline", complete=True)},
                        pods={"baseline": [pod("baseline", message=json.dumps(BASELINE))]},
                        baseline_cache={"old": json.dumps({"storedAt": "2026-01-01T00:00:00Z"}),
                                        "new": json.dumps({"storedAt": "2026-06-01T00:00:00Z"})})
    decision = reconcile(job, observed, T0, config, cache_key=cache_key)
    (record,) = [a for a in decision.actions if isinstance(a, RecordBaselineCache)]
    assert record.data["old"] is None and "new" not in record.data and record.data["s-bundled-tiny-world"]


# --------------------------------------------------------------------------- failures and retries


def test_failed_pod_with_backoff_left_is_a_retry_not_a_failure():
    job, observed, _ = through("baseline")
    observed.jobs["train"] = stage_job(job, "train", failed_pods=1, active=1)
    observed.pods["train"] = [pod("train", exit_code=1, message="CUDA out of memory")]
    decision = run(job, observed, T0 + timedelta(minutes=11))
    assert decision.status["phase"] == "Training"
    assert decision.status["stages"]["train"]["attempts"] == 2
    assert [(e.type, e.reason) for e in decision.events] == [("Warning", "TrainRetrying")]
    assert "CUDA out of memory" in decision.events[0].message
    replay = run(started(job, decision), observed, T0 + timedelta(minutes=12))
    assert replay.events == [] and replay.actions == []


def test_an_oom_killed_evaluate_pod_is_retried_with_a_warning_naming_oomkilled_and_the_limit():
    job, observed, _ = through("train")
    observed.jobs["evaluate"] = stage_job(job, "evaluate", failed_pods=1, active=1)
    killed = pod("evaluate", exit_code=137, message="[evaluate] answer 96/858 (11 %)")  # the log tail
    killed["status"]["containerStatuses"][0]["state"]["terminated"]["reason"] = "OOMKilled"
    killed["spec"] = {"containers": [{"name": children.CONTAINER, "resources": {"limits": {"memory": "6Gi"}}}]}
    observed.pods["evaluate"] = [killed]
    decision = run(job, observed, T0 + timedelta(minutes=11))
    assert decision.status["phase"] == "Evaluating" and decision.status["stages"]["evaluate"]["attempts"] == 2
    (event,) = decision.events
    assert (event.type, event.reason) == ("Warning", "EvaluateRetrying")
    assert "OOMKilled" in event.message and "memory limit 6Gi" in event.message and "attempt 2 of" in event.message
    # no limit set: the message says it was the node's memory
    del killed["spec"]
    again = run(job, observed, T0 + timedelta(minutes=11))
    assert "no memory limit set" in again.events[0].message


def test_failed_stage_job_fails_the_finetunejob_with_the_stage_message():
    job, observed, _ = through("baseline")
    observed.jobs["train"] = stage_job(job, "train", failed=True, failed_pods=3)
    observed.pods["train"] = [pod("train", exit_code=4,
                                  message=json.dumps({"stage": "train", "error": "no such file /data/x.jsonl"}))]
    decision = run(job, observed, T0 + timedelta(minutes=11))
    status = decision.status
    assert status["phase"] == "Failed"
    assert status["stages"]["train"]["phase"] == "Failed"
    assert status["message"].endswith("last pod: no such file /data/x.jsonl") and "BackoffLimitExceeded" in status["message"]
    assert (cond(status, "Failed")["reason"], cond(status, "Ready")["reason"]) == ("TrainFailed", "TrainFailed")
    assert [(e.type, e.reason) for e in decision.events] == [("Warning", "TrainFailed")]
    assert decision.actions == []


def test_unreadable_termination_message_fails_the_stage():
    job, observed, _ = through("baseline")
    observed.jobs["train"] = stage_job(job, "train", complete=True)
    observed.pods["train"] = [pod("train", message="Traceback (most recent call last): ...")]
    decision = run(job, observed, T0 + timedelta(minutes=11))
    assert decision.status["phase"] == "Failed" and "ResultUnreadable" in decision.status["message"]


def test_non_finite_loss_in_the_result_becomes_null_so_the_status_stays_valid_json():
    job, observed, _ = through("baseline")
    observed.jobs["train"] = stage_job(job, "train", complete=True)
    observed.pods["train"] = [pod("train", message=json.dumps({**TRAIN, "finalLoss": float("nan")}))]
    status = run(job, observed, T0 + timedelta(minutes=11)).status
    assert status["phase"] == "Evaluating"
    assert "loss" not in status["progress"] and status["progress"]["step"] == 120
    json.dumps(status, allow_nan=False)  # what the API server accepts


def test_waiting_pod_problem_is_surfaced_in_the_stage_message():
    job = ftj()
    job = started(job, run(job))
    observed = Observed(jobs={"baseline": stage_job(job, "baseline", active=1)},
                        pods={"baseline": [pod("baseline", waiting="CreateContainerConfigError")]})
    decision = run(job, observed, T0 + timedelta(seconds=20))
    assert "CreateContainerConfigError" in decision.status["stages"]["baseline"]["message"]
    assert decision.status["phase"] == "Baseline"


def test_deadline_exceeded_deletes_running_children_and_fails():
    job = ftj({**SPEC, "activeDeadlineSeconds": 600})
    job = started(job, run(job))
    observed = Observed(jobs={"baseline": stage_job(job, "baseline", active=1)})
    assert run(job, observed, T0 + timedelta(seconds=599)).status["phase"] == "Baseline"
    decision = run(job, observed, T0 + timedelta(seconds=600))
    assert decision.status["phase"] == "Failed"
    assert cond(decision.status, "Failed")["reason"] == "DeadlineExceeded"
    assert decision.actions == [DeleteObject("batch/v1", "Job", "team", "ft-baseline", "Background")]
    assert [(e.type, e.reason) for e in decision.events] == [("Warning", "DeadlineExceeded")]


def test_deadline_is_a_live_control_that_may_be_extended_after_the_start():
    job = ftj({**SPEC, "activeDeadlineSeconds": 600})
    job = started(job, run(job))
    observed = Observed(jobs={"baseline": stage_job(job, "baseline", active=1)})
    job["spec"]["activeDeadlineSeconds"] = 1200
    decision = run(job, observed, T0 + timedelta(seconds=900))
    assert decision.status["phase"] == "Baseline" and decision.actions == []
    assert "SpecChanged" not in [c["type"] for c in decision.status["conditions"]]
    assert run(job, observed, T0 + timedelta(seconds=1200)).status["phase"] == "Failed"


# --------------------------------------------------------------------------- controls


def test_suspended_job_does_not_start_and_resumes_when_unsuspended():
    job = ftj({**SPEC, "suspend": True})
    decision = run(job)
    assert decision.status["phase"] == "Suspended" and decision.actions == []
    assert reasons(decision) == ["Suspended"]
    assert cond(decision.status, "Ready")["reason"] == "Suspended"
    job = started(job, decision)
    assert run(job, now=T0 + timedelta(minutes=1)).events == []
    job["spec"]["suspend"] = False
    resumed = run(job, now=T0 + timedelta(minutes=2))
    assert resumed.status["phase"] == "Baseline" and "ft-baseline" in created(resumed)


def test_suspending_a_started_job_suspends_its_stage_job_and_resume_undoes_only_that():
    job = ftj()
    job = started(job, run(job))
    running = stage_job(job, "baseline", active=1)
    observed = Observed(jobs={"baseline": running})
    job["spec"]["suspend"] = True
    decision = run(job, observed, T0 + timedelta(minutes=1))
    assert decision.status["phase"] == "Suspended"
    assert decision.actions == [PatchObject("batch/v1", "Job", "team", "ft-baseline", {
        "metadata": {"annotations": {vocabulary.SUSPENDED_BY_OPERATOR: "true"}}, "spec": {"suspend": True}})]
    job = started(job, decision)
    running["spec"]["suspend"] = True
    running["metadata"]["annotations"] = {vocabulary.SUSPENDED_BY_OPERATOR: "true"}
    job["spec"]["suspend"] = False
    resumed = run(job, observed, T0 + timedelta(minutes=2))
    assert resumed.actions == [PatchObject("batch/v1", "Job", "team", "ft-baseline", {
        "metadata": {"annotations": {vocabulary.SUSPENDED_BY_OPERATOR: None}}, "spec": {"suspend": False}})]
    assert reasons(resumed) == ["Resumed"] and resumed.status["phase"] == "Baseline"
    # A Job that Kueue holds (suspended without our annotation) is left alone.
    running["metadata"]["annotations"] = {}
    assert run(started(job, resumed), observed, T0 + timedelta(minutes=3)).actions == []


def test_queue_label_is_mirrored_to_children_but_not_their_pods():
    job = ftj(labels={vocabulary.QUEUE_LABEL: "gpu-a"})
    objs = created(run(job))
    for obj in objs.values():
        assert obj["metadata"]["labels"][vocabulary.QUEUE_LABEL] == "gpu-a"
    assert vocabulary.QUEUE_LABEL not in objs["ft-baseline"]["spec"]["template"]["metadata"]["labels"]


def test_spec_change_after_start_is_flagged_and_not_applied():
    job = ftj()
    job = started(job, run(job))
    observed = Observed(jobs={"baseline": stage_job(job, "baseline", complete=True)},
                        pods={"baseline": [pod("baseline", message=json.dumps(BASELINE))]})
    job["spec"]["resources"] = {"trainerImage": "evil:latest"}
    job["metadata"]["generation"] = 2
    decision = run(job, observed, T0 + timedelta(minutes=5))
    changed = cond(decision.status, "SpecChanged")
    assert (changed["status"], changed["reason"], changed["observedGeneration"]) == ("True", "SpecChangedAfterStart", 2)
    assert "SpecChanged" in reasons(decision)
    train = created(decision)["ft-train"]
    assert train["spec"]["template"]["spec"]["containers"][0]["image"] == CONFIG.trainer_image
    assert decision.status["observedGeneration"] == 2
    job = started(job, decision)
    assert "SpecChanged" not in reasons(run(job, observed, T0 + timedelta(minutes=6)))
    # Run controls may change after the start without flagging the spec.
    job["spec"] = {**SPEC, "suspend": False, "activeDeadlineSeconds": 999}
    restored = run(job, observed, T0 + timedelta(minutes=7))
    assert cond(restored.status, "SpecChanged")["status"] == "False"


def test_deleting_job_gets_no_actions():
    job = ftj(deletionTimestamp=fmt_time(T0))
    decision = run(job)
    assert decision.actions == [] and decision.events == []


def test_ttl_deletes_the_finetunejob_after_completion():
    job, observed, decision = through("evaluate", spec={**SPEC, "ttlSecondsAfterFinished": 3600})
    done = T0 + timedelta(minutes=10)
    assert run(job, observed, done + timedelta(seconds=3599)).actions == []
    expired = run(job, observed, done + timedelta(seconds=3600))
    assert expired.actions == [DeleteObject("forgetless.dev/v1alpha1", "FineTuneJob", "team", "ft", "Background")]
    assert reasons(expired) == ["Expired"]


def test_child_of_an_earlier_job_with_the_same_name_is_waited_for():
    job = ftj()
    job = started(job, run(job))
    stale = stage_job(job, "baseline", active=1)
    stale["metadata"]["ownerReferences"][0]["uid"] = "an-older-uid"
    decision = run(job, Observed(jobs={"baseline": stale}))
    assert decision.actions == [] and "earlier FineTuneJob" in decision.status["message"]


# --------------------------------------------------------------------------- the objects


def test_stage_pods_meet_pod_security_restricted_and_the_contract():
    objs = created(run(ftj({**SPEC, "model": {"name": "org/model", "tokenSecretRef": {"name": "hf"}},
                            "resources": {"gpusPerWorker": 2}})))
    job = objs["ft-baseline"]
    assert job["metadata"]["ownerReferences"] == [{
        "apiVersion": "forgetless.dev/v1alpha1", "kind": "FineTuneJob", "name": "ft", "uid": UID,
        "controller": True, "blockOwnerDeletion": True}]
    assert job["metadata"]["labels"][vocabulary.LABEL_JOB] == "ft"
    assert job["metadata"]["labels"][vocabulary.LABEL_STAGE] == "baseline"
    pod_spec = job["spec"]["template"]["spec"]
    assert pod_spec["automountServiceAccountToken"] is False
    assert pod_spec["securityContext"]["runAsNonRoot"] is True
    assert pod_spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod_spec["containers"]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"] and sc["capabilities"] == {"drop": ["ALL"]}
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert container["args"] == ["stage", "baseline", "--job", "/etc/forgetless/job/job.json",
                                 "--workdir", "/mnt/pvc/outputs/forgetless/team/ft"]
    env = {e["name"]: e for e in container["env"]}
    assert env["FORGETLESS_TERMINATION_MESSAGE_PATH"]["value"] == "/dev/termination-log"
    assert env["FORGETLESS_CACHE_DIR"]["value"] == "/mnt/pvc/outputs/.forgetless-cache/baselines"
    assert env["FORGETLESS_MODEL_CACHE_DIR"]["value"] == "/mnt/pvc/outputs/.forgetless-cache/models"  # once per volume
    assert env["HF_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "hf", "key": "token"}}
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/etc/forgetless/job", "/tmp", children.HOME, "/mnt/pvc/outputs"} <= mounts


def test_multi_worker_training_is_an_indexed_job_with_a_headless_service():
    spec = {**SPEC, "resources": {"workers": 4, "gpusPerWorker": 1},
            "dataset": {"task": {"configMap": {"name": "tickets"}}}}
    job, observed, decision = through("baseline", spec=spec)
    train = next(a.obj for a in decision.actions if isinstance(a, CreateObject) and a.obj["kind"] == "Job")
    service = next(a.obj for a in decision.actions if isinstance(a, CreateObject) and a.obj["kind"] == "Service")
    assert train["metadata"]["name"] == "ft-train-workers"
    assert (train["spec"]["completionMode"], train["spec"]["completions"], train["spec"]["parallelism"]) == ("Indexed", 4, 4)
    pod_spec = train["spec"]["template"]["spec"]
    assert pod_spec["subdomain"] == service["metadata"]["name"] == "ft-train-workers"
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"] == {vocabulary.LABEL_JOB: "ft", vocabulary.LABEL_STAGE: "train"}
    env = {e["name"]: e for e in pod_spec["containers"][0]["env"]}
    assert env["RANK"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.annotations['batch.kubernetes.io/job-completion-index']")
    assert (env["WORLD_SIZE"]["value"], env["LOCAL_RANK"]["value"]) == ("4", "0")
    assert env["MASTER_ADDR"]["value"] == "ft-train-workers-0.ft-train-workers"
    ports = {p["name"]: p["containerPort"] for p in pod_spec["containers"][0]["ports"]}
    assert ports["metrics"] == 9400
    mounts = {m["mountPath"] for m in pod_spec["containers"][0]["volumeMounts"]}
    assert "/etc/forgetless/configmaps/tickets" in mounts


def test_multi_worker_stage_waits_for_job_completion_and_reads_rank_zero():
    spec = {**SPEC, "resources": {"workers": 2}}
    job, observed, decision = through("baseline", spec=spec)
    job = started(job, decision)
    observed.services["ft-train-workers"] = children.workers_service(job)
    observed.jobs["train"] = stage_job(job, "train", active=1)
    observed.pods["train"] = [pod("train", message=json.dumps(TRAIN), rank=0),
                              pod("train", message="{}", rank=1)]
    running = run(job, observed, T0 + timedelta(minutes=11))
    assert running.status["phase"] == "Training" and running.actions == []
    observed.jobs["train"] = stage_job(job, "train", complete=True)
    done = run(job, observed, T0 + timedelta(minutes=12))
    assert done.status["stages"]["train"]["result"] == TRAIN and done.status["phase"] == "Evaluating"


@pytest.mark.parametrize("terminated, text", [
    ({"exitCode": 4, "message": '{"stage":"train","error":"dataset.task.path: /x missing"}'}, "dataset.task.path: /x missing"),
    ({"exitCode": 1, "message": "Traceback ...\nRuntimeError: boom"}, "Traceback ...\nRuntimeError: boom"),
    ({"exitCode": 137, "reason": "OOMKilled"}, "OOMKilled: the container was killed for exceeding the node's memory "
     "(no memory limit set) (exit code 137); raise spec.resources.container.limits.memory if it happens again"),
    ({"exitCode": 137, "reason": "Error"}, "Error (exit code 137)"),
    ({"exitCode": 2}, "exit code 2"),
])
def test_failure_text_prefers_the_stage_error(terminated, text):
    from forgetless_operator.finetunejob.observation import failure_text

    assert failure_text(terminated) == text


# --------------------------------------------------------------------------- multi-worker group restarts


def group_pod(job_name: str, rank: int, *, exit_code: int | None = None, phase: str | None = None,
              message: str = "") -> dict:
    state = {"running": {}} if exit_code is None else {"terminated": {
        "exitCode": exit_code, "message": message, "finishedAt": fmt_time(T0 + timedelta(minutes=5))}}
    return {"metadata": {"name": f"{job_name}-{rank}-abcde",
                         "labels": {vocabulary.LABEL_JOB: "ft", vocabulary.LABEL_STAGE: "train",
                                    "batch.kubernetes.io/job-name": job_name},
                         "annotations": {vocabulary.COMPLETION_INDEX_ANNOTATION: str(rank)}},
            "status": {"phase": phase or ("Running" if exit_code is None else ("Succeeded" if exit_code == 0 else "Failed")),
                       "containerStatuses": [{"name": children.CONTAINER, "state": state}]}}


def group_job(job: dict, attempt: int, **state: Any) -> dict:
    spec = FineTuneJobSpec.model_validate(job["spec"])
    obj = children.stage_job(job, spec, "train", CONFIG, attempt)
    base = stage_job(job, "train", **state)
    obj["metadata"]["creationTimestamp"] = fmt_time(T0)
    obj["status"] = base["status"]
    return obj


def training_group(backoff_limit: int = 2):
    spec = {**SPEC, "resources": {"workers": 2}, "backoffLimit": backoff_limit}
    job, observed, decision = through("baseline", spec=spec)
    job = started(job, decision)
    observed.services["ft-train-workers"] = children.workers_service(job)
    return job, observed


def test_group_jobs_never_retry_one_index_alone_and_each_attempt_has_its_own_name():
    job, _ = training_group()
    spec = FineTuneJobSpec.model_validate(job["spec"])
    first, third = (children.stage_job(job, spec, "train", CONFIG, n) for n in (1, 3))
    assert first["spec"]["backoffLimit"] == 0 and third["spec"]["backoffLimit"] == 0
    assert (first["metadata"]["name"], third["metadata"]["name"]) == ("ft-train-workers", "ft-train-workers-g3")
    assert third["metadata"]["labels"][vocabulary.LABEL_ATTEMPT] == "3"
    assert third["spec"]["template"]["metadata"]["labels"][vocabulary.LABEL_ATTEMPT] == "3"
    env = {e["name"]: e.get("value") for e in third["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MASTER_ADDR"] == "ft-train-workers-g3-0.ft-train-workers"
    single = children.stage_job(job, spec.model_copy(update={"resources": spec.resources.model_copy(
        update={"workers": 1})}), "train", CONFIG)
    assert single["spec"]["backoffLimit"] == 2  # one worker: the Job retries its pod (it resumes)


def test_a_failed_rank_restarts_the_whole_group_from_a_new_attempt():
    job, observed = training_group()
    observed.jobs["train"] = group_job(job, 1, failed=True, failed_pods=1)
    observed.pods["train"] = [group_pod("ft-train-workers", 1, exit_code=137, message="")]
    decision = run(job, observed, T0 + timedelta(minutes=11))
    train = decision.status["stages"]["train"]
    assert decision.status["phase"] == "Training"
    assert train["attempts"] == 2 and train["jobName"] == "ft-train-workers-g2"
    assert [r["attempt"] for r in train["restarts"]] == [1] and "rank 1 exit code 137" in train["restarts"][0]["message"]
    assert "ft-train-workers-g2" in created(decision)
    assert [(e.type, e.reason) for e in decision.events] == [("Warning", "TrainGroupRestarted"),
                                                             ("Normal", "TrainStarted")]
    # replayed (a restarted operator, the create answered AlreadyExists): nothing new happens
    job = started(job, decision)
    replay = run(job, observed, T0 + timedelta(minutes=11))
    assert replay.events == [] and replay.status["stages"]["train"] == train
    # the new attempt exists: the failed one is deleted, the new one observed
    observed.jobs["train"] = group_job(job, 2, active=2)
    observed.superseded_jobs = [group_job(job, 1, failed=True, failed_pods=1)]
    observed.pods["train"] += [group_pod("ft-train-workers-g2", 0), group_pod("ft-train-workers-g2", 1)]
    later = run(job, observed, T0 + timedelta(minutes=12))
    assert DeleteObject("batch/v1", "Job", "team", "ft-train-workers") in later.actions
    assert later.status["stages"]["train"]["attempts"] == 2 and later.events == []


def test_the_next_attempt_waits_until_the_failed_attempts_pods_are_gone():
    job, observed = training_group()
    observed.jobs["train"] = group_job(job, 1, failed=True, failed_pods=1)
    observed.pods["train"] = [group_pod("ft-train-workers", 0),  # rank 0 still running
                              group_pod("ft-train-workers", 1, exit_code=1, message="boom")]
    decision = run(job, observed, T0 + timedelta(minutes=11))
    assert "ft-train-workers-g2" not in created(decision)
    assert "waiting for the pods of the previous attempt" in decision.status["message"]
    job = started(job, decision)
    observed.pods["train"] = [group_pod("ft-train-workers", 1, exit_code=1, message="boom")]
    decision = run(job, observed, T0 + timedelta(minutes=12))
    assert "ft-train-workers-g2" in created(decision)
    assert reasons(decision) == ["TrainStarted"]


def test_group_restarts_stop_at_backoff_limit():
    job, observed = training_group(backoff_limit=1)
    observed.jobs["train"] = group_job(job, 2, failed=True, failed_pods=1)
    observed.pods["train"] = [group_pod("ft-train-workers-g2", 0, exit_code=1, message='{"error": "NaN loss"}')]
    job["status"]["stages"]["train"] = {"phase": "Running", "attempts": 2, "jobName": "ft-train-workers-g2"}
    decision = run(job, observed, T0 + timedelta(minutes=20))
    assert decision.status["phase"] == "Failed"
    assert "group attempt 2 of 2" in decision.status["message"] and "NaN loss" in decision.status["message"]
    assert not created(decision)


def test_group_success_reads_rank_zero_of_the_current_attempt():
    job, observed = training_group()
    job["status"]["stages"]["train"] = {"phase": "Running", "attempts": 2, "jobName": "ft-train-workers-g2"}
    observed.jobs["train"] = group_job(job, 2, complete=True)
    observed.superseded_jobs = [group_job(job, 1, failed=True, failed_pods=1)]
    observed.pods["train"] = [group_pod("ft-train-workers", 0, exit_code=0, message=json.dumps({**TRAIN, "steps": 1})),
                              group_pod("ft-train-workers-g2", 0, exit_code=0, message=json.dumps(TRAIN)),
                              group_pod("ft-train-workers-g2", 1, exit_code=0, message=json.dumps(TRAIN))]
    decision = run(job, observed, T0 + timedelta(minutes=30))
    train = decision.status["stages"]["train"]
    assert train["phase"] == "Succeeded" and train["result"] == TRAIN and train["attempts"] == 2
    assert decision.status["phase"] == "Evaluating"


def test_index_jobs_picks_the_newest_attempt():
    from forgetless_operator.finetunejob.observation import index_jobs

    job, _ = training_group()
    jobs = [group_job(job, 2), stage_job(job, "baseline"), group_job(job, 1), group_job(job, 3)]
    current, superseded = index_jobs(jobs)
    assert current["train"]["metadata"]["name"] == "ft-train-workers-g3"
    assert current["baseline"]["metadata"]["name"] == "ft-baseline"
    assert sorted(j["metadata"]["name"] for j in superseded) == ["ft-train-workers", "ft-train-workers-g2"]


def test_the_budget_controllers_adjustments_are_recorded_on_the_train_stage():
    adjustments = [{"step": 25, "probeMean": 0.89, "rolledBackToStep": 0, "learningRateScale": 0.5,
                    "extraGeneralFraction": 0.15}]
    job = ftj()
    job = started(job, run(job))
    observed = Observed()
    for stage, result in (("baseline", BASELINE), ("train", {**TRAIN, "adjustments": adjustments})):
        observed.jobs[stage] = stage_job(job, stage, complete=True)
        observed.pods[stage] = [pod(stage, message=json.dumps(result))]
        decision = run(job, observed, T0 + timedelta(minutes=10))
        job = started(job, decision)
    assert decision.status["stages"]["train"]["adjustments"] == adjustments


# --------------------------------------------------------------------------- hand-off to KServe

ISVC_KEY = ("team", "support-bot")
OLD_URI = "pvc://outputs/models/v1"


def isvc(uri: str = OLD_URI, annotations: dict | None = None) -> dict:
    return {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": {"name": "support-bot", "namespace": "team", "annotations": annotations or {}},
            "spec": {"predictor": {"model": {"modelFormat": {"name": "huggingface"}, "storageUri": uri}}}}


def with_hand_off(**service: Any) -> dict:
    return {**SPEC, "output": {**SPEC["output"], "handOff": {"inferenceService": {"name": "support-bot", **service}}}}


def handed_off(verdict: str, service: dict | None, **target: Any):
    job, observed, _ = through("train", spec=with_hand_off(**target))
    observed.jobs["evaluate"] = stage_job(job, "evaluate", complete=True)
    observed.pods["evaluate"] = [pod("evaluate", message=json.dumps(evaluate_result(verdict)))]
    observed.inference_services = {ISVC_KEY: service}
    return job, observed, run(job, observed, T0 + timedelta(minutes=10))


def isvc_patches(decision) -> list[PatchObject]:
    return [a for a in decision.actions if isinstance(a, PatchObject) and a.kind == "InferenceService"]


def test_a_passing_job_points_the_inference_service_at_the_promoted_model_once():
    job, observed, decision = handed_off("Passed", isvc())
    (patch,) = isvc_patches(decision)
    assert (patch.api_version, patch.namespace, patch.name) == ("serving.kserve.io/v1beta1", "team", "support-bot")
    assert patch.patch["spec"] == {"predictor": {"model": {"storageUri": PROMOTED["uri"]}}}
    assert patch.patch["metadata"]["annotations"] == {
        vocabulary.PROMOTED_BY_ANNOTATION: "team/ft", vocabulary.PREVIOUS_URI_ANNOTATION: OLD_URI,
        vocabulary.PROMOTED_DIGEST_ANNOTATION: PROMOTED["digest"]}
    handed = decision.status["handOff"]["inferenceService"]
    assert (handed["phase"], handed["storageUri"], handed["previousStorageUri"]) == ("Patched", PROMOTED["uri"], OLD_URI)
    assert cond(decision.status, "HandedOff")["status"] == "True" and decision.status["phase"] == "Succeeded"
    assert "InferenceServiceUpdated" in reasons(decision)
    # a later pass (the InferenceService now serves the model) patches nothing again
    job = started(job, decision)
    observed.inference_services = {ISVC_KEY: isvc(PROMOTED["uri"])}
    again = run(job, observed, T0 + timedelta(minutes=11))
    assert isvc_patches(again) == [] and again.events == []


@pytest.mark.parametrize("verdict", ["Failed", "NoTaskGain"])
def test_a_job_the_gate_stopped_never_touches_the_inference_service(verdict):
    _, _, decision = handed_off(verdict, isvc())
    assert isvc_patches(decision) == [] and "handOff" not in decision.status
    assert decision.status["phase"] == "Blocked"


def test_a_missing_inference_service_is_a_condition_and_the_job_still_succeeds():
    job, observed, decision = handed_off("Passed", None)
    assert isvc_patches(decision) == []
    assert decision.status["phase"] == "Succeeded" and decision.status["promotedModel"]["uri"] == PROMOTED["uri"]
    handed_cond = cond(decision.status, "HandedOff")
    assert (handed_cond["status"], handed_cond["reason"]) == ("False", "InferenceServiceNotFound")
    assert decision.status["handOff"]["inferenceService"]["phase"] == "NotFound"
    assert [e.type for e in decision.events if e.reason == "HandOffFailed"] == ["Warning"]
    # it appears later: the next (resync) pass of the finished job hands off
    job = started(job, decision)
    observed.inference_services = {ISVC_KEY: isvc()}
    later = run(job, observed, T0 + timedelta(minutes=20))
    assert [p.patch["spec"]["predictor"]["model"]["storageUri"] for p in isvc_patches(later)] == [PROMOTED["uri"]]
    assert cond(later.status, "HandedOff")["status"] == "True"


def test_adapter_only_points_at_the_adapter():
    _, _, decision = handed_off("Passed", isvc(), adapterOnly=True)
    (patch,) = isvc_patches(decision)
    assert patch.patch["spec"]["predictor"]["model"]["storageUri"] == PROMOTED["uri"] + "/adapter"


def test_a_crash_between_the_patch_and_the_status_write_keeps_the_previous_uri():
    annotations = {vocabulary.PROMOTED_BY_ANNOTATION: "team/ft", vocabulary.PREVIOUS_URI_ANNOTATION: OLD_URI}
    _, _, decision = handed_off("Passed", isvc(PROMOTED["uri"], annotations))
    assert isvc_patches(decision) == []  # already done
    assert decision.status["handOff"]["inferenceService"]["previousStorageUri"] == OLD_URI


def test_the_stages_mlflow_record_lands_in_status():
    logged = {"trackingUri": "http://mlflow:5000", "experimentId": "1", "runId": "abc", "registeredModel": "support-bot",
              "version": "3", "alias": "champion"}
    job, observed, _ = through("train")
    observed.jobs["evaluate"] = stage_job(job, "evaluate", complete=True)
    observed.pods["evaluate"] = [pod("evaluate", message=json.dumps({**evaluate_result("Passed"), "mlflow": logged}))]
    decision = run(job, observed, T0 + timedelta(minutes=10))
    assert decision.status["handOff"]["mlflow"] == logged
