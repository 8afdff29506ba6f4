"""Replay for sequential fine-tuning: keep a reservoir of this job's data, replay earlier jobs'.

Buffer: a uniform reservoir sample (Algorithm R, generator seeded by `training.seed`) of at most
`replay.bufferSize` examples over the stream "earlier buffers' examples, then this job's task
training examples", written to `WORKDIR/train/replay_buffer.jsonl` (one record per line, with its
`source` job). Carrying earlier examples forward lets a chain A → B → C keep all of its tasks.

Replay: the buffers named in `replay.sources` (see `find_job_artifact` for how `path` and
`fineTuneJob` resolve) are pooled and fill exactly `round_half_up(replay.fraction · epoch_size)`
examples of every epoch.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Iterable

from forgetless import atomic
from forgetless_trainer.data import Example, MixPart, read_jsonl
from forgetless_trainer.mitigations.base import Mitigation, TrainContext, TrainerView, find_job_artifact

BUFFER_FILE = "replay_buffer.jsonl"


def reservoir(stream: Iterable[Example], size: int, seed: int) -> list[Example]:
    """Uniform sample of `size` items of `stream` (Algorithm R), order of arrival kept."""
    rng = random.Random(f"reservoir-{seed}")
    kept: list[tuple[int, Example]] = []
    for i, item in enumerate(stream):
        if len(kept) < size:
            kept.append((i, item))
        else:
            j = rng.randint(0, i)
            if j < size:
                kept[j] = (i, item)
    return [item for _, item in sorted(kept, key=lambda pair: pair[0])]


def write_buffer(path: Path, examples: Iterable[Example]) -> None:
    with atomic.atomic_file(path) as tmp, tmp.open("w", encoding="utf-8") as handle:
        for example in examples:
            handle.write(json.dumps(example.to_record(), ensure_ascii=False) + "\n")


def read_buffer(path: Path) -> list[Example]:
    """A buffer's examples, each keeping the job it came from as `source`."""
    examples = read_jsonl(path, None, "replay")
    with path.open(encoding="utf-8") as handle:
        origins = [json.loads(line).get("source", "replay") for line in handle if line.strip()]
    return [Example(e.prompt, e.response, e.kind, str(o)) for e, o in zip(examples, origins)]


class Replay(Mitigation):
    name = "replay"

    def __init__(self) -> None:
        self.earlier: list[Example] = []
        self.sources: list[str] = []

    def mix_parts(self, ctx: TrainContext) -> list[MixPart]:
        spec = ctx.spec.mitigation.replay
        for i, source in enumerate(spec.sources):
            path = find_job_artifact(source, ctx, BUFFER_FILE, f"mitigation.replay.sources[{i}]")
            self.sources.append(str(path))
            self.earlier.extend(read_buffer(path))
        self.fraction = spec.fraction if self.earlier else 0.0
        return [MixPart("replay", self.fraction, self.earlier)] if self.earlier else []

    def on_train_end(self, trainer: TrainerView) -> None:
        ctx = trainer.ctx
        if not ctx.is_main:
            return
        spec = ctx.spec.mitigation.replay
        job = ctx.job.metadata.name
        own = [Example(e.prompt, e.response, e.kind, job) for e in ctx.task_train]
        kept = reservoir([*self.earlier, *own], spec.buffer_size, ctx.spec.training.seed)
        ctx.train_dir.mkdir(parents=True, exist_ok=True)
        self.buffer_path = ctx.train_dir / BUFFER_FILE
        write_buffer(self.buffer_path, kept)
        self.buffer_size = len(kept)

    def summary(self) -> dict[str, Any]:
        return {
            "replaySources": self.sources,
            "replayExamples": len(self.earlier),
            "replayBuffer": str(getattr(self, "buffer_path", "")),
            "replayBufferSize": getattr(self, "buffer_size", 0),
        }
