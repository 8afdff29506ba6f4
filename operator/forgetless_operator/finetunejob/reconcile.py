"""Reconcile one FineTuneJob: a pure function from (object, observed children, now) to a Decision.

`reconcile(ftj, observed, now, config)` reads nothing and writes nothing;
`controller.FineTuneJobController.reconcile_once` observes what the read plan (readplan.py) names,
calls it, applies `Decision.actions` idempotently, patches `Decision.status` onto the status
subresource and records `Decision.events`. Every step is derived
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
  it, so an edited spec is never applied half-way (condition SpecChanged=True instead), and a
  finished job hands off to the InferenceService its started spec names. Each stage pod gets it in
  its template annotation `forgetless.dev/spec` (children.stage_job).
- The run controls (suspend, deadline, TTL): features/run_controls.py.
- Promotion: the evaluate stage runs the gate and, when it did not block, writes the model
  (forgetless_trainer.promotion); the operator records `status.promotedModel` (path in the volume,
  `pvc://` URI, digest) from the stage's summary and `promoted` = a model was written.
- Hand-off to KServe: features/hand_off.py; the baseline cache: features/baseline_cache.py;
  live progress (status.trainerStatus): features/progress.py.
- Multi-worker training restarts as a group: features/group_restart.py.

Layout: this module is the flow of one pass (`JobPass`, state.py: start, run controls, stages,
conditions); stages.py advances the stages; features/ holds one module per feature, each with what it
reads (its `Concern`, combined in readplan.py) and what it decides.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any, Mapping, Optional

from pydantic import ValidationError

from forgetless.api.schema import FineTuneJobSpec
from forgetless.lifecycle import TERMINAL_PHASES
from forgetless.timefmt import fmt_time
from forgetless.vocabulary import (
    FAILED, PROGRESSING, READY, REASON_PERMISSION_DENIED, SPEC_CHANGED, STALLED,
)

from forgetless_operator.finetunejob import children, stages
from forgetless_operator.finetunejob.children import OperatorConfig
from forgetless_operator.finetunejob.decision import Decision, Observed
from forgetless_operator.finetunejob.features import group_restart, hand_off, progress, run_controls
from forgetless_operator.finetunejob.features.baseline_cache import default_cache_key
from forgetless_operator.finetunejob.state import CacheKeyFn, JobPass
from forgetless_operator.kit.status import set_condition, status_of

RUN_CONTROLS = ("suspend", "activeDeadlineSeconds", "ttlSecondsAfterFinished")


def spec_hash(spec: Mapping[str, Any]) -> str:
    """sha256 over the spec without the run controls (which may change after start)."""
    body = {k: v for k, v in spec.items() if k not in RUN_CONTROLS}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:32]


def decide(run: JobPass) -> Decision:
    """The whole pass: a finished job only hands off and expires; an unfinished one advances."""
    if run.meta.get("deletionTimestamp"):
        return Decision([], run.old, [])  # children go with the owner (garbage collection)
    if run.status.get("phase") in TERMINAL_PHASES:
        hand_off.hand_off(run)
        run_controls.expire(run)
    else:
        advance_job(run)
    progress.settle(run.status, run.now_s)
    finish_conditions(run)
    return Decision(run.actions, run.status, run.events)


def advance_job(run: JobPass) -> None:
    """Start the job (or say why not yet), apply the run controls, advance its stages."""
    raw_spec = run.ftj.get("spec") or {}
    try:
        current: Optional[FineTuneJobSpec] = FineTuneJobSpec.model_validate(raw_spec)
        problem = ""
    except ValidationError as exc:
        current = None
        problem = "; ".join(
            f"spec.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()[:5]
        )
    digest = spec_hash(current.to_wire() if current else raw_spec)
    started = bool(run.status.get("specHash"))
    if not started:
        if current is None:
            return run.reject("InvalidSpec", f"the spec is invalid ({problem}); fix it with kubectl edit")
        if not stages.preflight(run, current):
            return
        if raw_spec.get("suspend"):
            return run_controls.suspend(run, started=False)
        try:
            children.spec_annotation_text(run.ftj, current)  # fits in a stage pod's annotation?
        except children.SpecTooLarge as exc:
            return run.reject("SpecTooLarge", str(exc))
        run.status["specHash"] = digest
        run.status["startTime"] = run.now_s  # the first stage's event marks the start
        run.status["startedSpec"] = current.to_wire()  # written with the status patch of the start
        spec = current
    else:
        spec = started_spec(run, digest, problem)
        if spec is None:
            return
    if run_controls.deadline(run):
        return
    if raw_spec.get("suspend"):
        return run_controls.suspend(run, started=True)
    run_controls.resume(run)
    group_restart.delete_superseded(run)
    stages.run_stages(run, spec)


def started_spec(run: JobPass, digest: str, problem: str) -> FineTuneJobSpec | None:
    """The spec the job started with (status.startedSpec); flags an edited spec."""
    changed = digest != run.status["specHash"]
    previous = run.condition(SPEC_CHANGED)
    if changed:
        message = (
            "the spec changed after the job started; the change is not applied (the job keeps running the "
            "spec it started with). Delete and re-create the FineTuneJob to run the new spec"
        )
        if problem:
            message += f"; the new spec is also invalid: {problem}"
        if previous is None or previous["status"] != "True":
            run.event("SpecChanged", message, warning=True)
        run.set_condition(SPEC_CHANGED, "True", "SpecChangedAfterStart", message)
    elif previous is not None and previous["status"] == "True":
        run.set_condition(SPEC_CHANGED, "False", "SpecRestored", "the spec matches the one the job started with")
    try:
        return children.spec_from_document(run.status.get("startedSpec"))
    except ValueError as exc:
        run.fail("SpecLost", f"status.startedSpec is unreadable: {str(exc).splitlines()[0]}")
        return None


def finish_conditions(run: JobPass) -> None:
    """Ready, Progressing and Stalled from the phase (kstatus: Stalled=True says "will not make progress
    without a change"; Flux fails fast on it)."""
    phase = run.status.get("phase") or "Pending"
    run.status["phase"] = phase
    message = run.status.get("message") or phase
    if phase == "Succeeded":
        run.set_condition(READY, "True", "Succeeded", message)
        run.set_condition(PROGRESSING, "False", "Finished", message)
        run.set_condition(STALLED, "False", "Succeeded", message)
    elif phase == "Blocked":
        reason = "NoTaskGain" if (run.status.get("gate") or {}).get("verdict") == "NoTaskGain" else "GateBlocked"
        run.set_condition(READY, "False", reason, message)
        run.set_condition(PROGRESSING, "False", "Finished", message)
        run.set_condition(STALLED, "True", reason, message)
    elif phase == "Failed":
        failed = run.condition(FAILED)
        reason = failed["reason"] if failed else "Failed"
        run.set_condition(READY, "False", reason, message)
        run.set_condition(PROGRESSING, "False", reason, message)
        run.set_condition(STALLED, "True", reason, message)
    elif phase == "Pending":
        reason, text = run.reason or ("Pending", "waiting to start")
        run.set_condition(READY, "False", reason, text)
        run.set_condition(PROGRESSING, "False", reason, text)
    elif phase == "Suspended":
        run.set_condition(READY, "False", "Suspended", message)
        run.set_condition(PROGRESSING, "False", "Suspended", message)
    else:
        run.set_condition(READY, "False", phase, message)
        run.set_condition(PROGRESSING, "True", phase, message)


def reconcile(
    ftj: dict,
    observed: Observed,
    now: datetime,
    config: OperatorConfig | None = None,
    *,
    cache_key: CacheKeyFn | None = None,
) -> Decision:
    """Decide what to do for one FineTuneJob. Pure: no I/O, `ftj` and `observed` are not modified."""
    return decide(JobPass(ftj, observed, now, config or OperatorConfig(), cache_key or default_cache_key))


def permission_denied_status(ftj: Mapping[str, Any], denied: list[tuple[str, str, str, str]], now: datetime) -> dict:
    """The status to write when the API server refused (HTTP 403) requests the reconcile needed:
    `denied` = [(verb, kind, namespace, server message)]. The phase stays; Ready and Progressing go
    False with reason PermissionDenied and a message naming each verb and resource, and the fix. The
    next resync tries again, and the first reconcile that gets through sets the conditions anew."""
    status = status_of(ftj)
    wanted = "; ".join(sorted({f"{verb} {kind.lower()}s" + (f" in namespace {ns}" if ns else "")
                                for verb, kind, ns, _ in denied}))
    message = (f"the operator's ServiceAccount may not {wanted}: grant it in the operator's RBAC (the Helm chart's "
               f"ClusterRole grants it); retrying every resync")
    generation = (ftj.get("metadata") or {}).get("generation")
    status.setdefault("phase", "Pending")
    status["message"] = message
    for type_ in (READY, PROGRESSING):
        set_condition(status, type_, "False", REASON_PERMISSION_DENIED, message, fmt_time(now), generation)
    return status
