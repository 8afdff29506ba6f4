"""Reconcile one FineTuneSweep: a pure function from (sweep, its trial FineTuneJobs, now) to a Decision.

The search is `forgetless.search.next_actions` (shared with `forgetless sweep`); this module turns
its plan into Kubernetes objects and the sweep's status:

- Trials are FineTuneJobs owned by the sweep (controller owner reference: deleting the sweep
  deletes them), named `<sweep>-t<index>` (deterministic: a restarted operator creates nothing
  twice; creating one that exists is success), labelled `forgetless.dev/sweep`, `.../trial`
  (the candidate's index) and `.../rung`, with the sweep's Kueue queue label. A trial runs with
  `output.promote: false` and no hand-off, in its own work dir `<template output.path or
  forgetless/<namespace>/<sweep>>/<trial>` on the template's output volume, so every trial keeps
  its report; its baseline comes from the baseline cache after the first trial computed it.
- At most `maxParallel` trials are live (not Succeeded, Blocked or Failed).
- successiveHalving: a trial promoted to the next rung is deleted and created again with the
  rung's epochs; it resumes from the checkpoint in its work dir (the train stage trains on when
  the plan grew) and is evaluated again. Pruned trials keep their FineTuneJob and report.
- `promote: best`: once the search is done, the best trial's policy runs once more as the
  FineTuneJob `<sweep>-best` in the best trial's work dir, with the template's promotion and
  hand-off: its baseline is cached, its training resumes from the finished checkpoint (nothing
  to do) and its evaluate stage re-runs the gate and promotes — the one code path that promotes
  and hands off models. `status.best.promotedModel` comes from that job.

Phases: Pending → Running → Succeeded (best chosen, and promoted when asked) | Failed (invalid
spec, no trial passed the gate, or the best job did not promote).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Mapping, Optional

from pydantic import ValidationError

from forgetless.api import sweep as sweep_api
from forgetless.api.schema import API_VERSION as FTJ_API_VERSION
from forgetless.api.schema import KIND as FTJ_KIND
from forgetless.lifecycle import TERMINAL_PHASES
from forgetless.search import Plan, TrialRequest, expand, next_actions, trial_metrics
from forgetless.timefmt import fmt_time
from forgetless.vocabulary import LABEL_RUNG, LABEL_SWEEP, LABEL_TRIAL, MANAGED_BY, QUEUE_LABEL, READY

from forgetless_operator.kit.actions import CreateObject, Decision, DeleteObject
from forgetless_operator.kit.events import Event
from forgetless_operator.kit.status import owner_reference, set_condition, short, status_of
BEST_SUFFIX = sweep_api.BEST_SUFFIX
best_job_name = sweep_api.best_job_name


def trial_workdir(spec: sweep_api.FineTuneSweepSpec, namespace: str, sweep: str, trial: str) -> str:
    """The trial's `output.path` on the template's output volume."""
    base = (spec.template.output.path or f"forgetless/{namespace}/{sweep}").strip("/")
    return f"{base}/{trial}"


def _trial_phase(ftj: Mapping[str, Any]) -> str:
    status = ftj.get("status") or {}
    phase = status.get("phase")
    if (ftj.get("metadata") or {}).get("deletionTimestamp"):
        return "Running"  # being replaced (a successive-halving continuation): wait for it to go
    if phase in ("Succeeded", "Blocked"):
        return "Succeeded"  # evaluated: the verdict says whether it passed
    if phase == "Failed":
        return "Failed"
    return "Running" if phase and phase != "Pending" else "Pending"


def _int_label(obj: Mapping[str, Any], label: str) -> Optional[int]:
    value = ((obj.get("metadata") or {}).get("labels") or {}).get(label)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def trial_records(spec: sweep_api.FineTuneSweepSpec, sweep_name: str, jobs: Mapping[str, Mapping[str, Any]],
                  previous: list[Mapping[str, Any]]) -> list[sweep_api.TrialStatus]:
    """One TrialStatus per trial seen: from its FineTuneJob when it exists, else as last recorded
    (a trial pruned, or deleted to be continued at the next rung)."""
    candidates = {c.index: c for c in expand(spec)}
    before = {}
    for entry in previous:
        try:
            record = sweep_api.TrialStatus.model_validate(entry)
        except ValidationError:
            continue
        before[record.name] = record
    records: dict[str, sweep_api.TrialStatus] = dict(before)
    for name, ftj in jobs.items():
        index = _int_label(ftj, LABEL_TRIAL)
        if index is None or index not in candidates:
            continue
        status = ftj.get("status") or {}
        phase = _trial_phase(ftj)
        old = before.get(name)
        if old is not None and old.phase == "Pruned" and phase == "Succeeded":
            phase = "Pruned"  # pruned after its rung was evaluated: stays pruned
        values: dict[str, Any] = {
            "name": name, "index": index, "policy": dict(candidates[index].policy), "phase": phase,
            "rung": _int_label(ftj, LABEL_RUNG),
            "epochs": ((ftj.get("spec") or {}).get("training") or {}).get("epochs"),
            "message": status.get("message") if phase == "Failed" else None,
        }
        if phase in ("Succeeded", "Pruned"):
            train = ((status.get("stages") or {}).get("train") or {}).get("result") or {}
            values.update(trial_metrics(status.get("baselineScores") or {}, status.get("finalScores") or {},
                                        status.get("gate") or {}, train))
        records[name] = sweep_api.TrialStatus.model_validate(values)
    return sorted(records.values(), key=lambda t: t.index)


def _job_object(sweep: Mapping[str, Any], name: str, spec: Any, labels: dict[str, str]) -> dict[str, Any]:
    meta = sweep["metadata"]
    queue = (meta.get("labels") or {}).get(QUEUE_LABEL)
    all_labels = {**MANAGED_BY, LABEL_SWEEP: meta["name"], **labels}
    if queue:
        all_labels[QUEUE_LABEL] = queue
    return {
        "apiVersion": FTJ_API_VERSION, "kind": FTJ_KIND,
        "metadata": {"name": name, "namespace": meta["namespace"], "labels": all_labels,
                     "ownerReferences": [owner_reference(sweep, sweep_api.API_VERSION, sweep_api.KIND)]},
        "spec": spec.to_wire(),
    }


@dataclass
class _SweepRun:
    sweep: dict
    jobs: dict[str, dict]
    now: datetime
    actions: list = field(default_factory=list)
    events: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self.meta = self.sweep["metadata"]
        self.name, self.namespace = self.meta["name"], self.meta["namespace"]
        self.old = status_of(self.sweep)
        self.status = status_of(self.sweep)

    def event(self, reason: str, message: str, warning: bool = False) -> None:
        self.events.append(Event("Warning" if warning else "Normal", reason, short(message)))

    def ready(self, status: str, reason: str, message: str) -> None:
        set_condition(self.status, READY, status, reason, message, fmt_time(self.now), self.meta.get("generation"))
        self.status["message"] = short(message)

    def finish(self, phase: str, reason: str, message: str) -> None:
        if self.old.get("phase") != phase:
            self.event(reason, message, warning=phase == "Failed")
        self.status["phase"] = phase
        self.status.setdefault("completionTime", fmt_time(self.now))
        self.ready("True" if phase == "Succeeded" else "False", reason, message)

    def run(self) -> Decision:
        self.status["observedGeneration"] = self.meta.get("generation")
        if self.old.get("phase") in ("Succeeded", "Failed"):
            return self.decision()
        try:
            spec = sweep_api.FineTuneSweepSpec.model_validate(self.sweep.get("spec") or {})
        except ValidationError as exc:
            self.finish("Failed", "InvalidSpec", f"spec is invalid: {exc.errors()[0].get('msg', exc)}")
            return self.decision()
        if spec.template.output.pvc is None:
            self.finish("Failed", "InvalidSpec", "template.output.pvc is required in a cluster: every trial's "
                        "stages share their results through it")
            return self.decision()
        self.status.setdefault("startTime", fmt_time(self.now))
        trial_jobs = {n: j for n, j in self.jobs.items() if n != best_job_name(self.name)}
        records = trial_records(spec, self.name, trial_jobs, self.old.get("trials") or [])
        plan = next_actions(spec, self.name, records)
        for name in plan.prune:
            records = [r.model_copy(update={"phase": "Pruned"}) if r.name == name else r for r in records]
            self.event("TrialPruned", f"{name}: not among the best of rung {plan.rung}")
        for request in plan.start:
            self.start(spec, request)
        self.status["trials"] = [r.to_wire() for r in records]
        self.status["trialCount"] = len(records)
        if not plan.done:
            self.status["phase"] = "Running" if records or plan.start else "Pending"
            live = sum(1 for r in records if r.phase in ("Pending", "Running"))
            self.ready("False", "Searching", f"{len(records)} trials so far, {live} running (rung {plan.rung})")
            return self.decision()
        self.done(spec, plan)
        return self.decision()

    def start(self, spec: sweep_api.FineTuneSweepSpec, request: TrialRequest) -> None:
        job_spec = request.spec(spec)
        job_spec.output.path = trial_workdir(spec, self.namespace, self.name, request.name)
        existing = self.jobs.get(request.name)
        if existing is not None:
            if (existing.get("metadata") or {}).get("deletionTimestamp"):
                return  # the previous rung's job is going away: create on a later pass
            if (existing.get("status") or {}).get("phase") in TERMINAL_PHASES:
                self.actions.append(DeleteObject(FTJ_API_VERSION, FTJ_KIND, self.namespace, request.name))
                self.event("TrialContinued", f"{request.name}: continues to rung {request.rung} "
                           f"({request.epochs:g} epochs) from its checkpoint")
            return
        labels = {LABEL_TRIAL: str(request.index), LABEL_RUNG: str(request.rung)}
        self.actions.append(CreateObject(_job_object(self.sweep, request.name, job_spec, labels)))
        if not request.continues:
            policy = ", ".join(f"{k}={v:g}" if isinstance(v, (int, float)) else f"{k}={v}"
                               for k, v in request.policy.items())
            self.event("TrialCreated", f"{request.name}: {policy}")

    def done(self, spec: sweep_api.FineTuneSweepSpec, plan: Plan) -> None:
        best = plan.best
        if best is None:
            self.status["best"] = None
            self.finish("Failed", "NoPassingTrial", "no trial passed the gate"
                        + (f" with a task score of at least {spec.objective.min_task_score}"
                           if spec.objective.min_task_score is not None else ""))
            return
        record = {k: v for k, v in best.to_wire().items()
                  if k in ("name", "policy", "taskScore", "meanKept", "verdict", "cost")}
        if spec.promote != "best" or not spec.template.output.promote:
            self.status["best"] = record
            self.finish("Succeeded", "BestSelected", f"best trial {best.name} (task {best.task_score:.3f}); "
                        "not promoted (promote: none)")
            return
        name = best_job_name(self.name)
        job = self.jobs.get(name)
        if job is None:
            job_spec = sweep_api.candidate_spec(spec.template, {**best.policy, "training.epochs": best.epochs})
            job_spec.output.path = trial_workdir(spec, self.namespace, self.name, best.name)
            self.actions.append(CreateObject(_job_object(self.sweep, name, job_spec, {LABEL_TRIAL: str(best.index)})))
            if (self.old.get("best") or {}).get("name") != best.name:
                self.event("BestSelected", f"best trial {best.name} (task {best.task_score:.3f}, kept "
                           f"{(best.mean_kept or 0) * 100:.1f} %): promoting it as {name}")
            self.status["best"] = record
            self.status["phase"] = "Running"
            self.ready("False", "Promoting", f"best trial {best.name}: promoting it as {name}")
            return
        status = job.get("status") or {}
        record["jobName"] = name
        if status.get("promotedModel"):
            record["promotedModel"] = status["promotedModel"]
        self.status["best"] = record
        phase = status.get("phase")
        if phase == "Succeeded" and status.get("promoted"):
            self.finish("Succeeded", "Promoted", f"best trial {best.name} promoted by {name}")
        elif phase in TERMINAL_PHASES:
            self.finish("Failed", "PromotionFailed", f"{name} ended {phase}: {status.get('message', '')}")
        else:
            self.status["phase"] = "Running"
            self.ready("False", "Promoting", f"best trial {best.name}: {name} is {phase or 'Pending'}")

    def decision(self) -> Decision:
        return Decision(actions=self.actions, status=self.status, events=self.events)


def reconcile_sweep(sweep: dict, jobs: dict[str, dict], now: datetime) -> Decision:
    """The Decision for one FineTuneSweep given its FineTuneJobs (by name, those labelled with it)."""
    return _SweepRun(sweep, jobs, now).run()
