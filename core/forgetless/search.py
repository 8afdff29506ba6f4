"""The policy search itself: pure functions over a FineTuneSweep spec and the trials seen so far.

Shared by `forgetless sweep` (local, in-process) and the operator: given the spec and the trial
records observed so far, `next_actions` says which trials to start (or continue), which to prune,
and, once the sweep is over, which trial is best. Nothing here touches torch, kopf or files.

Candidates (`expand`): the product of the dimensions in their order (grid), or `maxTrials` samples
drawn with `seed` (random: without replacement from the grid when every dimension is discrete,
else uniform / log-uniform per dimension), followed by `spec.include`. A candidate's index is its
position in that list; its trial is named `<sweep>-t<index>`.

Objective (`select_best`): among trials whose gate passed (verdict Passed or Warned) and whose
task score reaches `objective.minTaskScore`, the best task score; trials within
`objective.tieTolerance` (default 0.005) of it tie, and the cheapest of them wins, cost = trainable
parameters × tokens trained (both from the train stage's summary); then the higher task score, then
the lower index.

Successive halving (`strategy.successiveHalving`), with the trial's epochs as its resource: with n
candidates there are K+1 rungs, K = ceil(log_eta n) - 1; rung k trains a candidate for
min(E, max(minEpochs, E / eta^(K-k))) of its own epochs E, so the last rung trains E. After every
trial of a rung is evaluated, the best ceil(n_k / eta) (ranked by `rank`: a trial that passes the
gate comes first, then the task score, ties by the share of the general score kept, then cost)
continue from their checkpoint; the others are pruned. A gate failure at an early rung only ranks a trial lower, it never discards it by
itself: forgetting happens early and data mixing repairs it later in training (docs/benchmarks.md, policy search), so a
trial failing at 1/9 of its epochs may well pass at the end. The best trial is chosen among every
evaluated trial (a pruned trial's model, evaluated at its rung, is a real model too).
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Sequence

from forgetless.api.sweep import FineTuneSweepSpec, ObjectiveSpec, TrialStatus, candidate_spec, trial_name, typed
from forgetless.lifecycle import PROMOTING_VERDICTS, mean_general_score

LIVE_PHASES = ("Pending", "Running")


@dataclass(frozen=True)
class Candidate:
    index: int
    policy: dict[str, Any]

    def epochs(self, spec: FineTuneSweepSpec) -> float:
        return float(self.policy.get("training.epochs", spec.template.training.epochs))


# --------------------------------------------------------------------------- the space


def _sample(dimension: Any, rng: random.Random) -> Any:
    if dimension.discrete():
        return rng.choice(dimension.points())
    if dimension.log:
        value = math.exp(rng.uniform(math.log(dimension.min), math.log(dimension.max)))
    else:
        value = rng.uniform(dimension.min, dimension.max)
    if isinstance(typed(dimension.field, 1.0), int):
        return int(round(value))
    return float(f"{value:.6g}")


def expand(spec: FineTuneSweepSpec) -> list[Candidate]:
    """Every candidate the strategy may run, in index order (deterministic for a spec)."""
    dims = spec.search_space
    fields = [d.field for d in dims]
    strategy = spec.strategy
    all_discrete = all(d.discrete() for d in dims)
    sampled = strategy.type == "random" or (strategy.type == "successiveHalving" and not all_discrete)
    if not sampled:
        policies = [dict(zip(fields, combo)) for combo in itertools.product(*(d.points() for d in dims))]
    else:
        rng = random.Random(strategy.seed)
        count = strategy.max_trials or 1
        if all_discrete:
            grid = list(itertools.product(*(d.points() for d in dims)))
            chosen = rng.sample(range(len(grid)), min(count, len(grid)))
            policies = [dict(zip(fields, grid[i])) for i in chosen]
        else:
            policies = [{d.field: _sample(d, rng) for d in dims} for _ in range(count)]
    policies += [{k: typed(k, v) for k, v in extra.items()} for extra in spec.include]
    return [Candidate(i, p) for i, p in enumerate(policies)]


def rung_count(spec: FineTuneSweepSpec, candidates: int) -> int:
    """K + 1: the number of rungs (1 for grid and random)."""
    if spec.strategy.type != "successiveHalving" or candidates <= 1:
        return 1
    return max(1, math.ceil(math.log(candidates, spec.strategy.eta) - 1e-9))


def rung_epochs(spec: FineTuneSweepSpec, candidate: Candidate, rung: int, rungs: int) -> float:
    """Epochs a candidate has trained after rung `rung` (of `rungs`): E / eta^(K-k), at least minEpochs, at most E."""
    full = candidate.epochs(spec)
    if rungs <= 1:
        return full
    share = full / spec.strategy.eta ** (rungs - 1 - rung)
    return round(min(full, max(spec.strategy.min_epochs, share)), 6)


# --------------------------------------------------------------------------- the objective


def qualifies(trial: TrialStatus, objective: ObjectiveSpec) -> bool:
    if trial.verdict not in PROMOTING_VERDICTS or trial.task_score is None:
        return False
    return objective.min_task_score is None or trial.task_score >= objective.min_task_score


def evaluated(trials: Iterable[TrialStatus]) -> list[TrialStatus]:
    """Trials with a measured result (finished, or pruned after their rung was evaluated)."""
    return [t for t in trials if t.phase in ("Succeeded", "Pruned") and t.task_score is not None]


def objective_key(trial: TrialStatus, objective: ObjectiveSpec) -> tuple:
    """A coarse sort key (greater is better): qualifies, task score, cheaper, earlier. `select_best`
    and `rank` add the tie tolerance on top of it."""
    cost = trial.cost if trial.cost is not None else math.inf
    return (qualifies(trial, objective), trial.task_score if trial.task_score is not None else -1.0, -cost, -trial.index)


def _pick(pool: Sequence[TrialStatus], objective: ObjectiveSpec, kept_first: bool = False) -> TrialStatus:
    top = max(t.task_score if t.task_score is not None else -1.0 for t in pool)
    tied = [t for t in pool if (t.task_score if t.task_score is not None else -1.0) >= top - objective.tie_tolerance - 1e-12]

    def key(t: TrialStatus) -> tuple:
        cost = t.cost if t.cost is not None else math.inf
        kept = -(t.mean_kept if t.mean_kept is not None else -1.0)
        return (kept, cost, -(t.task_score or 0.0), t.index) if kept_first else (cost, -(t.task_score or 0.0), t.index)

    return min(tied, key=key)


def select_best(trials: Iterable[TrialStatus], objective: ObjectiveSpec) -> Optional[TrialStatus]:
    """The best qualifying trial (gate passed, task ≥ minTaskScore): best task score, ties within
    tieTolerance broken by lower cost; None when no trial qualifies."""
    pool = [t for t in evaluated(trials) if qualifies(t, objective)]
    return _pick(pool, objective) if pool else None


def rank(trials: Iterable[TrialStatus], objective: ObjectiveSpec) -> list[TrialStatus]:
    """How successive halving orders a rung, best first: trials that pass the gate, then the others
    (a gate failure ranks a trial lower but never removes it); within each, the task score, and task
    scores tied within tieTolerance by the share of the general score kept, then cost. (Early in
    training every task score may still be 0: then the trial forgetting least is the likeliest to
    pass at the end; cost would only favour the smallest rank. The final choice, `select_best`,
    breaks ties by cost.)"""
    remaining = list(evaluated(trials))
    ordered = []
    while remaining:
        passing = [t for t in remaining if qualifies(t, objective)]
        chosen = _pick(passing or remaining, objective, kept_first=True)
        ordered.append(chosen)
        remaining.remove(chosen)
    return ordered


def pareto_front(trials: Iterable[TrialStatus]) -> list[TrialStatus]:
    """Trials no other trial beats on all of task score, general score kept and cost (≥ on all, > on one)."""
    pool = [t for t in evaluated(trials) if t.mean_kept is not None]

    def vec(t: TrialStatus) -> tuple[float, float, float]:
        return (t.task_score, t.mean_kept, -(t.cost if t.cost is not None else math.inf))

    front = []
    for t in pool:
        a = vec(t)
        if not any(all(x >= y for x, y in zip(vec(o), a)) and vec(o) != a for o in pool if o is not t):
            front.append(t)
    return sorted(front, key=lambda t: t.index)


# --------------------------------------------------------------------------- one trial's numbers


def trial_metrics(baseline: dict[str, float], final: dict[str, float], gate: dict[str, Any],
                  train_summary: dict[str, Any]) -> dict[str, Any]:
    """taskScore, meanKept, verdict, cost, trainSeconds of one evaluated trial, from its stage summaries."""
    base_mean = mean_general_score(baseline, among=final)
    final_mean = mean_general_score(final, among=baseline)
    kept = final_mean / base_mean if base_mean and final_mean is not None else None
    parameters = train_summary.get("trainableParameters")
    tokens = train_summary.get("tokens")
    return {
        "task_score": final.get("task"),
        "mean_kept": round(kept, 6) if kept is not None else None,
        "verdict": gate.get("verdict"),
        "cost": float(parameters) * float(tokens) if parameters is not None and tokens is not None else None,
        "train_seconds": train_summary.get("trainSeconds"),
    }


# --------------------------------------------------------------------------- what to do next


@dataclass(frozen=True)
class TrialRequest:
    """Start (or, for a promoted successive-halving trial, continue) `name` training `epochs` epochs."""

    name: str
    index: int
    policy: dict[str, Any]
    rung: int
    epochs: float
    continues: bool = False

    def spec(self, sweep: FineTuneSweepSpec):
        """The trial's FineTuneJob spec: the template, the policy, this rung's epochs, promote off
        (the sweep promotes only its best trial)."""
        job = candidate_spec(sweep.template, {**self.policy, "training.epochs": self.epochs})
        job.output.promote = False
        job.output.hand_off = None
        return job


@dataclass
class Plan:
    start: list[TrialRequest] = field(default_factory=list)
    prune: list[str] = field(default_factory=list)
    done: bool = False
    best: Optional[TrialStatus] = None
    rung: int = 0


def next_actions(spec: FineTuneSweepSpec, sweep_name: str, trials: Iterable[TrialStatus]) -> Plan:
    """Given the trials observed so far (by name), what to start, continue and prune; at most
    `maxParallel` trials live at once. When every needed trial has finished: `done` and `best`."""
    candidates = expand(spec)
    rungs = rung_count(spec, len(candidates))
    records = {t.name: t for t in trials}
    live = sum(1 for t in records.values() if t.phase in LIVE_PHASES)
    capacity = max(0, spec.max_parallel - live)
    members = candidates
    plan = Plan()
    for rung in range(rungs):
        plan.rung = rung
        waiting, todo = False, []
        for c in members:
            name = trial_name(sweep_name, c.index)
            record = records.get(name)
            if record is None or (record.rung or 0) < rung and record.phase not in ("Failed", "Pruned"):
                todo.append(TrialRequest(name, c.index, c.policy, rung, rung_epochs(spec, c, rung, rungs),
                                         continues=record is not None))
            elif (record.rung or 0) == rung and record.phase in LIVE_PHASES:
                waiting = True
        if todo or waiting:
            plan.start = todo[:capacity]
            return plan
        if rung == rungs - 1:
            break
        at_rung = [records[trial_name(sweep_name, c.index)] for c in members]
        survivors = [t for t in at_rung if t.phase not in ("Failed", "Pruned")]
        decided = any((t.rung or 0) > rung for t in at_rung) or any(t.phase == "Pruned" and (t.rung or 0) == rung for t in at_rung)
        if not decided:
            keep = max(1, math.ceil(len(members) / spec.strategy.eta))
            kept = {t.name for t in rank(survivors, spec.objective)[:keep]}
            plan.prune = sorted((t.name for t in survivors if t.name not in kept), key=lambda n: records[n].index)
            survivors = [t for t in survivors if t.name in kept]
            records = {**records, **{n: records[n].model_copy(update={"phase": "Pruned"}) for n in plan.prune}}
        names = {t.name for t in survivors}
        members = [c for c in members if trial_name(sweep_name, c.index) in names]
        if not members:
            break
    plan.done = not plan.start
    if plan.done:
        plan.best = select_best(records.values(), spec.objective)
    return plan
