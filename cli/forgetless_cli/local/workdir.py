"""The local run's work dir and its preflight: where `forgetless run` writes (`default_workdir`),
what it checks before any stage starts (`preflight`: every path the manifest names exists, nothing
cluster-only is asked of a laptop), and the spec it records there (`prepare_workdir`: a work dir
holds one spec; `--restart` discards it)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from forgetless import atomic, model_sources
from forgetless.api.schema import DataSource, FineTuneJob
from forgetless.contract import JOB_FILE, PROMOTED_DIR, REPORT_DIR, summary_path
from forgetless.general_data import general_data, trains_on_general_data
from forgetless.lifecycle import STAGES
from forgetless.locations import resolve_path



class PreflightError(Exception):
    """The manifest is valid but names something that is not there; nothing has run yet."""


def default_workdir(job: FineTuneJob) -> Path:
    return Path(job.spec.output.path) if job.spec.output.path else Path("runs") / job.metadata.name


def _check_source(field: str, source: DataSource, problems: list[str]) -> None:
    if source.config_map is not None:
        problems.append(f"{field}.configMap: ConfigMaps exist only in a cluster; use a path for local runs")
        return
    try:
        path = resolve_path(source.path, pvc=source.pvc, kind="data")
    except LookupError as exc:
        problems.append(f"{field}.path: {exc}")
        return
    if source.pvc is not None and not path.exists():
        problems.append(f"{field}.pvc: PVCs exist only in a cluster; use a local path for local runs")
    elif not path.exists():
        problems.append(f"{field}.path: {path} does not exist")


def preflight(job: FineTuneJob) -> None:
    """Check everything a local run needs before any stage starts; raise with every problem named."""
    spec = job.spec
    problems: list[str] = []
    _check_source("spec.dataset.task", spec.dataset.task, problems)
    choice = general_data(spec)
    if choice.kind == "selfRehearsal":
        _check_source("spec.dataset.selfRehearsal.prompts", choice.prompts, problems)
    elif trains_on_general_data(spec):
        _check_source("spec.dataset.general", choice.source, problems)
    model = spec.model
    if model.pvc is not None:
        problems.append("spec.model.pvc: PVCs exist only in a cluster; use a local path for local runs")
    elif model_sources.needs_conversion(model.name):  # a packaged or user GGUF file: converted at load
        try:
            model_sources.gguf_source(model.name)
            model_sources.check_converter()
        except model_sources.ModelSourceError as exc:
            problems.append(str(exc))
    elif model.name.startswith("bundled:") or model.name.startswith(("/", ".", "~")):
        try:
            location = resolve_path(model.name, kind="model")
        except LookupError as exc:
            problems.append(f"spec.model.name: {exc}")
        else:
            if not location.exists():
                problems.append(f"spec.model.name: {location} does not exist")
    suite = spec.regression.suite
    if suite.path is not None:
        try:
            from forgetless.suites import resolve_suite

            resolve_suite(suite)
        except Exception as exc:  # SuiteError or a lookup error: say which field
            problems.append(f"spec.regression.suite: {exc}")
    if spec.resources.workers > 1:
        problems.append("spec.resources.workers: local runs use one process; set workers: 1 or run in a cluster")
    if not problems:  # the data is readable: enough task records to hold some out for the task score?
        from forgetless.errors import StageError
        from forgetless_trainer.evaluation.own_task import held_out_split, uses_held_out

        if uses_held_out(spec):
            try:
                held_out_split(spec)
            except StageError as exc:
                problems.append(f"spec.{exc}")
    if problems:
        raise PreflightError("\n".join(problems))


def finished_stage(workdir: Path, stage: str) -> dict[str, Any] | None:
    """The stage's summary when it finished in this work dir (its summary.json exists), else None."""
    summary = summary_path(workdir, stage)
    if summary.exists():
        return json.loads(summary.read_text())
    return None


def prepare_workdir(job: FineTuneJob, workdir: Path, restart: bool) -> None:
    """Create `workdir` and record the spec; refuse a work dir holding another spec unless `restart`."""
    job_file = workdir / JOB_FILE
    wire = job.to_wire()
    wire.pop("status", None)
    if restart and workdir.exists():
        for stage in (*STAGES, REPORT_DIR, PROMOTED_DIR):
            shutil.rmtree(workdir / stage, ignore_errors=True)
        job_file.unlink(missing_ok=True)
    if job_file.exists():
        previous = json.loads(job_file.read_text())
        if previous.get("spec") != wire["spec"]:
            raise PreflightError(
                f"{workdir} holds a run of a different spec; use another --workdir, or --restart to discard it"
            )
    atomic.write_text(job_file, json.dumps(wire, indent=2, sort_keys=True))
