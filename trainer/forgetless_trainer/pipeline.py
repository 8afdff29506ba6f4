"""The local pipeline behind `forgetless run`: the stages in-process, as the cluster runs them.

Stages are the very functions trainer pods run (`forgetless_trainer.stages.run_stage`); the
evaluate stage runs the gate and promotes, here as in a pod, and this module only reads its
verdict (one place runs the gate). A stage counts as finished when its
`WORKDIR/<stage>/summary.json` exists, so an interrupted run started again with the same work
dir continues where it stopped (and `train` resumes from its last checkpoint).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from forgetless import atomic, exit_codes
from forgetless.api.manifests import ManifestError, load_job
from forgetless.api.schema import DataSource, FineTuneJob
from forgetless.lifecycle import PROMOTING_VERDICTS, STAGE_PHASE, STAGES, mean_general_score, phase_of_verdict
from forgetless.locations import resolve_path

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
            from forgetless.suites import resolve_suite

            resolve_suite(suite)
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
        for stage in (*STAGES, "report", "promoted"):
            shutil.rmtree(workdir / stage, ignore_errors=True)
        job_file.unlink(missing_ok=True)
    if job_file.exists():
        previous = json.loads(job_file.read_text())
        if previous.get("spec") != wire["spec"]:
            raise PreflightError(
                f"{workdir} holds a run of a different spec; use another --workdir, or --restart to discard it"
            )
    atomic.write_text(job_file, json.dumps(wire, indent=2, sort_keys=True))


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
    try:
        server, thread = start_http_server(port, registry=registry)  # type: ignore[arg-type]
    except OSError as exc:  # metrics are an aid: a taken port must never cost a run
        print(f"warning: cannot serve metrics on port {port} ({exc}); running without them", file=sys.stderr)
        yield
        return
    print(f"metrics: http://127.0.0.1:{port}/metrics", file=sys.stderr)
    try:
        yield
    finally:
        server.shutdown()
        thread.join(timeout=5)


def render_table(status: dict[str, Any], baseline: dict[str, float], final: dict[str, float]) -> str:
    """The per-category table `forgetless run` prints, from the gate's `status.gate` form."""
    rows = [f"{'category':<22} {'baseline':>8} {'final':>7} {'drop':>7} {'drop interval':>17} {'max':>6}  result"]
    for verdict in status.get("categories", []):
        interval = f"[{verdict['dropLower']:+.3f}, {verdict['dropUpper']:+.3f}]"
        rows.append(
            f"{verdict['category']:<22} {verdict['baseline']:8.3f} {verdict['final']:7.3f} {verdict['drop']:+7.3f} "
            f"{interval:>17} {verdict['threshold']:6.3f}  {'pass' if verdict['passed'] else 'FAIL'}"
        )
    mean_base, mean_final = mean_general_score(baseline, among=final), mean_general_score(final, among=baseline)
    if mean_base is not None and mean_final is not None:
        rows.append(f"{'mean general':<22} {mean_base:8.3f} {mean_final:7.3f} {status['meanDrop']:+7.3f}")
    if "task" in baseline and "task" in final:
        lower = status.get("taskGainLower")
        bound = f" (lower bound {lower:+.3f})" if lower is not None else ""
        rows.append(f"{'task (target)':<22} {baseline['task']:8.3f} {final['task']:7.3f} gain "
                    f"{final['task'] - baseline['task']:+.3f}{bound}")
    rows.append(f"verdict: {status['verdict']}")
    rows += [f"  - {reason}" for reason in status.get("reasons", [])]
    return "\n".join(rows)


@dataclass
class PipelineResult:
    workdir: Path
    summaries: dict[str, dict[str, Any]]
    status: dict[str, Any]
    """The gate's verdict in its `status.gate` form, as the evaluate stage computed it."""
    baseline: dict[str, float]
    final: dict[str, float]
    seconds: float

    @property
    def passed(self) -> bool:
        return self.status["verdict"] in PROMOTING_VERDICTS

    @property
    def promoted_model(self) -> dict[str, Any] | None:
        return self.summaries["evaluate"].get("promotedModel")


class StageFailed(Exception):
    def __init__(self, stage: str, message: str) -> None:
        super().__init__(f"stage {stage} failed: {message}")
        self.stage = stage


def execute(
    job: FineTuneJob, workdir: Path, *, metrics_port: int | None = None, log: Any = None
) -> PipelineResult:
    """Run (or resume) the stages of a validated, preflighted job in `workdir`; then the gate."""
    from forgetless.metrics import ForgettingMetrics
    from forgetless.errors import StageError
    from forgetless_trainer.stages import run_stage

    log = log or (lambda message: print(message, file=sys.stderr))
    forgetting = ForgettingMetrics()
    namespace, name = "local", job.metadata.name
    summaries: dict[str, dict[str, Any]] = {}
    began = time.monotonic()
    with _metrics_server(metrics_port, forgetting):
        for index, stage in enumerate(STAGES, start=1):
            done = _stage_done(workdir, stage)
            if done is not None:
                log(f"[{index}/3] {stage}: already finished, reusing {workdir / stage}")
                summaries[stage] = done
                continue
            phase = STAGE_PHASE[stage]
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
        gate_status = summaries["evaluate"].get("gate")
        if not isinstance(gate_status, dict) or "verdict" not in gate_status:
            raise StageFailed("evaluate", f"{workdir / 'evaluate' / 'summary.json'} holds no gate verdict (written by an "
                              "older forgetless?); run again with --restart")
        result = PipelineResult(workdir, summaries, gate_status, baseline, final, time.monotonic() - began)
        forgetting.record_scores(namespace, name, baseline, final, result.status.get("taskGain"))
        forgetting.record_verdict(namespace, name, result.status["verdict"])
        forgetting.set_phase_counts({(namespace, phase_of_verdict(result.status["verdict"])): 1}, [namespace])
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

    print(render_table(result.status, result.baseline, result.final))
    report_dir = workdir / "report"
    for report in sorted(report_dir.glob("*")) if report_dir.exists() else []:
        print(f"report: {report}")
    if result.passed:
        promoted = result.promoted_model
        if promoted is not None:
            print(f"promoted: {promoted['path']} ({promoted['digest']})")
        hand_off = job.spec.output.hand_off
        if promoted is not None and hand_off is not None and hand_off.inference_service is not None:
            print(f"handOff.inferenceService {hand_off.inference_service.name}: not applied by a local run "
                  "(the operator does it in a cluster)", file=sys.stderr)
        return exit_codes.OK
    if result.status["verdict"] == "NoTaskGain":
        print("no evidence the model learned the task: the model was not promoted (set "
              "regression.thresholds.minTaskGain to judge the task differently)", file=sys.stderr)
        return exit_codes.NO_TASK_GAIN
    print("gate blocked promotion: the model was not promoted", file=sys.stderr)
    return exit_codes.GATE_BLOCKED
