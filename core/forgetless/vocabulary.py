"""The API vocabulary a cluster sees: label and annotation keys, condition types and the reasons more
than one module writes or reads. One home, imported by the operator, the CLI and the trainer (no
other module spells a `forgetless.dev/...` key); the stages, phases and verdicts are in
`forgetless.lifecycle`, the API group and kinds in `forgetless.api.schema` / `forgetless.api.sweep`.
"""

from __future__ import annotations

PREFIX = "forgetless.dev"

# --------------------------------------------------------------------------- labels
LABEL_JOB = f"{PREFIX}/job"
"""On every child of a FineTuneJob (Jobs, Pods, Services): the FineTuneJob's name."""
LABEL_STAGE = f"{PREFIX}/stage"
"""On a stage Job and its Pods: baseline, train or evaluate."""
LABEL_ATTEMPT = f"{PREFIX}/attempt"
"""On a multi-worker train Job and its Pods: the group attempt (1 when absent)."""
LABEL_SWEEP = f"{PREFIX}/sweep"
"""On a trial FineTuneJob (and a sweep's `<sweep>-best`): the FineTuneSweep's name."""
LABEL_TRIAL = f"{PREFIX}/trial"
"""On a trial FineTuneJob: the index of its candidate policy."""
LABEL_RUNG = f"{PREFIX}/rung"
"""On a trial FineTuneJob: the successive-halving rung it runs."""
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
"""Kueue's queue label: mirrored from a FineTuneJob (or sweep) to what it creates."""
MANAGED_BY = {"app.kubernetes.io/name": "forgetless", "app.kubernetes.io/managed-by": "forgetless-operator"}

# --------------------------------------------------------------------------- annotations
SPEC_ANNOTATION = f"{PREFIX}/spec"
"""On a stage pod template: the job document the stage reads (projected to a file)."""
SUSPENDED_BY_OPERATOR = f"{PREFIX}/suspended-by-operator"
"""On a stage Job the operator suspended (so only those are resumed, never Kueue's)."""
PROMOTED_BY_ANNOTATION = f"{PREFIX}/promoted-by"
"""On an InferenceService the operator pointed at a promoted model: `<namespace>/<FineTuneJob>`."""
PREVIOUS_URI_ANNOTATION = f"{PREFIX}/previous-storage-uri"
PROMOTED_DIGEST_ANNOTATION = f"{PREFIX}/promoted-digest"
COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
"""The Job controller's rank of an Indexed Job's pod."""

# --------------------------------------------------------------------------- conditions
READY = "Ready"
PROGRESSING = "Progressing"
STALLED = "Stalled"
FAILED = "Failed"
SPEC_CHANGED = "SpecChanged"
HANDED_OFF = "HandedOff"
CONDITION_TYPES = (READY, PROGRESSING, STALLED, FAILED, SPEC_CHANGED, HANDED_OFF)

# reasons read back by more than one module (the rest are written once, where they are decided)
REASON_PERMISSION_DENIED = "PermissionDenied"
REASON_INFERENCE_SERVICE_NOT_FOUND = "InferenceServiceNotFound"
REASON_INFERENCE_SERVICE_PATCHED = "InferenceServicePatched"

# --------------------------------------------------------------------------- who writes
SOURCE_COMPONENT = "forgetless-operator"
"""`source.component` of the operator's Events."""
REPORTING_COMPONENT = f"{PREFIX}/operator"
"""`reportingComponent` of the operator's Events."""
