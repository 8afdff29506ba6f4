"""The job's own task as the gate's `task` category: held-out records of its task data, scored by a
scorer that fits the answers (torch-free).

Which records are held out (`held_out_split`, the same function in the baseline, train and evaluate
stages, so a record scored is never a record trained on):
- the task source is a directory with a `test.jsonl` beside `train.jsonl`: the first
  `regression.task.maxItems` records of `test.jsonl` (training reads only `train*.jsonl`,
  forgetless_trainer.data);
- otherwise a deterministic share of the task records, `heldOutFraction` of them, at least
  HELD_OUT_MIN_ITEMS and at most `maxItems`, chosen by a shuffle seeded with a fixed key (not
  `training.seed`: changing the seed must not change the test set or invalidate the baseline) and
  removed from the training data before anything else (the validation split included).
Too few records to hold out HELD_OUT_MIN_ITEMS and still train on as many is an input error that
names `dataset.task` and the number needed.

Which scorer (`choose_scorer`, overridable with `regression.task.scorer`):
- `json_match` when ≥ 90 % of the held-out answers parse as a JSON object or array: the answer's
  JSON must equal the target's, key order, case and whitespace of strings ignored;
- `exact_match` when ≥ 90 % of them are one line of at most 24 words: normalised exact match;
- `similarity` otherwise (free text): token F1 (SQuAD's) ≥ `minSimilarity` (0.5).

Which wins when the suite has a task category of its own: the job's held-out records
(`regression.task.source: HeldOut`, the default). The job's data is by definition the task being
fine-tuned; a suite's task category is right only when the suite was written for that task, and a
suite written for one task and reused for another (general-en-v1's support_triage on a user's own
data) reported "no task gain" for a task that was learned. The suite's task items are left out
(said in the gate's notes); `source: Suite` keeps them and holds nothing out.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from forgetless import locations
from forgetless.api.schema import HELD_OUT_MIN_ITEMS, FineTuneJobSpec
from forgetless.errors import StageError
from forgetless.lifecycle import TASK_CATEGORY
from forgetless.suites import Suite, SuiteTask

OWN_TASK = "own_task"
"""The suite task name of the job's held-out records."""
TEST_FILE = "test.jsonl"
SPLIT_KEY = "forgetless-held-out-v1"
SHORT_WORDS = 24
SHARE_NEEDED = 0.9
SCORER_NAMES = {"ExactMatch": "exact_match", "JsonMatch": "json_match", "Similarity": "similarity"}


@dataclass(frozen=True)
class HeldOutSplit:
    """The task records set aside for scoring, and the ones left to train on."""

    held_out: list[Any]
    """forgetless_trainer.data.Example, file order."""
    train: list[Any]
    source: str
    """`test.jsonl` (the file beside train.jsonl) or `split` (set aside from the task data)."""
    records: int
    """Task records read for training before the split (split) / in train*.jsonl (test.jsonl)."""
    notes: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        """What status and the report say of the split."""
        return {"source": self.source, "heldOut": len(self.held_out), "trainRecords": len(self.train)}

    def sentence(self) -> str:
        if self.source == TEST_FILE:
            return (f"task: {len(self.held_out)} held-out records from the task data's {TEST_FILE} "
                    f"(training reads train*.jsonl: {len(self.train)} records)")
        return (f"task: {len(self.held_out)} of the {self.records} task records set aside before training "
                f"(never trained on), {len(self.train)} left to train on")


def uses_held_out(spec: FineTuneJobSpec) -> bool:
    """The job's task category comes from its own held-out records (and text data has no answers)."""
    return spec.regression.task.source == "HeldOut" and spec.dataset.format != "text"


def _task_path(spec: FineTuneJobSpec, base_dir: Path | None) -> Path:
    source = spec.dataset.task
    try:
        return locations.resolve_path(source.path, pvc=source.pvc, config_map=source.config_map, kind="data",
                                      base_dir=base_dir)
    except LookupError as exc:
        raise StageError(f"dataset.task.path: {exc}") from exc


def held_out_count(records: int, fraction: float, max_items: int) -> int:
    """How many of `records` are set aside: round(fraction·records), at least HELD_OUT_MIN_ITEMS, at most max_items."""
    return min(max_items, max(HELD_OUT_MIN_ITEMS, math.floor(fraction * records + 0.5)))


def held_out_split(spec: FineTuneJobSpec, base_dir: Path | None = None) -> HeldOutSplit:
    """The held-out records and the training records of the job's task data (module doc). Raises StageError."""
    from forgetless_trainer import data as D

    settings = spec.regression.task
    path = _task_path(spec, base_dir)
    test_file = path / TEST_FILE
    if path.is_dir() and (path / "train.jsonl").is_file() and test_file.is_file():
        test = D.read_jsonl(test_file, spec.dataset.format)
        if len(test) < HELD_OUT_MIN_ITEMS:
            raise StageError(
                f"dataset.task: {test_file} holds {len(test)} records; the task score needs at least "
                f"{HELD_OUT_MIN_ITEMS} (add records to it, or remove it to set a share of train.jsonl aside)"
            )
        train = D.read_source(spec.dataset.task, spec.dataset.format, field_name="dataset.task", base_dir=base_dir)
        return HeldOutSplit(test[: settings.max_items], train, TEST_FILE, len(train))
    records = D.read_source(spec.dataset.task, spec.dataset.format, field_name="dataset.task", base_dir=base_dir)
    n_held = held_out_count(len(records), settings.held_out_fraction, settings.max_items)
    needed = n_held + HELD_OUT_MIN_ITEMS
    if len(records) < needed:
        raise StageError(
            f"dataset.task: {len(records)} records are too few to hold out {n_held} for the task score "
            f"(regression.task) and train on at least {HELD_OUT_MIN_ITEMS}: give at least {needed} records, or a "
            f"{TEST_FILE} of at least {HELD_OUT_MIN_ITEMS} records beside train.jsonl, or set "
            "regression.task.source: Suite to score the suite's own task category"
        )
    order = list(range(len(records)))
    random.Random(SPLIT_KEY).shuffle(order)
    chosen = set(order[:n_held])
    held = [r for i, r in enumerate(records) if i in chosen]
    train = [r for i, r in enumerate(records) if i not in chosen]
    return HeldOutSplit(held, train, "split", len(records))


def training_records(spec: FineTuneJobSpec, base_dir: Path | None = None) -> list[Any]:
    """The task records the train stage may train on: all of them, less the held-out ones."""
    if uses_held_out(spec):
        return held_out_split(spec, base_dir).train
    from forgetless_trainer import data as D

    return D.read_source(spec.dataset.task, spec.dataset.format, field_name="dataset.task", base_dir=base_dir)


# --------------------------------------------------------------------------- the scorer


def _is_json(text: str) -> bool:
    try:
        return isinstance(json.loads(text), (dict, list))
    except ValueError:
        return False


def choose_scorer(targets: Sequence[str], override: str = "Auto") -> tuple[str, str]:
    """(scorer name, why) for answers like `targets` (module doc)."""
    if override != "Auto":
        return SCORER_NAMES[override], f"regression.task.scorer: {override}"
    n = max(len(targets), 1)
    json_share = sum(_is_json(t.strip()) for t in targets) / n
    if json_share >= SHARE_NEEDED:
        return "json_match", f"{json_share:.0%} of the answers are JSON: structural match"
    short_share = sum("\n" not in t.strip() and len(t.split()) <= SHORT_WORDS for t in targets) / n
    if short_share >= SHARE_NEEDED:
        return "exact_match", f"{short_share:.0%} of the answers are one line of ≤ {SHORT_WORDS} words: exact match"
    return "similarity", (f"free text ({short_share:.0%} short, {json_share:.0%} JSON): token F1 ≥ "
                          "regression.task.minSimilarity")


def _max_new_tokens(targets: Sequence[str]) -> int:
    """Room for the longest answer (≈ 3 characters a token, a margin, at most 512): a right answer ends
    on its own, so the budget only bounds a wrong, rambling one."""
    longest = max((len(t) for t in targets), default=16)
    return min(512, math.ceil(longest / 3) + 8)


def item_of(example: Any, index: int) -> dict[str, Any]:
    """A held-out Example as a suite item: prompt (the turns before the answer joined), target, and the
    chat turns when there is more than one user turn or a system prompt."""
    item: dict[str, Any] = {"id": f"{OWN_TASK}-{index:05d}", "prompt": example.prompt, "target": example.response}
    turns = getattr(example, "messages", None)
    if turns:
        last = max(i for i, (role, _) in enumerate(turns) if role == "assistant")
        before = [list(turn) for turn in turns[:last]]
        if len(before) > 1:
            item["messages"] = before
        else:
            item["prompt"] = before[0][1]
    return item


def own_task(spec: FineTuneJobSpec, base_dir: Path | None = None) -> tuple[HeldOutSplit, SuiteTask, str]:
    """(the held-out split, the `task` category's suite task made of it, the note saying where its items come
    from and how they are scored)."""
    split = held_out_split(spec, base_dir)
    targets = [e.response for e in split.held_out]
    scorer, why = choose_scorer(targets, spec.regression.task.scorer)
    options = {"min_similarity": spec.regression.task.min_similarity} if scorer == "similarity" else {}
    items = tuple(item_of(e, i) for i, e in enumerate(split.held_out))
    task = SuiteTask(OWN_TASK, TASK_CATEGORY, scorer, _max_new_tokens(targets), options, items)
    return split, task, f"{split.sentence()}; scored by {scorer} ({why})"


def compose_suite(suite: Suite, spec: FineTuneJobSpec, base_dir: Path | None = None) -> tuple[Suite, HeldOutSplit | None, list[str]]:
    """The suite the job is gated on: the regression suite with the job's own held-out task as its `task`
    category (its own task tasks left out) under `source: HeldOut`; (suite, split or None, notes)."""
    if not uses_held_out(spec):
        why = ("dataset.format text has no answers to score" if spec.dataset.format == "text"
               else "regression.task.source: Suite")
        has_task = any(t.category == TASK_CATEGORY for t in suite.tasks)
        note = (f"task: the suite's own task category ({why})" if has_task
                else f"task: not scored — {why} and the suite {suite.name} has no task category")
        return suite, None, [note]
    split, task, note = own_task(spec, base_dir)
    dropped = [t.name for t in suite.tasks if t.category == TASK_CATEGORY]
    notes = [note]
    if dropped:
        notes.append(f"task: the suite's own task ({', '.join(dropped)}) is not scored — the job's held-out records "
                     "are its task (regression.task.source: Suite keeps the suite's)")
    tasks = tuple(t for t in suite.tasks if t.category != TASK_CATEGORY) + (task,)
    return suite.with_tasks(tasks), split, notes
