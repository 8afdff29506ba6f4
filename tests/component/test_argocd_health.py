"""The Argo CD health check (gitops/argocd/health.lua) run by real Lua interpreters.

Argo CD evaluates health scripts with gopher-lua (Lua 5.1 semantics) and a global `obj` holding the
resource; the script returns `{status, message}`. Every sample status is validated against
`FineTuneJobStatus` first, so the check is exercised on shapes the operator can actually write.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from forgetless.api.schema import FineTuneJobStatus
from tests.conftest import REPO_ROOT, tool_or_skip

sys.path.insert(0, str(REPO_ROOT / "charts" / "forgetless" / "hack"))
import chart_sync  # noqa: E402  (charts/forgetless/hack/chart_sync.py: render + derived files)

HEALTH_LUA = REPO_ROOT / "gitops" / "argocd" / "health.lua"
SNIPPET = REPO_ROOT / "gitops" / "argocd" / "argocd-cm-snippet.yaml"
T = "2026-11-29T08:00:00Z"


def to_lua(value: Any) -> str:
    """A Lua literal of a JSON value, as Argo CD hands it to the script (null keys are absent)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        escaped = "".join(c if c.isprintable() and c not in '"\\' else f"\\{ord(c):03d}" for c in value)
        return f'"{escaped}"'
    if isinstance(value, list):
        return "{" + ", ".join(to_lua(v) for v in value) + "}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"[{to_lua(k)}] = {to_lua(v)}" for k, v in value.items() if v is not None) + "}"
    raise TypeError(f"not JSON: {value!r}")


def cond(type_: str, status: str, reason: str, message: str = "", generation: int | None = 1) -> dict:
    return {"type": type_, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": T, "observedGeneration": generation}


GATE_FAILED = {
    "verdict": "Failed", "meanDrop": 0.08, "taskGain": 0.4,
    "reasons": ["knowledge dropped 0.12 (95% interval 0.07..0.17) above the threshold 0.05"],
    "categories": [{"category": "knowledge", "baseline": 0.9, "final": 0.78, "drop": 0.12, "dropUpper": 0.17,
                    "dropLower": 0.07, "threshold": 0.05, "passed": False}],
}

# (name, generation, spec patch, status or None, expected health, substring of the message)
CASES: list[tuple[str, float, dict, dict | None, str, str]] = [
    ("new, no status yet", 1, {}, None, "Progressing", "Waiting for the forgetless operator"),
    ("new and suspended", 1, {"suspend": True}, None, "Suspended", "spec.suspend"),
    ("empty status", 1, {}, {}, "Progressing", "Waiting for the forgetless operator"),
    ("pending", 1, {}, {"phase": "Pending", "observedGeneration": 1,
                        "conditions": [cond("Ready", "False", "Pending", "waiting to start")]},
     "Progressing", "waiting to start"),
    ("training", 1, {}, {"phase": "Training", "observedGeneration": 1,
                         "conditions": [cond("Ready", "False", "Training", "stage train running"),
                                        cond("Progressing", "True", "Training", "stage train running")],
                         "progress": {"step": 40, "totalSteps": 100}},
     "Progressing", "Training: stage train running"),
    ("succeeded", 1, {}, {"phase": "Succeeded", "observedGeneration": 1,
                          "conditions": [cond("Ready", "True", "Succeeded", "gate passed; model promoted")],
                          "gate": {**GATE_FAILED, "verdict": "Passed", "reasons": []}, "promoted": True},
     "Healthy", "gate passed; model promoted"),
    ("succeeded, stale generation", 2, {}, {"phase": "Succeeded", "observedGeneration": 1,
                                            "conditions": [cond("Ready", "True", "Succeeded", "gate passed")]},
     "Progressing", "observe generation 2 (observed 1)"),
    ("stale generation, numbers as floats (gopher-lua has only float64)", 2.0, {}, {
        "phase": "Training", "observedGeneration": 1.0, "conditions": [cond("Ready", "False", "Training", "x")]},
     "Progressing", "observe generation 2 (observed 1)"),
    ("stale generation from the Ready condition only", 3, {}, {
        "phase": "Succeeded", "conditions": [cond("Ready", "True", "Succeeded", "ok", generation=2)]},
     "Progressing", "observe generation 3"),
    ("blocked by the gate", 1, {}, {"phase": "Blocked", "observedGeneration": 1, "gate": GATE_FAILED,
                                    "conditions": [cond("Ready", "False", "GateBlocked", "")]},
     "Degraded", "Blocked: gate Failed: knowledge dropped 0.12"),
    ("blocked, message from the operator", 1, {}, {
        "phase": "Blocked", "observedGeneration": 1, "gate": GATE_FAILED,
        "message": "the regression gate blocked promotion: knowledge dropped",
        "conditions": [cond("Ready", "False", "GateBlocked", "the regression gate blocked promotion")]},
     "Degraded", "Blocked: the regression gate blocked promotion: knowledge dropped"),
    ("no evidence the task was learned", 1, {}, {
        "phase": "Blocked", "observedGeneration": 1,
        "gate": {**GATE_FAILED, "verdict": "NoTaskGain", "reasons": ["no evidence the model learned the target task"]},
        "message": "not promoted: the model did not learn the target task: no evidence",
        "conditions": [cond("Ready", "False", "NoTaskGain", "not promoted: the model did not learn the target task")]},
     "Degraded", "Blocked: not promoted: the model did not learn the target task"),
    ("no task gain, phase not yet written", 1, {}, {
        "observedGeneration": 1,
        "conditions": [cond("Ready", "False", "NoTaskGain", "the model did not learn the target task")]},
     "Degraded", "NoTaskGain: the model did not learn the target task"),
    ("train stage failed", 1, {}, {"phase": "Failed", "observedGeneration": 1,
                                   "message": "stage train failed: OOMKilled",
                                   "conditions": [cond("Ready", "False", "TrainFailed", "stage train failed: OOMKilled"),
                                                  cond("Failed", "True", "TrainFailed", "stage train failed: OOMKilled")]},
     "Degraded", "Failed: stage train failed: OOMKilled"),
    ("deadline exceeded, phase not yet written", 1, {}, {
        "observedGeneration": 1, "conditions": [cond("Ready", "False", "DeadlineExceeded", "ran longer than 3600 s")]},
     "Degraded", "DeadlineExceeded: ran longer than 3600 s"),
    ("rejected: invalid spec", 1, {}, {"phase": "Pending", "observedGeneration": 1,
                                       "conditions": [cond("Ready", "False", "InvalidSpec", "spec.training.epochs: too big")]},
     "Degraded", "InvalidSpec: spec.training.epochs"),
    ("rejected: no output volume", 1, {}, {
        "phase": "Pending", "observedGeneration": 1,
        "conditions": [cond("Ready", "False", "OutputVolumeRequired", "spec.output.pvc is required in the cluster")]},
     "Degraded", "OutputVolumeRequired: spec.output.pvc is required"),
    ("spec edited after the start", 2, {}, {
        "phase": "Training", "observedGeneration": 2,
        "conditions": [cond("Ready", "False", "Training", "stage train running", 2),
                       cond("SpecChanged", "True", "SpecChangedAfterStart", "spec changed after the start; not applied", 2)]},
     "Degraded", "SpecChanged: spec changed after the start"),
    ("spec change reverted", 2, {}, {
        "phase": "Training", "observedGeneration": 2,
        "conditions": [cond("Ready", "False", "Training", "stage train running", 2),
                       cond("SpecChanged", "False", "SpecRestored", "the spec matches", 2)]},
     "Progressing", "Training"),
    ("stalled", 1, {}, {"phase": "Training", "observedGeneration": 1,
                        "conditions": [cond("Ready", "False", "Training", "running"),
                                       cond("Stalled", "True", "ImagePullBackOff", "pod x: ImagePullBackOff")]},
     "Degraded", "Stalled: pod x: ImagePullBackOff"),
    ("suspended by the operator", 1, {"suspend": True}, {
        "phase": "Suspended", "observedGeneration": 1,
        "conditions": [cond("Ready", "False", "Suspended", "held by spec.suspend (Kueue)")]},
     "Suspended", "held by spec.suspend"),
    ("suspend set, operator caught up but phase still running", 1, {"suspend": True}, {
        "phase": "Training", "observedGeneration": 1,
        "conditions": [cond("Ready", "False", "Training", "stage train running")]},
     "Suspended", "stage train running"),
    ("suspend set, not yet observed", 2, {"suspend": True}, {
        "phase": "Training", "observedGeneration": 1,
        "conditions": [cond("Ready", "False", "Training", "stage train running")]},
     "Progressing", "observe generation 2"),
    ("failed and suspended: failure wins", 1, {"suspend": True}, {
        "phase": "Failed", "observedGeneration": 1, "message": "stage baseline failed",
        "conditions": [cond("Ready", "False", "BaselineFailed", "stage baseline failed")]},
     "Degraded", "Failed: stage baseline failed"),
    ("succeeded without a Ready condition", 1, {}, {"phase": "Succeeded", "observedGeneration": 1,
                                                    "message": "gate warned"},
     "Healthy", "gate warned"),
]


def _object(generation: float, spec_patch: dict, status: dict | None) -> dict:
    obj: dict[str, Any] = {
        "apiVersion": "forgetless.dev/v1alpha1", "kind": "FineTuneJob",
        "metadata": {"name": "support", "namespace": "ml", "generation": generation, "uid": "1234"},
        "spec": {"model": {"name": "bundled:tiny-world"}, "dataset": {"task": {"path": "bundled:support-tickets"}},
                 **spec_patch},
    }
    if status is not None:
        FineTuneJobStatus.model_validate(status)  # the sample is a status the API allows
        obj["status"] = status
    return obj


def run_health(lua: str, objects: list[dict]) -> list[tuple[str, str]]:
    """Evaluate health.lua once per object, the way Argo CD does (global `obj`, returned table)."""
    script = "local cases = {\n" + ",\n".join(to_lua(o) for o in objects) + "\n}\n" + (
        "for _, case in ipairs(cases) do\n"
        "  obj = case\n"
        f"  local hs = dofile({to_lua(str(HEALTH_LUA))})\n"
        '  io.write(tostring(hs.status), "\\t", tostring(hs.message), "\\n")\n'
        "end\n"
    )
    proc = subprocess.run([lua, "-"], input=script, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, f"{lua} failed:\n{proc.stderr}"
    lines = proc.stdout.splitlines()
    assert len(lines) == len(objects), proc.stdout
    return [tuple(line.split("\t", 1)) for line in lines]  # type: ignore[misc]


@pytest.mark.parametrize("interpreter", ["lua5.1", "lua5.4"])
def test_health_of_sample_statuses(interpreter: str) -> None:
    lua = tool_or_skip(interpreter)
    objects = [_object(gen, patch, status) for _, gen, patch, status, _, _ in CASES]
    results = run_health(lua, objects)
    failures = []
    for (name, *_, want_status, want_text), (status, message) in zip(CASES, results):
        if status != want_status or want_text not in message:
            failures.append(f"{name}: got {status} {message!r}, want {want_status} containing {want_text!r}")
    assert not failures, "\n".join(failures)


def test_health_values_are_ones_argo_cd_knows() -> None:
    lua = tool_or_skip("lua5.4")
    statuses = {s for s, _ in run_health(lua, [_object(g, p, s) for _, g, p, s, _, _ in CASES])}
    assert statuses <= {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}
    assert statuses == {"Healthy", "Progressing", "Degraded", "Suspended"}  # every branch was exercised


def test_argocd_cm_snippet_embeds_the_health_check() -> None:
    snippet = yaml.safe_load(SNIPPET.read_text())
    assert snippet["kind"] == "ConfigMap" and snippet["metadata"]["name"] == "argocd-cm"
    key = "resource.customizations.health.forgetless.dev_FineTuneJob"
    assert snippet["data"][key] == HEALTH_LUA.read_text()
    assert SNIPPET.read_text() == chart_sync.argocd_snippet(), "run python charts/forgetless/hack/chart_sync.py"


def test_lua_literal_round_trip_of_awkward_strings() -> None:
    lua = tool_or_skip("lua5.4")
    text = 'quote " backslash \\ newline \n tab \t unicode é'
    proc = subprocess.run([lua, "-e", f"io.write({to_lua(text)})"], capture_output=True, timeout=10)
    assert proc.stdout.decode() == text
