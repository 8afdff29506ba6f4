"""Reconcile one FineTuneJob: a pure function from (object, observed children, now) to a Decision.

`reconcile(job, observed, now, config)` reads nothing and writes nothing; `runtime.Runtime`
(`reconcile_once`, which the kopf handlers in handlers.py call) observes the children, calls it,
applies `Decision.actions` idempotently, patches `Decision.status` onto the status subresource and
posts `Decision.events`. Every step is derived
from what is observed plus what `status` already records, so a restarted operator replays to the
same place: children have deterministic names (creating one that exists is success), stage results
are re-read from pod termination messages and kept in `status.stages.<stage>.result`, and events
are emitted only for transitions between the old and the new status.

Flow: Pending (preflight: an output volume, the volumes named exist) → [Suspended] →
Baseline (skipped on a baseline-cache hit) → Training → Evaluating → Succeeded | Blocked,
or Failed (a stage Job failed after its backoffLimit, deadline exceeded, unreadable result).
The gate runs in the evaluate stage (one place, as in `forgetless run`); the operator records the
verdict and the promoted model the stage reports.

Decisions where the spec is silent (docs/architecture.md, "The operator's design", says more):
- The spec is frozen at start: `status.specHash` (sha256 of the spec without the run controls
  suspend, activeDeadlineSeconds, ttlSecondsAfterFinished) and `status.startedSpec` (written with
  the status patch of the first stage's start) hold the started spec; later stages are built from
  it, so an edited spec is never applied half-way (condition SpecChanged=True instead). Each stage
  pod gets it in its template annotation `forgetless.dev/spec` (children.stage_job). Jobs started
  by operators before startedSpec existed keep their `<job>-spec` ConfigMap as the source (read,
  then copied into startedSpec).
- The deadline counts from `status.startTime`, suspended time included.
- Suspending a started job suspends its running stage Job (annotated as suspended by the operator);
  resuming un-suspends only those, never a Job that Kueue holds for admission.
- Promotion: the evaluate stage runs the gate and, when it did not block, writes the model
  (forgetless_trainer.promotion); the operator records `status.promotedModel` (path in the volume,
  `pvc://` URI, digest) from the stage's summary and `promoted` = a model was written.
- Hand-off: a Succeeded job with a promoted model and output.handOff.inferenceService patches that
  KServe InferenceService's `spec.predictor.model.storageUri` to the promoted model's pvc:// URI
  (the adapter's with adapterOnly) once, recording the previous URI in `status.handOff` and in the
  InferenceService's annotation `forgetless.dev/previous-storage-uri` (so a crash between the patch
  and the status write loses nothing). Blocked or Failed jobs never touch it. A missing
  InferenceService is a condition (HandedOff=False, InferenceServiceNotFound); the job stays
  Succeeded with its model written, and the hand-off is retried on resync until it exists.
- Multi-worker training restarts as a group: the Indexed Job has backoffLimit 0 (a lone retried
  index would wait for peers that are gone), and when any rank fails the operator creates the next
  attempt `<job>-train-workers-g<N>` (label forgetless.dev/attempt) once the failed attempt's pods
  are gone; it resumes from the last checkpoint. At most spec.backoffLimit group restarts, each
  recorded in `status.stages.train.restarts`. Superseded attempts' Jobs are deleted.
"""

from __future__ import annotations

import copy
import hashlib
import json
from datetime import datetime, timedelta
from typing import Any, Callable, Mapping, Optional

from pydantic import ValidationError

from forgetless.api.schema import (
    PROMOTING_VERDICTS, FineTuneJobSpec, GateStatus, MlflowHandOffStatus, PromotedModelStatus,
)

from forgetless.lifecycle import STAGE_PHASE, STAGES, TERMINAL_PHASES
from forgetless.timefmt import fmt_time, parse_time
from forgetless_operator import children
from forgetless_operator.baseline_cache_store import cache_data_key, cache_patch, default_cache_key
from forgetless_operator.children import OperatorConfig
from forgetless_operator.decision import (
    Action, CreateObject, Decision, DeleteObject, Event, Observed, PatchObject, RecordBaselineCache,
)
from forgetless_operator.progress import settle as settle_trainer_status
from forgetless_operator.observation import (
    alive, job_attempt, job_condition, observe_stage, owned_by,
    pod_job_name, pods_of, short,
)

STAGE_TITLE = {"baseline": "Baseline", "train": "Train", "evaluate": "Evaluate"}
RUN_CONTROLS = ("suspend", "activeDeadlineSeconds", "ttlSecondsAfterFinished")
RESTARTS_KEPT = 10

CacheKeyFn = Callable[[FineTuneJobSpec], str]


# --------------------------------------------------------------------------- helpers


def spec_hash(spec: Mapping[str, Any]) -> str:
    """sha256 over the spec without the run controls (which may change after start)."""
    body = {k: v for k, v in spec.items() if k not in RUN_CONTROLS}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:32]


# --------------------------------------------------------------------------- the reconciler


def set_condition(status: dict, type_: str, value: str, reason: str, message: str, now_s: str,
                  generation: Any) -> None:
    """Set condition `type_` in `status` (lastTransitionTime moves only when its status changes)."""
    conditions = status.setdefault("conditions", [])
    for cond in conditions:
        if cond["type"] == type_:
            if cond["status"] != value:
                cond["lastTransitionTime"] = now_s
            cond.update(status=value, reason=reason, message=short(message), observedGeneration=generation)
            return
    conditions.append({"type": type_, "status": value, "reason": reason, "message": short(message),
                       "lastTransitionTime": now_s, "observedGeneration": generation})


class _Run:
    """One reconcile pass: mutable working state, so the steps stay short."""

    def __init__(self, job: dict, observed: Observed, now: datetime, config: OperatorConfig,
                 cache_key: CacheKeyFn) -> None:
        self.job = job
        self.meta = job["metadata"]
        self.name = self.meta["name"]
        self.namespace = self.meta["namespace"]
        self.uid = self.meta["uid"]
        self.observed = observed
        self.now = now
        self.now_s = fmt_time(now)
        self.config = config
        self.cache_key = cache_key
        self.old = copy.deepcopy(job.get("status") or {})
        self.old.pop("kopf", None)
        self.status = copy.deepcopy(self.old)
        self.status["observedGeneration"] = self.meta.get("generation")
        self.status.setdefault("stages", {})
        self.actions: list[Action] = []
        self.events: list[Event] = []
        self.reason: tuple[str, str] | None = None  # a blocking condition (reason, message) while Pending

    # ------------------------------------------------------------ small tools

    def event(self, reason: str, message: str, warning: bool = False) -> None:
        self.events.append(Event("Warning" if warning else "Normal", reason, short(message)))

    def set_condition(self, type_: str, status: str, reason: str, message: str) -> None:
        set_condition(self.status, type_, status, reason, message, self.now_s, self.meta.get("generation"))

    def condition(self, type_: str) -> dict | None:
        for cond in self.status.get("conditions") or []:
            if cond["type"] == type_:
                return cond
        return None

    def stage(self, stage: str) -> dict:
        return self.status["stages"].setdefault(stage, {"phase": "Pending", "attempts": 0})

    def fail(self, reason: str, message: str) -> None:
        self.status["phase"] = "Failed"
        self.status["completionTime"] = self.now_s
        self.status["message"] = short(message)
        self.set_condition("Failed", "True", reason, message)
        self.event(reason, message, warning=True)

    def reject(self, reason: str, message: str) -> None:
        """Not started and cannot start yet: a condition and (once per distinct problem) an event."""
        self.status["phase"] = "Pending"
        self.status["message"] = short(message)
        self.reason = (reason, message)
        ready = next((c for c in self.old.get("conditions") or [] if c["type"] == "Ready"), None)
        if ready is None or ready.get("reason") != reason or ready.get("message") != short(message):
            self.event(reason, message, warning=True)

    # ------------------------------------------------------------ main flow

    def run(self) -> Decision:
        if self.meta.get("deletionTimestamp"):
            return Decision([], self.old, [])  # children go with the owner (garbage collection)
        if self.status.get("phase") in TERMINAL_PHASES:
            self.hand_off(self.finished_spec())
            self.expire()
        else:
            self.progress()
        settle_trainer_status(self.status, self.now_s)
        self.finish_conditions()
        return Decision(self.actions, self.status, self.events)

    def hand_off(self, spec: FineTuneJobSpec | None) -> None:
        """Point the InferenceService named by output.handOff at the promoted model (once)."""
        target = spec.output.hand_off.inference_service if spec is not None and spec.output.hand_off else None
        promoted = self.status.get("promotedModel")
        if target is None or self.status.get("phase") != "Succeeded" or not promoted:
            return
        handed = (self.status.get("handOff") or {}).get("inferenceService") or {}
        if handed.get("phase") == "Patched":
            return
        namespace = target.namespace or self.namespace
        key = (namespace, target.name)
        if key not in self.observed.inference_services:
            return  # not looked up in this pass
        uri = promoted.get("uri")
        if not uri:
            self.set_condition("HandedOff", "False", "NoVolumeUri",
                               "the promoted model has no pvc:// URI (output.pvc is needed for an InferenceService)")
            return
        if target.adapter_only:
            uri = uri.rstrip("/") + "/adapter"
        record = {"name": target.name, "namespace": namespace, "storageUri": uri, "time": self.now_s}
        service = self.observed.inference_services[key]
        if service is None:
            message = (f"InferenceService {namespace}/{target.name} not found (is KServe installed, and the name "
                       f"right?); the model is promoted at {uri}; retrying on resync")
            self.status.setdefault("handOff", {})["inferenceService"] = {**record, "phase": "NotFound",
                                                                          "message": message}
            if handed.get("phase") != "NotFound":
                self.event("HandOffFailed", message, warning=True)
            self.set_condition("HandedOff", "False", "InferenceServiceNotFound", message)
            return
        meta = service.get("metadata") or {}
        annotations = meta.get("annotations") or {}
        current = (((service.get("spec") or {}).get("predictor") or {}).get("model") or {}).get("storageUri")
        by_us = annotations.get(children.PROMOTED_BY_ANNOTATION) == f"{self.namespace}/{self.name}"
        previous = annotations.get(children.PREVIOUS_URI_ANNOTATION) if current == uri and by_us else current
        if current != uri or not by_us:
            patch_annotations = {children.PROMOTED_BY_ANNOTATION: f"{self.namespace}/{self.name}",
                                 children.PROMOTED_DIGEST_ANNOTATION: promoted.get("digest")}
            if previous is not None:
                patch_annotations[children.PREVIOUS_URI_ANNOTATION] = previous
            self.actions.append(PatchObject("serving.kserve.io/v1beta1", "InferenceService", namespace, target.name, {
                "metadata": {"annotations": patch_annotations},
                "spec": {"predictor": {"model": {"storageUri": uri}}},
            }))
        message = f"InferenceService {namespace}/{target.name} now serves {uri}" + (
            f" (was {previous})" if previous else "")
        self.status.setdefault("handOff", {})["inferenceService"] = {
            **record, "phase": "Patched", "previousStorageUri": previous, "message": message}
        self.event("InferenceServiceUpdated", message)
        self.set_condition("HandedOff", "True", "InferenceServicePatched", message)

    def expire(self) -> None:
        ttl = (self.job.get("spec") or {}).get("ttlSecondsAfterFinished")
        done = parse_time(self.status.get("completionTime"))
        if ttl is None or done is None or self.now < done + timedelta(seconds=ttl):
            return
        self.actions.append(DeleteObject("forgetless.dev/v1alpha1", "FineTuneJob", self.namespace, self.name))
        self.event("Expired", f"deleting the FineTuneJob {ttl}s after it finished (ttlSecondsAfterFinished)")

    def progress(self) -> None:
        raw_spec = self.job.get("spec") or {}
        try:
            current: Optional[FineTuneJobSpec] = FineTuneJobSpec.model_validate(raw_spec)
            problem = ""
        except ValidationError as exc:
            current = None
            problem = "; ".join(
                f"spec.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()[:5]
            )
        digest = spec_hash(current.to_wire() if current else raw_spec)
        started = bool(self.status.get("specHash"))
        if not started:
            if current is None:
                return self.reject("InvalidSpec", f"the spec is invalid ({problem}); fix it with kubectl edit")
            if not self.preflight(current):
                return
            if raw_spec.get("suspend"):
                return self.suspend(started=False)
            try:
                children.spec_annotation_text(self.job, current)  # fits in a stage pod's annotation?
            except children.SpecTooLarge as exc:
                return self.reject("SpecTooLarge", str(exc))
            self.status["specHash"] = digest
            self.status["startTime"] = self.now_s  # the first stage's event marks the start
            spec = current
        else:
            spec = self.started_spec(current, digest, problem)
            if spec is None:
                return
        if not self.status.get("startedSpec"):
            self.status["startedSpec"] = spec.to_wire()  # at start, or once for a job of an older operator
        if self.deadline():
            return
        if raw_spec.get("suspend"):
            return self.suspend(started=True)
        self.resume()
        self.delete_superseded()
        self.stages(spec)

    def finished_spec(self) -> FineTuneJobSpec | None:
        """The spec a finished job ran (status.startedSpec, or an older operator's `<job>-spec`
        ConfigMap, else the current spec)."""
        configmap = self.observed.configmaps.get(children.spec_configmap_name(self.name))
        try:
            if self.status.get("startedSpec"):
                return children.spec_from_document(self.status["startedSpec"])
            if configmap is not None and owned_by(configmap, self.uid):
                return children.spec_from_configmap(configmap)
            return FineTuneJobSpec.model_validate(self.job.get("spec") or {})
        except (KeyError, ValueError):
            return None

    def preflight(self, spec: FineTuneJobSpec) -> bool:
        if spec.output.pvc is None:
            self.reject(
                "OutputVolumeRequired",
                "spec.output.pvc is required in the cluster: the baseline, train and evaluate pods share their "
                "work dir and the baseline cache through it (set output.pvc.claimName to a ReadWriteMany or "
                "ReadWriteOnce PersistentVolumeClaim)",
            )
            return False
        missing = sorted(set(children.claims(spec)) & set(self.observed.missing_claims))
        if missing:
            self.reject(
                "VolumeNotFound",
                f"PersistentVolumeClaim {', '.join(missing)} not found in namespace {self.namespace}; "
                "create it or fix the claimName (the job starts once it exists)",
            )
            return False
        return True

    def started_spec(self, current: FineTuneJobSpec | None, digest: str, problem: str) -> FineTuneJobSpec | None:
        """The spec the job started with (status.startedSpec, or the `<job>-spec` ConfigMap of an
        older operator); flags an edited spec."""
        changed = digest != self.status["specHash"]
        previous = self.condition("SpecChanged")
        if changed:
            message = (
                "the spec changed after the job started; the change is not applied (the job keeps running the "
                "spec it started with). Delete and re-create the FineTuneJob to run the new spec"
            )
            if problem:
                message += f"; the new spec is also invalid: {problem}"
            if previous is None or previous["status"] != "True":
                self.event("SpecChanged", message, warning=True)
            self.set_condition("SpecChanged", "True", "SpecChangedAfterStart", message)
        elif previous is not None and previous["status"] == "True":
            self.set_condition("SpecChanged", "False", "SpecRestored", "the spec matches the one the job started with")
        if self.status.get("startedSpec"):
            try:
                return children.spec_from_document(self.status["startedSpec"])
            except ValueError as exc:
                self.fail("SpecLost", f"status.startedSpec is unreadable: {str(exc).splitlines()[0]}")
                return None
        configmap = self.observed.configmaps.get(children.spec_configmap_name(self.name))
        if configmap is not None and owned_by(configmap, self.uid):
            try:
                return children.spec_from_configmap(configmap)
            except (KeyError, ValueError) as exc:
                self.fail("SpecLost", f"the {configmap['metadata']['name']} ConfigMap is unreadable: {exc}")
                return None
        if not changed and current is not None:
            return current  # recorded as startedSpec from now on
        self.fail("SpecLost", "the started spec is gone (no status.startedSpec, no spec ConfigMap of an older "
                  "operator) and the spec has changed since the start")
        return None

    def deadline(self) -> bool:
        limit = (self.job.get("spec") or {}).get("activeDeadlineSeconds")  # a run control: the live value counts
        start = parse_time(self.status.get("startTime"))
        if limit is None or start is None or self.now < start + timedelta(seconds=limit):
            return False
        for stage, job in self.observed.jobs.items():
            if not owned_by(job, self.uid):
                continue
            if job_condition(job, "Complete") or job_condition(job, "Failed"):
                continue
            self.actions.append(DeleteObject("batch/v1", "Job", self.namespace, job["metadata"]["name"]))
            record = self.stage(stage)
            if record["phase"] in ("Pending", "Running"):
                record.update(phase="Failed", completionTime=self.now_s, message="deadline exceeded")
        for name, service in self.observed.services.items():
            if owned_by(service, self.uid):
                self.actions.append(DeleteObject("v1", "Service", self.namespace, name))
        self.fail("DeadlineExceeded", f"the job ran longer than activeDeadlineSeconds={limit}; running stages deleted")
        return True

    def suspend(self, started: bool) -> None:
        if self.old.get("phase") != "Suspended":
            self.event("Suspended", "spec.suspend is true: " + ("running stages suspended" if started else "not starting yet"))
        self.status["phase"] = "Suspended"
        self.status["message"] = "suspended (spec.suspend: true)"
        for job in self.observed.jobs.values():
            spec = job.get("spec") or {}
            if not owned_by(job, self.uid) or spec.get("suspend"):
                continue
            if job_condition(job, "Complete") or job_condition(job, "Failed"):
                continue
            meta = job["metadata"]
            self.actions.append(PatchObject("batch/v1", "Job", self.namespace, meta["name"], {
                "metadata": {"annotations": {children.SUSPENDED_BY_OPERATOR: "true"}},
                "spec": {"suspend": True},
            }))

    def resume(self) -> None:
        if self.old.get("phase") == "Suspended" and self.old.get("specHash"):
            self.event("Resumed", "spec.suspend is false: resuming")
        for job in self.observed.jobs.values():
            meta = job["metadata"]
            if owned_by(job, self.uid) and (meta.get("annotations") or {}).get(children.SUSPENDED_BY_OPERATOR):
                self.actions.append(PatchObject("batch/v1", "Job", self.namespace, meta["name"], {
                    "metadata": {"annotations": {children.SUSPENDED_BY_OPERATOR: None}},
                    "spec": {"suspend": False},
                }))

    # ------------------------------------------------------------ stages

    def delete_superseded(self) -> None:
        """Jobs of earlier attempts of a restarted group go once they have stopped."""
        for job in self.observed.superseded_jobs:
            meta = job.get("metadata") or {}
            if owned_by(job, self.uid) and not meta.get("deletionTimestamp"):
                self.actions.append(DeleteObject("batch/v1", "Job", self.namespace, meta["name"]))

    def stages(self, spec: FineTuneJobSpec) -> None:
        for stage in STAGES:
            record = self.stage(stage)
            if record["phase"] in ("Succeeded", "Skipped") and record.get("result") is not None:
                continue
            if stage == "baseline" and self.cache_hit(spec, record):
                continue
            if not self.step(stage, spec, record):
                return
        self.record_verdict(spec)

    def cache_hit(self, spec: FineTuneJobSpec, record: dict) -> bool:
        if "baseline" in self.observed.jobs or record.get("jobName"):
            return False  # already running it: finish it
        key = self.cache_key(spec)
        entry_json = self.observed.baseline_cache.get(cache_data_key(key)) if key else None
        if not entry_json:
            return False
        try:
            entry = json.loads(entry_json)
        except ValueError:
            return False
        if entry.get("claimName") != children.output_claim(spec):
            return False  # the cached results live on another volume, which evaluate cannot read
        summary = {k: v for k, v in entry.items() if k not in ("claimName", "storedAt")}
        summary["cached"] = True
        record.update(phase="Skipped", result=summary, startTime=self.now_s, completionTime=self.now_s,
                      message=f"baseline cache hit ({key})")
        self.status["baselineScores"] = dict(summary.get("scores") or {})
        self.event("BaselineCacheHit", f"baseline skipped: the base model was already scored on this suite ({key})")
        return True

    def step(self, stage: str, spec: FineTuneJobSpec, record: dict) -> bool:
        """Advance one stage; True when it is done and the next may start."""
        workers = spec.resources.workers if stage == "train" else 1
        group = workers > 1
        job = self.observed.jobs.get(stage)
        self.status["phase"] = STAGE_PHASE[stage]
        if job is not None and not owned_by(job, self.uid):
            name = job["metadata"]["name"]
            self.status["message"] = f"waiting for Job {name} of an earlier FineTuneJob of this name to be deleted"
            return False
        attempt = max(1, record.get("attempts") or 0)
        if group and job is not None and job_attempt(job) < attempt:
            job = None  # the status moved on to a new group attempt whose Job is not created yet
        if job is None:
            return self.start(stage, spec, record, attempt)
        job_name = job["metadata"]["name"]
        if group and children.workers_service_name(self.name) not in self.observed.services:
            self.actions.append(CreateObject(children.workers_service(self.job)))
        seen = observe_stage(stage, job, pods_of(job_name, self.observed.pods.get(stage, [])), workers)
        record["jobName"] = job_name
        record.setdefault("startTime", (job.get("metadata") or {}).get("creationTimestamp") or self.now_s)
        if seen.state == "Failed" and group:
            return self.restart_group(stage, spec, record, job, seen.message or "a rank failed")
        if seen.state == "Failed":
            record.update(phase="Failed", message=seen.message, completionTime=self.now_s,
                          attempts=max(seen.failed_pods, record.get("attempts") or 1))
            self.fail(f"{STAGE_TITLE[stage]}Failed", f"stage {stage} failed: {seen.message}")
            return False
        if seen.state == "Succeeded":
            record.update(phase="Succeeded", result=seen.result, completionTime=seen.completion_time or self.now_s,
                          attempts=job_attempt(job) if group else seen.failed_pods + 1)
            record.pop("message", None)
            self.event(f"{STAGE_TITLE[stage]}Succeeded", f"stage {stage} succeeded (Job {job_name})")
            self.stage_done(stage, spec, seen.result or {})
            return self.status.get("phase") != "Failed"
        if not group:
            attempts = seen.failed_pods + 1
            if attempts > (record.get("attempts") or 1):
                self.event(f"{STAGE_TITLE[stage]}Retrying",
                           f"stage {stage}: attempt {attempts} of {spec.backoff_limit + 1} ({seen.message or 'pod failed'})",
                           warning=True)
            record["attempts"] = attempts
        record["phase"] = "Running"
        if seen.message:
            record["message"] = seen.message
        else:
            record.pop("message", None)
        self.status["message"] = f"{stage} running (Job {job_name})" + (f": {seen.message}" if seen.message else "")
        return False

    def start(self, stage: str, spec: FineTuneJobSpec, record: dict, attempt: int) -> bool:
        """Create the stage's Job (attempt `attempt`) once no pod of an earlier attempt is still alive."""
        workers = spec.resources.workers if stage == "train" else 1
        job_name = children.stage_job_name(self.name, stage, workers, attempt)
        lingering = [p["metadata"]["name"] for p in self.observed.pods.get(stage, [])
                     if pod_job_name(p) not in (None, job_name) and alive(p)]
        record.update(jobName=job_name, attempts=attempt)
        record.setdefault("startTime", self.now_s)
        if lingering:
            record["phase"] = "Pending"
            self.status["message"] = (f"{stage}: waiting for the pods of the previous attempt to stop before starting "
                                      f"attempt {attempt} ({', '.join(sorted(lingering)[:4])})")
            return False
        try:
            job = children.stage_job(self.job, spec, stage, self.config, attempt)
        except children.SpecTooLarge as exc:  # a job of an older operator whose spec lived in a ConfigMap
            record.update(phase="Failed", message=str(exc), completionTime=self.now_s)
            self.fail("SpecTooLarge", str(exc))
            return False
        record["phase"] = "Running"
        self.actions.append(CreateObject(job))
        if workers > 1:
            self.actions.append(CreateObject(children.workers_service(self.job)))
        if not self.old_stage_running(stage, job_name):
            self.event(f"{STAGE_TITLE[stage]}Started", f"created Job {job_name}")
        self.status["message"] = f"{stage} running (Job {job_name})"
        return False

    def old_stage_running(self, stage: str, job_name: str) -> bool:
        old = (self.old.get("stages") or {}).get(stage) or {}
        return old.get("phase") == "Running" and old.get("jobName") == job_name

    def restart_group(self, stage: str, spec: FineTuneJobSpec, record: dict, job: dict, why: str) -> bool:
        """A rank of a multi-worker group failed: restart all of them from the last checkpoint, or give up."""
        attempt = job_attempt(job)
        allowed = spec.backoff_limit + 1
        if attempt >= allowed:
            record.update(phase="Failed", message=why, completionTime=self.now_s, attempts=attempt)
            self.fail(f"{STAGE_TITLE[stage]}Failed",
                      f"stage {stage} failed: {why} (group attempt {attempt} of {allowed}; backoffLimit "
                      f"{spec.backoff_limit} group restarts used)")
            return False
        restarts = [r for r in record.get("restarts") or [] if r.get("attempt") != attempt]
        restarts.append({"attempt": attempt, "time": self.now_s, "message": short(why)})
        record["restarts"] = restarts[-RESTARTS_KEPT:]
        record["message"] = short(f"group attempt {attempt} failed: {why}")
        self.event(f"{STAGE_TITLE[stage]}GroupRestarted",
                   f"stage {stage}: {why}; restarting all {spec.resources.workers} workers from the last "
                   f"checkpoint (attempt {attempt + 1} of {allowed})", warning=True)
        return self.start(stage, spec, record, attempt + 1)

    def stage_done(self, stage: str, spec: FineTuneJobSpec, result: dict) -> None:
        if stage == "baseline":
            self.status["baselineScores"] = dict(result.get("scores") or {})
            key = self.cache_key(spec)
            if key and not result.get("cached"):
                self.record_cache(key, result, spec)
        elif stage == "train":
            if result.get("adjustments"):
                self.stage("train")["adjustments"] = list(result["adjustments"])
            self.status["progress"] = {
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
            base = self.status.get("baselineScores") or {}
            self.status["finalScores"] = final
            self.status["forgetting"] = {c: base[c] - v for c, v in final.items() if c in base and c != "task"}

    def record_cache(self, key: str, result: dict, spec: FineTuneJobSpec) -> None:
        entry = {**result, "claimName": children.output_claim(spec), "storedAt": self.now_s}
        data = cache_patch(self.observed.baseline_cache, key, entry, self.config.baseline_cache_max_entries)
        self.actions.append(RecordBaselineCache(self.namespace, self.config.baseline_cache_configmap, data))

    def record_verdict(self, spec: FineTuneJobSpec) -> None:
        """The evaluate stage ran the gate (and promoted): record its verdict and the promoted model."""
        result = self.status["stages"]["evaluate"].get("result") or {}
        try:
            gate_status = GateStatus.model_validate(result.get("gate")).to_wire()
        except (ValueError, TypeError) as exc:
            why = " (it was truncated to fit the termination message)" if result.get("truncated") else ""
            return self.fail("ResultInvalid", f"the evaluate summary has no valid gate verdict{why}: "
                             f"{str(exc).splitlines()[0]}")
        promoted_model = None
        if result.get("promotedModel") is not None:
            try:
                promoted_model = self.promoted_model(result["promotedModel"])
            except (ValueError, TypeError) as exc:
                return self.fail("ResultInvalid", f"the evaluate summary's promotedModel is invalid: "
                                 f"{str(exc).splitlines()[0]}")
        self.status["gate"] = gate_status
        self.status["forgettingPoints"] = f"{gate_status['meanDrop'] * 100:.1f} pts"
        if isinstance(result.get("mlflow"), Mapping):  # the stage logged (and maybe registered) in MLflow
            try:
                self.status.setdefault("handOff", {})["mlflow"] = MlflowHandOffStatus.model_validate(
                    {k: str(v) for k, v in result["mlflow"].items() if v is not None}).to_wire()
            except ValueError:
                pass  # an unreadable record costs the status field, not the job
        outcome = gate_status["verdict"]
        reasons = "; ".join(gate_status.get("reasons") or [])
        self.status["completionTime"] = self.now_s
        if outcome not in PROMOTING_VERDICTS:
            if promoted_model is not None:  # the stage never promotes a blocked model; never record one
                return self.fail("ResultInvalid", "the evaluate stage reported a promoted model for a blocked job")
            if outcome == "NoTaskGain":
                message = f"not promoted: the model did not learn the target task: {reasons}"
            else:
                message = f"the regression gate blocked promotion: {reasons or 'forgetting above threshold'}"
            self.status.update(phase="Blocked", promoted=False, message=message)
            self.event("GateNoTaskGain" if outcome == "NoTaskGain" else "GateBlocked", message, warning=True)
            return
        if spec.output.promote and promoted_model is None:
            return self.fail("PromotionMissing", f"the gate {outcome.lower()} but the evaluate stage reported no "
                             "promoted model (output.promote is true)")
        promoted = promoted_model is not None
        if promoted:
            self.status["promotedModel"] = promoted_model
        self.status.update(phase="Succeeded", promoted=promoted,
                           message=f"gate {outcome.lower()}" + (f": {reasons}" if reasons else "")
                           + ("; model promoted" if promoted else ""))
        self.event({"Passed": "GatePassed", "Rescued": "GateRescued"}.get(outcome, "GateWarned"), self.status["message"],
                   warning=outcome == "Warned")
        if promoted:
            where = promoted_model.get("uri") or promoted_model["path"]
            self.event("Promoted", f"the fine-tuned model is promoted to {where} ({promoted_model['digest']})")
            self.hand_off(spec)

    @staticmethod
    def promoted_model(reported: Mapping[str, Any]) -> dict:
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

    # ------------------------------------------------------------ conditions

    def finish_conditions(self) -> None:
        phase = self.status.get("phase") or "Pending"
        self.status["phase"] = phase
        message = self.status.get("message") or phase
        # kstatus: Stalled=True says "will not make progress without a change" (Flux fails fast on it)
        if phase == "Succeeded":
            self.set_condition("Ready", "True", "Succeeded", message)
            self.set_condition("Progressing", "False", "Finished", message)
            self.set_condition("Stalled", "False", "Succeeded", message)
        elif phase == "Blocked":
            reason = "NoTaskGain" if (self.status.get("gate") or {}).get("verdict") == "NoTaskGain" else "GateBlocked"
            self.set_condition("Ready", "False", reason, message)
            self.set_condition("Progressing", "False", "Finished", message)
            self.set_condition("Stalled", "True", reason, message)
        elif phase == "Failed":
            failed = self.condition("Failed")
            reason = failed["reason"] if failed else "Failed"
            self.set_condition("Ready", "False", reason, message)
            self.set_condition("Progressing", "False", reason, message)
            self.set_condition("Stalled", "True", reason, message)
        elif phase == "Pending":
            reason, text = self.reason or ("Pending", "waiting to start")
            self.set_condition("Ready", "False", reason, text)
            self.set_condition("Progressing", "False", reason, text)
        elif phase == "Suspended":
            self.set_condition("Ready", "False", "Suspended", message)
            self.set_condition("Progressing", "False", "Suspended", message)
        else:
            self.set_condition("Ready", "False", phase, message)
            self.set_condition("Progressing", "True", phase, message)


def reconcile(
    job: dict,
    observed: Observed,
    now: datetime,
    config: OperatorConfig | None = None,
    *,
    cache_key: CacheKeyFn | None = None,
) -> Decision:
    """Decide what to do for one FineTuneJob. Pure: no I/O, `job` and `observed` are not modified."""
    return _Run(job, observed, now, config or OperatorConfig(), cache_key or default_cache_key).run()


def permission_denied_status(ftj: Mapping[str, Any], denied: list[tuple[str, str, str, str]], now: datetime) -> dict:
    """The status to write when the API server refused (HTTP 403) requests the reconcile needed:
    `denied` = [(verb, kind, namespace, server message)]. The phase stays; Ready and Progressing go
    False with reason PermissionDenied and a message naming each verb and resource, and the fix. The
    next resync tries again, and the first reconcile that gets through sets the conditions anew."""
    status = copy.deepcopy(dict(ftj.get("status") or {}))
    status.pop("kopf", None)
    wanted = "; ".join(sorted({f"{verb} {kind.lower()}s" + (f" in namespace {ns}" if ns else "")
                                for verb, kind, ns, _ in denied}))
    message = (f"the operator's ServiceAccount may not {wanted}: grant it in the operator's RBAC (the Helm chart's "
               f"ClusterRole grants it); retrying every resync")
    generation = (ftj.get("metadata") or {}).get("generation")
    status.setdefault("phase", "Pending")
    status["message"] = message
    for type_ in ("Ready", "Progressing"):
        set_condition(status, type_, "False", "PermissionDenied", message, fmt_time(now), generation)
    return status
