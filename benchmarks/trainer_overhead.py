#!/usr/bin/env python3
"""Trainer overhead: our train step (DeepSpeed engine, loss terms, metrics bookkeeping) against a
bare peft + torch loop (forward, backward, clip, AdamW, scheduler) on the same model and batches.

Goal ≤ 1.03. LoRA (r 16, all-linear) on the benchmark model, no mitigations, batch 16 from the
bundled task data; ours under ZeRO-0 and ZeRO-2 (DeepSpeed's default here), fp32. Steps are
interleaved (bare, ours, ours, bare, ...) on the same batches so load drift hits both; the figure
is the ratio of median step times. Our step is `Trainer.micro_step` (what the loop runs for every
micro-batch) plus the per-step metrics update the loop does.

Usage: python benchmarks/trainer_overhead.py [--steps 60] [--warmup 5] [--threads 1] [--json out.json]
"""

from __future__ import annotations

import statistics
from pathlib import Path

import torch

from forgetless_trainer.modeling import load_model_and_tokenizer
from forgetless_trainer.training import config
from benchlib import (
    bench_job,
    setup,
    write_json,
    first_batches,
    interleaved,
    make_trainer,
    ratio_of_medians,
)


def bare_step_fn(job):
    """A plain peft + torch training step, configured like our trainer (same seed, LoRA, optimizer, schedule)."""
    from peft import LoraConfig, get_peft_model

    spec = job.spec
    torch.manual_seed(spec.training.seed)
    model, _ = load_model_and_tokenizer(spec.model)
    lora = spec.method.lora
    model = get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                             target_modules="all-linear", task_type="CAUSAL_LM"))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=spec.learning_rate(), weight_decay=spec.training.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, config.lr_lambda("constant", 1000, 0))

    def step(batch):
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, spec.training.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def ours_step_fn(trainer):
    def step(batch):
        loss, extra = trainer.micro_step(batch)
        trainer.last_loss = float(loss)
        trainer._report(int(batch["attention_mask"].sum()), extra)

    return step


def main() -> None:
    args, tmp, model = setup(__doc__, "trainer-bench-", steps=60, warmup=5)
    no_mitigation = {"dataMixing": {"generalFraction": 0.0}}
    jobs = {f"zero{z}": bench_job(model, deepspeed={"zeroStage": z}, mitigation=no_mitigation) for z in (0, 2)}
    trainers = {name: make_trainer(job, tmp / name) for name, job in jobs.items()}
    for trainer in trainers.values():
        from forgetless_trainer.live_metrics import Progress

        trainer.progress = Progress(10**9, enabled=False)
    batches = first_batches(trainers["zero0"], args.steps + args.warmup)
    fns = {"bare": bare_step_fn(jobs["zero0"]), **{name: ours_step_fn(t) for name, t in trainers.items()}}
    times = interleaved(fns, batches, args.warmup)
    results = {name: {"step_s": statistics.median(times[name]), "ratio": ratio_of_medians(times, name, "bare")}
               for name in fns}
    print(f"model {model}; LoRA r16 all-linear, batch 16, {args.steps} steps, {args.threads} thread(s), fp32, "
          f"torch {torch.__version__}")
    print(f"{'loop':10} {'median step':>12} {'ratio to bare':>14}  (goal <= 1.03)")
    for name, r in results.items():
        print(f"{name:10} {r['step_s'] * 1000:10.1f}ms {r['ratio']:14.3f}")
    write_json(args.json, results)


if __name__ == "__main__":
    main()
