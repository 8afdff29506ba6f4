"""Pipeline stages: baseline → train → evaluate.

`run_stage(name, job, workdir)` is what both `forgetless stage NAME` (trainer pods) and
`forgetless run` (in-process) call. Each stage lives in `forgetless_trainer.stages.<name>` with
`run(job: FineTuneJob, workdir: Path) -> dict`, imported lazily so this module stays light.
After a stage returns, its compact summary is written to `WORKDIR/<stage>/summary.json` and, when
env `FORGETLESS_TERMINATION_MESSAGE_PATH` is set, to that path (≤ 4096 bytes, see `compact`).
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Any

STAGES = ("baseline", "train", "evaluate")
TERMINATION_MESSAGE_ENV = "FORGETLESS_TERMINATION_MESSAGE_PATH"
TERMINATION_MESSAGE_LIMIT = 4096


class StageError(Exception):
    """An expected failure with a message a human can act on (missing data, bad suite, ...)."""


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
    protected = {"stage", "truncated", "stoppedReason", "steps"}
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


def write_summary(name: str, summary: dict[str, Any], workdir: Path) -> None:
    stage_dir = Path(workdir) / name
    stage_dir.mkdir(parents=True, exist_ok=True)
    tmp = stage_dir / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, stage_dir / "summary.json")
    target = os.environ.get(TERMINATION_MESSAGE_ENV)
    if target:
        Path(target).write_text(compact(summary))


def run_stage(name: str, job, workdir: Path) -> dict[str, Any]:
    """Run stage `name` for `job` (a FineTuneJob) in `workdir`; returns its summary."""
    if name not in STAGES:
        raise StageError(f"unknown stage {name!r} (choose one of {', '.join(STAGES)})")
    module = importlib.import_module(f"forgetless_trainer.stages.{name}")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        summary = module.run(job, workdir)
    except Exception as exc:  # the operator reads why from the termination message; the caller still sees the error
        target = os.environ.get(TERMINATION_MESSAGE_ENV)
        if target:
            reason = str(exc) if isinstance(exc, StageError) else f"{type(exc).__name__}: {exc}"
            Path(target).write_text(compact({"stage": name, "error": reason}))
        raise
    write_summary(name, summary, workdir)
    return summary
