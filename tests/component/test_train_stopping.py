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
                   mitigation={"forgettingBudget": {"maxDrop": 0.05, "probeIntervalSteps": 3}})
    result = train(job, tmp_path / "work", probe=probe)
    summary = result.summary
    assert summary["stoppedReason"] == "forgetting_budget" and summary["steps"] == 9
    assert summary["probeBaseline"] == 0.9 and summary["rolledBackToStep"] == 6
    assert "fell 0.2000 below the probe baseline 0.9000" in summary["message"]
    final = trainable(result.model)
    assert all(torch.equal(final[n], seen[2][n]) for n in final)  # the weights probed at step 6
    assert any(not torch.equal(final[n], seen[3][n]) for n in final)
    from forgetless_trainer.modeling import load_model_and_tokenizer

    saved, _ = load_model_and_tokenizer(job.spec.model, adapter_path=tmp_path / "work" / "train" / "output")
    saved_weights = {n: p for n, p in saved.named_parameters() if "lora_" in n}
    assert all(torch.equal(saved_weights[n], final[n]) for n in final)  # the rolled-back weights were written
