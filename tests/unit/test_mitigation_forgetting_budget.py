"""Forgetting budget: probe at step 0, stop when the mean general score drops more than maxDrop,
roll back to the last probe within budget."""

from __future__ import annotations

import pytest

from forgetless_trainer.live_metrics import REGISTRY
from forgetless_trainer.mitigations.forgetting_budget import ForgettingBudget, general_mean
from forgetless.errors import StageError
from tests.unit.test_mitigation_early_stopping import FakeTrainer


class Ctx:
    tokenizer = "tok"


class ProbeTrainer(FakeTrainer):
    def __init__(self):
        super().__init__([])
        self.ctx = Ctx()
        self.model = Model()
        self.position = (0, 0)

    @property
    def steps_taken(self) -> int:
        return self.step


class Model:
    training = True

    def eval(self):
        self.training = False

    def train(self, mode=True):
        self.training = mode


def scripted_probe(means):
    calls = []

    def probe(model, tokenizer):
        assert model.training is False and tokenizer == "tok"
        value = means[len(calls)]
        calls.append(value)
        return {"format": value, "knowledge": value, "task": 0.9}

    return probe, calls


def test_stops_and_rolls_back_to_the_last_probe_within_budget():
    probe, calls = scripted_probe([0.80, 0.79, 0.77, 0.70])
    budget = ForgettingBudget(max_drop=0.05, interval=3, probe=probe)
    trainer = ProbeTrainer()
    budget.on_train_start(trainer)
    stop = None
    for step in range(1, 20):
        trainer.weights["w"] = float(step)
        stop = budget.on_step_end(step, trainer)
        if stop:
            break
    assert step == 9 and stop.reason == "forgetting_budget"
    assert trainer.weights == {"w": 6.0}  # the probe at step 6 (drop 0.03) was the last within budget
    assert "fell 0.1000 below the probe baseline 0.8000" in stop.message and "rolled back to step 6" in stop.message
    assert calls == [0.80, 0.79, 0.77, 0.70]
    assert budget.summary()["rolledBackToStep"] == 6
    assert trainer.model.training is True


def test_rolls_back_to_step_zero_when_the_first_probe_is_over_budget():
    probe, _ = scripted_probe([0.5, 0.2])
    budget = ForgettingBudget(max_drop=0.1, interval=1, probe=probe)
    trainer = ProbeTrainer()
    budget.on_train_start(trainer)
    trainer.weights["w"] = 1.0
    stop = budget.on_step_end(1, trainer)
    assert stop and trainer.weights == {"w": 0.0}


def test_probe_scores_are_exported():
    probe, _ = scripted_probe([0.6])
    trainer = ProbeTrainer()
    from forgetless_trainer.live_metrics import TrainMetrics

    trainer.metrics = TrainMetrics("budget-test", "ns")
    ForgettingBudget(max_drop=0.1, interval=1, probe=probe).on_train_start(trainer)
    labels = {"namespace": "ns", "finetunejob": "budget-test"}
    assert REGISTRY.get_sample_value("forgetless_probe_score_ratio", {**labels, "category": "mean"}) == pytest.approx(0.6)
    assert REGISTRY.get_sample_value("forgetless_probe_score_ratio", {**labels, "category": "task"}) == pytest.approx(0.9)


def test_general_mean_ignores_task_and_needs_general_scores():
    assert general_mean({"format": 1.0, "safety": 0.5, "task": 0.0}) == 0.75
    with pytest.raises(StageError, match="no general category"):
        general_mean({"task": 1.0})


def test_missing_evaluator_is_a_stage_error(monkeypatch, manifest):
    import sys

    from forgetless.api.schema import parse_job
    from forgetless_trainer.mitigations.forgetting_budget import suite_probe

    monkeypatch.setitem(sys.modules, "forgetless_trainer.evaluation", None)
    with pytest.raises(StageError, match="needs the evaluator"):
        suite_probe(parse_job(manifest()), 4)


class Items:
    """What the real probe returns: item-level results (an EvaluationResult's shape)."""

    def __init__(self, right: dict[str, int], n: int):
        from forgetless_trainer.evaluation.results import ItemResult

        self.items = [ItemResult(task, f"{task}-{i}", task, float(i < right[task]), "") for task in right for i in range(n)]
        self._scores = {task: right[task] / n for task in right}

    def category_scores(self):
        return dict(self._scores)


def item_probe(results):
    def probe(model, tokenizer):
        return results.pop(0)

    return probe


@pytest.mark.parametrize("n, lost, breach", [
    (8, 1, False),    # 1 of 8 items lost per category: a 0.125 point drop, but within noise of 8 items
    (200, 25, True),  # the same 0.125 drop on 200 items each: its lower bound is far above 0.05
])
def test_with_item_results_a_breach_is_judged_on_the_drops_lower_bound(n, lost, breach):
    full = {"format": n, "knowledge": n}
    results = [Items(full, n), Items({c: n - lost for c in full}, n)]
    budget = ForgettingBudget(max_drop=0.05, interval=1, probe=item_probe(results))
    trainer = ProbeTrainer()
    budget.on_train_start(trainer)
    trainer.step = 1
    stop = budget.on_step_end(1, trainer)
    assert (stop is not None) is breach
    assert budget.history[-1][1] == pytest.approx((n - lost) / n)  # the point estimate is the same either way
    if breach:
        assert "lower bound" in stop.message


class KLTrainer(ProbeTrainer):
    """A trainer whose general KL follows a script (one value per measurement)."""

    def __init__(self, kls):
        super().__init__()
        self.kls = list(kls)
        self.scaled, self.rewound = [], []

    def general_kl(self):
        return self.kls.pop(0)

    def scale_learning_rate(self, factor):
        self.scaled.append(factor)

    def rewind(self, step, position):
        self.rewound.append(step)


def test_signal_kl_breaches_above_max_kl_rolls_back_and_adjusts_without_probing():
    def probe(model, tokenizer):
        raise AssertionError("signal kl runs no probe")

    budget = ForgettingBudget(max_drop=0.05, interval=2, probe=probe, signal="kl", max_kl=0.1,
                              on_breach="Adjust", max_adjustments=1)
    trainer = KLTrainer([0.02, 0.3, 0.05, 0.4])  # probes at steps 2, 4 (breach), 6, 8 (breach, no adjustments left)
    budget.on_train_start(trainer)
    stop = None
    for step in range(1, 10):
        trainer.step = step
        trainer.weights["w"] = float(step)
        stop = budget.on_step_end(step, trainer)
        if step == 4:
            assert trainer.weights == {"w": 2.0} and trainer.scaled == [0.5] and trainer.rewound == [2]
        if stop:
            break
    assert step == 8 and stop.reason == "forgetting_budget" and trainer.weights == {"w": 6.0}
    assert "general KL 0.4000 nats/token above maxKL 0.1" in stop.message and "rolled back to step 6" in stop.message
    summary = budget.summary()
    assert summary["budgetSignal"] == "kl" and summary["budgetMaxKL"] == 0.1 and summary["probeHistory"] == []
    assert summary["adjustments"][0]["generalKL"] == 0.3 and "probeMean" not in summary["adjustments"][0]


def test_signal_kl_needs_max_kl():
    with pytest.raises(StageError, match="maxKL"):
        ForgettingBudget(max_drop=0.05, interval=2, signal="kl")
