"""Hand-off to KServe: a Succeeded job with a promoted model and output.handOff.inferenceService
patches that InferenceService's `spec.predictor.model.storageUri` to the promoted model's pvc:// URI
(the adapter's with adapterOnly) once, recording the previous URI in `status.handOff` and in the
InferenceService's annotation `forgetless.dev/previous-storage-uri` (so a crash between the patch and
the status write loses nothing). Blocked or Failed jobs never touch it. A missing InferenceService is
a condition (HandedOff=False, InferenceServiceNotFound); the job stays Succeeded with its model
written, and the hand-off is retried on resync until it exists.

The rule: the InferenceService is the one named by the spec the job *ran* (`status.startedSpec`),
as every other part of a started job. Editing `spec.output.handOff` after the start changes nothing
(SpecChanged while it runs); the read plan, the resync decision and the decision below all read
`target` from the started spec, so a finished job never waits for an object nobody reads."""

from __future__ import annotations

from typing import Any, Mapping

from forgetless.vocabulary import (
    HANDED_OFF, PREVIOUS_URI_ANNOTATION, PROMOTED_BY_ANNOTATION, PROMOTED_DIGEST_ANNOTATION,
    REASON_INFERENCE_SERVICE_NOT_FOUND, REASON_INFERENCE_SERVICE_PATCHED,
)

from forgetless_operator.finetunejob.decision import PatchObject
from forgetless_operator.finetunejob.reads import NOTHING, Body, Concern, Reads, stage_phase, status
from forgetless_operator.finetunejob.state import JobPass
from forgetless.lifecycle import TERMINAL_PHASES

API_VERSION = "serving.kserve.io/v1beta1"
KIND = "InferenceService"


def target(job_status: Mapping[str, Any]) -> dict | None:
    """startedSpec.output.handOff.inferenceService of a job's status, if any (read raw: no validation)."""
    started = job_status.get("startedSpec") or {}
    ref = (((started.get("output") or {}).get("handOff") or {}).get("inferenceService"))
    return ref if isinstance(ref, dict) and ref.get("name") else None


def target_key(ftj: Body) -> tuple[str, str] | None:
    ref = target(status(ftj))
    if ref is None:
        return None
    return ref.get("namespace") or (ftj.get("metadata") or {}).get("namespace", ""), ref["name"]


def pending(ftj: Body) -> bool:
    """A Succeeded job whose InferenceService has not been pointed at its model yet."""
    job_status = status(ftj)
    handed = (job_status.get("handOff") or {}).get("inferenceService") or {}
    return (target(job_status) is not None and job_status.get("phase") == "Succeeded"
            and bool(job_status.get("promoted")) and handed.get("phase") != "Patched")


def reads(ftj: Body) -> Reads:
    """The InferenceService, when this pass can hand off: a finished job with the hand-off pending, or a
    running one past training (its evaluate stage may finish in this pass)."""
    key = target_key(ftj)
    if key is None:
        return NOTHING
    phase = status(ftj).get("phase")
    if pending(ftj) or (phase not in TERMINAL_PHASES and stage_phase(ftj, "train") == "Succeeded"):
        return Reads(inference_services=frozenset({key}))
    return NOTHING


CONCERN = Concern("hand-off", reads=reads, resync=pending)


def hand_off(run: JobPass) -> None:
    """Point the InferenceService named by the started spec's output.handOff at the promoted model (once)."""
    ref = target(run.status)
    promoted = run.status.get("promotedModel")
    if ref is None or run.status.get("phase") != "Succeeded" or not promoted:
        return
    handed = (run.status.get("handOff") or {}).get("inferenceService") or {}
    if handed.get("phase") == "Patched":
        return
    name, namespace = ref["name"], ref.get("namespace") or run.namespace
    key = (namespace, name)
    if key not in run.observed.inference_services:
        return  # not read in this pass (the plan reads it once the job can hand off): the next pass does
    uri = promoted.get("uri")
    if not uri:
        run.set_condition(HANDED_OFF, "False", "NoVolumeUri",
                          "the promoted model has no pvc:// URI (output.pvc is needed for an InferenceService)")
        return
    if ref.get("adapterOnly"):
        uri = uri.rstrip("/") + "/adapter"
    record = {"name": name, "namespace": namespace, "storageUri": uri, "time": run.now_s}
    service = run.observed.inference_services[key]
    if service is None:
        message = (f"InferenceService {namespace}/{name} not found (is KServe installed, and the name "
                   f"right?); the model is promoted at {uri}; retrying on resync")
        run.status.setdefault("handOff", {})["inferenceService"] = {**record, "phase": "NotFound", "message": message}
        if handed.get("phase") != "NotFound":
            run.event("HandOffFailed", message, warning=True)
        run.set_condition(HANDED_OFF, "False", REASON_INFERENCE_SERVICE_NOT_FOUND, message)
        return
    annotations = (service.get("metadata") or {}).get("annotations") or {}
    current = (((service.get("spec") or {}).get("predictor") or {}).get("model") or {}).get("storageUri")
    by_us = annotations.get(PROMOTED_BY_ANNOTATION) == f"{run.namespace}/{run.name}"
    previous = annotations.get(PREVIOUS_URI_ANNOTATION) if current == uri and by_us else current
    if current != uri or not by_us:
        patch_annotations = {PROMOTED_BY_ANNOTATION: f"{run.namespace}/{run.name}",
                             PROMOTED_DIGEST_ANNOTATION: promoted.get("digest")}
        if previous is not None:
            patch_annotations[PREVIOUS_URI_ANNOTATION] = previous
        run.actions.append(PatchObject(API_VERSION, KIND, namespace, name, {
            "metadata": {"annotations": patch_annotations},
            "spec": {"predictor": {"model": {"storageUri": uri}}},
        }))
    message = f"InferenceService {namespace}/{name} now serves {uri}" + (f" (was {previous})" if previous else "")
    run.status.setdefault("handOff", {})["inferenceService"] = {
        **record, "phase": "Patched", "previousStorageUri": previous, "message": message}
    run.event("InferenceServiceUpdated", message)
    run.set_condition(HANDED_OFF, "True", REASON_INFERENCE_SERVICE_PATCHED, message)
