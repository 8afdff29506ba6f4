"""Pipeline stages: baseline → train → evaluate.

`run_stage(name, job, workdir)` is what both `forgetless stage NAME` (trainer pods) and
`forgetless run` (in-process) call. Each stage lives in `forgetless_trainer.stages.<name>`: a
`Stage` (base.py) registered in `REGISTRY` (the one registry shape, forgetless.registry), built with
`from_spec(job, extras)` and run with `run(workdir) -> dict`; imported lazily so this module stays light.
After a stage returns, rank 0 writes its full summary to `WORKDIR/<stage>/summary.json` (the work
dir is shared by every rank of a multi-worker run: only rank 0 writes shared files) and every rank
writes the wire form (`wire_summary`: the summary without per-task detail, ≤ 4096 bytes, see
`compact`) to env `FORGETLESS_TERMINATION_MESSAGE_PATH` when set — its own pod's termination log.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from forgetless import atomic, registry
from forgetless.contract import TERMINATION_MESSAGE_LIMIT, TERMINATION_MESSAGE_PATH_ENV, summary_path
from forgetless.errors import StageError
from forgetless.lifecycle import STAGES

DETAIL_KEYS = ("paired", "tasks", "probeHistory", "validationHistory", "generalKLHistory")
"""Per-task parts of a summary: in summary.json on the volume, never in the termination message
(they grow with the suite; what the operator needs — scores per category, the gate's verdict,
the promoted model — does not)."""
REGISTRY = {
    "baseline": "forgetless_trainer.stages.baseline:Baseline",
    "train": "forgetless_trainer.stages.train:Train",
    "evaluate": "forgetless_trainer.stages.evaluate:Evaluate",
}
"""Stage name (forgetless.lifecycle.STAGES, in pipeline order) -> "module:Class"."""
PROTECTED_KEYS = ("stage", "truncated", "stoppedReason", "steps", "error", "gate", "scores", "promotedModel")




def _encode(summary: Any) -> str:
    return json.dumps(summary, sort_keys=True, separators=(",", ":"), default=str)


def _shrink(value: Any, limit: int) -> Any:
    """Round floats, then cut long strings, lists and dicts until the JSON fits `limit` bytes."""
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, str):
        return value if len(value) <= limit else value[: max(limit - 3, 0)] + "..."
    if isinstance(value, list):
        return [_shrink(v, limit) for v in value]
    if isinstance(value, dict):
        return {k: _shrink(v, limit) for k, v in value.items()}
    return value


def compact(summary: dict[str, Any], limit: int = TERMINATION_MESSAGE_LIMIT) -> str:
    """The summary as JSON of at most `limit` bytes.

    Degrades in steps, keeping the top-level keys as long as possible: round floats; shorten long
    strings; drop the largest nested values (replaced by nothing) one at a time, marking
    `"truncated": true`; as a last resort keep only `stage` and `truncated`.
    """
    text = _encode(summary)
    if len(text.encode()) <= limit:
        return text
    current: dict[str, Any] = _shrink(summary, limit)
    for string_limit in (512, 128, 32):
        current = _shrink(current, string_limit)
        current["truncated"] = True
        text = _encode(current)
        if len(text.encode()) <= limit:
            return text
    protected = set(PROTECTED_KEYS)
    while len(text.encode()) > limit:
        candidates = [k for k in current if k not in protected]
        if not candidates:
            break
        largest = max(candidates, key=lambda k: len(_encode(current[k])))
        del current[largest]
        text = _encode(current)
    if len(text.encode()) > limit:
        text = _encode({"stage": summary.get("stage"), "truncated": True})
    return text


def process_rank() -> int:
    """This process's rank in a multi-worker run (RANK, else an Indexed Job's completion index), else 0."""
    for name in ("RANK", "JOB_COMPLETION_INDEX"):
        value = os.environ.get(name)
        if value not in (None, ""):
            try:
                return int(value)
            except ValueError:
                return -1
    return 0


def is_main_process() -> bool:
    return process_rank() == 0


def wire_summary(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in summary.items() if k not in DETAIL_KEYS}


def write_termination_message(document: dict[str, Any]) -> None:
    """This pod's own termination log (not shared): every rank writes its own."""
    target = os.environ.get(TERMINATION_MESSAGE_PATH_ENV)
    if target:
        Path(target).write_text(compact(document))


def write_summary(name: str, summary: dict[str, Any], workdir: Path) -> None:
    if is_main_process():
        text = json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n"
        atomic.write_text(summary_path(workdir, name), text)
    write_termination_message(wire_summary(summary))


def run_stage(name: str, job, workdir: Path) -> dict[str, Any]:
    """Run stage `name` for `job` (a FineTuneJob) in `workdir`; returns its summary."""
    if name not in STAGES:
        raise StageError(f"unknown stage {name!r} (choose one of {', '.join(STAGES)})")
    from forgetless_trainer import quiet

    quiet.silence()
    stage = registry.build(REGISTRY, name, job)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        summary = stage.run(workdir)
    except Exception as exc:  # the operator reads why from the termination message; the caller still sees the error
        reason = str(exc) if isinstance(exc, StageError) else f"{type(exc).__name__}: {exc}"
        write_termination_message({"stage": name, "error": reason})
        raise
    write_summary(name, summary, workdir)
    return summary
