"""Rescue a blocked model by weight interpolation: θ(α) in memory, judged on halves of the suite.

The evaluate stage calls `rescue` when the gate blocked the fine-tuned model for forgetting and
`regression.rescue.interpolation` is set (forgetless.rescue chooses the α's; this module makes and
scores the models):

- LoRA: the adapter's scale times α (peft `set_scale`), which is exactly θ₀ + α·(θ − θ₀) for the
  merged weights; written out as the adapter with its B matrices times α.
- Full fine-tuning: every parameter blended, θ₀ + α·(θ − θ₀), from the base and the fine-tuned
  state dicts kept in memory (three copies of the weights while the rescue runs).

Each trial scores one half of the suite's items (forgetless.rescue.split_items) with the same
evaluator as the gate, is judged by the same paired gate against the baseline's items of that half,
and is stored in WORKDIR/rescue/trials/ as it finishes: a restarted evaluate stage replays the
search from those files and evaluates only what is missing. The confirmed α's model is written to
WORKDIR/rescue/output (atomically, adapter or full model as the train stage writes them), the
promotion source, and its scores over all items (choice + confirmation half at that α) to
WORKDIR/rescue/results.json.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from forgetless import atomic, contract
from forgetless.errors import StageError
from forgetless.gate import GateResult, evaluate_gate, paired_counts
from forgetless.rescue import CHOICE, CONFIRMATION, Evaluate, Outcome, Trial, next_step, split_items
from forgetless.suites import Suite
from forgetless_trainer.evaluation.results import EvaluationResult

TRIALS_DIR = contract.RESCUE_TRIALS
OUTPUT_DIR = contract.RESCUE_OUTPUT
RESULTS = contract.RESCUE_RESULTS

EvaluateHalf = Callable[[float, str], EvaluationResult]
"""(α, half) -> the item results of θ(α) on that half of the suite."""


# --------------------------------------------------------------------------- halves


def half_suites(suite: Suite) -> tuple[dict[str, Suite], dict[tuple[str, str], str]]:
    """({half: the suite limited to that half's items}, (task, id) -> half)."""
    halves = split_items({task.name: [item["id"] for item in task.items] for task in suite.tasks})
    suites = {}
    for half in (CHOICE, CONFIRMATION):
        tasks = tuple(dataclasses.replace(task, items=tuple(i for i in task.items if halves[(task.name, i["id"])] == half))
                      for task in suite.tasks)
        suites[half] = Suite(suite.name, suite.version, tasks, suite.description, suite.root, suite.limit)
    return suites, halves


def items_of(result: EvaluationResult, halves: dict[tuple[str, str], str], half: str) -> EvaluationResult:
    return dataclasses.replace(result, items=[i for i in result.items if halves.get((i.task, i.id)) == half])


# --------------------------------------------------------------------------- the search


@dataclass
class RescueSearch:
    outcome: Outcome
    trials: list[Trial]
    gates: dict[tuple[float, str], GateResult] = field(default_factory=dict)
    results: dict[tuple[float, str], EvaluationResult] = field(default_factory=dict)
    evaluated: int = 0
    """Trials evaluated by this call (the rest came from WORKDIR/rescue/trials)."""


def _trial_path(store: Path, alpha: float, half: str) -> Path:
    return store / f"{half}-{alpha:.6f}.json"


def judge(alpha: float, half: str, result: EvaluationResult, baseline_half: EvaluationResult,
          regression: Any) -> tuple[Trial, GateResult]:
    gate = evaluate_gate(paired_counts(baseline_half.items, result.items), regression)
    scores = result.category_scores()
    base_mean, mean = baseline_half.mean_general_score(), result.mean_general_score()
    kept = mean / base_mean if base_mean and mean is not None else None
    trial = Trial(alpha, half, gate.forgetting_ok, gate.task_ok, gate.verdict, scores.get("task"),
                  round(kept, 6) if kept is not None else None)
    return trial, gate


def search(baseline: EvaluationResult, halves: dict[tuple[str, str], str], evaluate_half: EvaluateHalf,
           regression: Any, max_evaluations: int, store: Path, log: Callable[[str], None] = print) -> RescueSearch:
    """Run forgetless.rescue's search to its outcome, each trial stored in `store` as it finishes."""
    baseline_halves = {h: items_of(baseline, halves, h) for h in (CHOICE, CONFIRMATION)}
    found = RescueSearch(Outcome(False, None, "not started"), [])
    while True:
        step = next_step(found.trials, max_evaluations)
        if isinstance(step, Outcome):
            found.outcome = step
            return found
        path = _trial_path(store, step.alpha, step.half)
        result = None
        if path.exists():
            try:
                result = EvaluationResult.load(path)
            except (OSError, ValueError) as exc:
                log(f"rescue: ignoring unreadable trial {path}: {exc}")
        if result is None:
            began = time.monotonic()
            result = evaluate_half(step.alpha, step.half)
            result.save(path)
            found.evaluated += 1
            took = f" in {time.monotonic() - began:.1f} s"
        else:
            took = " (stored)"
        trial, gate = judge(step.alpha, step.half, result, baseline_halves[step.half], regression)
        found.trials.append(trial)
        found.gates[(step.alpha, step.half)] = gate
        found.results[(step.alpha, step.half)] = result
        kept = f"{trial.kept:.1%}" if trial.kept is not None else "n/a"
        task = f"{trial.task_score:.3f}" if trial.task_score is not None else "n/a"
        log(f"rescue {len(found.trials)}/{max_evaluations}: α = {step.alpha:g} on the {step.half} half: task {task}, "
            f"kept {kept}, gate {gate.verdict}{took}")


def account(found: RescueSearch, max_evaluations: int, original: GateResult, seconds: float | None = None) -> dict[str, Any]:
    """The RescueStatus wire form."""
    from forgetless.api.schema import RescueStatus

    confirmation = found.outcome.confirmation
    return RescueStatus.model_validate({
        "outcome": "Rescued" if found.outcome.rescued else "NotRescued",
        "alpha": found.outcome.alpha,
        "taskScore": confirmation.task_score if confirmation else None,
        "kept": confirmation.kept if confirmation else None,
        "evaluations": len(found.trials),
        "maxEvaluations": max_evaluations,
        "trials": [{"alpha": t.alpha, "half": t.half, "verdict": t.verdict, "taskScore": t.task_score, "kept": t.kept}
                   for t in found.trials],
        "originalMeanDrop": original.mean_drop,
        "seconds": round(seconds, 3) if seconds is not None else None,
        "message": found.outcome.message,
    }).to_wire()


def rescued_gate(found: RescueSearch, max_evaluations: int, original: GateResult,
                 seconds: float | None = None) -> GateResult:
    """The verdict to record: the confirmation half's gate as Rescued, or the original gate (still
    blocked) with the rescue's account and why it found nothing."""
    record = account(found, max_evaluations, original, seconds)
    outcome = found.outcome
    if not outcome.rescued:
        return dataclasses.replace(original, rescue=record,
                                   reasons=list(original.reasons) + [f"rescue by interpolation: {outcome.message}"])
    confirmed = found.gates[(outcome.alpha, CONFIRMATION)]
    conf = outcome.confirmation
    reasons = [f"rescued by weight interpolation at α = {outcome.alpha:g} (θ₀ + α·(θ − θ₀)): on the confirmation "
               f"half it keeps {conf.kept:.1%} of the general score with task {conf.task_score:.3f}"
               if conf.kept is not None and conf.task_score is not None else
               f"rescued by weight interpolation at α = {outcome.alpha:g}"]
    reasons += [f"the fine-tuned model (α = 1) was blocked: {r}" for r in original.reasons]
    return dataclasses.replace(confirmed, verdict="Rescued", reasons=reasons, rescue=record)


def merged_result(found: RescueSearch) -> EvaluationResult | None:
    """θ(α)'s results over all items: the choice half and the confirmation half at the confirmed α."""
    alpha = found.outcome.alpha
    if alpha is None:
        return None
    choice, confirmation = found.results[(alpha, CHOICE)], found.results[(alpha, CONFIRMATION)]
    return dataclasses.replace(choice, items=list(choice.items) + list(confirmation.items),
                               seconds=choice.seconds + confirmation.seconds,
                               meta={**choice.meta, "rescueAlpha": alpha})


# --------------------------------------------------------------------------- the weights


class Interpolation:
    """θ(α) of one fine-tuned model, in memory: `set_alpha`, then evaluate `model`; `save` writes it."""

    def __init__(self, model_spec: Any, train_output: Path, dataset: Any = None, base_dir: Path | None = None) -> None:
        import torch
        from forgetless_trainer.chat import install_template
        from forgetless_trainer.modeling import load_model_and_tokenizer

        self.train_output = Path(train_output)
        self.is_lora = (self.train_output / "adapter_config.json").exists()
        self.model, self.tokenizer = load_model_and_tokenizer(model_spec, adapter_path=self.train_output, base_dir=base_dir)
        install_template(self.tokenizer, dataset, base_dir)
        self.alpha = 1.0
        if self.is_lora:
            from peft.tuners.lora import LoraLayer

            self.layers = [m for m in self.model.modules() if isinstance(m, LoraLayer)]
            if any(getattr(layer, "use_dora", {}).get(a) for layer in self.layers for a in layer.scaling):
                raise StageError("regression.rescue.interpolation: a DoRA adapter is not linear in its scale; "
                                 "rescue supports LoRA adapters and full fine-tuning")
        else:
            base, _ = load_model_and_tokenizer(model_spec, base_dir=base_dir)
            base_params = dict(base.named_parameters())
            self.tuned = {n: p.detach().clone() for n, p in self.model.named_parameters()}
            missing = sorted(set(self.tuned) - set(base_params))
            if missing:
                raise StageError(f"regression.rescue.interpolation: the fine-tuned model has parameters the base "
                                 f"model lacks ({missing[:3]}): cannot interpolate")
            with torch.no_grad():
                self.delta = {n: self.tuned[n] - base_params[n].detach().to(self.tuned[n].dtype) for n in self.tuned}
            del base, base_params

    def set_alpha(self, alpha: float) -> None:
        import torch

        if self.is_lora:
            for layer in self.layers:
                for adapter in list(layer.scaling):
                    layer.set_scale(adapter, alpha)
        else:
            with torch.no_grad():
                for name, param in self.model.named_parameters():
                    # θ₀ + α·(θ − θ₀) = θ − (1 − α)·(θ − θ₀)
                    param.copy_(self.tuned[name] - (1.0 - alpha) * self.delta[name])
        self.alpha = alpha

    def save(self, alpha: float, destination: Path) -> Path:
        """θ(α) as the train stage writes models (an adapter, or a full model and tokenizer), atomically."""
        import torch

        with atomic.atomic_directory(Path(destination)) as staging:
            if self.is_lora:
                self.set_alpha(1.0)
                originals = {}
                with torch.no_grad():
                    for layer in self.layers:
                        for adapter, module in layer.lora_B.items():
                            originals[(id(layer), adapter)] = module.weight.detach().clone()
                            module.weight.mul_(alpha)
                try:
                    self.model.save_pretrained(staging)
                finally:
                    with torch.no_grad():
                        for layer in self.layers:
                            for adapter, module in layer.lora_B.items():
                                module.weight.copy_(originals[(id(layer), adapter)])
                for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
                    if (self.train_output / name).exists():
                        (staging / name).write_bytes((self.train_output / name).read_bytes())
            else:
                self.set_alpha(alpha)
                self.model.save_pretrained(staging)
                self.tokenizer.save_pretrained(staging)
        return Path(destination)


def rescue(job: Any, workdir: Path, suite: Suite, baseline: EvaluationResult, original: GateResult,
           evaluate: Callable[[Any, Any, Suite, str], EvaluationResult],
           base_dir: Path | None = None) -> tuple[GateResult, EvaluationResult | None, Path | None]:
    """(the gate to record, θ(α)'s results over all items or None, the model to promote or None).

    `evaluate(model, tokenizer, half_suite, stage)` scores a model (the stage's evaluator)."""
    spec = job.spec
    settings = spec.regression.rescue.interpolation
    workdir = Path(workdir)
    store = workdir / TRIALS_DIR
    store.mkdir(parents=True, exist_ok=True)
    suites, halves = half_suites(suite)
    log = lambda message: print(message, file=sys.stderr)  # noqa: E731
    weights: Interpolation | None = None

    def evaluate_half(alpha: float, half: str) -> EvaluationResult:
        nonlocal weights
        if weights is None:
            weights = Interpolation(spec.model, workdir / contract.TRAIN_OUTPUT, spec.dataset, base_dir)
        weights.set_alpha(alpha)
        return evaluate(weights.model, weights.tokenizer, suites[half], f"rescue α={alpha:g}")

    log(f"rescue: the gate blocked the fine-tuned model; searching α in (0, 1) with at most "
        f"{settings.max_evaluations} half-suite evaluations (choice half {len(suites[CHOICE])} items, "
        f"confirmation half {len(suites[CONFIRMATION])})")
    began = time.monotonic()
    found = search(baseline, halves, evaluate_half, spec.regression, settings.max_evaluations, store, log)
    log(f"rescue: {found.outcome.message}")
    if not found.outcome.rescued:
        return rescued_gate(found, settings.max_evaluations, original, time.monotonic() - began), None, None
    merged = merged_result(found)
    merged.save(workdir / RESULTS)
    output = workdir / OUTPUT_DIR
    if weights is None:  # every trial came from the store (a restart): the weights are needed once more
        weights = Interpolation(spec.model, workdir / contract.TRAIN_OUTPUT, spec.dataset, base_dir)
    weights.save(found.outcome.alpha, output)
    return rescued_gate(found, settings.max_evaluations, original, time.monotonic() - began), merged, output
