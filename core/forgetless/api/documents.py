"""Manifests of either kind (FineTuneJob, FineTuneSweep) from files, dispatched on `kind`.

Errors are the same one-liners as forgetless.api.manifests: `FILE[#DOC]: FIELD.PATH: problem`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Union

from pydantic import ValidationError

from forgetless.api.manifests import ManifestError, describe_validation_error, load_all, validate_document
from forgetless.api.schema import FineTuneJob
from forgetless.api.sweep import KIND as SWEEP_KIND
from forgetless.api.sweep import FineTuneSweep

Manifest = Union[FineTuneJob, FineTuneSweep]


def validate_sweep_document(document: Any) -> FineTuneSweep:
    """One parsed YAML document -> FineTuneSweep, or ManifestError with one line per problem."""
    if not isinstance(document, dict):
        got = "empty document" if document is None else type(document).__name__
        raise ManifestError([f"(document): a FineTuneSweep manifest must be a mapping, got {got}"])
    try:
        return FineTuneSweep.model_validate(document)
    except ValidationError as exc:
        raise ManifestError(describe_validation_error(exc, FineTuneSweep)) from None


def validate_any(document: Any) -> Manifest:
    if isinstance(document, dict) and document.get("kind") == SWEEP_KIND:
        return validate_sweep_document(document)
    return validate_document(document)


def load_manifests(path: Path) -> list[Manifest]:
    """Every FineTuneJob and FineTuneSweep in a file; all problems of all documents reported together."""
    return load_all(path, validate_any)


def load_sweep(path: Path) -> FineTuneSweep:
    """Exactly one FineTuneSweep from a file (what `forgetless sweep` takes)."""
    found = load_manifests(path)
    sweeps = [m for m in found if isinstance(m, FineTuneSweep)]
    if len(found) != 1 or len(sweeps) != 1:
        raise ManifestError([f"{path}: expected one FineTuneSweep, found {len(sweeps)} sweep(s) among "
                             f"{len(found)} document(s)"])
    return sweeps[0]
