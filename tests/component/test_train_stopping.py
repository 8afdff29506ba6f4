"""Early stopping and the forgetting budget inside the real training loop: they stop at the right
step, restore the right weights, and say why."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from forgetless_trainer.training.loop import Trainer, train  # noqa: E402
from tests.component.test_train_stage import make_job, trainable  # noqa: E402


def test_early_stopping_stops_at_patience_and_restores_the_best(tmp_path, manifest, tiny_model_dir, monkeypatch):
    losses = iter([2.0, 1.5, 1.6, 1.55, 1.7, 0.1])  # evaluations at steps 2, 4, 6, 8, 10: best at step 4
    at_eval: dict[int, dict] = {}
    real = Trainer.validation_loss

    def scripted(self):
        real(self)  # the real computation still runs (and must not disturb training)
        at_eval[self.step] = trainable(self.model)
        return next(losses)

    monkeypatch.setattr(Trainer, "validation_loss", scripted)
    job = make_job(manifest, tiny_model_dir, tmp_path / "data", training={"epochs": 3},
                   mitigation={"earlyStopping": {"patience": 3, "evalIntervalSteps": 2, "minDelta": 0.01}})
    result = train(job, tmp_path / "work")
    summary = result.summary
    assert summary["stoppedReason"] == "early_stopping" and summary["steps"] == 10 < summary["totalSteps"]
    assert summary["bestStep"] == 4 and summary["bestValidationLoss"] == 1.5
    assert "restored the best weights of step 4" in summary["message"]
    final = trainable(result.model)
    assert all(torch.equal(final[n], at_eval[4][n]) for n in final)
    assert any(not torch.equal(final[n], at_eval[10][n]) for n in final)


def test_real_validation_loss_is_the_token_mean_on_held_out_data(tmp_path, manifest, tiny_model_dir):
    job = make_job(manifest, tiny_model_dir, tmp_path / "data", mitigation={"earlyStopping": {"patience": 50, "evalIntervalSteps": 4}})
    summary = train(job, tmp_path / "work").summary
    history = summary["validationHistory"]
    assert [s for s, _ in history] == [4, 8, 12] and summary["validationExamples"] == 4
    assert all(0 < v < 10 for _, v in history) and summary["stoppedReason"] == "completed"


def test_forgetting_budget_stops_and_rolls_back_to_the_last_probe_within_budget(tmp_path, manifest, tiny_model_dir):
    seen: list[tuple[int, dict]] = []
    means = [0.9, 0.88, 0.86, 0.7]  # step 0 baseline, steps 3, 6 within 0.05, step 9 over budget

    def probe(model, tokenizer):
        assert not model.training and tokenizer is not None
        seen.append(trainable(model))
        value = means[len(seen) - 1]
        return {"format": value, "safety": value, "task": 0.5}

    job = make_job(manifest, tiny_model_dir, tmp_path / "data", training={"epochs": 2},
                   mitigation={"forgettingBudget": {"maxDrop": 0.05, "probeIntervalSteps": 3, "onBreach": "Stop"}})
    result = train(job, tmp_path / "work", probe=probe)
    summary = result.summary
    assert summary["stoppedReason"] == "forgetting_budget" and summary["steps"] == 9
    assert summary["adjustments"] == []
    assert summary["probeBaseline"] == 0.9 and summary["rolledBackToStep"] == 6
    assert "fell 0.2000 below the probe baseline 0.9000" in summary["message"]
    final = trainable(result.model)
    assert all(torch.equal(final[n], seen[2][n]) for n in final)  # the weights probed at step 6
    assert any(not torch.equal(final[n], seen[3][n]) for n in final)
    from forgetless_trainer.modeling import load_model_and_tokenizer

    saved, _ = load_model_and_tokenizer(job.spec.model, adapter_path=tmp_path / "work" / "train" / "output")
    saved_weights = {n: p for n, p in saved.named_parameters() if "lora_" in n}
    assert all(torch.equal(saved_weights[n], final[n]) for n in final)  # the rolled-back weights were written


def budget_job(manifest, tiny_model_dir, data, **budget):
    return make_job(manifest, tiny_model_dir, data, training={"epochs": 3, "checkpointIntervalSteps": 2},
                    mitigation={"forgettingBudget": {"maxDrop": 0.05, "probeIntervalSteps": 3, **budget}})


def scripted(means, seen=None):
    """A probe returning `means` in turn (the last one from then on); records the probed weights."""
    calls = []

    def probe(model, tokenizer):
        calls.append(1)
        if seen is not None:
            seen.append(trainable(model))
        value = means[min(len(calls), len(means)) - 1]
        return {"format": value, "safety": value, "task": 0.5}

    return probe


def test_a_breach_rolls_back_lowers_the_learning_rate_adds_general_data_and_continues(tmp_path, manifest,
                                                                                    tiny_model_dir):
    seen: list[dict] = []
    lrs: list[tuple[int, float]] = []
    after: dict[int, dict] = {}
    job = budget_job(manifest, tiny_model_dir, tmp_path / "data", maxAdjustments=2, learningRateFactor=0.5,
                     generalFractionStep=0.2, maxGeneralFraction=0.5)

    def record(step):
        lrs.append((step, trainer.scheduler.get_last_lr()[0]))
        after.setdefault(step, trainable(trainer.model))

    # step 0 baseline 0.9; step 3 within budget; step 6 breaches; then within budget to the end
    trainer = Trainer(job, tmp_path / "work", probe=scripted([0.9, 0.89, 0.7, 0.89], seen), after_step=record)
    trainer.setup()
    composition_before, total_before = dict(trainer.composition), trainer.total_steps
    schedule_before = trainer.scheduler.lr_lambdas[0]
    summary = trainer.run().summary
    assert summary["stoppedReason"] == "completed" and summary["steps"] == summary["totalSteps"]
    (adjustment,) = summary["adjustments"]
    assert adjustment.pop("generalKL") >= 0  # every probe also measures the general KL
    assert adjustment == {"step": 6, "stepsTaken": 6, "probeMean": 0.7, "rolledBackToStep": 3,
                          "learningRateScale": 0.5, "extraGeneralFraction": 0.2}
    # rolled back: after the breach the weights are the ones probed at step 3, not the step-6 ones
    assert all(torch.equal(after[6][n], seen[1][n]) for n in seen[1])
    assert any(not torch.equal(after[6][n], seen[2][n]) for n in seen[2])
    # ... and training ran again from step 3: steps 4, 5, 6 twice, at half the learning rate the second time
    steps = [step for step, _ in lrs]
    assert steps[:9] == [1, 2, 3, 4, 5, 6, 4, 5, 6] and summary["stepsTaken"] == summary["steps"] + 3
    first, again = dict(lrs[:6]), dict(lrs[6:9])
    base = job.spec.learning_rate()
    longer = trainer.scheduler.lr_lambdas[0]  # the schedule stretched over the longer run
    for step in (4, 5):
        assert first[step] == pytest.approx(base * schedule_before(step))
        assert again[step] == pytest.approx(0.5 * base * longer(step))
    # more general data from then on: the epoch carries the controller's share and is longer; the
    # task data is still seen `epochs` times, so the run has more steps
    assert "budget_general" not in composition_before
    assert summary["epochComposition"]["budget_general"] == pytest.approx(0.2 * summary["epochSize"], abs=1)
    assert summary["totalSteps"] > total_before


def test_max_adjustments_is_honoured_then_training_stops(tmp_path, manifest, tiny_model_dir):
    job = budget_job(manifest, tiny_model_dir, tmp_path / "data", maxAdjustments=2)
    result = train(job, tmp_path / "work", probe=scripted([0.9, 0.5]))  # every probe after step 0 breaches
    summary = result.summary
    # each breach rolls back to step 0 and trains again from there: breaches at step 3, 3, 3
    assert [(a["step"], a["stepsTaken"]) for a in summary["adjustments"]] == [(3, 3), (3, 6)]
    assert [a["learningRateScale"] for a in summary["adjustments"]] == [0.5, 0.25]
    assert summary["stoppedReason"] == "forgetting_budget" and summary["steps"] == 3 and summary["stepsTaken"] == 9
    assert "2 adjustment(s) made, maxAdjustments reached" in summary["message"]
    assert summary["rolledBackToStep"] == 0


def test_resume_after_a_kill_mid_adjustment_continues_with_the_adjusted_policy(tmp_path, manifest, tiny_model_dir):
    """Killed after the breach at step 6 (rewound to step 3; checkpoint at step 6 again): the resumed
    run keeps the halved learning rate and the larger general share, and ends bit-identical to an
    uninterrupted run."""
    means = [0.9, 0.89, 0.7, 0.89]
    options = dict(maxAdjustments=1, learningRateFactor=0.5, generalFractionStep=0.2, maxGeneralFraction=0.5)
    whole = train(budget_job(manifest, tiny_model_dir, tmp_path / "data", **options), tmp_path / "whole",
                  probe=scripted(means))

    class Killed(Exception):
        pass

    taken = []

    def kill(step):
        taken.append(step)
        if len(taken) == 10:  # steps 1..6, then 4..7 after the rewind: killed at the second pass's step 7
            raise Killed

    job = budget_job(manifest, tiny_model_dir, tmp_path / "data", **options)
    with pytest.raises(Killed):
        train(job, tmp_path / "resumed", probe=scripted(means), after_step=kill)
    # the resumed run's probe continues the script where the checkpointed state left it (4 probes so far)
    resumed = train(job, tmp_path / "resumed", probe=scripted(means[3:]))
    assert taken[-4:] == [4, 5, 6, 7] and resumed.summary["resumedFromStep"] == 6
    assert resumed.summary["adjustments"] == whole.summary["adjustments"]
    assert resumed.summary["epochComposition"] == whole.summary["epochComposition"]
    a, b = trainable(whole.model), trainable(resumed.model)
    assert all(torch.equal(a[n], b[n]) for n in a)
