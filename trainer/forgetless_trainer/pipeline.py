"""The local pipeline behind `forgetless run`: the stages in-process, then the gate.

Stages are the very functions trainer pods run (`forgetless_trainer.stages.run_stage`); the gate
is the core's pure function the operator also calls. A stage counts as finished when its
`WORKDIR/<stage>/summary.json` exists, so an interrupted run started again with the same work
dir continues where it stopped (and `train` resumes from its last checkpoint).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from forgetless import exit_codes
from forgetless.api.manifests import ManifestError, load_job
from forgetless.api.schema import CATEGORIES, DataSource, FineTuneJob
from forgetless.locations import resolve_path

STAGE_ORDER = ("baseline", "train", "evaluate")
JOB_FILE = "job.json"


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
    needs_general = spec.mitigation.data_mixing.general_fraction > 0 or spec.mitigation.ewc is not None
    if needs_general:
        _check_source("spec.dataset.general", spec.dataset.general, problems)
    model = spec.model
    if model.pvc is not None:
        problems.append("spec.model.pvc: PVCs exist only in a cluster; use a local path for local runs")
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
            from forgetless.suites import load_suite

            load_suite(suite)
        except Exception as exc:  # SuiteError or a lookup error: say which field
            problems.append(f"spec.regression.suite: {exc}")
    if spec.resources.workers > 1:
        problems.append("spec.resources.workers: local runs use one process; set workers: 1 or run in a cluster")
    if problems:
        raise PreflightError("\n".join(problems))


def _stage_done(workdir: Path, stage: str) -> dict[str, Any] | None:
    summary = workdir / stage / "summary.json"
    if summary.exists():
        return json.loads(summary.read_text())
    return None


def prepare_workdir(job: FineTuneJob, workdir: Path, restart: bool) -> None:
    """Create `workdir` and record the spec; refuse a work dir holding another spec unless `restart`."""
    job_file = workdir / JOB_FILE
    wire = job.to_wire()
    wire.pop("status", None)
    if restart and workdir.exists():
        for stage in (*STAGE_ORDER, "report", "promoted"):
            shutil.rmtree(workdir / stage, ignore_errors=True)
        job_file.unlink(missing_ok=True)
    if job_file.exists():
        previous = json.loads(job_file.read_text())
        if previous.get("spec") != wire["spec"]:
            raise PreflightError(
                f"{workdir} holds a run of a different spec; use another --workdir, or --restart to discard it"
            )
    workdir.mkdir(parents=True, exist_ok=True)
    tmp = job_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(wire, indent=2, sort_keys=True))
    os.replace(tmp, job_file)


class _CombinedRegistry:
    """Serve several prometheus registries on one port."""

    def __init__(self, *registries: Any) -> None:
        self.registries = registries

    def collect(self) -> Iterator[Any]:
        for registry in self.registries:
            yield from registry.collect()


@contextmanager
def _metrics_server(port: int | None, forgetting: Any) -> Iterator[None]:
    if port is None:
        yield
        return
    from prometheus_client import start_http_server

    from forgetless_trainer import live_metrics

    registry = _CombinedRegistry(forgetting.registry, live_metrics.REGISTRY)
    server, thread = start_http_server(port, registry=registry)  # type: ignore[arg-type]
    print(f"metrics: http://127.0.0.1:{port}/metrics", file=sys.stderr)
    try:
        yield
    finally:
        server.shutdown()
        thread.join(timeout=5)


def _fmt(value: float | None) -> str:
    return "   -  " if value is None else f"{value:6.3f}"


def render_table(gate: Any, baseline: dict[str, float], final: dict[str, float]) -> str:
    status = gate.to_status()
    rows = [f"{'category':<22} {'baseline':>8} {'final':>7} {'drop':>7} {'drop interval':>17} {'max':>6}  result"]
    for verdict in status.get("categories", []):
        interval = f"[{verdict['dropLower']:+.3f}, {verdict['dropUpper']:+.3f}]"
        rows.append(
            f"{verdict['category']:<22} {verdict['baseline']:8.3f} {verdict['final']:7.3f} {verdict['drop']:+7.3f} "
            f"{interval:>17} {verdict['threshold']:6.3f}  {'pass' if verdict['passed'] else 'FAIL'}"
        )
    general = [c for c in CATEGORIES if c in baseline and c in final]
    if general:
        mean_base = sum(baseline[c] for c in general) / len(general)
        mean_final = sum(final[c] for c in general) / len(general)
        rows.append(f"{'mean general':<22} {mean_base:8.3f} {mean_final:7.3f} {status['meanDrop']:+7.3f}")
    if "task" in baseline and "task" in final:
        rows.append(f"{'task (target)':<22} {baseline['task']:8.3f} {final['task']:7.3f} gain {final['task'] - baseline['task']:+.3f}")
    rows.append(f"verdict: {status['verdict']}")
    rows += [f"  - {reason}" for reason in status.get("reasons", [])]
    return "\n".join(rows)


def promote(job: FineTuneJob, workdir: Path) -> Path | None:
    """Copy the trained model to the promote path (LoRA: merged into the base, adapter kept beside it)."""
    source = workdir / "train" / "output"
    target = job.spec.output.promote_path
    if not job.spec.output.promote or not source.exists():
        return None
    destination = Path(target) if target else workdir / "promoted"
    if destination.exists():
        shutil.rmtree(destination)
    tmp = destination.with_name(destination.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if (source / "adapter_config.json").exists():
        # a deployable model: the adapter merged into the base weights (and the adapter beside it)
        from forgetless_trainer.modeling import load_model_and_tokenizer

        model, tokenizer = load_model_and_tokenizer(job.spec.model, adapter_path=source)
        model.merge_and_unload().save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        shutil.copytree(source, tmp / "adapter")
    else:
        shutil.copytree(source, tmp)
    os.replace(tmp, destination)
    return destination


@dataclass
class PipelineResult:
    workdir: Path
    summaries: dict[str, dict[str, Any]]
    gate: Any
    baseline: dict[str, float]
    final: dict[str, float]
    seconds: float

    @property
    def status(self) -> dict[str, Any]:
        return self.gate.to_status()

    @property
    def passed(self) -> bool:
        return self.status["verdict"] in ("Passed", "Warned")


class StageFailed(Exception):
    def __init__(self, stage: str, message: str) -> None:
        super().__init__(f"stage {stage} failed: {message}")
        self.stage = stage


def execute(
    job: FineTuneJob, workdir: Path, *, metrics_port: int | None = None, log: Any = None
) -> PipelineResult:
    """Run (or resume) the stages of a validated, preflighted job in `workdir`; then the gate."""
    from forgetless.gate import evaluate_gate
    from forgetless.metrics import ForgettingMetrics
    from forgetless_trainer.stages import StageError, run_stage

    log = log or (lambda message: print(message, file=sys.stderr))
    forgetting = ForgettingMetrics()
    namespace, name = "local", job.metadata.name
    summaries: dict[str, dict[str, Any]] = {}
    began = time.monotonic()
    with _metrics_server(metrics_port, forgetting):
        for index, stage in enumerate(STAGE_ORDER, start=1):
            done = _stage_done(workdir, stage)
            if done is not None:
                log(f"[{index}/3] {stage}: already finished, reusing {workdir / stage}")
                summaries[stage] = done
                continue
            phase = {"baseline": "Baseline", "train": "Training", "evaluate": "Evaluating"}[stage]
            forgetting.set_phase_counts({(namespace, phase): 1}, [namespace])
            log(f"[{index}/3] {stage} …")
            started = time.monotonic()
            try:
                summaries[stage] = run_stage(stage, job, workdir)
            except StageError as exc:
                forgetting.set_phase_counts({(namespace, "Failed"): 1}, [namespace])
                raise StageFailed(stage, str(exc)) from exc
            elapsed = time.monotonic() - started
            forgetting.stage_duration.labels(namespace, stage).observe(elapsed)
            log(f"[{index}/3] {stage}: done in {elapsed:.1f} s")

        baseline = summaries["baseline"].get("scores", {})
        final = summaries["evaluate"].get("scores", {})
        gate = evaluate_gate(summaries["evaluate"]["paired"], job.spec.regression)
        result = PipelineResult(workdir, summaries, gate, baseline, final, time.monotonic() - began)
        forgetting.record_scores(namespace, name, baseline, final, result.status.get("taskGain"))
        forgetting.record_verdict(namespace, name, result.status["verdict"])
        forgetting.set_phase_counts({(namespace, "Succeeded" if result.passed else "Blocked"): 1}, [namespace])
    return result


def run_pipeline(
    manifest: Path, *, workdir: Path | None = None, metrics_port: int | None = None, restart: bool = False
) -> int:
    """The `forgetless run` command: validate, preflight, execute, print the table, promote."""
    try:
        job = load_job(manifest)
        preflight(job)
        workdir = workdir or default_workdir(job)
        prepare_workdir(job, workdir, restart)
    except ManifestError as exc:
        print(str(exc), file=sys.stderr)
        return exit_codes.INVALID
    except PreflightError as exc:
        for line in str(exc).splitlines():
            print(f"{manifest}: {line}", file=sys.stderr)
        return exit_codes.INVALID

    print(f"forgetless run {job.metadata.name}: work dir {workdir}", file=sys.stderr)
    try:
        result = execute(job, workdir, metrics_port=metrics_port)
    except StageFailed as exc:
        print(str(exc), file=sys.stderr)
        print(f"fix the problem and run the same command again to resume from {workdir}", file=sys.stderr)
        return exit_codes.FAILED

    print(render_table(result.gate, result.baseline, result.final))
    report_dir = workdir / "report"
    for report in sorted(report_dir.glob("*")) if report_dir.exists() else []:
        print(f"report: {report}")
    if result.passed:
        promoted = promote(job, workdir)
        if promoted is not None:
            print(f"promoted: {promoted}")
        return exit_codes.OK
    print("gate blocked promotion: the model was not promoted", file=sys.stderr)
    return exit_codes.GATE_BLOCKED
