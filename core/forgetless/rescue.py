"""Rescue by weight interpolation: which α to evaluate next, and what was found (pure, torch-free).

When the gate blocks a fine-tuned model for forgetting, `regression.rescue.interpolation` looks for
a model between the base θ₀ and the fine-tuned θ that passes: θ(α) = θ₀ + α·(θ − θ₀) (WiSE-FT,
Wortsman et al. 2022; Lin et al. 2023 found it the best alignment–forgetting trade-off). Small α
forgets less and learns less, so the search wants the largest α whose gate passes *and* whose task
gain still shows learning (the gate's NoTaskGain rule).

The suite's items are split in two halves, deterministically per task (`split_items`): the α is
chosen on the *choice* half and confirmed on the *confirmation* half with the same paired statistics,
so that picking the best of several tries does not flatter the verdict. Only a confirmed α is
promoted (verdict Rescued).

The search (`next_step`) is a bisection on the forgetting boundary in (0, 1): α = 1 failed, α = 0 is
the base model; each tried α that stays within the thresholds raises the lower end, each one that
forgets too much lowers the upper end. It stops when the interval is narrower than `RESOLUTION` or
the budget (all but one evaluation, kept for the confirmation) is spent. The candidate is the largest
choice-half pass. A failed confirmation at α backs off: the next candidate is the largest choice-half
pass at most `BACKOFF`·α (tried on the choice half first when there is none), while evaluations
remain; so the confirmation half only ever confirms, it never steers the search. On a curve that is not monotone the bisection finds *a* boundary, not
necessarily the largest passing α; the confirmation still guards the verdict.

Everything here is a function of the trials so far, so a restarted stage replays the same sequence
from its stored trials and evaluates only what is missing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterable, Mapping

CHOICE, CONFIRMATION = "choice", "confirmation"
RESOLUTION = 1 / 32
BACKOFF = 0.8


def _rank_key(task: str, item_id: str) -> str:
    return hashlib.sha256(f"{task}\0{item_id}".encode()).hexdigest()


def split_items(ids_by_task: Mapping[str, Iterable[str]]) -> dict[tuple[str, str], str]:
    """(task, id) -> CHOICE or CONFIRMATION: each task's items ordered by a hash of their id, then
    alternated, so both halves get half of every task (the choice half the extra one when odd)."""
    halves: dict[tuple[str, str], str] = {}
    for task, ids in ids_by_task.items():
        for rank, item_id in enumerate(sorted(set(ids), key=lambda i: _rank_key(task, i))):
            halves[(task, item_id)] = CHOICE if rank % 2 == 0 else CONFIRMATION
    return halves


@dataclass(frozen=True)
class Trial:
    """One α judged by the gate on one half."""

    alpha: float
    half: str
    forgetting_ok: bool
    task_ok: bool
    verdict: str
    task_score: float | None = None
    kept: float | None = None

    @property
    def passed(self) -> bool:
        return self.forgetting_ok and self.task_ok


@dataclass(frozen=True)
class Evaluate:
    alpha: float
    half: str


@dataclass(frozen=True)
class Outcome:
    rescued: bool
    alpha: float | None
    message: str
    confirmation: Trial | None = None


def _bisect(choice: list[Trial]) -> tuple[float, float]:
    low, high = 0.0, 1.0
    for trial in choice:
        if trial.forgetting_ok:
            low = max(low, trial.alpha)
        else:
            high = min(high, trial.alpha)
    return low, high


def next_step(trials: list[Trial], max_evaluations: int) -> Evaluate | Outcome:
    """The next α to evaluate (and on which half), or the outcome once the search is over."""
    if max_evaluations < 2:
        raise ValueError("max_evaluations must be at least 2 (one choice, one confirmation)")
    choice = [t for t in trials if t.half == CHOICE]
    confirmations = [t for t in trials if t.half == CONFIRMATION]
    confirmed = [t for t in confirmations if t.passed]
    if confirmed:
        best = max(confirmed, key=lambda t: t.alpha)
        return Outcome(True, best.alpha, f"α = {best.alpha:g} passed on the choice half and was confirmed on the "
                       f"confirmation half", best)
    spent = len(trials)
    low, high = _bisect(choice)
    searching = not confirmations and spent < max_evaluations - 1 and high - low > RESOLUTION
    if searching:
        alpha = round((low + high) / 2, 6)
        if all(abs(alpha - t.alpha) > 1e-9 for t in choice):
            return Evaluate(alpha, CHOICE)
    ceiling = 1.0
    if confirmations:  # a failed confirmation: back off, never retry within BACKOFF of a failed α
        ceiling = BACKOFF * min(t.alpha for t in confirmations)
        tried = {round(t.alpha, 6): t for t in choice}
        while round(ceiling, 6) in tried and not tried[round(ceiling, 6)].passed and ceiling > RESOLUTION:
            ceiling *= BACKOFF
    candidates = sorted((t for t in choice if t.passed and t.alpha <= ceiling + 1e-9), key=lambda t: -t.alpha)
    if candidates and spent < max_evaluations:
        return Evaluate(candidates[0].alpha, CONFIRMATION)
    alpha = round(ceiling, 6)
    if confirmations and ceiling > RESOLUTION and spent < max_evaluations - 1 and alpha not in {round(t.alpha, 6) for t in choice}:
        return Evaluate(alpha, CHOICE)
    return Outcome(False, None, _why_not(choice, confirmations, spent, max_evaluations))


def _why_not(choice: list[Trial], confirmations: list[Trial], spent: int, max_evaluations: int) -> str:
    if confirmations:
        tried = ", ".join(f"α = {t.alpha:g} ({t.verdict})" for t in confirmations)
        more = "" if spent < max_evaluations else f"; the {max_evaluations} evaluations are spent"
        return f"passed on the choice half but not on the confirmation half: {tried}{more}"
    within = [t for t in choice if t.forgetting_ok]
    if within:
        top = max(t.alpha for t in within)
        return (f"where forgetting stays within the thresholds (α ≤ {top:g}) the task gain shows no learning: "
                "a gentler training policy is needed, not a smaller step")
    if choice:
        return f"forgetting exceeded the thresholds at every α tried, down to α = {min(t.alpha for t in choice):g}"
    return "no α was evaluated"
