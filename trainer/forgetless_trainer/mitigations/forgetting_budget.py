"""Forgetting budget: stop and roll back when a probe shows more forgetting than allowed.

A probe is any `Callable[[model, tokenizer], dict[str, float]]` returning scores per category
(the general categories, optionally `task`). The train stage wires the real one, `suite_probe`:
the regression suite (`regression.suite`) limited to `probeItems` items per task, scored by the
evaluator (`forgetless_trainer.evaluation.evaluate_suite`); tests inject a fake.

At step 0 the probe's own baseline is taken (the mean of the general categories). Every
`probeIntervalSteps` steps the probe runs again; when the mean general score falls more than
`maxDrop` below that baseline, training stops (`stoppedReason: forgetting_budget`, with a message
giving the scores) and the trainable weights roll back to the last probed point that was within
budget (step 0 if none was). The probe's scores are exported as forgetless_probe_score_ratio.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from forgetless.api.schema import CATEGORIES
from forgetless_trainer.mitigations.base import Mitigation, Stop, TrainerView
from forgetless_trainer.stages import StageError

Probe = Callable[[Any, Any], dict[str, float]]


def general_mean(scores: dict[str, float]) -> float:
    """Mean over the general categories present (not `task`, not `mean`)."""
    general = [v for k, v in scores.items() if k in CATEGORIES] or [
        v for k, v in scores.items() if k not in ("task", "mean")
    ]
    if not general:
        raise StageError(f"forgetting budget probe returned no general category scores: {sorted(scores)}")
    return sum(general) / len(general)


def suite_probe(job, probe_items: int, base_dir: Path | None = None) -> Probe:
    """The real probe: a `probe_items`-per-task subset of the regression suite, scored by the evaluator."""
    try:
        from forgetless.suites import load_suite
        from forgetless_trainer.evaluation import evaluate_suite
    except ImportError as exc:
        raise StageError(
            f"mitigation.forgettingBudget needs the evaluator (forgetless_trainer.evaluation, forgetless.suites): {exc}"
        ) from exc
    suite = load_suite(job.spec.regression.suite, base_dir=base_dir)

    def probe(model: Any, tokenizer: Any) -> dict[str, float]:
        return evaluate_suite(model, tokenizer, suite, limit=probe_items).category_scores()

    return probe


class ForgettingBudget(Mitigation):
    name = "forgetting_budget"

    def __init__(self, max_drop: float, interval: int, probe: Probe | None = None, probe_factory=None) -> None:
        self.max_drop, self.interval = max_drop, interval
        self.probe = probe
        self.probe_factory = probe_factory
        self.baseline: float | None = None
        self.last_good: dict[str, Any] | None = None
        self.last_good_step = 0
        self.history: list[tuple[int, float]] = []
        self.stop_message: str | None = None

    def _run_probe(self, trainer: TrainerView) -> tuple[dict[str, float], float]:
        if self.probe is None:
            self.probe = self.probe_factory()
        model = trainer.model
        was_training = model.training
        model.eval()
        try:
            scores = dict(self.probe(model, trainer.ctx.tokenizer))
        finally:
            model.train(was_training)
        mean = general_mean(scores)
        scores["mean"] = mean
        metrics = getattr(trainer, "metrics", None)
        if metrics is not None:
            metrics.probe(scores)
        return scores, mean

    def on_train_start(self, trainer: TrainerView) -> None:
        if self.baseline is None:
            _, self.baseline = self._run_probe(trainer)
            self.last_good, self.last_good_step = trainer.snapshot(), trainer.step
            self.history.append((trainer.step, self.baseline))
            trainer.message(f"probe baseline: mean general score {self.baseline:.4f}")

    def on_step_end(self, step: int, trainer: TrainerView) -> Stop | None:
        if step % self.interval:
            return None
        scores, mean = self._run_probe(trainer)
        self.history.append((step, mean))
        drop = self.baseline - mean
        over = trainer.all_agree(drop > self.max_drop)
        if not over:
            self.last_good, self.last_good_step = trainer.snapshot(), step
            trainer.message(f"step {step}: probe mean {mean:.4f} (drop {drop:.4f} ≤ {self.max_drop})")
            return None
        trainer.restore(self.last_good)
        shown = ", ".join(f"{k} {v:.3f}" for k, v in sorted(scores.items()))
        self.stop_message = (
            f"probe at step {step}: mean general score {mean:.4f} fell {drop:.4f} below the probe baseline "
            f"{self.baseline:.4f} (maxDrop {self.max_drop}); rolled back to step {self.last_good_step} ({shown})"
        )
        return Stop("forgetting_budget", self.stop_message)

    def state_dict(self) -> dict[str, Any]:
        return {
            "baseline": self.baseline,
            "last_good": self.last_good,
            "last_good_step": self.last_good_step,
            "history": list(self.history),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.baseline, self.last_good = state["baseline"], state["last_good"]
        self.last_good_step = state["last_good_step"]
        self.history = [tuple(h) for h in state["history"]]

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "probeBaseline": self.baseline,
            "probeHistory": [[s, round(v, 6)] for s, v in self.history[-20:]],
            "rolledBackToStep": self.last_good_step if self.stop_message else None,
        }
        return out
