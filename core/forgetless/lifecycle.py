"""The lifecycle vocabulary of a FineTuneJob: one home, imported by the schema, the operator, the
trainer and the local runner (no other module defines these).

- the stages a job runs, in order, and the `status.phase` shown while each one runs;
- the phases, and which of them are terminal;
- the gate's verdicts, and which of them promote the model;
- the five general capability categories plus the task category, and the mean general score.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Optional

STAGES = ("baseline", "train", "evaluate")
STAGE_PHASE = {"baseline": "Baseline", "train": "Training", "evaluate": "Evaluating"}

PHASES = ("Pending", "Suspended", "Baseline", "Training", "Evaluating", "Succeeded", "Blocked", "Failed")
TERMINAL_PHASES = ("Succeeded", "Blocked", "Failed")

GATE_VERDICTS = ("Passed", "Warned", "Rescued", "Failed", "NoTaskGain")
# the only verdicts under which a model is promoted; Rescued: the gate blocked the fine-tuned model and
# regression.rescue found (and confirmed) an interpolation between it and the base that passes
PROMOTING_VERDICTS = ("Passed", "Warned", "Rescued")

CATEGORIES = ("instruction_following", "format", "knowledge", "reasoning", "safety")
TASK_CATEGORY = "task"  # the target task's own score: the gain the fine-tune must show
ALL_CATEGORIES = CATEGORIES + (TASK_CATEGORY,)


def mean_general_score(scores: Mapping[str, float], among: Optional[Iterable[str]] = None) -> Optional[float]:
    """The unweighted mean over the general categories present in `scores` (the task excluded), or
    only over those also in `among` (e.g. the categories a baseline and a final run both scored);
    None when none is present. The gate's mean drop is the drop of this mean."""
    allowed = set(among) if among is not None else None
    general = [float(scores[c]) for c in CATEGORIES
               if scores.get(c) is not None and (allowed is None or c in allowed)]
    return sum(general) / len(general) if general else None


def phase_of_verdict(verdict: str) -> str:
    """The terminal phase a finished job takes for its gate verdict."""
    return "Succeeded" if verdict in PROMOTING_VERDICTS else "Blocked"
