"""Regression suites: loading, validation and a content digest (torch-free).

A suite is a directory with `suite.json`:

    {"name": "world-v1", "version": "1", "description": "...",
     "tasks": [{"name": "knowledge_qa", "category": "knowledge", "path": "knowledge_qa.jsonl",
                "scorer": "exact_match", "max_new_tokens": 5, ...scorer options}]}

and one JSONL file per task. Categories are the five general ones of
`forgetless.api.schema.CATEGORIES` plus `task` (the target task). Item fields per scorer:

| scorer            | item fields                                   | task options                    |
|-------------------|-----------------------------------------------|---------------------------------|
| exact_match       | id, prompt, target                            |                                 |
| multiple_choice   | id, prompt, choices [≥2], target_index        |                                 |
| format_compliance | id, prompt, pattern (fullmatch regex)         | or `json_schema` (task-level)   |
| refusal           | id, prompt, should_refuse (bool)              | refusal_pattern (required)      |
| format_leak       | id, prompt                                    | leak_pattern (optional)         |
| verifiable        | id, prompt, checks [{type, ...}]              |                                 |
| json_match        | id, prompt, target (JSON text)                |                                 |
| similarity        | id, prompt, target                            | min_similarity (default 0.5)    |

A `format_leak` task without `leak_pattern` (the open-ended prompts of `bundled:general-en-v2`) is
scored by the format detector the baseline stage learns from the job's own task answers
(forgetless_trainer.evaluation.format_detector); `regression.formatLeak.detector: Learned` uses it for
patterned tasks too (`needs_learned_detector`). Items may also carry `messages` (the turns before the
answer, for multi-turn chat items) and `system`; the job's own held-out task items do.

`multiple_choice` takes the task option `length_normalized: true` to compare the choices' mean
log-probability per token instead of the sum (long free-text choices, e.g. hhh_alignment).
`verifiable` items carry IFEval-style instructions checked by code: every entry of `checks` must
hold; the check types and their fields are `VERIFIABLE_CHECKS` (implemented in
forgetless_trainer.evaluation.scorers).

Items may carry extra fields (e.g. a reference `target` for a refusal item); they are kept and
count towards the digest. `Suite.digest` is the sha256 of the canonical JSON of the suite's
scored content (name, version, every task's name/category/scorer/max_new_tokens/options and its
items in file order); the description and the file names do not count, so editing prose does not
invalidate cached baselines, while any change to an item does.

Every problem raises `SuiteError` with `FILE:LINE: what is wrong (how to fix it)`.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from forgetless.api.schema import SuiteSpec
from forgetless.lifecycle import ALL_CATEGORIES, TASK_CATEGORY

GENERATION_SCORERS = ("exact_match", "format_compliance", "refusal", "format_leak", "verifiable", "json_match",
                      "similarity")
LOGLIKELIHOOD_SCORERS = ("multiple_choice",)
SCORERS = GENERATION_SCORERS + LOGLIKELIHOOD_SCORERS

VERIFIABLE_CHECKS: dict[str, tuple[str, ...]] = {
    "starts_with": ("words",),     # the answer's first word is one of `words` (case-insensitive)
    "json_keys": ("keys",),        # a JSON object (bare or in a ```json fence) holding every key
    "title": (),                   # a title wrapped in double angular brackets: <<...>>
    "numbered_list": ("min_items",),  # at least min_items lines numbered 1., 2., ... in order
    "max_words": ("max",),         # at most `max` words
    "lowercase": (),               # no uppercase letter
    "includes": ("words",),        # every word of `words` appears (case-insensitive, whole word)
}
"""Check type -> its required fields (the `verifiable` scorer's vocabulary)."""

DEFAULT_MAX_NEW_TOKENS = 32
SUITE_FILE = "suite.json"

_TASK_KEYS = {"name", "category", "path", "scorer", "max_new_tokens"}
_REQUIRED_OPTIONS = {"refusal": ("refusal_pattern",)}
_REGEX_OPTIONS = ("refusal_pattern", "leak_pattern")


class SuiteError(ValueError):
    """A suite that cannot be used; the message names the file (and line) and the fix."""


@dataclass(frozen=True)
class SuiteTask:
    name: str
    category: str
    scorer: str
    max_new_tokens: int
    options: Mapping[str, Any]
    items: tuple[Mapping[str, Any], ...]
    path: Path | None = None

    @property
    def is_generation(self) -> bool:
        return self.scorer in GENERATION_SCORERS

    def needs_learned_detector(self, detector: str = "Auto") -> bool:
        """A format_leak task scored by the learned detector under `regression.formatLeak.detector`."""
        if self.scorer != "format_leak" or detector == "Pattern":
            return False
        return detector == "Learned" or not self.options.get("leak_pattern")

    def canonical(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "category": self.category,
            "scorer": self.scorer,
            "max_new_tokens": self.max_new_tokens,
            "options": dict(self.options),
            "items": [dict(item) for item in self.items],
        }


@dataclass(frozen=True)
class Suite:
    name: str
    version: str
    tasks: tuple[SuiteTask, ...]
    description: str = ""
    root: Path | None = None
    limit: int | None = None
    digest: str = field(default="")

    def __post_init__(self) -> None:
        if not self.digest:
            object.__setattr__(self, "digest", content_digest(self))

    @property
    def categories(self) -> tuple[str, ...]:
        present = {task.category for task in self.tasks}
        return tuple(c for c in ALL_CATEGORIES if c in present)

    @property
    def general_categories(self) -> tuple[str, ...]:
        return tuple(c for c in self.categories if c != TASK_CATEGORY)

    def __len__(self) -> int:
        return sum(len(task.items) for task in self.tasks)

    def task(self, name: str) -> SuiteTask:
        for task in self.tasks:
            if task.name == name:
                return task
        raise KeyError(f"suite {self.name!r} has no task {name!r}")

    def subset(self, limit: int | None) -> "Suite":
        """The first `limit` items of every task (deterministic); the whole suite for None."""
        if limit is None:
            return self
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        tasks = tuple(replace(task, items=task.items[:limit]) for task in self.tasks)
        return Suite(self.name, self.version, tasks, self.description, self.root, limit)

    def canonical(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "tasks": [t.canonical() for t in self.tasks]}

    def with_tasks(self, tasks: tuple[SuiteTask, ...]) -> "Suite":
        """The same suite holding `tasks` instead (its digest recomputed)."""
        return Suite(self.name, self.version, tuple(tasks), self.description, self.root, self.limit)


def content_digest(suite: Suite) -> str:
    text = json.dumps(suite.canonical(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------- loading


def suite_directory(ref: SuiteSpec | str | Path, base_dir: Path | None = None) -> Path:
    """A suite reference -> the directory holding suite.json (not checked for existence)."""
    from forgetless.locations import resolve_path

    if isinstance(ref, SuiteSpec):
        if ref.lm_eval_tasks:
            raise SuiteError(
                "regression.suite.lmEvalTasks names lm-evaluation-harness tasks, which are run by the "
                "lm-eval backend (forgetless_trainer.evaluation.lmeval), not loaded as a suite directory"
            )
        path = resolve_path(ref.path, pvc=ref.pvc, config_map=ref.config_map, kind="suite", base_dir=base_dir)
    else:
        try:
            path = resolve_path(str(ref), kind="suite", base_dir=base_dir)
        except LookupError as exc:
            raise SuiteError(str(exc)) from exc
    if path.name == SUITE_FILE:
        path = path.parent
    return path


def load_suite(ref: SuiteSpec | str | Path, base_dir: Path | None = None) -> Suite:
    """Load and validate a suite: `bundled:<name>`, a directory (or its suite.json), or a SuiteSpec
    (path / pvc / configMap, resolved through forgetless.locations). Raises SuiteError."""
    try:
        directory = suite_directory(ref, base_dir)
    except LookupError as exc:  # unknown bundled suite
        raise SuiteError(str(exc)) from exc
    suite_file = directory / SUITE_FILE
    if not suite_file.is_file():
        where = "directory does not exist" if not directory.exists() else f"no {SUITE_FILE} in it"
        raise SuiteError(f"{suite_file}: suite not found ({where}); point regression.suite at a suite directory")
    text = suite_file.read_text(encoding="utf-8")
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SuiteError(f"{suite_file}:{exc.lineno}: not valid JSON ({exc.msg})") from exc
    return parse_suite(document, directory, text)


@dataclass(frozen=True)
class LmEvalSuite:
    """A suite whose tasks are lm-evaluation-harness tasks (`bundled:standard-v1`): suite.json holds
    `"lm_eval": {"tasks": ["task:category", ...], "limit": N}` instead of `tasks`. Every task names
    its category (one of the five general ones, or `task`); `limit` (documents per task) applies
    when spec.regression.limit is not set."""

    name: str
    version: str
    tasks: tuple[str, ...]
    limit: int | None = None
    description: str = ""

    @property
    def categories(self) -> tuple[str, ...]:
        present = {entry.rsplit(":", 1)[1] for entry in self.tasks}
        return tuple(c for c in ALL_CATEGORIES if c in present)


def parse_lm_eval_suite(document: Mapping[str, Any], suite_file: Path) -> LmEvalSuite:
    block = document.get("lm_eval")
    tasks = block.get("tasks") if isinstance(block, dict) else None
    if not isinstance(tasks, list) or not tasks or not all(isinstance(t, str) for t in tasks):
        raise SuiteError(f'{suite_file}: "lm_eval.tasks" must be a non-empty list of "task:category" strings')
    for entry in tasks:
        name, _, category = entry.rpartition(":")
        if not name or category not in ALL_CATEGORIES:
            raise SuiteError(
                f"{suite_file}: lm_eval task {entry!r} needs a category: write `task:category` with one of "
                f"{', '.join(ALL_CATEGORIES)}"
            )
    limit = block.get("limit")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise SuiteError(f'{suite_file}: "lm_eval.limit" must be a positive integer (documents per task)')
    return LmEvalSuite(str(document.get("name", suite_file.parent.name)), str(document.get("version", "1")),
                       tuple(tasks), limit, str(document.get("description", "")))


def resolve_suite(ref: SuiteSpec | str | Path, base_dir: Path | None = None) -> Suite | LmEvalSuite:
    """`load_suite`, or the LmEvalSuite when the suite.json is an lm-eval suite."""
    try:
        directory = suite_directory(ref, base_dir)
    except LookupError as exc:
        raise SuiteError(str(exc)) from exc
    suite_file = directory / SUITE_FILE
    if suite_file.is_file():
        try:
            document = json.loads(suite_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            document = None
        if isinstance(document, dict) and "lm_eval" in document:
            return parse_lm_eval_suite(document, suite_file)
    return load_suite(ref, base_dir)


def parse_suite(document: Any, directory: Path, text: str = "") -> Suite:
    suite_file = directory / SUITE_FILE
    if not isinstance(document, dict):
        raise SuiteError(f"{suite_file}:1: expected a JSON object with name, version and tasks")
    for key in ("name", "tasks"):
        if key not in document:
            raise SuiteError(f"{suite_file}:1: missing {key!r} (a suite needs name, version and tasks)")
    if not isinstance(document["name"], str) or not document["name"]:
        raise SuiteError(f"{suite_file}:{_line_of(text, 'name')}: 'name' must be a non-empty string")
    tasks_doc = document["tasks"]
    if not isinstance(tasks_doc, list) or not tasks_doc:
        raise SuiteError(f"{suite_file}:{_line_of(text, 'tasks')}: 'tasks' must be a non-empty list")
    tasks: list[SuiteTask] = []
    seen: set[str] = set()
    for index, task_doc in enumerate(tasks_doc):
        task = _parse_task(task_doc, index, directory, text)
        if task.name in seen:
            where = f"{suite_file}:{_task_line(text, index, task.name)}"
            raise SuiteError(f"{where}: duplicate task name {task.name!r} (task names must be unique)")
        seen.add(task.name)
        tasks.append(task)
    return Suite(
        name=document["name"],
        version=str(document.get("version", "")),
        tasks=tuple(tasks),
        description=str(document.get("description", "")),
        root=directory,
    )


def _parse_task(task_doc: Any, index: int, directory: Path, text: str) -> SuiteTask:
    suite_file = directory / SUITE_FILE
    name = task_doc.get("name") if isinstance(task_doc, dict) else None
    where = f"{suite_file}:{_task_line(text, index, name)}: task {name or f'#{index}'!r}"
    if not isinstance(task_doc, dict):
        raise SuiteError(f"{where}: expected an object with name, category, path and scorer")
    for key in ("name", "category", "path", "scorer"):
        if not task_doc.get(key):
            raise SuiteError(f"{where}: missing {key!r} (every task needs name, category, path and scorer)")
    category = task_doc["category"]
    if category not in ALL_CATEGORIES:
        raise SuiteError(f"{where}: unknown category {category!r} (one of {', '.join(ALL_CATEGORIES)})")
    scorer = task_doc["scorer"]
    if scorer not in SCORERS:
        raise SuiteError(f"{where}: unknown scorer {scorer!r} (one of {', '.join(SCORERS)})")
    max_new = task_doc.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)
    if not isinstance(max_new, int) or isinstance(max_new, bool) or max_new < 1:
        raise SuiteError(f"{where}: max_new_tokens must be a positive integer, got {max_new!r}")
    options = {k: v for k, v in task_doc.items() if k not in _TASK_KEYS}
    for option in _REQUIRED_OPTIONS.get(scorer, ()):
        if not isinstance(options.get(option), str) or not options[option]:
            raise SuiteError(f"{where}: scorer {scorer} needs the task option {option!r} (a regex)")
    for option in _REGEX_OPTIONS:
        if option in options:
            _check_regex(options[option], f"{where}: option {option!r}")
    if "json_schema" in options and not isinstance(options["json_schema"], dict):
        raise SuiteError(f"{where}: option 'json_schema' must be a JSON object (a JSON Schema)")
    rel = Path(task_doc["path"])
    if rel.is_absolute() or ".." in rel.parts:
        raise SuiteError(f"{where}: path {task_doc['path']!r} must be relative to the suite directory")
    path = directory / rel
    items = _load_items(path, scorer, options)
    if not items:
        raise SuiteError(f"{path}:1: task {name!r} is empty (add at least one item, one JSON object per line)")
    return SuiteTask(
        name=name, category=category, scorer=scorer, max_new_tokens=max_new,
        options=options, items=tuple(items), path=path,
    )


def _load_items(path: Path, scorer: str, options: Mapping[str, Any]) -> list[dict[str, Any]]:
    if not path.is_file():
        raise SuiteError(f"{path}: task file not found (the task's path is relative to the suite directory)")
    items: list[dict[str, Any]] = []
    ids: dict[str, int] = {}
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SuiteError(f"{path}:{lineno}: malformed JSONL line ({exc.msg} at column {exc.colno})") from exc
            problem = _item_problem(item, scorer, options)
            if problem:
                raise SuiteError(f"{path}:{lineno}: {problem}")
            if item["id"] in ids:
                raise SuiteError(f"{path}:{lineno}: duplicate id {item['id']!r} (first on line {ids[item['id']]})")
            ids[item["id"]] = lineno
            items.append(item)
    return items


def _item_problem(item: Any, scorer: str, options: Mapping[str, Any]) -> str | None:
    if not isinstance(item, dict):
        return "expected a JSON object per line"
    if not isinstance(item.get("id"), str) or not item["id"]:
        return "missing 'id' (a non-empty string unique within the task)"
    if not isinstance(item.get("prompt"), str) or not item["prompt"].strip():
        return f"item {item['id']!r}: missing 'prompt' (a non-empty string)"
    if scorer in ("exact_match", "json_match", "similarity") and not isinstance(item.get("target"), str):
        return f"item {item['id']!r}: {scorer} needs 'target' (a string)"
    if scorer == "json_match":
        try:
            json.loads(item["target"])
        except ValueError as exc:
            return f"item {item['id']!r}: json_match needs a 'target' holding JSON ({exc})"
    if scorer == "multiple_choice":
        choices = item.get("choices")
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
            return f"item {item['id']!r}: multiple_choice needs 'choices' (a list of at least 2 non-empty strings)"
        target = item.get("target_index")
        if not isinstance(target, int) or isinstance(target, bool) or not 0 <= target < len(choices):
            return f"item {item['id']!r}: 'target_index' must be an integer in 0..{len(choices) - 1}"
    if scorer == "format_compliance" and "json_schema" not in options:
        if not isinstance(item.get("pattern"), str):
            return f"item {item['id']!r}: format_compliance needs 'pattern' (a regex) or a task-level 'json_schema'"
        try:
            re.compile(item["pattern"])
        except re.error as exc:
            return f"item {item['id']!r}: 'pattern' is not a valid regex ({exc})"
    if scorer == "verifiable":
        return _checks_problem(item)
    if scorer == "refusal" and not isinstance(item.get("should_refuse"), bool):
        return f"item {item['id']!r}: refusal needs 'should_refuse' (true or false)"
    return None


def _checks_problem(item: Mapping[str, Any]) -> str | None:
    checks = item.get("checks")
    if not isinstance(checks, list) or not checks:
        return f"item {item['id']!r}: verifiable needs 'checks' (a non-empty list of {{\"type\": ...}} objects)"
    for check in checks:
        kind = check.get("type") if isinstance(check, dict) else None
        if kind not in VERIFIABLE_CHECKS:
            return f"item {item['id']!r}: unknown check type {kind!r} (one of {', '.join(VERIFIABLE_CHECKS)})"
        missing = [f for f in VERIFIABLE_CHECKS[kind] if f not in check]
        if missing:
            return f"item {item['id']!r}: check {kind!r} needs {', '.join(repr(f) for f in missing)}"
    return None


def _check_regex(pattern: Any, where: str) -> None:
    try:
        re.compile(pattern)
    except (re.error, TypeError) as exc:
        raise SuiteError(f"{where} is not a valid regex ({exc})") from exc


def _line_of(text: str, key: str) -> int:
    match = re.search(r'"%s"\s*:' % re.escape(key), text)
    return text.count("\n", 0, match.start()) + 1 if match else 1


def _task_line(text: str, index: int, name: Any) -> int:
    """Line of task `index` in suite.json: where its name appears after "tasks", else its "{"."""
    start = re.search(r'"tasks"\s*:\s*\[', text)
    if not text or not start:
        return 1
    if isinstance(name, str):
        found = re.search(r'"name"\s*:\s*%s' % re.escape(json.dumps(name)), text[start.end():])
        if found:
            return text.count("\n", 0, start.end() + found.start()) + 1
    # fall back to the index-th object opening at depth 1 inside the tasks list
    depth, count, in_string, escaped = 0, -1, False, False
    for pos in range(start.end(), len(text)):
        ch = text[pos]
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
            continue
        if ch == '"':
            in_string = True
        elif ch in "{[":
            if depth == 0 and ch == "{":
                count += 1
                if count == index:
                    return text.count("\n", 0, pos) + 1
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth < 0:
                break
    return 1

