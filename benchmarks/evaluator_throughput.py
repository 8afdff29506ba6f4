#!/usr/bin/env python3
"""Evaluator throughput: the batched evaluator vs a naive one-item-at-a-time loop.

Both score the same model on the same suite; the naive loop calls `model.generate` once per
generation item and runs one forward pass per multiple-choice option. Per-item scores must be
identical (asserted); the goal is a ≥ 4× speed-up in items/s.

Model: --model (a directory or bundled:<name>); by default bundled:tiny-world when it is
installed, else the tiny random word-level Llama of tests/support/tiny_models.py (built in a temp dir).
Suite: --suite (default bundled:world-v1, else the fixture suite tests/fixtures/suites/mini).

Usage: python benchmarks/evaluator_throughput.py [--limit 20] [--batch-size 32] [--threads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for sub in ("core", "trainer", ""):  # "" = the repository root, for tests.support
    sys.path.insert(0, str(ROOT / sub))

import torch  # noqa: E402

from forgetless import bundled  # noqa: E402
from forgetless.api.schema import ModelSpec  # noqa: E402
from forgetless.suites import Suite, load_suite  # noqa: E402
from forgetless_trainer.evaluation import scorers  # noqa: E402
from forgetless_trainer.evaluation.evaluator import _loglikelihoods, generation_input  # noqa: E402
from tests.support.evaluation_oracles import naive_generate  # noqa: E402
from forgetless_trainer.evaluation.evaluator import evaluate_suite  # noqa: E402

GOAL = 4.0


def default_model() -> str:
    if "tiny-world" in bundled.available("model"):
        return "bundled:tiny-world"
    from tests.support.tiny_models import word_level_llama

    return str(word_level_llama(Path(tempfile.mkdtemp(prefix="tiny-model-"))))


def default_suite() -> str:
    return "bundled:world-v1" if "world-v1" in bundled.available("suite") else str(ROOT / "tests/fixtures/suites/mini")


def naive_scores(model, tokenizer, suite: Suite) -> dict[tuple[str, str], float]:
    out = {}
    for task in suite.tasks:
        for item in task.items:
            if task.is_generation:
                answer = naive_generate(model, tokenizer, item["prompt"], task.max_new_tokens)
                score = scorers.GENERATION[task.scorer](task.options, item, answer)
            else:
                context = tokenizer(generation_input(item["prompt"]))["input_ids"]
                logliks = []
                for choice in item["choices"]:
                    whole = tokenizer(generation_input(item["prompt"]) + " " + choice)["input_ids"]
                    logliks += _loglikelihoods(model, tokenizer, [(context, whole[len(context):])], 1)
                score = scorers.LOGLIKELIHOOD[task.scorer](item, logliks)
            out[(task.name, item["id"])] = score
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--suite", default=None)
    parser.add_argument("--limit", type=int, default=20, help="items per task (default 20; 0 = all)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    from forgetless_trainer.modeling import load_model_and_tokenizer

    model_name = args.model or default_model()
    suite_ref = args.suite or default_suite()
    model, tokenizer = load_model_and_tokenizer(ModelSpec(name=model_name), base_dir=Path.cwd())
    suite = load_suite(suite_ref, base_dir=Path.cwd()).subset(args.limit or None)
    print(f"model {model_name}  suite {suite.name} ({len(suite)} items, {len(suite.tasks)} tasks)  "
          f"threads {args.threads}  batch {args.batch_size}")

    evaluate_suite(model, tokenizer, suite.subset(2), batch_size=args.batch_size)  # warm-up
    began = time.perf_counter()
    batched = evaluate_suite(model, tokenizer, suite, batch_size=args.batch_size)
    batched_s = time.perf_counter() - began

    began = time.perf_counter()
    naive = naive_scores(model, tokenizer, suite)
    naive_s = time.perf_counter() - began

    differing = [f"{i.task}/{i.id}" for i in batched.items if naive[(i.task, i.id)] != i.score]
    batched_rate, naive_rate = len(suite) / batched_s, len(suite) / naive_s
    ratio = batched_rate / naive_rate
    print(f"batched evaluator : {batched_rate:8.1f} items/s  ({batched_s:.2f} s)")
    print(f"naive loop        : {naive_rate:8.1f} items/s  ({naive_s:.2f} s)")
    print(f"speed-up          : {ratio:8.2f}x  (goal >= {GOAL:.0f}x: {'met' if ratio >= GOAL else 'NOT met'})")
    print(f"scores identical  : {not differing}  categories {json.dumps({k: round(v, 3) for k, v in batched.category_scores().items()})}")
    if args.json:
        args.json.write_text(json.dumps({
            "model": model_name, "suite": suite.name, "items": len(suite), "threads": args.threads,
            "batchSize": args.batch_size, "batchedItemsPerSecond": batched_rate, "naiveItemsPerSecond": naive_rate,
            "speedup": ratio, "identicalScores": not differing, "categoryScores": batched.category_scores(),
        }, indent=2) + "\n")
    assert not differing, f"batched and naive scores differ on {len(differing)} items: {differing[:10]}"
    return 0 if ratio >= GOAL else 1


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
