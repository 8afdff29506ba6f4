"""The evaluate stage: the fine-tuned model on the same suite, paired with the baseline; the gate;
the report; and promotion when the gate lets the model through.

1. The fine-tuned model: base model + WORKDIR/train/output (a peft adapter, or a full model), on the
   job's target (runner.job_target: the suite with the job's own held-out task), its learned format
   items scored by the baseline's format detector (WORKDIR/baseline/format_detector.json, else fitted
   again from the baseline's answers).
2. The baseline: WORKDIR/baseline/results.json when it matches the suite digest and limit, else
   the cache entry (weights key, then spec key — the operator skips the baseline stage on a spec
   key hit), else the base model is evaluated here (and cached), so a stale or missing baseline
   can cost time but never a comparison against other items.
3. WORKDIR/evaluate/results.json (item level), the per-task 2x2 tables `paired`.
4. The gate — this is the one place it runs, in a pod as in `forgetless run` — with the target's notes
   (status.gate.notes), and the report (gate.json, report.md, report.png) in WORKDIR/report/, with the
   items that flipped in failed categories and the task (forgetless_trainer.evaluation.evidence; also
   `evidence` in summary.json, never in the termination message).
5. regression.rescue when the gate blocked for forgetting (verdict Failed): the weight-interpolation
   search of forgetless_trainer.rescue; a confirmed α makes the verdict Rescued, its model
   (WORKDIR/rescue/output) is what gets promoted and its scores are the summary's `scores` (the
   fine-tuned model's stay in `unrescuedScores`).
6. Promotion (forgetless_trainer.promotion) when the verdict is Passed, Warned or Rescued and
   output.promote (never for Failed = forgetting, or NoTaskGain = no evidence the model learned the task).
7. output.handOff.mlflow (forgetless_trainer.handoff_mlflow): every job logged as a run, a promoted
   model registered; the result goes to `summary["mlflow"]`, a failure fails the stage.

The summary carries the verdict in its `status.gate` form and `promotedModel`; both are bounded by
the number of categories, not of tasks, so the operator reads them from the termination message
whatever the suite's size. Per-task detail (`paired`, `tasks`) stays in summary.json on the volume.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from forgetless.api.schema import PROMOTING_VERDICTS, FineTuneJob
from forgetless_trainer.stages.base import Stage
from forgetless.contract import BASELINE_RESULTS, EVALUATE_RESULTS, REPORT_DIR, TRAIN_OUTPUT, summary_path
from forgetless.gate import GateError, evaluate_gate, paired_counts
from forgetless_trainer.evaluation.results import EvaluationResult
from forgetless_trainer.evaluation.evidence import flipped_items
from forgetless_trainer.evaluation.format_detector import Calibration
from forgetless_trainer.evaluation.runner import (
    EvalTarget, baseline_for, evaluate_model, evaluation_basis, job_target, learn_format, load_and_evaluate,
)
from forgetless.errors import StageError

RESULTS = EVALUATE_RESULTS


def _workdir_baseline(path: Path, target: EvalTarget, limit: int | None) -> EvaluationResult | None:
    if not path.exists():
        return None
    try:
        result = EvaluationResult.load(path)
    except (OSError, ValueError) as exc:
        print(f"warning: ignoring unreadable baseline {path}: {exc}", file=sys.stderr)
        return None
    if result.digest not in target.accepted_digests(limit) or result.limit != limit:
        print(f"warning: {path} was made for another suite or limit; looking further", file=sys.stderr)
        return None
    return result


def find_baseline(job: FineTuneJob, workdir: Path, target: EvalTarget) -> tuple[EvaluationResult, str, Any]:
    """(baseline result, where it came from: workdir | cache | evaluated, the format detector or None)."""
    from forgetless_trainer.evaluation.format_detector import FormatDetector

    spec = job.spec
    result = _workdir_baseline(workdir / BASELINE_RESULTS, target, spec.regression.limit)
    if result is not None:
        detector = None
        if target.learned_tasks and any(i.task in target.learned_tasks for i in result.items):
            detector = FormatDetector.load((workdir / BASELINE_RESULTS).parent)
            if detector is None:  # not stored (or unreadable): fitted again from the same answers, the same detector
                print("[evaluate] format detector: fitting it again from the baseline's answers", file=sys.stderr)
                _, detector, _ = learn_format(target, result, spec.regression.limit, refit_only=True)
        return result, "workdir", detector
    lookup = baseline_for(spec, target)
    lookup.result.save(workdir / BASELINE_RESULTS)
    if lookup.detector is not None:
        lookup.detector.save((workdir / BASELINE_RESULTS).parent)
    return lookup.result, "cache" if lookup.cached else "evaluated", lookup.detector


def evaluation_summary(final: EvaluationResult, paired: dict[str, Any], gate: Any, source: str,
                       promoted: dict[str, Any] | None) -> dict[str, Any]:
    """The evaluate stage's summary (docs/contracts.md): scores, the verdict, what was promoted."""
    summary = final.summary("evaluate")
    summary["paired"] = paired
    summary["baselineSource"] = source
    summary["gate"] = gate.to_status()
    summary["promotedModel"] = promoted
    return summary


def rescue_blocked(job: FineTuneJob, workdir: Path, target: EvalTarget, baseline: EvaluationResult, gate: Any,
                   base_dir: Path | None, detector: Any = None):
    """regression.rescue on a blocked model (forgetless_trainer.rescue): (gate, θ(α)'s results or None,
    the model to promote or None)."""
    from forgetless_trainer.rescue import rescue

    if target.suite is None:
        raise StageError("regression.rescue needs a forgetless suite (regression.suite.path): the items of lm-eval "
                         "tasks cannot be split into a choice and a confirmation half")

    def evaluate(model, tokenizer, half, stage):
        half_target = EvalTarget(half.name, half.digest, suite=half, learned_tasks=target.learned_tasks)
        return evaluate_model(model, tokenizer, half_target, stage=stage, detector=detector)

    return rescue(job, workdir, target.suite.subset(job.spec.regression.limit), baseline, gate, evaluate, base_dir)


def general_data_notes(spec: Any, workdir: Path) -> list[str]:
    """The note on the general data the model was trained with (status.gate.notes and report.md), for a job
    that trains on general data."""
    from forgetless.general_data import general_data, trains_on_general_data
    from forgetless_trainer import self_rehearsal

    if not trains_on_general_data(spec):
        return []
    choice = general_data(spec)
    meta = self_rehearsal.read_meta(workdir) if choice.kind == "selfRehearsal" else None
    return [self_rehearsal.line(meta) if meta else f"general data: {choice.describe()}"]


def run(job: FineTuneJob, workdir: Path) -> dict[str, Any]:
    workdir = Path(workdir)
    spec = job.spec
    output = workdir / TRAIN_OUTPUT
    if not output.is_dir() or not any(output.iterdir()):
        raise StageError(f"no fine-tuned model in {output}: run the train stage first (it writes the adapter or model there)")
    target = job_target(spec)
    baseline, source, detector = find_baseline(job, workdir, target)
    calibration = None
    if target.learned_tasks:
        recorded = baseline.meta.get("formatDetector")
        calibration = Calibration.from_dict(recorded) if recorded else None
        if not any(i.task in target.learned_tasks for i in baseline.items):  # not usable at baseline: left out
            target = target.without_learned()
    final = load_and_evaluate(spec.model, target, adapter_path=output, limit=spec.regression.limit, dataset=spec.dataset,
                              detector=detector)
    final.save(workdir / RESULTS)
    basis = evaluation_basis(target, calibration)
    basis["notes"] = basis["notes"] + general_data_notes(spec, workdir)
    try:
        paired = paired_counts(baseline.items, final.items)
        gate = evaluate_gate(paired, spec.regression)
    except GateError as exc:
        raise StageError(f"cannot compare with the baseline: {exc}") from exc
    gate.notes = basis["notes"]

    from forgetless_trainer.evaluation.report import write_report
    base_dir = None  # relative paths resolve against the current directory
    unrescued, model_source = final, output
    if gate.verdict == "Failed" and spec.regression.rescue is not None:
        gate, rescued, rescued_model = rescue_blocked(job, workdir, target, baseline, gate, base_dir, detector)
        gate.notes = basis["notes"]
        if rescued is not None:
            final, model_source = rescued, rescued_model
            paired = paired_counts(baseline.items, final.items)

    train_summary_path = summary_path(workdir, "train")
    train_summary = json.loads(train_summary_path.read_text()) if train_summary_path.exists() else None
    failed = [c.category for c in gate.categories if not c.passed]
    evidence = flipped_items(baseline.items, final.items, target.suite, failed)
    write_report(gate, baseline.category_scores(), final.category_scores(), workdir / REPORT_DIR, train_summary,
                 unrescued_scores=unrescued.category_scores() if final is not unrescued else None, evidence=evidence)
    promoted = None
    if gate.verdict in PROMOTING_VERDICTS:
        from forgetless_trainer.promotion import promote

        promoted = promote(job, workdir, base_dir=base_dir, source=model_source)
        if promoted is not None:
            print(f"promoted: {promoted['path']} ({promoted['digest']})", file=sys.stderr)
    summary = evaluation_summary(final, paired, gate, source, promoted)
    summary["evidence"] = evidence
    summary.update({k: v for k, v in basis.items() if k != "notes"})
    if final is not unrescued:
        summary["unrescuedScores"] = {k: round(v, 6) for k, v in unrescued.category_scores().items()}
    if spec.output.hand_off and spec.output.hand_off.mlflow:
        from forgetless_trainer.handoff_mlflow import record

        try:
            summary["mlflow"] = record(
                job, workdir, gate_status=summary["gate"], baseline_scores=baseline.category_scores(),
                final_scores=final.category_scores(), promoted=promoted, report_dir=workdir / REPORT_DIR,
                base_dir=base_dir,
            )
        except RuntimeError as exc:
            done = f"the model is already promoted at {promoted['path']}" if promoted else "no model was promoted"
            raise StageError(f"output.handOff.mlflow: {exc} ({done})") from exc
    return summary


class Evaluate(Stage):
    name = "evaluate"

    def run(self, workdir: Path) -> dict[str, Any]:
        return run(self.job, workdir)
