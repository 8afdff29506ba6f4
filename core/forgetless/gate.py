"""The regression gate: did fine-tuning make the model forget, beyond noise? (pure, torch-free)

Input: per-task 2x2 tables of paired item results (`paired_counts`), the shape the evaluate stage
keeps as `paired` in its summary.json (not in the termination message: it grows with the suite).
The gate runs only in the evaluate stage; the operator and `forgetless run` read its verdict:

    {task: {"category": c, "n11": i, "n10": i, "n01": i, "n00": i}}    n10 = right before, wrong after

Point estimates: a task's drop is (n10 - n01) / n (baseline accuracy minus final accuracy); a
category's drop is the mean of its tasks' drops (tasks weighted equally, as in the category score);
the mean drop is the mean over the general categories present; the task gain is minus the drop
of category `task`.

Intervals: a paired bootstrap over items. Resampling the n items of a task with replacement keeps
each item's (before, after) pair together; with binary scores that is a multinomial resample of
the task's 2x2 table, and only the discordant cells move the drop. So each replicate draws
K ~ Binomial(n, (n10+n01)/n) discordant items and n10* ~ Binomial(K, n10/(n10+n01)) of them
"right before, wrong after": drop* = (2·n10* - K) / n. Binomials are drawn by inverse CDF from
cached tables with the standard library's seeded `random`, so the gate needs no numpy
(2000 replicates × 15 tasks ≈ 0.1 s).

Decision at `confidence` c: `drop_lower` / `drop_upper` are the (1-c) and c quantiles of the
bootstrap drops, i.e. the one-sided bounds at confidence c. A category fails only when
`drop_lower > threshold` (thresholds.perCategory[c], else maxCategoryDrop): the drop exceeds the
threshold with confidence c. The mean drop is checked against maxMeanDrop the same way.
onRegression: Warn turns Failed into Warned and keeps the reasons.

The target task (category `task`, when the suite has one) must show that fine-tuning worked: by
default the lower bound of its gain at confidence c must be above 0 (evidence of learning, the same
paired bootstrap as the drops); an explicit thresholds.minTaskGain instead requires the gain's point
estimate to reach it (`minTaskGain: 0` accepts a model that learned nothing). A model that kept its
skills but fails this is `NoTaskGain`: not promoted, and not a forgetting failure (forgetting, when
also present, makes the verdict Failed).
"""

from __future__ import annotations

import bisect
import math
import random
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from forgetless.api.schema import GateStatus, RegressionSpec
from forgetless.lifecycle import CATEGORIES, TASK_CATEGORY
CELLS = ("n11", "n10", "n01", "n00")


class GateError(ValueError):
    """Inputs the gate cannot judge (mismatched item sets, malformed tables)."""


# --------------------------------------------------------------------------- paired counts


def _field(item: Any, name: str) -> Any:
    if isinstance(item, Mapping):
        return item[name]
    return getattr(item, name)


def paired_counts(baseline_items: Iterable[Any], final_items: Iterable[Any]) -> dict[str, dict[str, Any]]:
    """Item-level results (dicts or objects with task, id, category, score) of the base and the
    fine-tuned model -> per-task 2x2 tables. Both sides must hold exactly the same items."""
    before: dict[tuple[str, str], tuple[str, bool]] = {}
    for item in baseline_items:
        before[(_field(item, "task"), _field(item, "id"))] = (_field(item, "category"), _field(item, "score") >= 0.5)
    after: dict[tuple[str, str], bool] = {}
    for item in final_items:
        after[(_field(item, "task"), _field(item, "id"))] = _field(item, "score") >= 0.5
    missing, extra = before.keys() - after.keys(), after.keys() - before.keys()
    if missing or extra:
        sample = sorted(missing or extra)[:3]
        raise GateError(
            f"baseline and final results cover different items ({len(missing)} only in the baseline, "
            f"{len(extra)} only in the final results, e.g. {sample}); evaluate both with the same suite and limit"
        )
    tables: dict[str, dict[str, Any]] = {}
    for (task, _id), (category, was_right) in sorted(before.items()):
        table = tables.setdefault(task, {"category": category, "n11": 0, "n10": 0, "n01": 0, "n00": 0})
        if table["category"] != category:
            raise GateError(f"task {task!r} appears under two categories ({table['category']!r}, {category!r})")
        is_right = after[(task, _id)]
        table["n" + str(int(was_right)) + str(int(is_right))] += 1
    return tables


# --------------------------------------------------------------------------- results


@dataclass
class CategoryGate:
    category: str
    baseline: float
    final: float
    drop: float
    drop_lower: float
    drop_upper: float
    threshold: float
    passed: bool
    tasks: list[str] = field(default_factory=list)
    items: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "category": self.category, "baseline": self.baseline, "final": self.final, "drop": self.drop,
            "dropLower": self.drop_lower, "dropUpper": self.drop_upper, "threshold": self.threshold,
            "passed": self.passed, "tasks": list(self.tasks), "items": self.items,
        }


@dataclass
class GateResult:
    verdict: str
    reasons: list[str]
    mean_drop: float
    mean_drop_lower: float
    mean_drop_upper: float
    max_mean_drop: float
    task_gain: float | None
    task_gain_lower: float | None
    task_gain_upper: float | None
    min_task_gain: float | None
    categories: list[CategoryGate]
    confidence: float
    bootstrap_samples: int
    seed: int
    on_regression: str
    rescue: dict[str, Any] | None = None
    """regression.rescue's account (RescueStatus wire form) when it ran."""
    notes: list[str] = field(default_factory=list)
    """What the scores rest on (where the task items came from, how format leaks were found); set by the
    evaluate stage, which knows the target."""

    @property
    def passed(self) -> bool:
        return self.verdict == "Passed"

    @property
    def forgetting_ok(self) -> bool:
        """No category and not the mean dropped beyond its threshold (at the gate's confidence)."""
        return all(c.passed for c in self.categories) and not self.mean_drop_lower > self.max_mean_drop

    @property
    def task_ok(self) -> bool:
        """The target task shows what the gate requires of it (true when the suite has no task)."""
        if self.task_gain is None:
            return True
        if self.min_task_gain is None:
            return self.task_gain_lower is not None and self.task_gain_lower > 0
        return self.task_gain >= self.min_task_gain

    def category(self, name: str) -> CategoryGate:
        for verdict in self.categories:
            if verdict.category == name:
                return verdict
        raise KeyError(name)

    @property
    def task_requirement(self) -> str:
        """What the target task had to show, in words (report, table)."""
        if self.min_task_gain is None:
            return "lower bound > 0 (evidence of learning)"
        return f"gain ≥ {self.min_task_gain:+.3f}"

    def to_status(self) -> dict[str, Any]:
        """The `status.gate` wire form (camelCase), validated through GateStatus."""
        status = GateStatus.model_validate(
            {
                "verdict": self.verdict,
                "reasons": list(self.reasons),
                "meanDrop": self.mean_drop,
                "taskGain": self.task_gain,
                "taskGainLower": self.task_gain_lower,
                "categories": [
                    {
                        "category": c.category, "baseline": c.baseline, "final": c.final, "drop": c.drop,
                        "dropUpper": c.drop_upper, "dropLower": c.drop_lower, "threshold": c.threshold,
                        "passed": c.passed,
                    }
                    for c in self.categories
                ],
                **({"rescue": self.rescue} if self.rescue is not None else {}),
                **({"notes": list(self.notes)} if self.notes else {}),
            }
        )
        return status.to_wire()

    def to_dict(self) -> dict[str, Any]:
        """Everything (for the report JSON)."""
        return {
            "verdict": self.verdict,
            "reasons": list(self.reasons),
            "meanDrop": self.mean_drop,
            "meanDropLower": self.mean_drop_lower,
            "meanDropUpper": self.mean_drop_upper,
            "maxMeanDrop": self.max_mean_drop,
            "taskGain": self.task_gain,
            "taskGainLower": self.task_gain_lower,
            "taskGainUpper": self.task_gain_upper,
            "minTaskGain": self.min_task_gain,
            "categories": [c.to_dict() for c in self.categories],
            "confidence": self.confidence,
            "bootstrapSamples": self.bootstrap_samples,
            "seed": self.seed,
            "onRegression": self.on_regression,
            **({"rescue": self.rescue} if self.rescue is not None else {}),
            **({"notes": list(self.notes)} if self.notes else {}),
        }


# --------------------------------------------------------------------------- bootstrap


class _Binomial:
    """Inverse-CDF sampler for Binomial(n, p) with cached cumulative tables (pure Python)."""

    def __init__(self, p: float) -> None:
        self.p = p
        self._tables: dict[int, list[float]] = {}

    def _table(self, n: int) -> list[float]:
        table = self._tables.get(n)
        if table is None:
            p = self.p
            log_p, log_q = math.log(p), math.log1p(-p)
            lg_n = math.lgamma(n + 1)
            total, table = 0.0, []
            for k in range(n + 1):
                total += math.exp(lg_n - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * log_p + (n - k) * log_q)
                table.append(total)
            self._tables[n] = table
        return table

    def draw(self, n: int, rng: random.Random) -> int:
        if n == 0 or self.p <= 0.0:
            return 0
        if self.p >= 1.0:
            return n
        table = self._table(n)
        return min(bisect.bisect_right(table, rng.random() * table[-1]), n)


@dataclass
class _Table:
    task: str
    category: str
    n11: int
    n10: int
    n01: int
    n00: int

    @property
    def n(self) -> int:
        return self.n11 + self.n10 + self.n01 + self.n00

    @property
    def baseline(self) -> float:
        return (self.n11 + self.n10) / self.n

    @property
    def final(self) -> float:
        return (self.n11 + self.n01) / self.n

    @property
    def drop(self) -> float:
        return (self.n10 - self.n01) / self.n


def _tables(paired: Mapping[str, Mapping[str, Any]]) -> list[_Table]:
    if not paired:
        raise GateError("no paired results to judge (the evaluate summary's `paired` is empty)")
    out = []
    for task in sorted(paired):
        row = paired[task]
        if not isinstance(row, Mapping):
            raise GateError(f"paired[{task!r}] must be an object with category, n11, n10, n01, n00")
        category = row.get("category")
        if category not in CATEGORIES and category != TASK_CATEGORY:
            raise GateError(
                f"paired[{task!r}].category {category!r} is not a known category "
                f"({', '.join(CATEGORIES)}, {TASK_CATEGORY})"
            )
        counts = []
        for cell in CELLS:
            value = row.get(cell)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise GateError(f"paired[{task!r}].{cell} must be a non-negative integer, got {value!r}")
            counts.append(value)
        if sum(counts) == 0:
            raise GateError(f"paired[{task!r}] has no items")
        out.append(_Table(task, category, *counts))
    return out


def _quantile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    position = q * (len(sorted_values) - 1)
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def _bootstrap(tables: list[_Table], samples: int, seed: int) -> dict[str, list[float]]:
    """Bootstrap replicates of each task's drop -> per-group (category, "mean") replicate lists."""
    rng = random.Random(seed)
    by_category: dict[str, list[_Table]] = {}
    for table in tables:
        by_category.setdefault(table.category, []).append(table)
    samplers = []
    for table in tables:
        discordant = table.n10 + table.n01
        samplers.append(
            (table, _Binomial(discordant / table.n), _Binomial(table.n10 / discordant if discordant else 0.0))
        )
    general = [c for c in CATEGORIES if c in by_category]
    replicates: dict[str, list[float]] = {c: [] for c in by_category}
    replicates["mean"] = []
    for _ in range(samples):
        task_drop: dict[str, float] = {}
        for table, discordant_sampler, split_sampler in samplers:
            k = discordant_sampler.draw(table.n, rng)
            lost = split_sampler.draw(k, rng)
            task_drop[table.task] = (2 * lost - k) / table.n
        category_drop = {}
        for category, members in by_category.items():
            category_drop[category] = sum(task_drop[t.task] for t in members) / len(members)
            replicates[category].append(category_drop[category])
        if general:
            replicates["mean"].append(sum(category_drop[c] for c in general) / len(general))
    for values in replicates.values():
        values.sort()
    return replicates


# --------------------------------------------------------------------------- the gate


def evaluate_gate(
    paired: Mapping[str, Mapping[str, Any]], regression: RegressionSpec | None = None, *, seed: int = 0
) -> GateResult:
    """Judge per-task 2x2 tables against `regression` (thresholds, confidence, bootstrap samples)."""
    regression = regression or RegressionSpec()
    thresholds = regression.thresholds
    confidence = regression.confidence
    tables = _tables(paired)
    replicates = _bootstrap(tables, regression.bootstrap_samples, seed)
    lower_q, upper_q = 1.0 - confidence, confidence
    pct = f"{confidence:.0%}" if round(confidence * 100, 6).is_integer() else f"{confidence:.1%}"

    by_category: dict[str, list[_Table]] = {}
    for table in tables:
        by_category.setdefault(table.category, []).append(table)

    reasons: list[str] = []
    verdicts: list[CategoryGate] = []
    for category in CATEGORIES:
        members = by_category.get(category)
        if not members:
            continue
        drop = _mean(t.drop for t in members)
        threshold = thresholds.per_category.get(category, thresholds.max_category_drop)
        lower = _quantile(replicates[category], lower_q)
        upper = _quantile(replicates[category], upper_q)
        passed = not lower > threshold
        verdicts.append(
            CategoryGate(
                category=category,
                baseline=_mean(t.baseline for t in members),
                final=_mean(t.final for t in members),
                drop=drop, drop_lower=lower, drop_upper=upper, threshold=threshold, passed=passed,
                tasks=[t.task for t in members], items=sum(t.n for t in members),
            )
        )
        if not passed:
            reasons.append(
                f"{category} dropped by {drop:.3f} (from {verdicts[-1].baseline:.3f} to {verdicts[-1].final:.3f}); "
                f"its {pct} lower bound {lower:.3f} (bounds [{lower:.3f}, {upper:.3f}]) is above the threshold {threshold:.3f}"
            )

    if verdicts:
        mean_drop = _mean(v.drop for v in verdicts)
        mean_lower = _quantile(replicates["mean"], lower_q)
        mean_upper = _quantile(replicates["mean"], upper_q)
        if mean_lower > thresholds.max_mean_drop:
            reasons.append(
                f"mean general score dropped by {mean_drop:.3f}; its {pct} lower bound {mean_lower:.3f} "
                f"(bounds [{mean_lower:.3f}, {mean_upper:.3f}]) is above maxMeanDrop {thresholds.max_mean_drop:.3f}"
            )
    else:
        mean_drop = mean_lower = mean_upper = 0.0

    task_gain = gain_lower = gain_upper = None
    task_reasons: list[str] = []
    if TASK_CATEGORY in by_category:
        members = by_category[TASK_CATEGORY]
        task_gain = -_mean(t.drop for t in members)
        gain_lower = -_quantile(replicates[TASK_CATEGORY], upper_q)
        gain_upper = -_quantile(replicates[TASK_CATEGORY], lower_q)
        bounds = f"{pct} bounds [{gain_lower:+.3f}, {gain_upper:+.3f}]"
        if thresholds.min_task_gain is None and not gain_lower > 0:
            task_reasons.append(
                f"no evidence the model learned the target task: it gained {task_gain:+.3f} ({bounds}), and the "
                f"lower bound must be above 0 (set thresholds.minTaskGain to judge the task differently)"
            )
        elif thresholds.min_task_gain is not None and task_gain < thresholds.min_task_gain:
            task_reasons.append(
                f"target task gained {task_gain:+.3f} ({bounds}), below minTaskGain {thresholds.min_task_gain:+.3f}"
            )

    # Forgetting decides first (Failed, or Warned under onRegression: Warn); a model that kept its
    # skills but did not learn the task is NoTaskGain: not promoted, and not a forgetting failure.
    if reasons:
        verdict = "Warned" if regression.on_regression == "Warn" else "Failed"
        if verdict == "Warned" and task_reasons:
            verdict = "NoTaskGain"
    elif task_reasons:
        verdict = "NoTaskGain"
    else:
        verdict = "Passed"
    reasons += task_reasons
    return GateResult(
        verdict=verdict, reasons=reasons,
        mean_drop=mean_drop, mean_drop_lower=mean_lower, mean_drop_upper=mean_upper,
        max_mean_drop=thresholds.max_mean_drop,
        task_gain=task_gain, task_gain_lower=gain_lower, task_gain_upper=gain_upper,
        min_task_gain=thresholds.min_task_gain,
        categories=verdicts, confidence=confidence, bootstrap_samples=regression.bootstrap_samples,
        seed=seed, on_regression=regression.on_regression,
    )


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values)
