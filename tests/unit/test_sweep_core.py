"""The pure policy search: expansion, rungs, the objective, the Pareto front and next_actions."""

from __future__ import annotations

from typing import Any

import pytest

from forgetless.api.sweep import FineTuneSweepSpec, ObjectiveSpec, TrialStatus
from forgetless.search import (
    Candidate,
    expand,
    next_actions,
    objective_key,
    pareto_front,
    rank,
    rung_count,
    rung_epochs,
    select_best,
    trial_metrics,
)

TEMPLATE = {"model": {"name": "bundled:tiny-world"}, "dataset": {"task": {"path": "bundled:support-tickets"}},
            "training": {"epochs": 8}}
SPACE = [{"field": "method.lora.r", "values": [4, 16]}, {"field": "mitigation.dataMixing.generalFraction", "values": [0.3, 0.45]},
         {"field": "training.learningRate", "values": [1e-3, 2e-3]}, {"field": "training.epochs", "values": [4, 8]}]


def make(space=SPACE, **extra: Any) -> FineTuneSweepSpec:
    return FineTuneSweepSpec.model_validate({"template": TEMPLATE, "searchSpace": space, **extra})


def trial(index: int, task: float | None, verdict: str = "Passed", cost: float = 1.0, kept: float = 0.99,
          phase: str = "Succeeded", rung: int = 0) -> TrialStatus:
    return TrialStatus(name=f"s-t{index}", index=index, phase=phase, task_score=task, verdict=verdict, cost=cost,
                       mean_kept=kept, rung=rung)


def test_grid_expands_the_product_in_dimension_order_then_include():
    spec = make(include=[{"training.epochs": 2}])
    candidates = expand(spec)
    assert len(candidates) == 17
    assert candidates[0].policy == {"method.lora.r": 4, "mitigation.dataMixing.generalFraction": 0.3,
                                    "training.learningRate": 1e-3, "training.epochs": 4}
    assert isinstance(candidates[0].policy["method.lora.r"], int)
    assert candidates[1].policy["training.epochs"] == 8 and candidates[15].policy["method.lora.r"] == 16
    assert candidates[16].policy == {"training.epochs": 2} and candidates[16].epochs(spec) == 2.0
    assert [c.index for c in candidates] == list(range(17))


def test_step_ranges_become_grid_points():
    spec = make([{"field": "mitigation.dataMixing.generalFraction", "min": 0.1, "max": 0.3, "step": 0.1}])
    assert [c.policy["mitigation.dataMixing.generalFraction"] for c in expand(spec)] == pytest.approx([0.1, 0.2, 0.3])


def test_random_is_seeded_and_samples_without_replacement_from_a_discrete_grid():
    spec = make(strategy={"type": "random", "maxTrials": 5, "seed": 3})
    first, again = expand(spec), expand(spec)
    assert first == again and len(first) == 5
    assert len({tuple(sorted(c.policy.items())) for c in first}) == 5
    other = expand(make(strategy={"type": "random", "maxTrials": 5, "seed": 4}))
    assert [c.policy for c in other] != [c.policy for c in first]
    assert len(expand(make(strategy={"type": "random", "maxTrials": 100}))) == 16  # capped by the grid


def test_random_over_ranges_respects_bounds_log_scale_and_types():
    spec = make([{"field": "training.learningRate", "min": 1e-5, "max": 1e-2, "log": True},
                 {"field": "method.lora.r", "min": 2, "max": 64}], strategy={"type": "random", "maxTrials": 200, "seed": 1})
    candidates = expand(spec)
    rates = [c.policy["training.learningRate"] for c in candidates]
    assert all(1e-5 <= r <= 1e-2 for r in rates)
    assert sum(r < 1e-4 for r in rates) > 40  # log-uniform: a third of the samples in the lowest decade
    assert all(isinstance(c.policy["method.lora.r"], int) and 2 <= c.policy["method.lora.r"] <= 64 for c in candidates)


def test_rungs_and_their_epochs():
    spec = make(strategy={"type": "successiveHalving", "eta": 3, "minEpochs": 0.5})
    assert rung_count(spec, 16) == 3 and rung_count(spec, 9) == 2 and rung_count(spec, 3) == 1 and rung_count(spec, 4) == 2
    assert rung_count(make(), 16) == 1
    eight = Candidate(0, {"training.epochs": 8})
    assert [rung_epochs(spec, eight, k, 3) for k in range(3)] == pytest.approx([8 / 9, 8 / 3, 8])
    one = Candidate(1, {"training.epochs": 1})
    assert [rung_epochs(spec, one, k, 3) for k in range(3)] == pytest.approx([0.5, 0.5, 1])  # minEpochs, capped by E
    assert rung_epochs(make(), eight, 0, 1) == 8


def test_select_best_gate_first_then_task_then_cost_within_tolerance():
    objective = ObjectiveSpec()
    trials = [trial(0, 0.99, cost=10), trial(1, 0.987, cost=2), trial(2, 1.0, verdict="Failed", cost=1),
              trial(3, 0.95, cost=1), trial(4, None, phase="Failed")]
    assert select_best(trials, objective).index == 1  # 0.987 ties 0.99 within 0.005 and is cheaper
    assert select_best(trials, ObjectiveSpec(tieTolerance=0.0)).index == 0
    assert select_best(trials, ObjectiveSpec(minTaskScore=0.995)) is None
    assert select_best([trial(0, 0.9, verdict="NoTaskGain")], objective) is None
    assert select_best([trial(0, 0.9, verdict="Warned")], objective).index == 0
    assert objective_key(trials[0], objective) > objective_key(trials[2], objective)


def test_rank_puts_gate_failures_after_passes_but_keeps_them():
    trials = [trial(0, 0.5), trial(1, 0.9, verdict="Failed"), trial(2, 0.8, verdict="Failed", cost=0.1), trial(3, 0.6)]
    assert [t.index for t in rank(trials, ObjectiveSpec())] == [3, 0, 1, 2]


def test_rank_breaks_task_ties_by_the_share_kept_before_cost():
    # early in training every task score is 0: the trial forgetting least goes first, not the cheapest
    trials = [trial(0, 0.0, verdict="Failed", kept=0.77, cost=1), trial(1, 0.0, verdict="Failed", kept=0.89, cost=4),
              trial(2, 0.002, verdict="Failed", kept=0.85, cost=2)]
    assert [t.index for t in rank(trials, ObjectiveSpec())] == [1, 2, 0]
    assert select_best([t.model_copy(update={"verdict": "Passed"}) for t in trials], ObjectiveSpec()).index == 0


def test_pareto_front():
    trials = [trial(0, 0.9, kept=0.99, cost=5), trial(1, 0.95, kept=0.97, cost=5), trial(2, 0.85, kept=0.98, cost=5),
              trial(3, 0.85, kept=0.98, cost=1), trial(4, 0.8, kept=0.9, cost=9)]
    assert [t.index for t in pareto_front(trials)] == [0, 1, 3]


def test_trial_metrics_from_stage_summaries():
    baseline = {"task": 0.0, "knowledge": 0.8, "reasoning": 0.6}
    final = {"task": 0.9, "knowledge": 0.76, "reasoning": 0.6}
    got = trial_metrics(baseline, final, {"verdict": "Passed"}, {"trainableParameters": 100, "tokens": 50, "trainSeconds": 3.5})
    assert got == {"task_score": 0.9, "mean_kept": pytest.approx(0.971429, abs=1e-6), "verdict": "Passed",
                   "cost": 5000.0, "train_seconds": 3.5}


def _simulate(spec: FineTuneSweepSpec, score, max_steps: int = 200) -> tuple[list[TrialStatus], list, Any]:
    """Drive next_actions like a runner: finish every started trial with `score(index, epochs)`."""
    records: dict[str, TrialStatus] = {}
    starts = []
    for _ in range(max_steps):
        plan = next_actions(spec, "s", records.values())
        assert len(plan.start) <= spec.max_parallel
        for name in plan.prune:
            records[name] = records[name].model_copy(update={"phase": "Pruned"})
        if plan.done:
            return list(records.values()), starts, plan
        for request in plan.start:
            starts.append(request)
            task, verdict = score(request.index, request.epochs)
            records[request.name] = TrialStatus(name=request.name, index=request.index, phase="Succeeded", rung=request.rung,
                                                epochs=request.epochs, task_score=task, verdict=verdict,
                                                cost=request.epochs, mean_kept=0.99, policy=request.policy)
    raise AssertionError("the sweep never finished")


def test_grid_next_actions_respect_max_parallel_and_finish_with_the_best():
    spec = make(maxParallel=3)
    records, starts, plan = _simulate(spec, lambda i, e: (0.5 + i / 100, "Passed"))
    assert len(starts) == 16 and [r.index for r in starts] == list(range(16))
    assert plan.best.index == 15 and plan.best.name == "s-t15"


def test_running_trials_block_new_starts_beyond_max_parallel():
    spec = make(maxParallel=2)
    running = [trial(0, None, phase="Running"), trial(1, None, phase="Running")]
    assert next_actions(spec, "s", running).start == []
    one = next_actions(spec, "s", running[:1])
    assert [r.index for r in one.start] == [1] and not one.done


def test_successive_halving_promotes_the_best_third_and_continues_them():
    spec = make(strategy={"type": "successiveHalving", "eta": 3, "minEpochs": 0.5}, maxParallel=4)

    def score(index: int, epochs: float) -> tuple[float, str]:
        # a late bloomer: candidate 5 fails the gate early (forgetting) but passes at full epochs
        verdict = "Failed" if index == 5 and epochs < 4 else "Passed"
        return min(1.0, 0.5 + index / 40 + epochs / 100), verdict

    records, starts, plan = _simulate(spec, score)
    by_rung = {k: sorted(r.index for r in starts if r.rung == k) for k in range(3)}
    assert len(by_rung[0]) == 16 and len(by_rung[1]) == 6 and len(by_rung[2]) == 2
    assert 5 not in by_rung[1]  # it ranked below the passing ones ...
    assert all(r.continues for r in starts if r.rung > 0)
    assert by_rung[2] == [14, 15] and plan.best.index == 15
    assert sum(r.phase == "Pruned" for r in records) == 14
    # the resource: rung epochs grow by eta up to each candidate's own epochs
    assert {r.epochs for r in starts if r.index == 15} == {8 / 9, 8 / 3, 8} or \
        sorted(r.epochs for r in starts if r.index == 15) == pytest.approx([8 / 9, 8 / 3, 8])


def test_successive_halving_keeps_gate_failures_when_too_few_pass():
    spec = make([{"field": "method.lora.r", "values": [1, 2, 3, 4, 5, 6, 7, 8, 9]}],
                strategy={"type": "successiveHalving", "eta": 3, "minEpochs": 1})
    # only candidate 0 passes early; everything else fails the gate at rung 0, candidate 8 recovers later
    records, starts, plan = _simulate(spec, lambda i, e: (0.5 + i / 20, "Passed" if i == 0 or e >= 8 else "Failed"))
    assert sorted(r.index for r in starts if r.rung == 1) == [0, 7, 8]
    assert plan.best.index == 8


def test_failed_trials_are_not_continued_and_no_qualifier_means_no_best():
    spec = make([{"field": "method.lora.r", "values": [4, 8, 16]}])
    plan = next_actions(spec, "s", [trial(0, None, phase="Failed"), trial(1, 0.9, verdict="Failed"), trial(2, 0.8, verdict="Failed")])
    assert plan.done and plan.best is None and plan.start == []
