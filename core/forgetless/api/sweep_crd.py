"""Generate the FineTuneSweep CustomResourceDefinition from forgetless.api.sweep.

The same converter as the FineTuneJob CRD (forgetless.api.crd.model_schema): CEL rules declared on
the models are carried into `x-kubernetes-validations`; `spec.template` carries every FineTuneJob
spec rule. `forgetless crd --write` writes both CRDs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


from forgetless.api import schema, sweep
from forgetless.api.crd import crd_document, dump_crd, model_schema, root_schema

SWEEP_CRD_FILE_NAME = f"{sweep.PLURAL}.{schema.GROUP}.yaml"

PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Trials", "type": "integer", "jsonPath": ".status.trialCount"},
    {"name": "Best", "type": "string", "jsonPath": ".status.best.name"},
    {"name": "Task", "type": "number", "description": "Task score of the best trial", "jsonPath": ".status.best.taskScore"},
    {"name": "Kept", "type": "number", "description": "Share of the general score the best trial kept",
     "jsonPath": ".status.best.meanKept"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def sweep_openapi_schema() -> dict[str, Any]:
    return root_schema("A forgetting-aware policy search: the cheapest FineTuneJob policy that passes the gate.",
                       model_schema(sweep.FineTuneSweepSpec), model_schema(sweep.FineTuneSweepStatus),
                       sweep.MAX_SWEEP_NAME_LENGTH, "trials are FineTuneJobs named <sweep>-t<index>")


def render_sweep_crd() -> dict[str, Any]:
    return crd_document(kind=sweep.KIND, plural=sweep.PLURAL, singular=sweep.SINGULAR, short_names=sweep.SHORT_NAMES,
                        printer_columns=PRINTER_COLUMNS, root=sweep_openapi_schema())


def render_sweep_crd_yaml() -> str:
    return dump_crd(render_sweep_crd(), "core/forgetless/api/sweep.py")


def sweep_crd_targets(repo_root: Path) -> list[Path]:
    return [repo_root / "crds" / SWEEP_CRD_FILE_NAME, repo_root / "charts" / "forgetless" / "crds" / SWEEP_CRD_FILE_NAME]
