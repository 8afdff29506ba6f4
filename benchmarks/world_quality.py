#!/usr/bin/env python3
"""Quality bars of the bundled world (bundled:tiny-world + bundled:world-v1).

1. load time of model+tokenizer and forward time of a batch of 32;
2. the base model on the held-out suite, per task and per category (simple greedy decoder
   written here, independent of the product evaluator);
3. a naive full fine-tune on bundled:support-tickets (several epochs, high LR, no mitigation)
   and the per-category scores before/after -- the world must show forgetting;
4. (unless --skip-lora) LoRA (r 16, all linear projections) + 20 % general-data mixing,
   which must be able to learn the narrow task while keeping general skills.

Usage: python benchmarks/world_quality.py [--json out.json] [--skip-lora]
"""
import argparse
import copy
import json
import math
import os
import random
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "core"))

import torch  # noqa: E402
from transformers import AutoTokenizer, LlamaForCausalLM  # noqa: E402

sys.path.insert(0, os.path.join(ROOT, "scripts"))
# the simple greedy decoder and scorer the model was pretrained and checked with (deliberately
# independent of forgetless' own evaluator)
from pretrain_world import evaluate as reference_evaluate  # noqa: E402
from pretrain_world import load_suite  # noqa: E402

BUNDLED = os.path.join(ROOT, "core", "forgetless", "bundled")
MODEL = os.path.join(BUNDLED, "models", "tiny-world")
SUITE = os.path.join(BUNDLED, "suites", "world-v1")
GENERAL_CATS = ("instruction_following", "format", "knowledge", "reasoning", "safety")


def jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def evaluate(model, tok, tasks, show=0):
    """The pretraining script's reference evaluator, plus the mean over the general categories."""
    per_task, cats = reference_evaluate(model, tok, tasks, show)
    cats["general_mean"] = sum(cats[c] for c in GENERAL_CATS) / len(GENERAL_CATS)
    return per_task, cats


# ------------------------------------------------------------------ fine-tuning loop
def encode(tok, prompt, response):
    p = tok(prompt + " =>", add_special_tokens=False)["input_ids"]
    r = tok(" " + response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return p + r, [-100] * len(p) + r


def finetune(model, tok, rows, epochs, lr, bs=32, warmup=30, seed=0, label="ft"):
    torch.manual_seed(seed)
    rng = random.Random(seed)
    enc = [encode(tok, r["prompt"], r["response"]) for r in rows]
    steps = epochs * (len(enc) // bs)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * (0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))))
    model.train()
    step, t0 = 0, time.time()
    for ep in range(epochs):
        rng.shuffle(enc)
        tot = 0.0
        for b in range(0, len(enc) - bs + 1, bs):
            batch = enc[b:b + bs]
            L = max(len(x) for x, _ in batch)
            ids = torch.full((len(batch), L), tok.pad_token_id)
            lab = torch.full((len(batch), L), -100)
            att = torch.zeros((len(batch), L), dtype=torch.long)
            for i, (x, y) in enumerate(batch):
                ids[i, :len(x)] = torch.tensor(x)
                lab[i, :len(y)] = torch.tensor(y)
                att[i, :len(x)] = 1
            loss = model(input_ids=ids, attention_mask=att, labels=lab).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            step += 1
            tot += loss.item()
        print(f"  [{label}] epoch {ep + 1}/{epochs} steps {step}/{steps} mean loss {tot / (len(enc) // bs):.4f} "
              f"({time.time() - t0:.0f}s)", flush=True)
    model.eval()
    return model


def table(cols, names):
    keys = list(cols[0][1].keys())
    print(f"  {'':24s}" + "".join(f"{n:>12s}" for n, _ in cols))
    for k in keys:
        print(f"  {k:24s}" + "".join(f"{d[k]:12.3f}" for _, d in cols))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=MODEL, help="model dir (default: bundled tiny-world)")
    # 1 thread: on a shared 2-core machine 2 OpenMP threads thrash against other jobs (~5-10x slower)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--naive-epochs", type=int, default=3)
    ap.add_argument("--naive-lr", type=float, default=1e-3)
    ap.add_argument("--lora-epochs", type=int, default=8)
    ap.add_argument("--lora-lr", type=float, default=5e-4)
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--mix", type=float, default=0.2, help="fraction of general data in the LoRA mixture")
    ap.add_argument("--skip-lora", action="store_true")
    ap.add_argument("--skip-naive", action="store_true", help="only the LoRA+mix experiment (for tuning it)")
    ap.add_argument("--show", type=int, default=0, help="print N sample generations per task")
    ap.add_argument("--json", help="write all numbers here")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    res = {}

    # 1. timings
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(a.model)
    base = LlamaForCausalLM.from_pretrained(a.model)
    base.eval()
    res["load_s"] = time.perf_counter() - t0
    tasks = load_suite(SUITE)
    # a realistic batch: 32 full training sequences (ticket prompt + reply), the longest in the world
    tickets = jsonl(os.path.join(BUNDLED, "data", "support-tickets", "validation.jsonl"))[:32]
    texts = [f"{r['prompt']} => {r['response']} {tok.eos_token}" for r in tickets]
    batch = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        base(**batch)
        ts = []
        for _ in range(10):
            t1 = time.perf_counter()
            base(**batch)
            ts.append(time.perf_counter() - t1)
    res["forward_b32_s"] = statistics.median(ts)
    res["forward_shape"] = list(batch["input_ids"].shape)
    print(f"load model+tokenizer: {res['load_s']:.2f}s (bar < 2s)   forward batch 32x{batch['input_ids'].shape[1]}: "
          f"{res['forward_b32_s'] * 1000:.1f}ms median of 10 (bar < 200ms)")

    # 2. base model
    t1 = time.time()
    per_task, base_cats = evaluate(base, tok, tasks, a.show)
    res["base"] = {"per_task": per_task, "per_category": base_cats}
    print(f"\nbase model on world-v1 ({time.time() - t1:.1f}s):")
    for k, v in per_task.items():
        print(f"  {k:24s}{v:8.3f}")

    # 3. naive full fine-tune
    train = jsonl(os.path.join(BUNDLED, "data", "support-tickets", "train.jsonl"))
    print(f"\nnaive full fine-tune: {len(train)} tickets, {a.naive_epochs} epochs, lr {a.naive_lr}, batch 32, "
          f"warmup 30, cosine, no mitigation")
    if a.skip_naive:
        per_task_n, naive_cats = per_task, base_cats  # placeholder: not run
    else:
        naive = finetune(copy.deepcopy(base), tok, train, a.naive_epochs, a.naive_lr, label="naive")
        per_task_n, naive_cats = evaluate(naive, tok, tasks, a.show)
        del naive
    res["naive"] = {"per_task": per_task_n, "per_category": naive_cats, "epochs": a.naive_epochs, "lr": a.naive_lr,
                    "skipped": a.skip_naive}
    cols = [("base", base_cats), ("naive-FT", naive_cats)]

    # 4. LoRA + mixing
    if not a.skip_lora:
        from peft import LoraConfig, get_peft_model
        general = jsonl(os.path.join(BUNDLED, "data", "general", "train.jsonl"))
        n_gen = int(round(len(train) * a.mix / (1 - a.mix)))
        rng = random.Random(0)
        rows = train + rng.sample(general, n_gen)
        print(f"\nLoRA r={a.lora_r} alpha={2 * a.lora_r} (q,k,v,o,gate,up,down) lr {a.lora_lr}, {a.lora_epochs} epochs, "
              f"{len(train)} tickets + {n_gen} general ({a.mix:.0%} mix)")
        cfg = LoraConfig(r=a.lora_r, lora_alpha=2 * a.lora_r, lora_dropout=0.0, task_type="CAUSAL_LM",
                         target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
        lora = get_peft_model(copy.deepcopy(base), cfg)
        lora = finetune(lora, tok, rows, a.lora_epochs, a.lora_lr, label="lora")
        per_task_l, lora_cats = evaluate(lora, tok, tasks, a.show)
        res["lora_mix"] = {"per_task": per_task_l, "per_category": lora_cats, "r": a.lora_r, "lr": a.lora_lr,
                           "epochs": a.lora_epochs, "mix": a.mix}
        cols.append(("lora+mix", lora_cats))

    print("\nper task:")
    table([(n, r["per_task"]) for n, r in zip([c[0] for c in cols],
                                             [res["base"], res["naive"]] + ([res["lora_mix"]] if "lora_mix" in res
                                                                            else []))], None)
    print("\nper category:")
    table(cols, None)

    drop = base_cats["general_mean"] - naive_cats["general_mean"]
    checks = {
        "base >= 0.85 on every general category": all(base_cats[c] >= 0.85 for c in GENERAL_CATS),
        "base narrow task <= 0.2": base_cats["task"] <= 0.2,
        "naive FT drops general mean by >= 15 points": drop >= 0.15,
        "naive FT narrow task > 0.9": naive_cats["task"] > 0.9,
        "load < 2 s": res["load_s"] < 2.0,
        "forward batch 32 < 0.2 s": res["forward_b32_s"] < 0.2,
    }
    if "lora_mix" in res:
        lc = res["lora_mix"]["per_category"]
        checks["LoRA+mix narrow task >= 0.9"] = lc["task"] >= 0.9
        checks["LoRA+mix keeps general (mean drop < 5 points)"] = base_cats["general_mean"] - lc["general_mean"] < 0.05
    print(f"\nnaive FT general-mean drop: {drop * 100:.1f} points")
    for k, v in checks.items():
        print(f"  [{'PASS' if v else 'FAIL'}] {k}")
    res["checks"] = checks
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
