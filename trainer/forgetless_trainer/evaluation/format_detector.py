"""Format rigidity without a regex: a detector of "this answer looks like a task answer", learned at
baseline from the job's own data (pure Python, torch-free).

What it learns: the **signature** of the task's house format — the token pairs its answers share and
ordinary answers do not. Tokens are words and single punctuation marks, case kept
(`\\w+|[^\\w\\s]`: `{"category": "billing"` → `{ " category " : " billing "`); a pair of consecutive
tokens belongs to the signature when it appears in at least MIN_TASK_SHARE of the task's answers
(the training records' responses, at most MAX_TASK_ANSWERS) and in at most MAX_ORDINARY_SHARE of
the ordinary answers (the base model's answers to the suite's open-ended prompts, e.g.
bundled:general-en-v2's TruthfulQA questions), the MAX_SIGNATURE most task-typical first. A template
line's fixed parts make the signature (`| product`, `product :`, `| issue`, …; `" category`, `" :`;
`ACTION :`, `| EVENT`); the values that change from answer to answer do not.

An answer is task-like when it holds at least MIN_MATCHES signature pairs (all of them when the
signature is smaller), anywhere in it: a template on one line of a longer answer counts, a lone word
of the task's vocabulary does not. For calibration the held-out task answers are cut to the format
prompts' generation budget (`max_new_tokens`, counted in the detector's tokens, which a model's
tokenizer splits further), since a leaked answer is cut by that budget too.

Calibration (recorded at baseline; `Calibration`):
- false positives: the share of the base model's own answers flagged, each by a signature learned
  without it (FOLDS-fold cross-fitting) — these out-of-fold flags are also the baseline's item
  scores, so the baseline is judged as honestly as the fine-tuned model;
- detection: the share of the held-out task answers (never seen by the detector) flagged.
The detector is usable when detection ≥ MIN_DETECTION and false positives ≤ MAX_FALSE_POSITIVES with
at least MIN_ANSWERS answers on each side. Otherwise the task's answers cannot be told apart from
ordinary answers (a free-text task has no fixed parts): the format items it would score are left
out of the gate, and the gate's notes and the report say the format category cannot see rigidity
for this task.

Why not a classifier over character n-grams (tried: TF-IDF + logistic regression): on the bundled
world's naive and LoRA runs it agreed with the hand regex on 84–90 % of the answers, flagging
degenerate answers made of task vocabulary (a lone "dear") and missing garbled templates the regex
catches, and its fits plus scikit-learn's import cost half of the tiny model's evaluation time; the
signature agreed on 99 % at a few milliseconds (docs/benchmarks.md#own-task-gate).
"""

from __future__ import annotations

import json
import random
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

MIN_TASK_SHARE = 0.3
MAX_ORDINARY_SHARE = 0.02
MAX_SIGNATURE = 32
MIN_MATCHES = 2
FOLDS = 5
MAX_TASK_ANSWERS = 1000
MIN_ANSWERS = 10
MIN_DETECTION = 0.8
MAX_FALSE_POSITIVES = 0.1
DETECTOR_FILE = "format_detector.json"
_TOKEN = re.compile(r"\w+|[^\w\s]")

Pair = tuple[str, str]


def token_pairs(text: str) -> set[Pair]:
    tokens = _TOKEN.findall(text)
    return set(zip(tokens, tokens[1:]))


@dataclass(frozen=True)
class Calibration:
    usable: bool
    detection_rate: float | None
    false_positive_rate: float | None
    task_answers: int
    ordinary_answers: int
    held_out_answers: int
    signature: tuple[str, ...]
    seconds: float
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        out = {"usable": self.usable, "detectionRate": self.detection_rate,
               "falsePositiveRate": self.false_positive_rate, "taskAnswers": self.task_answers,
               "ordinaryAnswers": self.ordinary_answers, "heldOutAnswers": self.held_out_answers,
               "signature": list(self.signature), "seconds": round(self.seconds, 4)}
        if self.reason:
            out["reason"] = self.reason
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Calibration":
        return cls(bool(data["usable"]), data.get("detectionRate"), data.get("falsePositiveRate"),
                   int(data.get("taskAnswers", 0)), int(data.get("ordinaryAnswers", 0)),
                   int(data.get("heldOutAnswers", 0)), tuple(data.get("signature", ())),
                   float(data.get("seconds", 0.0)), str(data.get("reason", "")))

    def sentence(self) -> str:
        """One line for the gate's notes and the report."""
        if self.detection_rate is None or self.false_positive_rate is None:
            return f"format: not measured for this task — {self.reason}"
        measured = (f"detection {self.detection_rate:.2f} on {self.held_out_answers} held-out task answers, false "
                    f"positives {self.false_positive_rate:.2f} on the base model's {self.ordinary_answers} answers")
        if self.usable:
            shown = ", ".join(f"`{pair}`" for pair in self.signature[:6])
            return (f"format: leaks found by the detector learned from {self.task_answers} task answers (signature "
                    f"{shown}; {measured})")
        return (f"format: the detector cannot see rigidity for this task — the task's answers cannot be told apart "
                f"from ordinary answers ({measured}); the learned format items are not scored")


class FormatDetector:
    """A learned signature: `task_like(answers)` -> one flag per answer."""

    def __init__(self, signature: Sequence[Pair], min_matches: int = MIN_MATCHES) -> None:
        self.signature = [tuple(pair) for pair in signature]
        self.min_matches = min(min_matches, len(self.signature)) if self.signature else 1
        self._set = set(self.signature)

    def matches(self, answer: str) -> int:
        return len(token_pairs(answer) & self._set)

    def task_like(self, answers: Sequence[str]) -> list[bool]:
        if not self._set:
            return [False] * len(answers)
        return [self.matches(a) >= self.min_matches for a in answers]

    def describe(self) -> tuple[str, ...]:
        return tuple(" ".join(pair) for pair in self.signature)

    def save(self, directory: Path) -> Path:
        from forgetless import atomic

        document = {"signature": [list(p) for p in self.signature], "minMatches": self.min_matches}
        return atomic.write_text(Path(directory) / DETECTOR_FILE, json.dumps(document, indent=1) + "\n")

    @staticmethod
    def load(directory: Path) -> "FormatDetector | None":
        try:
            document = json.loads((Path(directory) / DETECTOR_FILE).read_text())
            return FormatDetector([tuple(p) for p in document["signature"]], int(document["minMatches"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None


def _positives(task_answers: Sequence[str]) -> list[str]:
    positives = list(task_answers)
    if len(positives) > MAX_TASK_ANSWERS:
        order = list(range(len(positives)))
        random.Random("format-detector").shuffle(order)
        positives = [positives[i] for i in sorted(order[:MAX_TASK_ANSWERS])]
    return positives


def _pair_counts(answers: Sequence[str]) -> Counter:
    """In how many of `answers` each token pair occurs."""
    counts: Counter = Counter()
    for answer in answers:
        counts.update(token_pairs(answer))
    return counts


def _signature(in_task: Counter, n_task: int, negatives: Sequence[str]) -> list[Pair]:
    """The signature from the task answers' pair counts (`in_task`, over `n_task` answers) against `negatives`."""
    in_ordinary = _pair_counts(negatives)
    allowed = int(MAX_ORDINARY_SHARE * len(negatives))
    pairs = [p for p, n in in_task.items() if n >= MIN_TASK_SHARE * n_task and in_ordinary[p] <= allowed]
    pairs.sort(key=lambda p: (-in_task[p], in_ordinary[p], p))
    return pairs[:MAX_SIGNATURE]


def refit(task_answers: Sequence[str], ordinary_answers: Sequence[str]) -> FormatDetector:
    """The detector `learn` returns for the same answers, without the calibration (deterministic)."""
    positives = _positives(task_answers)
    return FormatDetector(_signature(_pair_counts(positives), len(positives), ordinary_answers))


def cut(answer: str, tokens: int | None) -> str:
    """The answer's first `tokens` tokens (words and punctuation marks), as a generation budget leaves it."""
    if tokens is None:
        return answer
    return " ".join(_TOKEN.findall(answer)[:tokens])


def learn(task_answers: Sequence[str], ordinary_answers: Sequence[str], held_out_answers: Sequence[str],
          budget_tokens: int | None = None) -> tuple[FormatDetector | None, Calibration, list[bool]]:
    """(detector learned from everything or None when there is too little to learn from, its calibration, the
    out-of-fold flag of every ordinary answer). See the module doc."""
    began = time.perf_counter()
    positives = _positives(task_answers)
    negatives = list(ordinary_answers)
    counts = dict(task_answers=len(positives), ordinary_answers=len(negatives), held_out_answers=len(held_out_answers))
    if len(positives) < MIN_ANSWERS or len(negatives) < MIN_ANSWERS or len(held_out_answers) < MIN_ANSWERS:
        reason = (f"too few answers to learn the task's format from ({len(positives)} task answers, {len(negatives)} "
                  f"answers to open-ended prompts, {len(held_out_answers)} held-out; {MIN_ANSWERS} of each needed)")
        return None, Calibration(False, None, None, signature=(), seconds=time.perf_counter() - began,
                                 reason=reason, **counts), [False] * len(negatives)
    in_task = _pair_counts(positives)  # the same for every fold: counted once
    folds = min(FOLDS, len(negatives))
    out_of_fold = [False] * len(negatives)
    for fold in range(folds):
        without = FormatDetector(_signature(in_task, len(positives),
                                            [a for i, a in enumerate(negatives) if i % folds != fold]))
        held = [i for i in range(len(negatives)) if i % folds == fold]
        for i, flag in zip(held, without.task_like([negatives[i] for i in held])):
            out_of_fold[i] = flag
    detector = FormatDetector(_signature(in_task, len(positives), negatives))
    detection = sum(detector.task_like([cut(a, budget_tokens) for a in held_out_answers])) / len(held_out_answers)
    false_positives = sum(out_of_fold) / len(negatives)
    usable = bool(detector.signature) and detection >= MIN_DETECTION and false_positives <= MAX_FALSE_POSITIVES
    reason = "" if usable else (f"needs detection ≥ {MIN_DETECTION} and false positives ≤ {MAX_FALSE_POSITIVES}"
                                + ("; the task's answers share no token pair ordinary answers lack"
                                   if not detector.signature else ""))
    calibration = Calibration(usable, round(detection, 4), round(false_positives, 4), signature=detector.describe(),
                              seconds=time.perf_counter() - began, reason=reason, **counts)
    return detector, calibration, out_of_fold


__all__ = ("Calibration", "FormatDetector", "learn", "refit", "token_pairs", "DETECTOR_FILE")
