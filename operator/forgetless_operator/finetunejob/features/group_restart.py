"""Multi-worker training restarts as a group: the Indexed Job has backoffLimit 0 (a lone retried index
would wait for peers that are gone), and when any rank fails the next attempt
`<job>-train-workers-g<N>` (label forgetless.dev/attempt) starts once the failed attempt's pods are
gone; it resumes from the last checkpoint. At most spec.backoffLimit group restarts, each recorded in
`status.stages.train.restarts`. Superseded attempts' Jobs are deleted.

Reads: the attempt label of stage Jobs and Pods (in every child's labels, part of each child's
signature) and whether pods of an earlier attempt are alive (the stages' pod facts)."""

from __future__ import annotations

from forgetless.api.schema import FineTuneJobSpec

from forgetless_operator.finetunejob.decision import DeleteObject
from forgetless_operator.finetunejob.observation import job_attempt
from forgetless_operator.finetunejob.reads import Concern
from forgetless_operator.finetunejob.state import JobPass
from forgetless_operator.kit.status import owned_by, short

RESTARTS_KEPT = 10

CONCERN = Concern("group restart")


def delete_superseded(run: JobPass) -> None:
    """Jobs of earlier attempts of a restarted group go once they have stopped."""
    for job in run.observed.superseded_jobs:
        meta = job.get("metadata") or {}
        if owned_by(job, run.uid) and not meta.get("deletionTimestamp"):
            run.actions.append(DeleteObject("batch/v1", "Job", run.namespace, meta["name"]))


def next_attempt(run: JobPass, stage: str, title: str, spec: FineTuneJobSpec, record: dict, job: dict,
                 why: str) -> int | None:
    """A rank of a multi-worker group failed: the attempt to start next (all ranks, from the last
    checkpoint), or None when the restarts are used up (the job failed)."""
    attempt = job_attempt(job)
    allowed = spec.backoff_limit + 1
    if attempt >= allowed:
        record.update(phase="Failed", message=why, completionTime=run.now_s, attempts=attempt)
        run.fail(f"{title}Failed", f"stage {stage} failed: {why} (group attempt {attempt} of {allowed}; backoffLimit "
                 f"{spec.backoff_limit} group restarts used)")
        return None
    restarts = [r for r in record.get("restarts") or [] if r.get("attempt") != attempt]
    restarts.append({"attempt": attempt, "time": run.now_s, "message": short(why)})
    record["restarts"] = restarts[-RESTARTS_KEPT:]
    record["message"] = short(f"group attempt {attempt} failed: {why}")
    run.event(f"{title}GroupRestarted",
              f"stage {stage}: {why}; restarting all {spec.resources.workers} workers from the last "
              f"checkpoint (attempt {attempt + 1} of {allowed})", warning=True)
    return attempt + 1
