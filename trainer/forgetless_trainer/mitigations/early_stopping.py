"""Early stopping on validation loss, restoring the best weights.

Every `evalIntervalSteps` optimizer steps the mean token loss on the validation split
(`dataset.validationFraction` of the task data, chosen deterministically from `training.seed`) is
measured. A value below `best − minDelta` is an improvement: it becomes the best and its trainable
weights are kept (in memory, and in every checkpoint so a resumed run behaves the same). After
`patience` evaluations in a row without improvement training stops (`stoppedReason:
early_stopping`) and the best weights are restored before the output is written. A run that
completes without stopping keeps its final weights.
"""

from __future__ import annotations

import math
from typing import Any

from forgetless_trainer.mitigations.base import Mitigation, Stop, TrainContext, TrainerView
from forgetless.errors import StageError


class EarlyStopping(Mitigation):
    name = "early_stopping"

    def __init__(self, patience: int, min_delta: float, interval: int) -> None:
        self.patience, self.min_delta, self.interval = patience, min_delta, interval
        self.best = math.inf
        self.best_step = 0
        self.bad = 0
        self.best_weights: dict[str, Any] | None = None
        self.history: list[tuple[int, float]] = []

    @classmethod
    def from_spec(cls, spec, extras=None) -> "EarlyStopping":
        rule = spec.mitigation.early_stopping
        return cls(rule.patience, rule.min_delta, rule.eval_interval_steps)

    def configure_model(self, model: Any, ctx: TrainContext) -> Any:
        if not ctx.validation:
            raise StageError(
                "mitigation.earlyStopping: the validation split has no validation examples "
                f"(dataset.validationFraction {ctx.spec.dataset.validation_fraction} of the task data); "
                "add task data or raise validationFraction"
            )
        return model

    def on_step_end(self, step: int, trainer: TrainerView) -> Stop | None:
        if step % self.interval:
            return None
        loss = trainer.validation_loss()
        self.history.append((step, loss))
        if loss < self.best - self.min_delta:
            self.best, self.best_step, self.bad = loss, step, 0
            self.best_weights = trainer.snapshot()
        else:
            self.bad += 1
        trainer.message(f"step {step}: validation loss {loss:.4f} (best {self.best:.4f} at step {self.best_step})")
        if self.bad >= self.patience and self.best_weights is not None:
            trainer.restore(self.best_weights)
            return Stop(
                "early_stopping",
                f"validation loss did not improve by more than {self.min_delta} for {self.patience} evaluations "
                f"(every {self.interval} steps); restored the best weights of step {self.best_step} "
                f"(validation loss {self.best:.4f})",
            )
        return None

    def state_dict(self) -> dict[str, Any]:
        return {
            "best": self.best,
            "best_step": self.best_step,
            "bad": self.bad,
            "best_weights": self.best_weights,
            "history": list(self.history),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_step, self.bad = state["best"], state["best_step"], state["bad"]
        self.best_weights = state["best_weights"]
        self.history = [tuple(h) for h in state["history"]]

    def summary(self) -> dict[str, Any]:
        return {
            "bestValidationLoss": None if math.isinf(self.best) else self.best,
            "bestStep": self.best_step,
            "validationHistory": [[s, round(v, 6)] for s, v in self.history[-20:]],
        }
