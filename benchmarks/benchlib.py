"""Shared pieces of the trainer benchmarks (benchmarks/ewc_overhead.py, fisher_speed.py,
trainer_overhead.py): the benchmark model, jobs on the bundled data, and step timing.

Model: `bundled:tiny-world` (3.2 M parameters), which ships with forgetless.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any, Callable

from forgetless import bundled
from forgetless.api.schema import FineTuneJob, parse_job

BENCH_MODEL = "bundled:tiny-world"


def setup(doc: str, prefix: str, **options: int):
    """Parse the common benchmark options (`--threads`, `--json`, plus int `options` with their
    defaults, e.g. steps=60), set torch's thread count; returns (args, temp dir, model reference)."""
    import argparse
    import tempfile

    import torch

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    for name, default in options.items():
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: no oversubscription on a shared host)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    bundled.resolve(BENCH_MODEL, "model")  # fails loudly if the package lost its bundled model
    return args, tmp, BENCH_MODEL


def write_json(path: Path | None, results: dict) -> None:
    if path is not None:
        import json

        path.write_text(json.dumps(results, indent=2))


def bench_job(model: str, name: str = "bench", **spec: Any) -> FineTuneJob:
    """A job on the bundled data; `spec` sections replace the defaults' sections key by key."""
    document: dict[str, Any] = {
        "model": {"name": model},
        "dataset": {"task": {"path": "bundled:support-tickets"}, "general": {"path": "bundled:general"}},
        "training": {"batchSize": 16, "maxSeqLength": 64, "epochs": 1, "checkpointIntervalSteps": 100000,
                     "logIntervalSteps": 100000, "warmupRatio": 0.0, "lrScheduler": "constant"},
    }
    for section, values in spec.items():
        document[section] = {**document.get(section, {}), **values}
    return parse_job({"apiVersion": "forgetless.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": name},
                      "spec": document})


def make_trainer(job: FineTuneJob, workdir: Path):
    """A set-up Trainer (model, mitigations, DeepSpeed engine) whose steps the benchmark drives."""
    import io

    from forgetless_trainer.training.loop import Trainer

    trainer = Trainer(job, workdir, progress_stream=io.StringIO())
    trainer.setup()
    trainer.progress = None
    for mitigation in trainer.mitigations:
        mitigation.on_train_start(trainer)
    return trainer


def first_batches(trainer, n: int) -> list[dict]:
    """The trainer's first `n` micro-batches (epoch 0, this rank), collated, cycling if the epoch is shorter."""
    from forgetless_trainer import data as D

    spec = trainer.spec.training
    examples = D.build_epoch(trainer.ctx.task_train, trainer.parts, 0, spec.seed)
    micro = D.shard_micro_batches(examples, rank=0, world_size=1, batch_size=spec.batch_size, accumulation=1)
    return [trainer.encoder.batch(micro[i % len(micro)]) for i in range(n)]


def interleaved(step_fns: dict[str, Callable[[dict], Any]], batches: list[dict], warmup: int) -> dict[str, list[float]]:
    """Run every step function on each batch in turn, alternating the order (a b, b a, a b, ...), so
    machine-load drift and cache effects hit all alike. Returns each function's per-step wall times
    after `warmup` batches.
    """
    times: dict[str, list[float]] = {name: [] for name in step_fns}
    items = list(step_fns.items())
    for i, batch in enumerate(batches):
        for name, fn in items if i % 2 == 0 else items[::-1]:
            start = time.perf_counter()
            fn(batch)
            elapsed = time.perf_counter() - start
            if i >= warmup:
                times[name].append(elapsed)
    return times


def ratio_of_medians(times: dict[str, list[float]], numerator: str, denominator: str) -> float:
    return statistics.median(times[numerator]) / statistics.median(times[denominator])
