"""Format rigidity without a regex: a detector of "this answer looks like a task answer", learned at
baseline from the job's own data (torch-free; scikit-learn).

What it learns. Positives: the task's answers (the training records' responses, at most
MAX_TASK_ANSWERS of them). Negatives: the base model's answers to the suite's open-ended prompts (the
`format_leak` items without a pattern, e.g. bundled:general-en-v2's TruthfulQA questions). Positives
are cut to the longest negative's length, since an answer to a format prompt is cut by the same
generation budget. Every answer also contributes its lines (≥ MIN_LINE characters) and its windows
of WINDOW words with its label, and an answer's score is the highest of its whole text, its lines
and its windows, so a template that appears on one line or in a stretch of a longer answer is found.

Model: character 2–4-grams within word boundaries, case kept (`TfidfVectorizer(analyzer="char_wb",
lowercase=False, sublinear_tf=True)`), and a class-balanced logistic regression. An answer is
task-like when its probability reaches THRESHOLD (0.5).

Calibration (recorded at baseline; `Calibration`):
- false positives: the share of the base model's own answers flagged, each predicted by a classifier
  fitted without it (FOLDS-fold cross-fitting of the logistic regression over one n-gram vocabulary)
  — these out-of-fold flags are also the baseline's item scores, so the baseline is judged as
  honestly as the fine-tuned model;
- detection: the share of the held-out task answers (never seen by the detector) flagged.
The detector is usable when detection ≥ MIN_DETECTION and false positives ≤ MAX_FALSE_POSITIVES with
at least MIN_ANSWERS answers on each side. Otherwise the task's answers cannot be told apart from
ordinary answers: the format items it would score are left out of the gate, and the gate's notes and
the report say the format category cannot see rigidity for this task.
"""

from __future__ import annotations

import pickle
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

THRESHOLD = 0.5
FOLDS = 5
MIN_LINE = 8
WINDOW = 6
MAX_TASK_ANSWERS = 300
MIN_ANSWERS = 10
MIN_DETECTION = 0.8
MAX_FALSE_POSITIVES = 0.1
DETECTOR_FILE = "format_detector.pkl"


@dataclass(frozen=True)
class Calibration:
    usable: bool
    detection_rate: float | None
    false_positive_rate: float | None
    task_answers: int
    ordinary_answers: int
    held_out_answers: int
    threshold: float
    seconds: float
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        out = {"usable": self.usable, "detectionRate": self.detection_rate,
               "falsePositiveRate": self.false_positive_rate, "taskAnswers": self.task_answers,
               "ordinaryAnswers": self.ordinary_answers, "heldOutAnswers": self.held_out_answers,
               "threshold": self.threshold, "seconds": round(self.seconds, 3)}
        if self.reason:
            out["reason"] = self.reason
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Calibration":
        return cls(bool(data["usable"]), data.get("detectionRate"), data.get("falsePositiveRate"),
                   int(data.get("taskAnswers", 0)), int(data.get("ordinaryAnswers", 0)),
                   int(data.get("heldOutAnswers", 0)), float(data.get("threshold", THRESHOLD)),
                   float(data.get("seconds", 0.0)), str(data.get("reason", "")))

    def sentence(self) -> str:
        """One line for the gate's notes and the report."""
        if self.detection_rate is None or self.false_positive_rate is None:
            return f"format: not measured for this task — {self.reason}"
        measured = (f"detection {self.detection_rate:.2f} on {self.held_out_answers} held-out task answers, false "
                    f"positives {self.false_positive_rate:.2f} on the base model's {self.ordinary_answers} answers")
        if self.usable:
            return f"format: leaks found by the detector learned from {self.task_answers} task answers ({measured})"
        return (f"format: the detector cannot see rigidity for this task — the task's answers cannot be told apart "
                f"from ordinary answers ({measured}); the learned format items are not scored")


def _segments(answer: str) -> list[str]:
    """The whole answer, its lines (when it has several) and its windows of WINDOW words (stride WINDOW // 2):
    a house format shows on one line or in a stretch of a longer answer too."""
    lines = [line.strip() for line in answer.splitlines() if len(line.strip()) >= MIN_LINE]
    segments = [answer] + (lines if len(lines) > 1 or (lines and lines[0] != answer.strip()) else [])
    words = answer.split()
    if len(words) > WINDOW:
        step = WINDOW // 2
        segments += [" ".join(words[i:i + WINDOW]) for i in range(0, len(words) - WINDOW + step, step)]
    return segments


class FormatDetector:
    """A fitted detector: `task_like(answers)` -> one flag per answer."""

    def __init__(self, pipeline: Any, max_chars: int, threshold: float = THRESHOLD) -> None:
        self.pipeline = pipeline
        self.max_chars = max_chars
        self.threshold = threshold

    def probabilities(self, answers: Sequence[str]) -> list[float]:
        segments: list[str] = []
        owner: list[int] = []
        for i, answer in enumerate(answers):
            for segment in _segments(answer):
                segments.append(segment)
                owner.append(i)
        best = [0.0] * len(answers)
        if segments:
            for i, p in zip(owner, self.pipeline.predict_proba(segments)[:, 1]):
                best[i] = max(best[i], float(p))
        return best

    def task_like(self, answers: Sequence[str]) -> list[bool]:
        return [p >= self.threshold for p in self.probabilities(answers)]

    def save(self, directory: Path) -> Path:
        from forgetless import atomic

        path = Path(directory) / DETECTOR_FILE
        atomic.write_bytes(path, pickle.dumps(self))
        return path

    @staticmethod
    def load(directory: Path) -> "FormatDetector | None":
        path = Path(directory) / DETECTOR_FILE
        try:
            return pickle.loads(path.read_bytes())
        except (OSError, pickle.UnpicklingError, AttributeError, ImportError, EOFError):
            return None


def _labelled_segments(positives: Sequence[str], negatives: Sequence[str], max_chars: int) -> tuple[list[str], list[int], list[int]]:
    """(segments, labels, owner): every answer's segments with its label; owner = the index of the negative
    answer a segment came from, -1 for positives."""
    texts: list[str] = []
    labels: list[int] = []
    owner: list[int] = []
    for answer in positives:
        for segment in _segments(answer[:max_chars]):
            texts.append(segment)
            labels.append(1)
            owner.append(-1)
    for index, answer in enumerate(negatives):
        for segment in _segments(answer):
            texts.append(segment)
            labels.append(0)
            owner.append(index)
    return texts, labels, owner


def _vectorizer() -> Any:
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), lowercase=False, sublinear_tf=True,
                           max_features=50_000)


def _classifier() -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(class_weight="balanced", max_iter=2000, solver="liblinear")


def _fit(positives: Sequence[str], negatives: Sequence[str], max_chars: int) -> FormatDetector:
    from sklearn.pipeline import make_pipeline

    texts, labels, _ = _labelled_segments(positives, negatives, max_chars)
    pipeline = make_pipeline(_vectorizer(), _classifier())
    pipeline.fit(texts, labels)
    return FormatDetector(pipeline, max_chars)


def _out_of_fold(positives: Sequence[str], negatives: Sequence[str], max_chars: int, folds: int) -> list[bool]:
    """Each negative answer's flag from a classifier fitted without it (its fold left out). The n-gram
    vocabulary and weights are computed once over all segments (no labels are used there); only the
    logistic regression is fitted per fold."""
    import numpy as np

    texts, labels, owner = _labelled_segments(positives, negatives, max_chars)
    features = _vectorizer().fit_transform(texts)
    labels_array, owner_array = np.asarray(labels), np.asarray(owner)
    flags = [False] * len(negatives)
    for fold in range(folds):
        held = (owner_array >= 0) & (owner_array % folds == fold)
        classifier = _classifier().fit(features[~held], labels_array[~held])
        rows = np.flatnonzero(held)
        for row, p in zip(rows, classifier.predict_proba(features[rows])[:, 1]):
            if p >= THRESHOLD:
                flags[int(owner_array[row])] = True
    return flags


def _positives(task_answers: Sequence[str]) -> list[str]:
    positives = list(task_answers)
    if len(positives) > MAX_TASK_ANSWERS:
        order = list(range(len(positives)))
        random.Random("format-detector").shuffle(order)
        positives = [positives[i] for i in sorted(order[:MAX_TASK_ANSWERS])]
    return positives


def refit(task_answers: Sequence[str], ordinary_answers: Sequence[str]) -> FormatDetector:
    """The detector `learn` returns for the same answers, without the calibration (deterministic)."""
    return _fit(_positives(task_answers), ordinary_answers, max(16, max(len(a) for a in ordinary_answers)))


def learn(task_answers: Sequence[str], ordinary_answers: Sequence[str], held_out_answers: Sequence[str],
          ) -> tuple[FormatDetector | None, Calibration, list[bool]]:
    """(detector fitted on everything or None when it cannot be fitted, its calibration, the out-of-fold flag of
    every ordinary answer). See the module doc."""
    began = time.perf_counter()
    positives = _positives(task_answers)
    negatives = list(ordinary_answers)
    counts = dict(task_answers=len(positives), ordinary_answers=len(negatives), held_out_answers=len(held_out_answers))
    if len(positives) < MIN_ANSWERS or len(negatives) < MIN_ANSWERS or len(held_out_answers) < MIN_ANSWERS:
        reason = (f"too few answers to learn the task's format from ({len(positives)} task answers, {len(negatives)} "
                  f"answers to open-ended prompts, {len(held_out_answers)} held-out; {MIN_ANSWERS} of each needed)")
        return None, Calibration(False, None, None, threshold=THRESHOLD, seconds=time.perf_counter() - began,
                                 reason=reason, **counts), [False] * len(negatives)
    max_chars = max(16, max(len(a) for a in negatives))
    out_of_fold = _out_of_fold(positives, negatives, max_chars, min(FOLDS, len(negatives)))
    detector = _fit(positives, negatives, max_chars)
    detection = sum(detector.task_like([a[:max_chars] for a in held_out_answers])) / len(held_out_answers)
    false_positives = sum(out_of_fold) / len(negatives)
    usable = detection >= MIN_DETECTION and false_positives <= MAX_FALSE_POSITIVES
    reason = "" if usable else (f"needs detection ≥ {MIN_DETECTION} and false positives ≤ {MAX_FALSE_POSITIVES}")
    calibration = Calibration(usable, round(detection, 4), round(false_positives, 4), threshold=THRESHOLD,
                              seconds=time.perf_counter() - began, reason=reason, **counts)
    return detector, calibration, out_of_fold


__all__ = ("Calibration", "FormatDetector", "learn", "refit", "DETECTOR_FILE")
