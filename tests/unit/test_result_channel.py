"""The result channel, end to end without a cluster: a real evaluate-stage summary for a suite of
1, 12, 60 (and 250) tasks → the wire form the stage writes to its termination log (≤ 4 KB) → the
operator's reading of the pod (observe_stage + reconcile) → the status the operator writes. The
verdict and the promoted model must arrive exactly as the stage's gate decided them, as
`forgetless run` shows them, whatever the suite's size.
"""

from __future__ import annotations

import json
import random
from datetime import timedelta

import pytest

from forgetless.api.schema import RegressionSpec
from forgetless.gate import evaluate_gate, paired_counts
from forgetless_trainer.evaluation.results import EvaluationResult, ItemResult
from forgetless.contract import TERMINATION_MESSAGE_LIMIT
from forgetless.contract.message import compact, wire_summary
from forgetless_trainer.stages.evaluate import evaluation_summary
from tests.unit.test_reconcile import T0, cond, pod, run, stage_job, through

CATEGORIES = ("instruction_following", "format", "knowledge", "reasoning", "safety")
# lm-eval style names, as long as mmlu's real ones ("mmlu_high_school_government_and_politics")
NAME = "mmlu_high_school_government_and_politics_subtask_{:03d}"


def results(tasks: int, forget: float, seed: int = 0) -> tuple[EvaluationResult, EvaluationResult]:
    """Baseline and final item results: `tasks` tasks of 40 items, the last one the target task."""
    rng = random.Random(seed)
    names = {NAME.format(i): CATEGORIES[i % len(CATEGORIES)] for i in range(tasks - 1)}
    names["support_tickets"] = "task"
    before, after = [], []
    for task, category in names.items():
        for i in range(40):
            right = rng.random() < (0.1 if category == "task" else 0.9)
            if category == "task":
                later = rng.random() < 0.8
            else:
                later = right and rng.random() >= forget
            before.append(ItemResult(task, f"{task}-{i}", category, float(right), "x"))
            after.append(ItemResult(task, f"{task}-{i}", category, float(later), "y"))
    make = lambda items: EvaluationResult("big-suite", "sha256:" + "0" * 64, dict(names), items)  # noqa: E731
    return make(before), make(after)


PROMOTED = {"path": "/mnt/pvc/outputs/" + "deep/" * 20 + "promoted", "claimName": "outputs",
            "pathInVolume": "deep/" * 20 + "promoted", "uri": "pvc://outputs/" + "deep/" * 20 + "promoted",
            "digest": "sha256:" + "cd" * 32, "format": "merged+adapter"}


@pytest.mark.parametrize("tasks", [1, 12, 60, 250])
@pytest.mark.parametrize("forget", [0.0, 0.5])
def test_the_operator_records_the_stages_verdict_for_any_suite_size(tasks, forget):
    baseline, final = results(tasks, forget)
    paired = paired_counts(baseline.items, final.items)
    regression = RegressionSpec()
    gate = evaluate_gate(paired, regression)
    passed = gate.verdict != "Failed"
    summary = evaluation_summary(final, paired, gate, "workdir", PROMOTED if passed else None)

    message = compact(wire_summary(summary))
    assert len(message.encode()) <= TERMINATION_MESSAGE_LIMIT
    wire = json.loads(message)
    assert "truncated" not in wire and wire["gate"] == gate.to_status()

    job, observed, _ = through("train")
    observed.jobs["evaluate"] = stage_job(job, "evaluate", complete=True)
    observed.pods["evaluate"] = [pod("evaluate", message=message)]
    decision = run(job, observed, T0 + timedelta(minutes=10))
    status = decision.status

    # what the operator recorded is what the stage decided (and what `forgetless run` prints)
    assert status["gate"] == gate.to_status()
    assert status["phase"] == ("Succeeded" if passed else "Blocked")
    assert cond(status, "Ready")["status"] == ("True" if passed else "False")
    assert status["finalScores"] == pytest.approx(final.category_scores(), abs=1e-6)
    if passed:
        assert status["promotedModel"]["uri"] == PROMOTED["uri"]
        assert status["promotedModel"]["digest"] == PROMOTED["digest"]
    else:
        assert "promotedModel" not in status and status["promoted"] is False
    if tasks == 1:
        assert set(status["finalScores"]) == {"task"}
    else:  # the drop is real forgetting, not noise: both sides of the parametrisation are exercised
        assert passed is (forget == 0.0)


def test_per_task_detail_stays_on_the_volume_not_in_the_termination_message():
    baseline, final = results(60, 0.0)
    paired = paired_counts(baseline.items, final.items)
    summary = evaluation_summary(final, paired, evaluate_gate(paired, RegressionSpec()), "cache", None)
    wire = json.loads(compact(wire_summary(summary)))
    assert "paired" not in wire and "tasks" not in wire
    assert len(summary["paired"]) == 60 and len(summary["tasks"]) == 60  # summary.json keeps them
