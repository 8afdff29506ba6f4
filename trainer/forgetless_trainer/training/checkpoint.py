"""Atomic DeepSpeed checkpoints and resume.

Layout: `WORKDIR/train/checkpoints/step-<N>/` (DeepSpeed's files: module, optimizer, scheduler and
our client state: step, data position, RNG states, mitigation states, counters) plus a
`COMPLETE` marker. Every rank writes into `checkpoints/.tmp-step-<N>/step-<N>` first; after a
barrier rank 0 writes the marker and renames the directory into place, so a checkpoint either
exists whole or not at all (a crash mid-write leaves only a `.tmp-*` directory, removed on the next
save). The newest complete `step-<N>` is what a restarted stage resumes from; older ones beyond
`KEEP` are pruned.

The marker records every file's size as it was written (JSON: `{"step": N, "files": {name: bytes}}`).
A checkpoint whose files no longer match (a shard truncated or lost after the save: a full or
failing volume, a partial copy) is skipped at resume with a line that says which and why, and moved
aside to `damaged-step-<N>`; the run resumes from the newest intact one (or from the start). A
checkpoint that passes the check but still cannot be loaded is moved aside the same way and fails
the attempt with that reason, so the retried pod resumes from the one before instead of looping.
An older marker (the step number alone) has no sizes and is trusted as before.

The staging directory's name is deterministic on purpose (the one exception to forgetless.atomic's
unique temp names): every rank writes its own shard files into the same staging directory, so all
ranks must agree on it; only rank 0 creates it (after removing a leftover of a dead attempt),
writes the marker and renames it, between barriers.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from forgetless_trainer.training.distributed import barrier

KEEP = 2
MARKER = "COMPLETE"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def complete_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    if not directory.is_dir():
        return []
    found = []
    for child in directory.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and (child / MARKER).is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def latest(directory: Path) -> tuple[int, Path] | None:
    found = complete_checkpoints(directory)
    return found[-1] if found else None


def file_sizes(folder: Path) -> dict[str, int]:
    return {p.relative_to(folder).as_posix(): p.stat().st_size
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MARKER}


def damage(path: Path) -> str | None:
    """Why checkpoint `path` is not what was written (a file missing or of another size), or None."""
    try:
        record = json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return None  # an older marker (the step number alone): nothing to compare against
    if not isinstance(record, dict):
        return None
    for name, size in (record.get("files") or {}).items():
        found = path / name
        if not found.is_file():
            return f"{name} is missing"
        if found.stat().st_size != size:
            return f"{name} is {found.stat().st_size} bytes, it was {size} bytes when written"
    return None


def set_aside(path: Path) -> Path:
    """Move a damaged checkpoint out of the resume path (kept for inspection, pruned on the next save)."""
    target = path.parent / f"damaged-{path.name}"
    shutil.rmtree(target, ignore_errors=True)
    path.rename(target)
    return target


def latest_intact(directory: Path, *, is_main: bool, log=print) -> tuple[int, Path] | None:
    """The newest complete checkpoint whose files match its marker; damaged newer ones are reported
    (`log`) and, by rank 0 after every rank has looked, set aside."""
    chosen, damaged = None, []
    for number, path in reversed(complete_checkpoints(directory)):
        why = damage(path)
        if why is None:
            chosen = (number, path)
            break
        damaged.append(path)
        log(f"skipping checkpoint {path.name}: {why}; resuming from an older one")
    if damaged:
        barrier()
        if is_main:
            for path in damaged:
                set_aside(path)
        barrier()
    if damaged and chosen is None:
        log("no intact checkpoint left: training starts from the beginning")
    return chosen


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def save(engine, directory: Path, step: int, client_state: dict[str, Any], *, is_main: bool, exclude_frozen: bool) -> Path:
    """Write checkpoint `step-<step>` atomically (all ranks call this); returns its path."""
    tag = f"step-{step}"
    staging = directory / f".tmp-{tag}"
    final = directory / tag
    if is_main:
        directory.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    barrier()
    engine.save_checkpoint(
        str(staging), tag=tag, client_state=client_state, save_latest=False, exclude_frozen_parameters=exclude_frozen
    )
    barrier()
    if is_main:
        (staging / tag / MARKER).write_text(json.dumps({"step": step, "files": file_sizes(staging / tag)}) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        (staging / tag).rename(final)
        shutil.rmtree(staging, ignore_errors=True)
        for _, old in complete_checkpoints(directory)[:-KEEP]:
            shutil.rmtree(old, ignore_errors=True)
        for leftover in [*directory.glob(".tmp-*"), *directory.glob("damaged-*")]:
            shutil.rmtree(leftover, ignore_errors=True)
    barrier()
    return final


def load(engine, path: Path, *, exclude_frozen: bool) -> dict[str, Any]:
    """Load module, optimizer and scheduler state from checkpoint dir `path`; returns the client state."""
    load_path, client_state = engine.load_checkpoint(
        str(path.parent), tag=path.name, load_module_strict=not exclude_frozen,
        load_optimizer_states=True, load_lr_scheduler_states=True,
    )
    if load_path is None:
        raise RuntimeError(f"DeepSpeed could not load the checkpoint at {path}")
    return client_state or {}
