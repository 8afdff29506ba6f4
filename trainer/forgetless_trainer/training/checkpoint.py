"""Atomic DeepSpeed checkpoints and resume.

Layout: `WORKDIR/train/checkpoints/step-<N>/` (DeepSpeed's files: module, optimizer, scheduler and
our client state: step, data position, RNG states, mitigation states, counters) plus a
`COMPLETE` marker. Every rank writes into `checkpoints/.tmp-step-<N>/step-<N>` first; after a
barrier rank 0 writes the marker and renames the directory into place, so a checkpoint either
exists whole or not at all (a crash mid-write leaves only a `.tmp-*` directory, removed on the next
save). The newest complete `step-<N>` is what a restarted stage resumes from; older ones beyond
`KEEP` are pruned.

The staging directory's name is deterministic on purpose (the one exception to forgetless.atomic's
unique temp names): every rank writes its own shard files into the same staging directory, so all
ranks must agree on it; only rank 0 creates it (after removing a leftover of a dead attempt),
writes the marker and renames it, between barriers.
"""

from __future__ import annotations

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
        (staging / tag / MARKER).write_text(f"{step}\n")
        shutil.rmtree(final, ignore_errors=True)
        (staging / tag).rename(final)
        shutil.rmtree(staging, ignore_errors=True)
        for _, old in complete_checkpoints(directory)[:-KEEP]:
            shutil.rmtree(old, ignore_errors=True)
        for leftover in directory.glob(".tmp-*"):
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
