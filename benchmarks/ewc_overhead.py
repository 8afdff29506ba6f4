#!/usr/bin/env python3
"""EWC overhead: the trainer's step time with EWC / without — same model, batches and seed.

Goal ≤ 1.05. Two real trainers (DeepSpeed engine, ZeRO-2, fp32) are set up side by side, one
with EWC (Fisher on general data, λ = 1000), one without; their steps run interleaved on the
same batches (without, with, without, with, ...) so load drift on this shared machine hits both;
the figure is the ratio of the median step times. Reported for LoRA (the default; the penalty
covers the adapter) and for full fine-tuning (the penalty covers every weight) at batch 16 and
64: the penalty costs a fixed few memory passes over the trainable weights per step, so its
share falls as tokens per step grow.

Usage: python benchmarks/ewc_overhead.py [--steps 60] [--warmup 5] [--threads 2] [--json out.json]
"""

from __future__ import annotations

import statistics
from pathlib import Path

import torch

from benchlib import (
    bench_job,
    setup,
    write_json,
    first_batches,
    interleaved,
    make_trainer,
    ratio_of_medians,
)


def main() -> None:
    args, tmp, model = setup(__doc__, "ewc-bench-", steps=60, warmup=5)
    results = {}
    for method, batch in (("lora", 16), ("full", 16), ("full", 64)):
        training = {"batchSize": batch}
        plain = make_trainer(bench_job(model, method={"type": method}, training=training), tmp / f"{method}-{batch}-plain")
        ewc = make_trainer(
            bench_job(model, method={"type": method}, training=training,
                      mitigation={"ewc": {"fisherSamples": 64, "lambda": 1000.0}}),
            tmp / f"{method}-{batch}-ewc",
        )
        batches = first_batches(plain, args.steps + args.warmup)
        times = interleaved({"without": plain.micro_step, "with": ewc.micro_step}, batches, args.warmup)
        penalty = next(m for m in ewc.mitigations if m.name == "ewc").last_penalty
        results[f"{method}-b{batch}"] = {
            "stepWithout_s": statistics.median(times["without"]),
            "stepWith_s": statistics.median(times["with"]),
            "ratio": ratio_of_medians(times, "with", "without"),
            "steps": len(times["with"]),
            "trainableParameters": sum(p.numel() for p in ewc.model.parameters() if p.requires_grad),
            "lastPenalty": float(penalty),
        }
    print(f"model {model}; bundled support-tickets + 20 % general (≤ 33 tokens/example), {args.steps} steps, "
          f"{args.threads} threads, ZeRO-2, fp32, torch {torch.__version__}")
    print(f"{'method-batch':12} {'trainable':>10} {'without EWC':>12} {'with EWC':>12} {'ratio':>7}  (goal <= 1.05)")
    for method, r in results.items():
        print(f"{method:12} {r['trainableParameters']:10d} {r['stepWithout_s'] * 1000:10.1f}ms "
              f"{r['stepWith_s'] * 1000:10.1f}ms {r['ratio']:7.3f}")
    write_json(args.json, results)


if __name__ == "__main__":
    main()
