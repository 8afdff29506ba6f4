"""The stages of a FineTuneJob, baseline → train → evaluate: preflight before the start, each stage's
Job created, observed and recorded in `status.stages`, and the evaluate stage's verdict and promoted
model recorded. The gate runs in the evaluate stage (one place, as in `forgetless run`); the operator
records the verdict and the promoted model the stage reports.

Reads (its `Concern`): a started, unfinished job's children (stage Jobs, Pods, the workers Service);
before the start, the PersistentVolumeClaims the spec names. Of a Job: its True conditions, failed
pods, completion and creation time; of a Pod: whether it is alive, its terminated container, a waiting
or scheduling problem."""

from __future__ import annotations

import json
from typing import Any, Mapping


from forgetless.api.schema import PROMOTING_VERDICTS, FineTuneJobSpec, GateStatus, MlflowHandOffStatus, PromotedModelStatus
from forgetless.lifecycle import STAGE_PHASE, STAGES, TERMINAL_PHASES

from forgetless_operator.finetunejob import children
from forgetless_operator.finetunejob.decision import CreateObject
from forgetless_operator.finetunejob.features import baseline_cache, group_restart, hand_off
from forgetless_operator.finetunejob.observation import (
    WAITING_PROBLEMS, alive, container_state, job_attempt, observe_stage, pod_job_name, pods_of,
)
from forgetless_operator.finetunejob.reads import NOTHING, Body, Concern, Reads, started, status
from forgetless_operator.finetunejob.state import JobPass
from forgetless_operator.kit.status import owned_by

STAGE_TITLE = {"baseline": "Baseline", "train": "Train", "evaluate": "Evaluate"}


# --------------------------------------------------------------------------- what the stages read


def _claims(ftj: Body) -> frozenset[str]:
    try:
        spec = FineTuneJobSpec.model_validate(ftj.get("spec") or {})
    except ValueError:
        return frozenset()
    return frozenset(children.claims(spec))


def reads(ftj: Body) -> Reads:
    if status(ftj).get("phase") in TERMINAL_PHASES:
        return NOTHING
    if not started(ftj):
        # Not started: no children are expected (one left by a crash between create and status patch
        # makes the create answer 409 AlreadyExists, which is success): only what preflight checks.
        return Reads(claims=_claims(ftj))
    return Reads(children=True)


def _job_facts(job: Body) -> tuple:
    status_ = job.get("status") or {}
    conditions = tuple(sorted((c.get("type"), c.get("reason"), c.get("message"))
                              for c in status_.get("conditions") or [] if c.get("status") == "True"))
    return ((job.get("metadata") or {}).get("creationTimestamp"), conditions, int(status_.get("failed") or 0),
            status_.get("completionTime"))


def _pod_facts(pod: Body) -> tuple:
    status_ = pod.get("status") or {}
    state = container_state(pod)
    terminated = json.dumps(state.get("terminated"), sort_keys=True) if state.get("terminated") else None
    waiting = state.get("waiting") or {}
    problem = (waiting.get("reason"), waiting.get("message")) if waiting.get("reason") in WAITING_PROBLEMS else None
    unschedulable = tuple(sorted((c.get("reason"), c.get("message")) for c in status_.get("conditions") or []
                                 if c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("reason")))
    return alive(pod), terminated, problem, unschedulable


CONCERN = Concern("stages", reads=reads, job_facts=_job_facts, pod_facts=_pod_facts,
                  resync=lambda ftj: status(ftj).get("phase") not in TERMINAL_PHASES)


# --------------------------------------------------------------------------- decisions


def preflight(run: JobPass, spec: FineTuneJobSpec) -> bool:
    if spec.output.pvc is None:
        run.reject(
            "OutputVolumeRequired",
            "spec.output.pvc is required in the cluster: the baseline, train and evaluate pods share their "
            "work dir and the baseline cache through it (set output.pvc.claimName to a ReadWriteMany or "
            "ReadWriteOnce PersistentVolumeClaim)",
        )
        return False
    missing = sorted(set(children.claims(spec)) & set(run.observed.missing_claims))
    if missing:
        run.reject(
            "VolumeNotFound",
            f"PersistentVolumeClaim {', '.join(missing)} not found in namespace {run.namespace}; "
            "create it or fix the claimName (the job starts once it exists)",
        )
        return False
    return True


def run_stages(run: JobPass, spec: FineTuneJobSpec) -> None:
    """Advance the stages in order as far as they go in this pass; record the verdict at the end."""
    for stage in STAGES:
        record = run.stage(stage)
        if record["phase"] in ("Succeeded", "Skipped") and record.get("result") is not None:
            continue
        if stage == "baseline" and baseline_cache.cache_hit(run, spec, record):
            continue
        if not advance_stage(run, stage, spec, record):
            return
    record_verdict(run, spec)


def advance_stage(run: JobPass, stage: str, spec: FineTuneJobSpec, record: dict) -> bool:
    """Advance one stage; True when it is done and the next may start."""
    workers = spec.resources.workers if stage == "train" else 1
    group = workers > 1
    job = run.observed.jobs.get(stage)
    run.status["phase"] = STAGE_PHASE[stage]
    if job is not None and not owned_by(job, run.uid):
        name = job["metadata"]["name"]
        run.status["message"] = f"waiting for Job {name} of an earlier FineTuneJob of this name to be deleted"
        return False
    attempt = max(1, record.get("attempts") or 0)
    if group and job is not None and job_attempt(job) < attempt:
        job = None  # the status moved on to a new group attempt whose Job is not created yet
    if job is None:
        return start_stage(run, stage, spec, record, attempt)
    job_name = job["metadata"]["name"]
    if group and children.workers_service_name(run.name) not in run.observed.services:
        run.actions.append(CreateObject(children.workers_service(run.ftj)))
    seen = observe_stage(stage, job, pods_of(job_name, run.observed.pods.get(stage, [])), workers)
    record["jobName"] = job_name
    record.setdefault("startTime", (job.get("metadata") or {}).get("creationTimestamp") or run.now_s)
    title = STAGE_TITLE[stage]
    if seen.state == "Failed" and group:
        attempt = group_restart.next_attempt(run, stage, title, spec, record, job, seen.message or "a rank failed")
        return attempt is not None and start_stage(run, stage, spec, record, attempt)
    if seen.state == "Failed":
        record.update(phase="Failed", message=seen.message, completionTime=run.now_s,
                      attempts=max(seen.failed_pods, record.get("attempts") or 1))
        run.fail(f"{title}Failed", f"stage {stage} failed: {seen.message}")
        return False
    if seen.state == "Succeeded":
        record.update(phase="Succeeded", result=seen.result, completionTime=seen.completion_time or run.now_s,
                      attempts=job_attempt(job) if group else seen.failed_pods + 1)
        record.pop("message", None)
        run.event(f"{title}Succeeded", f"stage {stage} succeeded (Job {job_name})")
        stage_done(run, stage, spec, seen.result or {})
        return run.status.get("phase") != "Failed"
    if not group:
        attempts = seen.failed_pods + 1
        if attempts > (record.get("attempts") or 1):
            run.event(f"{title}Retrying",
                      f"stage {stage}: attempt {attempts} of {spec.backoff_limit + 1} ({seen.message or 'pod failed'})",
                      warning=True)
        record["attempts"] = attempts
    record["phase"] = "Running"
    if seen.message:
        record["message"] = seen.message
    else:
        record.pop("message", None)
    run.status["message"] = f"{stage} running (Job {job_name})" + (f": {seen.message}" if seen.message else "")
    return False


def start_stage(run: JobPass, stage: str, spec: FineTuneJobSpec, record: dict, attempt: int) -> bool:
    """Create the stage's Job (attempt `attempt`) once no pod of an earlier attempt is still alive."""
    workers = spec.resources.workers if stage == "train" else 1
    job_name = children.stage_job_name(run.name, stage, workers, attempt)
    lingering = [p["metadata"]["name"] for p in run.observed.pods.get(stage, [])
                 if pod_job_name(p) not in (None, job_name) and alive(p)]
    record.update(jobName=job_name, attempts=attempt)
    record.setdefault("startTime", run.now_s)
    if lingering:
        record["phase"] = "Pending"
        run.status["message"] = (f"{stage}: waiting for the pods of the previous attempt to stop before starting "
                                 f"attempt {attempt} ({', '.join(sorted(lingering)[:4])})")
        return False
    job = children.stage_job(run.ftj, spec, stage, run.config, attempt)
    record["phase"] = "Running"
    run.actions.append(CreateObject(job))
    if workers > 1:
        run.actions.append(CreateObject(children.workers_service(run.ftj)))
    old = (run.old.get("stages") or {}).get(stage) or {}
    if not (old.get("phase") == "Running" and old.get("jobName") == job_name):
        run.event(f"{STAGE_TITLE[stage]}Started", f"created Job {job_name}")
    run.status["message"] = f"{stage} running (Job {job_name})"
    return False


def stage_done(run: JobPass, stage: str, spec: FineTuneJobSpec, result: dict) -> None:
    if stage == "baseline":
        run.status["baselineScores"] = dict(result.get("scores") or {})
        baseline_cache.record(run, spec, result)
    elif stage == "train":
        if result.get("adjustments"):
            run.stage("train")["adjustments"] = list(result["adjustments"])
        run.status["progress"] = {
            k: v for k, v in {
                "step": int(result.get("steps") or 0),
                "totalSteps": result.get("totalSteps"),
                "epoch": result.get("epochs"),
                "loss": result.get("finalLoss"),
                "stoppedReason": result.get("stoppedReason"),
                "generalKL": result.get("generalKL"),
            }.items() if v is not None
        }
    else:
        final = dict(result.get("scores") or {})
        base = run.status.get("baselineScores") or {}
        run.status["finalScores"] = final
        run.status["forgetting"] = {c: base[c] - v for c, v in final.items() if c in base and c != "task"}


def record_verdict(run: JobPass, spec: FineTuneJobSpec) -> None:
    """The evaluate stage ran the gate (and promoted): record its verdict and the promoted model."""
    result = run.status["stages"]["evaluate"].get("result") or {}
    try:
        gate_status = GateStatus.model_validate(result.get("gate")).to_wire()
    except (ValueError, TypeError) as exc:
        why = " (it was truncated to fit the termination message)" if result.get("truncated") else ""
        return run.fail("ResultInvalid", f"the evaluate summary has no valid gate verdict{why}: "
                        f"{str(exc).splitlines()[0]}")
    promoted_model = None
    if result.get("promotedModel") is not None:
        try:
            promoted_model = promoted_model_status(result["promotedModel"])
        except (ValueError, TypeError) as exc:
            return run.fail("ResultInvalid", f"the evaluate summary's promotedModel is invalid: "
                            f"{str(exc).splitlines()[0]}")
    run.status["gate"] = gate_status
    run.status["forgettingPoints"] = f"{gate_status['meanDrop'] * 100:.1f} pts"
    if isinstance(result.get("mlflow"), Mapping):  # the stage logged (and maybe registered) in MLflow
        try:
            run.status.setdefault("handOff", {})["mlflow"] = MlflowHandOffStatus.model_validate(
                {k: str(v) for k, v in result["mlflow"].items() if v is not None}).to_wire()
        except ValueError:
            pass  # an unreadable record costs the status field, not the job
    outcome = gate_status["verdict"]
    reasons = "; ".join(gate_status.get("reasons") or [])
    run.status["completionTime"] = run.now_s
    if outcome not in PROMOTING_VERDICTS:
        if promoted_model is not None:  # the stage never promotes a blocked model; never record one
            return run.fail("ResultInvalid", "the evaluate stage reported a promoted model for a blocked job")
        if outcome == "NoTaskGain":
            message = f"not promoted: the model did not learn the target task: {reasons}"
        else:
            message = f"the regression gate blocked promotion: {reasons or 'forgetting above threshold'}"
        run.status.update(phase="Blocked", promoted=False, message=message)
        run.event("GateNoTaskGain" if outcome == "NoTaskGain" else "GateBlocked", message, warning=True)
        return
    if spec.output.promote and promoted_model is None:
        return run.fail("PromotionMissing", f"the gate {outcome.lower()} but the evaluate stage reported no "
                        "promoted model (output.promote is true)")
    promoted = promoted_model is not None
    if promoted:
        run.status["promotedModel"] = promoted_model
    run.status.update(phase="Succeeded", promoted=promoted,
                      message=f"gate {outcome.lower()}" + (f": {reasons}" if reasons else "")
                      + ("; model promoted" if promoted else ""))
    run.event({"Passed": "GatePassed", "Rescued": "GateRescued"}.get(outcome, "GateWarned"), run.status["message"],
              warning=outcome == "Warned")
    if promoted:
        where = promoted_model.get("uri") or promoted_model["path"]
        run.event("Promoted", f"the fine-tuned model is promoted to {where} ({promoted_model['digest']})")
        hand_off.hand_off(run)


def promoted_model_status(reported: Mapping[str, Any]) -> dict:
    """`status.promotedModel` from the stage's record: the path inside the volume where there is one."""
    if not isinstance(reported, Mapping):
        raise TypeError("promotedModel is not an object")
    record = {
        "path": reported.get("pathInVolume") or reported.get("path"),
        "uri": reported.get("uri"),
        "claimName": reported.get("claimName"),
        "digest": reported.get("digest"),
        "format": reported.get("format"),
    }
    return PromotedModelStatus.model_validate({k: v for k, v in record.items() if v is not None}).to_wire()
