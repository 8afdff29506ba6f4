"""The rescue's α search (forgetless.rescue), its halves, the stored-trial replay of a restarted
stage (forgetless_trainer.rescue.search, with a fake evaluator), the verdict it records, and the
validation of `regression.rescue`."""

from __future__ import annotations

import pytest

import yaml

from forgetless.api.manifests import ManifestError, validate_document
from forgetless.api.schema import GateStatus, RegressionSpec
from forgetless.rescue import CHOICE, CONFIRMATION, RESOLUTION, Evaluate, Outcome, Trial, next_step, split_items


def run_search(curve, max_evaluations=6, confirm=None):
    """Drive next_step with `curve(alpha, half) -> (forgetting_ok, task_ok)`; returns (outcome, trials)."""
    trials: list[Trial] = []
    while True:
        step = next_step(trials, max_evaluations)
        if isinstance(step, Outcome):
            return step, trials
        forgetting_ok, task_ok = (confirm or curve)(step.alpha, step.half) if step.half == CONFIRMATION else curve(step.alpha, step.half)
        verdict = "Passed" if forgetting_ok and task_ok else ("NoTaskGain" if forgetting_ok else "Failed")
        trials.append(Trial(step.alpha, step.half, forgetting_ok, task_ok, verdict))


def monotone(boundary, task_from=0.0):
    return lambda alpha, half: (alpha <= boundary, alpha >= task_from)


# --------------------------------------------------------------------------- the search


def test_monotone_curve_finds_the_boundary_within_the_resolution_and_confirms_it():
    outcome, trials = run_search(monotone(0.62))
    assert outcome.rescued
    assert 0.62 - 2 * RESOLUTION <= outcome.alpha <= 0.62
    assert len(trials) <= 6
    assert [t.half for t in trials].count(CONFIRMATION) == 1
    assert trials[-1].half == CONFIRMATION and trials[-1].alpha == outcome.alpha
    # every choice trial but the first halves the interval: a bisection
    assert trials[0].alpha == 0.5


def test_larger_budget_gets_closer_to_the_boundary():
    small, _ = run_search(monotone(0.7), max_evaluations=3)
    large, _ = run_search(monotone(0.7), max_evaluations=8)
    assert small.rescued and large.rescued
    assert small.alpha < large.alpha <= 0.7


def test_nothing_passes_stays_blocked_and_says_so():
    outcome, trials = run_search(lambda a, h: (False, True))
    assert not outcome.rescued and outcome.alpha is None
    assert "every α tried" in outcome.message
    assert len(trials) <= 6 and all(t.half == CHOICE for t in trials)


def test_forgetting_only_fixed_where_the_task_is_lost_is_not_a_rescue():
    outcome, trials = run_search(monotone(0.2, task_from=0.6))
    assert not outcome.rescued
    assert "task gain shows no learning" in outcome.message


def test_non_monotone_curve_still_returns_a_confirmed_pass():
    # passes below 0.3 and again in a window 0.7-0.8 (noise): the bisection goes down from 0.5
    curve = lambda a, h: ((a <= 0.3 or 0.7 <= a <= 0.8), a >= 0.05)  # noqa: E731
    outcome, trials = run_search(curve)
    assert outcome.rescued and outcome.alpha <= 0.3
    assert curve(outcome.alpha, CHOICE) == (True, True)


def test_a_failed_confirmation_moves_to_the_next_candidate_while_evaluations_remain():
    # the choice half passes up to 0.6; the confirmation half only up to 0.48
    outcome, trials = run_search(monotone(0.6), max_evaluations=8, confirm=monotone(0.48))
    confirmations = [t for t in trials if t.half == CONFIRMATION]
    assert outcome.rescued and outcome.alpha <= 0.48
    assert len(confirmations) == 2 and not confirmations[0].passed
    # backed off to at most 0.8 x the failed alpha, tried on the choice half before it was confirmed
    assert outcome.alpha <= 0.8 * confirmations[0].alpha + 1e-9
    assert any(t.half == CHOICE and t.alpha == outcome.alpha for t in trials)
    assert len(trials) <= 8


def test_a_failed_confirmation_with_no_budget_left_is_not_rescued():
    outcome, trials = run_search(monotone(0.6), max_evaluations=2, confirm=lambda a, h: (False, True))
    assert not outcome.rescued
    assert "not on the confirmation half" in outcome.message
    assert len(trials) == 2


def test_budget_below_two_is_refused():
    with pytest.raises(ValueError):
        next_step([], 1)


def test_first_step_is_a_choice_half_trial_at_one_half():
    assert next_step([], 6) == Evaluate(0.5, CHOICE)


# --------------------------------------------------------------------------- the halves


def test_split_is_deterministic_balanced_per_task_and_independent_of_order():
    ids = {"a": [f"a{i}" for i in range(11)], "b": [f"b{i}" for i in range(4)]}
    halves = split_items(ids)
    again = split_items({"b": list(reversed(ids["b"])), "a": list(reversed(ids["a"]))})
    assert halves == again
    for task, members in ids.items():
        choice = sum(halves[(task, i)] == CHOICE for i in members)
        assert choice == (len(members) + 1) // 2
    # not simply the first half of the file
    assert {halves[("a", f"a{i}")] for i in range(6)} == {CHOICE, CONFIRMATION}


# --------------------------------------------------------------------------- search with a store


def _suite_results(n_per_task=40):
    from forgetless_trainer.evaluation.results import EvaluationResult, ItemResult

    tasks = {"know": "knowledge", "fmt": "format", "tickets": "task"}

    def make(score_of):
        items = [ItemResult(t, f"{t}-{i}", c, score_of(t, i), "") for t, c in tasks.items() for i in range(n_per_task)]
        return EvaluationResult("s", "sha256:x", dict(tasks), items)

    return tasks, make


def test_search_replays_stored_trials_after_a_restart(tmp_path):
    from forgetless_trainer.rescue import items_of, search

    tasks, make = _suite_results()
    baseline = make(lambda t, i: 0.0 if t == "tickets" else 1.0)
    halves = split_items({t: [f"{t}-{i}" for i in range(40)] for t in tasks})
    calls: list[tuple[float, str]] = []

    def evaluate_half(alpha, half):
        calls.append((alpha, half))
        # half of the general items are lost above alpha 0.45, the task is learnt from alpha 0.2
        result = make(lambda t, i: float(alpha >= 0.2) if t == "tickets" else float(alpha <= 0.45 or i >= 20))
        return items_of(result, halves, half)

    regression = RegressionSpec()

    class Crash(Exception):
        pass

    def crashing(alpha, half):
        if len(calls) == 2:
            raise Crash
        return evaluate_half(alpha, half)

    with pytest.raises(Crash):
        search(baseline, halves, crashing, regression, 6, tmp_path, log=lambda m: None)
    assert len(list(tmp_path.glob("*.json"))) == 2
    before = list(calls)
    found = search(baseline, halves, evaluate_half, regression, 6, tmp_path, log=lambda m: None)
    assert calls[:2] == before and all(c not in before for c in calls[2:])  # the two stored trials were not re-run
    assert found.evaluated == len(found.trials) - 2
    assert found.outcome.rescued and 0.45 - 2 * RESOLUTION <= found.outcome.alpha <= 0.45
    # the same search from a cold store gives the same sequence
    fresh = search(baseline, halves, evaluate_half, regression, 6, tmp_path / "fresh", log=lambda m: None)
    assert fresh.trials == found.trials


def test_rescued_gate_records_the_confirmation_half_and_the_account(tmp_path):
    from forgetless.gate import evaluate_gate, paired_counts
    from forgetless_trainer.rescue import items_of, merged_result, rescued_gate, search

    tasks, make = _suite_results()
    baseline = make(lambda t, i: 0.0 if t == "tickets" else 1.0)
    final = make(lambda t, i: 1.0 if t == "tickets" else float(i >= 30))
    original = evaluate_gate(paired_counts(baseline.items, final.items), RegressionSpec())
    assert original.verdict == "Failed"
    halves = split_items({t: [f"{t}-{i}" for i in range(40)] for t in tasks})

    def evaluate_half(alpha, half):
        return items_of(make(lambda t, i: float(alpha >= 0.2) if t == "tickets" else float(alpha <= 0.6 or i >= 30)),
                        halves, half)

    found = search(baseline, halves, evaluate_half, RegressionSpec(), 6, tmp_path, log=lambda m: None)
    gate = rescued_gate(found, 6, original)
    assert gate.verdict == "Rescued"
    status = GateStatus.model_validate(gate.to_status())
    assert status.rescue.outcome == "Rescued" and status.rescue.alpha == found.outcome.alpha
    assert status.rescue.evaluations == len(found.trials) <= 6
    assert status.rescue.kept == found.outcome.confirmation.kept == 1.0
    assert 0.6 - 2 * RESOLUTION <= status.rescue.alpha <= 0.6
    assert any("α = 1) was blocked" in r for r in gate.reasons)
    merged = merged_result(found)
    assert sorted((i.task, i.id) for i in merged.items) == sorted((i.task, i.id) for i in baseline.items)

    # a search that finds nothing keeps the original verdict and says why
    nothing = search(baseline, halves, lambda a, h: items_of(make(lambda t, i: 0.0), halves, h), RegressionSpec(), 6,
                     tmp_path / "none", log=lambda m: None)
    blocked = rescued_gate(nothing, 6, original)
    assert blocked.verdict == "Failed" and blocked.rescue["outcome"] == "NotRescued"
    assert blocked.reasons[-1].startswith("rescue by interpolation:")


# --------------------------------------------------------------------------- validation


def _job(regression_extra: str) -> str:
    return f"""
apiVersion: forgetless.dev/v1alpha1
kind: FineTuneJob
metadata: {{name: j}}
spec:
  model: {{name: bundled:tiny-world}}
  dataset: {{task: {{path: bundled:support-tickets}}}}
  regression:
{regression_extra}
"""


@pytest.mark.parametrize("block, field", [
    ("    rescue: {}", "spec.regression.rescue"),
    ("    rescue: {interpolation: {maxEvaluations: 1}}", "spec.regression.rescue.interpolation.maxEvaluations"),
    ("    rescue: {interpolation: {maxEvaluation: 4}}", "spec.regression.rescue.interpolation.maxEvaluation"),
    ("    onRegression: Warn\n    rescue: {interpolation: {}}", "spec.regression.rescue"),
])
def test_validate_rejects_bad_rescue_blocks_naming_the_field(block, field):
    with pytest.raises(ManifestError) as caught:
        validate_document(yaml.safe_load(_job(block)))
    assert field in str(caught.value)


def test_a_good_rescue_block_validates_with_its_default():
    job = validate_document(yaml.safe_load(_job("    rescue: {interpolation: {}}")))
    assert job.spec.regression.rescue.interpolation.max_evaluations == 6
