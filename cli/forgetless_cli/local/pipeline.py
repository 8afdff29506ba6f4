"""The local pipeline behind `forgetless run`: the stages in-process, as the cluster runs them.

Stages are the very functions trainer pods run (`forgetless_trainer.stages.run_stage`); the
evaluate stage runs the gate and promotes, here as in a pod, and this module only reads its
verdict (one place runs the gate). A stage counts as finished when its
`WORKDIR/<stage>/summary.json` exists, so an interrupted run started again with the same work
dir continues where it stopped (and `train` resumes from its last checkpoint).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forgetless.general_data import general_data
from forgetless import exit_codes
from forgetless.api.manifests import ManifestError, load_job
from forgetless.api.schema import FineTuneJob
from forgetless.contract import REPORT_DIR, summary_path
from forgetless.lifecycle import PROMOTING_VERDICTS, STAGE_PHASE, STAGES, phase_of_verdict
from forgetless.metrics import LOCAL_NAMESPACE
from forgetless_trainer import threads
from forgetless_cli.local.run_output import metrics_server, render_table
from forgetless_cli.local.workdir import (  # noqa: F401 - default_workdir/PreflightError: part of the run API
    PreflightError, default_workdir, finished_stage, preflight, prepare_workdir,
)


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
    """Run (or resume) the stages of a validated, preflighted job in `workdir`; then read the verdict
    the evaluate stage's gate reached (this module never runs the gate itself)."""
    from forgetless.metrics import ForgettingMetrics
    from forgetless.errors import StageError
    from forgetless_trainer.stages import run_stage

    log = log or (lambda message: print(message, file=sys.stderr))
    forgetting = ForgettingMetrics()
    namespace, name = job.metadata.namespace or LOCAL_NAMESPACE, job.metadata.name
    summaries: dict[str, dict[str, Any]] = {}
    began = time.monotonic()
    with metrics_server(metrics_port, forgetting):
        for index, stage in enumerate(STAGES, start=1):
            done = finished_stage(workdir, stage)
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
            raise StageFailed("evaluate", f"{summary_path(workdir, 'evaluate')} holds no gate verdict (written by an "
                              "older forgetless?); run again with --restart")
        result = PipelineResult(workdir, summaries, gate_status, baseline, final, time.monotonic() - began)
        forgetting.record_scores(namespace, name, baseline, final, result.status.get("taskGain"))
        forgetting.record_verdict(namespace, name, result.status["verdict"])
        forgetting.record_rescue(namespace, name, result.status.get("rescue"))
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
    print(f"general data: {general_data(job.spec).describe()}", file=sys.stderr)
    try:
        print(threads.configure(), file=sys.stderr)
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return exit_codes.INVALID
    try:
        result = execute(job, workdir, metrics_port=metrics_port)
    except StageFailed as exc:
        print(str(exc), file=sys.stderr)
        print(f"fix the problem and run the same command again to resume from {workdir}", file=sys.stderr)
        return exit_codes.FAILED

    print(render_table(result.status, result.baseline, result.final))
    evidence = result.summaries["evaluate"].get("evidence") or []
    if evidence:
        from forgetless_trainer.evaluation.evidence import evidence_lines

        print("items that flipped (all of them in report.md):")
        print("\n".join(evidence_lines(evidence)))
    report_dir = workdir / REPORT_DIR
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
