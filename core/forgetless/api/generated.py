"""Every file generated from the API models: the FineTuneJob CRD (forgetless.api.crd) and the
FineTuneSweep CRD (forgetless.api.sweep_crd, built with crd's converter), each in crds/ and in the
chart, and the field reference pages docs/reference/*.md (forgetless.api.reference).

`forgetless crd --write` writes them, `--check` and the drift tests compare them. Kept apart from
crd.py so that sweep_crd imports crd and nothing imports back (no import circle).
"""

from __future__ import annotations

from pathlib import Path

from forgetless.api.crd import crd_targets, render_crd_yaml
from forgetless.api.reference import reference_files
from forgetless.api.sweep_crd import render_sweep_crd_yaml, sweep_crd_targets


def generated_files(repo_root: Path) -> dict[Path, str]:
    """Every generated file (the FineTuneJob and FineTuneSweep CRDs in crds/ and the chart, the
    reference pages in docs/reference/) -> its text."""
    files = {target: render_crd_yaml() for target in crd_targets(repo_root)}
    files.update({target: render_sweep_crd_yaml() for target in sweep_crd_targets(repo_root)})
    files.update(reference_files(repo_root))
    return files


def write_crds(repo_root: Path) -> list[Path]:
    written = []
    for target, text in generated_files(repo_root).items():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        written.append(target)
    return written
