"""Pipeline stages: baseline → train → evaluate.

`run_stage(name, job, workdir)` is what both `forgetless stage NAME` (trainer pods) and
`forgetless run` / `forgetless sweep` (in-process) call. Each stage lives in `forgetless_trainer.stages.<name>`: a
`Stage` (base.py) registered in `REGISTRY` (the one registry shape, forgetless.registry), built with
`from_spec(job, extras)` and run with `run(workdir) -> dict`; imported lazily so this module stays light.
After a stage returns, rank 0 writes its full summary to `WORKDIR/<stage>/summary.json` (the work
dir is shared by every rank of a multi-worker run: only rank 0 writes shared files) and every rank
writes the wire form (forgetless.contract.message: the summary without per-task detail, ≤ 4096
bytes) to env `FORGETLESS_TERMINATION_MESSAGE_PATH` when set — its own pod's termination log.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from forgetless import atomic, registry
from forgetless.contract import TERMINATION_MESSAGE_PATH_ENV, summary_path
from forgetless.contract.message import compact, wire_summary
from forgetless.errors import StageError
from forgetless.lifecycle import STAGES

REGISTRY = {
    "baseline": "forgetless_trainer.stages.baseline:Baseline",
    "train": "forgetless_trainer.stages.train:Train",
    "evaluate": "forgetless_trainer.stages.evaluate:Evaluate",
}
"""Stage name (forgetless.lifecycle.STAGES, in pipeline order) -> "module:Class"."""


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
    from forgetless_trainer import live_metrics, quiet

    quiet.silence()
    live_metrics.serve(0 if os.environ.get("LOCAL_RANK", "0") in ("", "0") else 1)  # env-driven: pods serve progress
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
