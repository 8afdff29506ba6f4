"""Item-level evaluation results and the scores derived from them (torch-free)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from forgetless import atomic
from forgetless.lifecycle import ALL_CATEGORIES, TASK_CATEGORY, mean_general_score

RESULTS_FORMAT = 1


@dataclass(frozen=True)
class ItemResult:
    task: str
    id: str
    category: str
    score: float
    answer: str


@dataclass
class EvaluationResult:
    """What one model scored on one suite, item by item.

    `tasks` maps task name -> category in suite order (kept even if a task had no items scored,
    so scores stay comparable). Scores: a task's accuracy is the mean of its binary item scores;
    a category's score is the mean of its tasks' accuracies (tasks weighted equally); the mean
    general score is the mean over the general categories present.
    """

    suite: str
    digest: str
    tasks: dict[str, str]
    items: list[ItemResult]
    limit: int | None = None
    seconds: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)

    def task_scores(self) -> dict[str, float]:
        totals: dict[str, list[float]] = {task: [] for task in self.tasks}
        for item in self.items:
            totals.setdefault(item.task, []).append(item.score)
        return {task: sum(scores) / len(scores) for task, scores in totals.items() if scores}

    def category_scores(self) -> dict[str, float]:
        by_category: dict[str, list[float]] = {}
        for task, accuracy in self.task_scores().items():
            by_category.setdefault(self.tasks.get(task, TASK_CATEGORY), []).append(accuracy)
        return {c: sum(v) / len(v) for c in ALL_CATEGORIES if (v := by_category.get(c))}

    def mean_general_score(self) -> float | None:
        return mean_general_score(self.category_scores())

    def summary(self, stage: str) -> dict[str, Any]:
        """The common part of the baseline / evaluate stage summaries (docs/contracts.md)."""
        return {
            "stage": stage,
            "scores": {k: round(v, 6) for k, v in self.category_scores().items()},
            "tasks": {k: round(v, 6) for k, v in self.task_scores().items()},
            "items": len(self.items),
        }

    def rescored(self, scores: Mapping[tuple[str, str], float]) -> "EvaluationResult":
        """A copy whose items keyed (task, id) in `scores` carry those scores."""
        items = [ItemResult(i.task, i.id, i.category, scores[(i.task, i.id)], i.answer) if (i.task, i.id) in scores
                 else i for i in self.items]
        return EvaluationResult(self.suite, self.digest, dict(self.tasks), items, self.limit, self.seconds, dict(self.meta))

    def without_tasks(self, names: set[str] | frozenset[str], digest: str) -> "EvaluationResult":
        """A copy without the items of tasks `names`, carrying `digest` (that of the suite without them)."""
        return EvaluationResult(self.suite, digest, {t: c for t, c in self.tasks.items() if t not in names},
                                [i for i in self.items if i.task not in names], self.limit, self.seconds,
                                dict(self.meta))

    # ------------------------------------------------------------------ serialisation

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": RESULTS_FORMAT,
            "suite": self.suite,
            "digest": self.digest,
            "limit": self.limit,
            "seconds": self.seconds,
            "meta": self.meta,
            "tasks": self.tasks,
            "scores": self.category_scores(),
            "taskScores": self.task_scores(),
            "items": [asdict(item) for item in self.items],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, data: str | bytes | Mapping[str, Any]) -> "EvaluationResult":
        document = json.loads(data) if isinstance(data, (str, bytes)) else data
        try:
            return cls(
                suite=document["suite"],
                digest=document["digest"],
                tasks=dict(document["tasks"]),
                items=[ItemResult(**item) for item in document["items"]],
                limit=document.get("limit"),
                seconds=float(document.get("seconds", 0.0)),
                meta=dict(document.get("meta") or {}),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not an evaluation result document ({exc!r})") from exc

    def save(self, path: Path) -> Path:
        """Atomic write (tmp + rename): a crash never leaves half a results file."""
        unscored = [f"{i.task}/{i.id}" for i in self.items if i.score != i.score]  # NaN: not scored yet
        if unscored:
            raise ValueError(f"{len(unscored)} items were never scored (e.g. {unscored[0]}): learned format items "
                             "need the format detector first")
        return atomic.write_text(Path(path), json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: Path) -> "EvaluationResult":
        path = Path(path)
        try:
            return cls.from_json(path.read_text())
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc
