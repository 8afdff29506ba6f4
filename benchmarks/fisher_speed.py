#!/usr/bin/env python3
"""Fisher estimation speed: ours (per-sample gradients from one batched forward + backward per chunk,
formed from hooked activations and output gradients, see forgetless_trainer.mitigations.ewc), and
its torch.func vmap(grad) fallback, against an Avalanche-style reference (a Python loop: one forward
+ backward per sample, squared gradients accumulated), on the same samples and model; all three
results must agree.

Goal ≥ 5×. Reported for full fine-tuning (Fisher of every weight, as Avalanche's EWC does) and
for LoRA (Fisher of the adapter). Times are the best of `--repeats` runs of each.

Usage: python benchmarks/fisher_speed.py [--samples 128] [--repeats 3] [--threads 1] [--json out.json]
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from forgetless_trainer import data as D
from forgetless_trainer.mitigations.ewc import fisher_examples
from forgetless_trainer.mitigations.ewc_fisher import estimate_fisher, sequence_nll
from forgetless_trainer.modeling import load_model_and_tokenizer
from benchlib import bench_job, setup, write_json


def reference_fisher(model, examples, encoder) -> dict[str, torch.Tensor]:
    """Avalanche-style: for each sample, forward, backward, accumulate grad² (then divide by the count)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    fisher = {n: torch.zeros_like(p) for n, p in named}
    model.eval()
    for example in examples:
        model.zero_grad(set_to_none=True)
        batch = encoder.batch([example])
        loss = sequence_nll(model(input_ids=batch["input_ids"]).logits, batch["labels"])[0]
        loss.backward()
        for n, p in named:
            if p.grad is not None:
                fisher[n] += p.grad.detach() ** 2
    model.zero_grad(set_to_none=True)
    return {n: f / len(examples) for n, f in fisher.items()}


def best_time(fn, repeats: int):
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    args, tmp, model = setup(__doc__, "fisher-bench-", samples=128, repeats=3)
    job = bench_job(model)
    general = D.read_source(job.spec.dataset.general, None, field_name="dataset.general", tag="general")
    samples = fisher_examples(general, args.samples, seed=0)
    results = {}
    for method in ("full", "lora"):
        torch.manual_seed(0)
        model, tokenizer = load_model_and_tokenizer(job.spec.model)
        if method == "lora":
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
            with torch.no_grad():  # B = 0 at init would make A's gradient 0: give B values so all of it is compared
                for name, p in model.named_parameters():
                    if "lora_B" in name:
                        p.normal_(0, 0.02)
        encoder = D.Encoder(tokenizer, job.spec.training.max_seq_length)
        for e in samples:
            encoder.encode(e)  # tokenise once, outside both timings
        ours_s, ours = best_time(lambda: estimate_fisher(model, samples, encoder), args.repeats)
        vmap_s, vmapped = best_time(lambda: estimate_fisher(model, samples, encoder, method="vmap"), args.repeats)
        ref_s, ref = best_time(lambda: reference_fisher(model, samples, encoder), args.repeats)
        assert set(ours) == set(ref) == set(vmapped), "different parameter sets"
        # equal up to float32 summation order: every entry within 1e-3 of its tensor's largest value
        worst = max(
            float((result[n] - ref[n]).abs().max() / ref[n].abs().max().clamp(min=1e-30)) for result in (ours, vmapped) for n in ref
        )
        assert worst < 1e-3, f"batched and loop Fisher differ: {worst:.2e} of the largest entry"
        results[method] = {
            "parameters": sum(f.numel() for f in ref.values()),
            "ours_s": ours_s,
            "vmap_s": vmap_s,
            "reference_s": ref_s,
            "speedup": ref_s / ours_s,
            "vmapSpeedup": ref_s / vmap_s,
            "maxRelativeDifference": worst,
        }
    print(f"{args.samples} general samples, {args.threads} thread(s), torch {torch.__version__}; "
          "results agree (max difference / largest entry per tensor in the last column)")
    print(f"{'method':6} {'params':>9} {'ours':>8} {'vmap':>8} {'loop (ref)':>11} {'speedup':>8} {'vmap speedup':>13} "
          f"{'max diff':>9}  (goal >= 5x)")
    for method, r in results.items():
        print(f"{method:6} {r['parameters']:9d} {r['ours_s']:7.2f}s {r['vmap_s']:7.2f}s {r['reference_s']:10.2f}s "
              f"{r['speedup']:7.1f}x {r['vmapSpeedup']:12.1f}x {r['maxRelativeDifference']:9.1e}")
    write_json(args.json, results)


if __name__ == "__main__":
    main()
