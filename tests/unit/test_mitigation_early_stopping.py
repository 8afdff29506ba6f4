"""Early stopping: stops after `patience` evaluations without improvement and restores the best weights."""

from __future__ import annotations

import pytest

from forgetless.api.schema import parse_job
from forgetless_trainer.mitigations.base import TrainContext
from forgetless_trainer.mitigations.early_stopping import EarlyStopping
from forgetless.errors import StageError


class FakeTrainer:
    """Weights are a dict {"w": value}; the validation loss comes from a script, one per evaluation."""

    def __init__(self, losses):
        self.losses = list(losses)
        self.weights = {"w": 0.0}
        self.step = 0
        self.messages = []
        self.ctx = None

    def validation_loss(self) -> float:
        return self.losses.pop(0)

    def snapshot(self):
        return dict(self.weights)

    def restore(self, snapshot):
        self.weights = dict(snapshot)

    def all_agree(self, flag):
        return flag

    def message(self, text):
        self.messages.append(text)


def run(stopper: EarlyStopping, trainer: FakeTrainer, steps: int):
    for step in range(1, steps + 1):
        trainer.step = step
        trainer.weights["w"] = float(step)  # weights change every step
        stop = stopper.on_step_end(step, trainer)
        if stop:
            return step, stop
    return steps, None


def test_stops_at_patience_and_restores_the_best():
    # evaluations at steps 2, 4, 6, 8, 10: best at step 4, then 3 without improvement → stop at step 10
    trainer = FakeTrainer([3.0, 2.0, 2.5, 2.1, 2.2, 1.0])
    step, stop = run(EarlyStopping(patience=3, min_delta=0.0, interval=2), trainer, 20)
    assert step == 10 and stop.reason == "early_stopping"
    assert trainer.weights == {"w": 4.0}  # the best step's weights, not step 10's
    assert "step 4" in stop.message and "2.0000" in stop.message


def test_min_delta_decides_what_counts_as_improvement():
    losses = [3.0, 2.95, 2.9, 2.85, 2.8]
    step, stop = run(EarlyStopping(patience=2, min_delta=0.1, interval=1), FakeTrainer(losses), 10)
    assert (step, stop.reason) == (3, "early_stopping")  # -0.05 per eval is not > minDelta
    step, stop = run(EarlyStopping(patience=2, min_delta=0.0, interval=1), FakeTrainer(losses), 5)
    assert stop is None  # every eval improves


def test_state_round_trips_so_a_resumed_run_stops_at_the_same_step():
    first = EarlyStopping(patience=2, min_delta=0.0, interval=1)
    trainer = FakeTrainer([2.0, 1.0, 1.5])
    run(first, trainer, 3)
    resumed = EarlyStopping(patience=2, min_delta=0.0, interval=1)
    resumed.load_state_dict(first.state_dict())
    trainer2 = FakeTrainer([1.2])
    trainer2.weights = {"w": 3.0}
    stop = resumed.on_step_end(4, trainer2)
    assert stop is not None and trainer2.weights == {"w": 2.0}
    assert resumed.summary()["bestStep"] == 2


def test_needs_validation_data(manifest):
    """validationFraction 0 is refused by the schema; a split that left no examples (too little task
    data) is refused when training starts, saying what to change."""
    with pytest.raises(ValueError, match="dataset.validationFraction above 0"):
        parse_job(manifest(spec={"dataset": {"task": {"path": "x"}, "validationFraction": 0.0}, "mitigation": {"earlyStopping": {}}}))
    job = parse_job(manifest(spec={"dataset": {"task": {"path": "x"}, "validationFraction": 0.01}, "mitigation": {"earlyStopping": {}}}))
    with pytest.raises(StageError, match="no validation examples"):
        EarlyStopping(3, 0.0, 5).configure_model(object(), TrainContext(job=job, workdir=None))
