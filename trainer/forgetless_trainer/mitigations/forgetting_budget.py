"""Forgetting budget: a controller that keeps training within a forgetting budget.

A probe is any `Callable[[model, tokenizer], ...]` returning scores per category (the general
categories, optionally `task`): a dict of scores, or an `EvaluationResult` (item level). The train
stage wires the real one, `suite_probe`: the regression suite (`regression.suite`) limited to
`probeItems` items per task, scored by the evaluator; tests inject fakes.

At step 0 the probe's own baseline is taken (the mean of the general categories). Every
`probeIntervalSteps` steps the probe runs again; a *breach* is a mean general score more than
`maxDrop` below that baseline — judged like the gate judges the final model when the probe gives
item results: the one-sided lower bound (at `regression.confidence`) of the paired bootstrap of the
mean drop must exceed `maxDrop`, so a few items of noise in a small probe are not a breach; a probe
giving only scores is judged on the point estimate. On a breach the trainable weights roll back to the last probed point
that was within budget (step 0 if none was), and then:

- `onBreach: Adjust` (default): training continues from there with a gentler policy — the learning
  rate × `learningRateFactor` and `generalFractionStep` more general data in every epoch (up to
  `maxGeneralFraction` in all, data mixing's own share included) — at most `maxAdjustments` times;
  the next breach after that stops training as below. Forgetting grows with training intensity, so
  a breach is a signal to train more gently, not to give up. Training goes back to the snapshot
  (its step, its place in the data, the learning-rate schedule there: a rollback into the warmup
  warms up again) and runs again from there under the new policy; the run still sees its task data
  `epochs` times (more general data makes epochs longer). Probe history is kept in steps taken
  (`stepsTaken` only grows).
- `onBreach: Stop`: training stops (`stoppedReason: forgetting_budget`) with the rolled-back weights.

Every adjustment is a progress line, an entry of `adjustments` in the stage summary (step, the
probe's mean, the new learning-rate scale and general share), a count in
forgetless_train_budget_adjustments_total, and part of the checkpointed state, so a resumed run
continues with the adjusted policy. The probe's scores are exported as forgetless_probe_score_ratio.

The signal (`signal`):
- `probe` (default): the probe above, judged against `maxDrop`.
- `kl`: the mean per-token forward KL(π₀‖π) of the model from its base on the general probe items'
  reference answers (forgetless_trainer.training.general_kl, measured by the trainer: `general_kl()`
  of the TrainerView); a breach is a KL above `maxKL` nats. Forward passes only: no generation, no
  scoring, and the probe is never built. The baseline is 0 by definition (the base from itself).
Either way, every probe also measures the general KL when the trainer can (it is in the train
summary's `generalKLHistory`, drawn in the report's budget plot), and `probeSeconds` in the summary
is the time the budget's checks took.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from forgetless.lifecycle import mean_general_score
from forgetless_trainer.data import MixPart
from forgetless_trainer.mitigations.base import Mitigation, Stop, TrainContext, TrainerView
from forgetless.errors import StageError

Probe = Callable[[Any, Any], dict[str, float]]


def general_mean(scores: dict[str, float]) -> float:
    """The mean general score of a probe (lifecycle.mean_general_score); an error without one."""
    mean = mean_general_score(scores)
    if mean is None:
        raise StageError(f"forgetting budget probe returned no general category scores: {sorted(scores)}")
    return mean


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
    mode = job.spec.regression.format_leak.detector  # the learned format detector exists only after baseline
    suite = suite.with_tasks(tuple(t for t in suite.tasks if not t.needs_learned_detector(mode)))

    def probe(model: Any, tokenizer: Any) -> Any:
        return evaluate_suite(model, tokenizer, suite, limit=probe_items)

    return probe


class ForgettingBudget(Mitigation):
    name = "forgetting_budget"

    @classmethod
    def from_spec(cls, spec, extras) -> "ForgettingBudget":
        budget = spec.mitigation.forgetting_budget
        return cls(
            budget.max_drop, budget.probe_interval_steps, probe=extras.get("probe"), probe_factory=extras.get("factory"),
            regression=spec.regression,
            on_breach=budget.on_breach, max_adjustments=budget.max_adjustments,
            learning_rate_factor=budget.learning_rate_factor, general_fraction_step=budget.general_fraction_step,
            max_general_fraction=budget.max_general_fraction,
            base_general_fraction=spec.mitigation.data_mixing.general_fraction,
            signal=budget.signal, max_kl=budget.max_kl,
        )

    def __init__(self, max_drop: float, interval: int, probe: Probe | None = None, probe_factory=None, *,
                 regression: Any = None,
                 on_breach: str = "Stop", max_adjustments: int = 0, learning_rate_factor: float = 0.5,
                 general_fraction_step: float = 0.0, max_general_fraction: float = 0.0,
                 base_general_fraction: float = 0.0, signal: str = "probe", max_kl: float | None = None) -> None:
        if signal == "kl" and max_kl is None:
            raise StageError("spec.mitigation.forgettingBudget.maxKL: signal kl needs maxKL (nats per token)")
        self.max_drop, self.interval = max_drop, interval
        self.signal, self.max_kl = signal, max_kl
        self.probe_seconds = 0.0
        self._detail, self._kl_seconds = "", 0.0
        self.regression = regression
        self.baseline_items: list[dict[str, Any]] | None = None
        self.probe = probe
        self.probe_factory = probe_factory
        self.max_adjustments = max_adjustments if on_breach == "Adjust" else 0
        self.learning_rate_factor = learning_rate_factor
        self.general_fraction_step = general_fraction_step
        self.extra_general_cap = max(0.0, max_general_fraction - base_general_fraction)
        self.baseline: float | None = None
        self.last_good: dict[str, Any] | None = None
        self.last_good_step = 0
        self.last_good_position: tuple[int, int] = (0, 0)
        self.history: list[tuple[int, float]] = []
        self.stop_message: str | None = None
        self.adjustments: list[dict[str, Any]] = []
        self.part: MixPart | None = None

    # ------------------------------------------------------------------ policy

    def mix_parts(self, ctx: TrainContext) -> list[MixPart]:
        """The controller's own share of general data: empty until an adjustment raises it."""
        if self.max_adjustments == 0 or self.general_fraction_step <= 0 or self.extra_general_cap <= 0:
            return []
        self.part = MixPart("budget_general", 0.0, ctx.general())
        return [self.part]

    def policy(self, adjustments: int) -> tuple[float, float]:
        """(learning-rate scale, extra general share) after `adjustments` adjustments."""
        extra = min(self.extra_general_cap, self.general_fraction_step * adjustments) if self.part is not None else 0.0
        return self.learning_rate_factor ** adjustments, round(extra, 6)

    def _adjust(self, step: int, trainer: TrainerView, mean: float | None = None, kl: float | None = None) -> str:
        lr_scale, extra_general = self.policy(len(self.adjustments) + 1)
        trainer.scale_learning_rate(self.learning_rate_factor)
        if self.part is not None:
            self.part.fraction = extra_general
            trainer.replan()
        trainer.rewind(self.last_good_step, self.last_good_position)
        record = {"step": step, "stepsTaken": trainer.steps_taken,
                  **({"probeMean": round(mean, 6)} if mean is not None else {}),
                  **({"generalKL": round(kl, 6)} if kl is not None else {}),
                  "rolledBackToStep": self.last_good_step,
                  "learningRateScale": round(lr_scale, 6), "extraGeneralFraction": extra_general}
        self.adjustments.append(record)
        metrics = getattr(trainer, "metrics", None)
        if metrics is not None:
            metrics.budget_adjustment()
        return (f"adjustment {len(self.adjustments)}/{self.max_adjustments}: learning rate × {lr_scale:g}, "
                f"+{extra_general:.0%} general data; training again from step {self.last_good_step}")

    # ------------------------------------------------------------------ hooks

    def _run_probe(self, trainer: TrainerView) -> tuple[dict[str, float], float, list[dict[str, Any]] | None]:
        if self.probe is None:
            self.probe = self.probe_factory()
        model = trainer.model
        was_training = model.training
        model.eval()
        try:
            found = self.probe(model, trainer.ctx.tokenizer)
        finally:
            model.train(was_training)
        items = None
        if hasattr(found, "category_scores"):  # an EvaluationResult: item level
            items = [{"task": i.task, "id": i.id, "category": i.category, "score": i.score} for i in found.items]
            found = found.category_scores()
        scores = dict(found)
        mean = general_mean(scores)
        scores["mean"] = mean
        metrics = getattr(trainer, "metrics", None)
        if metrics is not None:
            metrics.probe(scores)
        return scores, mean, items

    def drop_bound(self, items: list[dict[str, Any]] | None, drop: float) -> float:
        """The drop a breach is judged on: the gate's lower bound of the mean drop when items are known."""
        if items is None or self.baseline_items is None:
            return drop
        from forgetless.api.schema import RegressionSpec
        from forgetless.gate import evaluate_gate, paired_counts

        paired = paired_counts(self.baseline_items, items)
        return evaluate_gate(paired, self.regression or RegressionSpec()).mean_drop_lower

    def _measure_kl(self, trainer: TrainerView) -> float | None:
        measure = getattr(trainer, "general_kl", None)
        return measure() if measure is not None else None

    def on_train_start(self, trainer: TrainerView) -> None:
        if self.baseline is None:
            began = time.perf_counter()
            if self.signal == "kl":
                self.baseline = 0.0  # KL(π₀‖π₀): nothing to measure, nothing to generate
            else:
                _, self.baseline, self.baseline_items = self._run_probe(trainer)
            self.probe_seconds += time.perf_counter() - began
            self.last_good, self.last_good_step = trainer.snapshot(), trainer.step
            self.last_good_position = tuple(trainer.position)
            if self.signal == "kl":
                trainer.message(f"forgetting budget on the general KL: maxKL {self.max_kl} nats/token")
            else:
                self.history.append((trainer.steps_taken, self.baseline))
                trainer.message(f"probe baseline: mean general score {self.baseline:.4f}")

    def _check(self, step: int, trainer: TrainerView) -> tuple[bool, str, float | None, float | None]:
        """(over budget?, what was seen, probe mean or None, KL or None) at this probe step."""
        began = time.perf_counter()
        kl = self._measure_kl(trainer)
        if self.signal == "kl":
            if kl is None:
                raise StageError("spec.mitigation.forgettingBudget.signal kl: the trainer measures no general KL")
            over = trainer.all_agree(kl > self.max_kl)
            return over, f"general KL {kl:.4f} nats/token {'above' if over else '≤'} maxKL {self.max_kl}", None, kl
        self._kl_seconds = time.perf_counter() - began  # probeSeconds counts the probe alone
        scores, mean, items = self._run_probe(trainer)
        self.history.append((trainer.steps_taken, mean))
        drop = self.baseline - mean
        bound = self.drop_bound(items, drop)
        over = trainer.all_agree(bound > self.max_drop)
        shown_kl = f", general KL {kl:.4f}" if kl is not None else ""
        if not over:
            judged = f"drop {drop:.4f}" + (f", lower bound {bound:.4f}" if items is not None else "")
            return False, f"probe mean {mean:.4f} ({judged} ≤ {self.max_drop}){shown_kl}", mean, kl
        shown = ", ".join(f"{k} {v:.3f}" for k, v in sorted(scores.items()))
        seen = (f"mean general score {mean:.4f} fell {drop:.4f} below the probe baseline {self.baseline:.4f}"
                + (f" (lower bound {bound:.4f})" if items is not None else "")
                + f" (maxDrop {self.max_drop}){shown_kl}")
        self._detail = f" ({shown})"
        return True, seen, mean, kl

    def on_step_end(self, step: int, trainer: TrainerView) -> Stop | None:
        if step % self.interval:
            return None
        began = time.perf_counter()
        self._detail, self._kl_seconds = "", 0.0
        try:
            over, seen, mean, kl = self._check(step, trainer)
        finally:
            self.probe_seconds += time.perf_counter() - began - self._kl_seconds
        if not over:
            self.last_good, self.last_good_step = trainer.snapshot(), step
            self.last_good_position = tuple(trainer.position)
            trainer.message(f"step {step}: {seen}")
            return None
        trainer.restore(self.last_good)
        breach = f"probe at step {step}: {seen}; rolled back to step {self.last_good_step}{self._detail}"
        if len(self.adjustments) < self.max_adjustments:
            trainer.message(f"{breach}; {self._adjust(step, trainer, mean, kl)}")
            return None
        if self.adjustments:
            breach += f"; {len(self.adjustments)} adjustment(s) made, maxAdjustments reached"
        self.stop_message = breach
        return Stop("forgetting_budget", self.stop_message)

    def state_dict(self) -> dict[str, Any]:
        return {
            "baseline": self.baseline,
            "last_good": self.last_good,
            "last_good_step": self.last_good_step,
            "last_good_position": list(self.last_good_position),
            "baseline_items": self.baseline_items,
            "history": list(self.history),
            "adjustments": [dict(a) for a in self.adjustments],
            "probe_seconds": self.probe_seconds,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the controller; the policy follows from the adjustments made (the learning-rate scale
        itself comes back with the scheduler's state)."""
        self.baseline, self.last_good = state["baseline"], state["last_good"]
        self.last_good_step = state["last_good_step"]
        self.last_good_position = tuple(state.get("last_good_position", (0, 0)))
        self.baseline_items = state.get("baseline_items")
        self.history = [tuple(h) for h in state["history"]]
        self.adjustments = [dict(a) for a in state.get("adjustments", [])]
        self.probe_seconds = float(state.get("probe_seconds", 0.0))
        if self.part is not None:
            self.part.fraction = self.policy(len(self.adjustments))[1]

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "probeBaseline": self.baseline,
            "probeHistory": [[s, round(v, 6)] for s, v in self.history[-50:]],
            "rolledBackToStep": self.last_good_step if self.stop_message else None,
            "adjustments": [dict(a) for a in self.adjustments],
            "budgetMaxDrop": self.max_drop,
            "budgetSignal": self.signal,
            "probeSeconds": round(self.probe_seconds, 3),
        }
        if self.signal == "kl":
            out["budgetMaxKL"] = self.max_kl
        return out
