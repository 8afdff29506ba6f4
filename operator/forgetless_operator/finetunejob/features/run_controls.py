"""The run controls, read from the live spec (they may change after the start; the spec hash leaves
them out): `suspend` (suspending a started job suspends its running stage Job, annotated as suspended
by the operator; resuming un-suspends only those, never a Job Kueue holds for admission),
`activeDeadlineSeconds` (counted from status.startTime, suspended time included) and
`ttlSecondsAfterFinished` (the finished FineTuneJob is deleted; its children go with it)."""

from __future__ import annotations

from datetime import timedelta

from forgetless.api.schema import API_VERSION, KIND
from forgetless.lifecycle import TERMINAL_PHASES
from forgetless.timefmt import parse_time
from forgetless.vocabulary import SUSPENDED_BY_OPERATOR

from forgetless_operator.finetunejob.decision import DeleteObject, PatchObject
from forgetless_operator.finetunejob.observation import job_condition
from forgetless_operator.finetunejob.reads import Body, Concern, status
from forgetless_operator.finetunejob.state import JobPass
from forgetless_operator.kit.status import owned_by


def _job_facts(job: Body) -> tuple:
    annotations = (job.get("metadata") or {}).get("annotations") or {}
    return annotations.get(SUSPENDED_BY_OPERATOR), bool((job.get("spec") or {}).get("suspend"))


def _ttl_pending(ftj: Body) -> bool:
    """A finished job with a TTL: the resync loop deletes it when the time comes."""
    return status(ftj).get("phase") in TERMINAL_PHASES and (ftj.get("spec") or {}).get("ttlSecondsAfterFinished") is not None


CONCERN = Concern("run controls", job_facts=_job_facts, resync=_ttl_pending)


def _finished(job: Body) -> bool:
    return bool(job_condition(job, "Complete") or job_condition(job, "Failed"))


def expire(run: JobPass) -> None:
    ttl = (run.ftj.get("spec") or {}).get("ttlSecondsAfterFinished")
    done = parse_time(run.status.get("completionTime"))
    if ttl is None or done is None or run.now < done + timedelta(seconds=ttl):
        return
    run.actions.append(DeleteObject(API_VERSION, KIND, run.namespace, run.name))
    run.event("Expired", f"deleting the FineTuneJob {ttl}s after it finished (ttlSecondsAfterFinished)")


def deadline(run: JobPass) -> bool:
    """Past activeDeadlineSeconds: delete the running stages and fail. True when it did."""
    limit = (run.ftj.get("spec") or {}).get("activeDeadlineSeconds")  # a run control: the live value counts
    start = parse_time(run.status.get("startTime"))
    if limit is None or start is None or run.now < start + timedelta(seconds=limit):
        return False
    for stage, job in run.observed.jobs.items():
        if not owned_by(job, run.uid) or _finished(job):
            continue
        run.actions.append(DeleteObject("batch/v1", "Job", run.namespace, job["metadata"]["name"]))
        record = run.stage(stage)
        if record["phase"] in ("Pending", "Running"):
            record.update(phase="Failed", completionTime=run.now_s, message="deadline exceeded")
    for name, service in run.observed.services.items():
        if owned_by(service, run.uid):
            run.actions.append(DeleteObject("v1", "Service", run.namespace, name))
    run.fail("DeadlineExceeded", f"the job ran longer than activeDeadlineSeconds={limit}; running stages deleted")
    return True


def suspend(run: JobPass, started: bool) -> None:
    if run.old.get("phase") != "Suspended":
        run.event("Suspended", "spec.suspend is true: " + ("running stages suspended" if started else "not starting yet"))
    run.status["phase"] = "Suspended"
    run.status["message"] = "suspended (spec.suspend: true)"
    for job in run.observed.jobs.values():
        if not owned_by(job, run.uid) or (job.get("spec") or {}).get("suspend") or _finished(job):
            continue
        run.actions.append(PatchObject("batch/v1", "Job", run.namespace, job["metadata"]["name"], {
            "metadata": {"annotations": {SUSPENDED_BY_OPERATOR: "true"}},
            "spec": {"suspend": True},
        }))


def resume(run: JobPass) -> None:
    if run.old.get("phase") == "Suspended" and run.old.get("specHash"):
        run.event("Resumed", "spec.suspend is false: resuming")
    for job in run.observed.jobs.values():
        meta = job["metadata"]
        if owned_by(job, run.uid) and (meta.get("annotations") or {}).get(SUSPENDED_BY_OPERATOR):
            run.actions.append(PatchObject("batch/v1", "Job", run.namespace, meta["name"], {
                "metadata": {"annotations": {SUSPENDED_BY_OPERATOR: None}},
                "spec": {"suspend": False},
            }))
