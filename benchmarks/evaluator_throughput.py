#!/usr/bin/env python3
"""Evaluator throughput: the batched evaluator vs a naive one-item-at-a-time loop.

Both score the same model on the same suite; the naive loop calls `model.generate` once per
generation item and runs one forward pass per multiple-choice option. Per-item scores must be
identical (asserted); the goal is a ≥ 4× speed-up in items/s.

Model: --model (a directory or bundled:<name>); by default bundled:tiny-world when it is
installed, else the tiny random word-level Llama of tests/support/tiny_models.py (built in a temp dir).
Suite: --suite (default bundled:world-v1, else the fixture suite tests/fixtures/suites/mini).

`--lm-eval`: instead, the suite's multiple-choice items through lm-evaluation-harness's HF backend
(local tasks over the same items, the same rendered contexts, same model and batch size) next to
the evaluator: items/s of each and per-item agreement (goals: ≥ 99 % agreement, ≥ 1.2× items/s).
On the real model: --model bundled:smollm2-135m-instruct --suite bundled:general-en-v1 --lm-eval.

Usage: python benchmarks/evaluator_throughput.py [--limit 20] [--batch-size 32] [--threads 2] [--json out.json] [--lm-eval]
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


LM_EVAL_GOAL_AGREEMENT, LM_EVAL_GOAL_SPEED = 0.99, 1.2


def mc_only(suite: Suite) -> Suite:
    tasks = tuple(t for t in suite.tasks if not t.is_generation)
    return Suite(suite.name, suite.version, tasks, suite.description, suite.root, suite.limit)


def lm_eval_side_by_side(model, tokenizer, suite: Suite, batch_size: int) -> dict:
    """The suite's multiple-choice items through lm-evaluation-harness's HF backend (a local task per
    suite task over a JSONL of the same items, the context rendered exactly as the evaluator renders
    it, choices after a space) next to forgetless's evaluator: items/s and per-item agreement of the
    chosen answer (lm-eval's log-likelihoods, divided by the continuation's tokens where the suite's
    task is `length_normalized`, as the evaluator scores it)."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from forgetless_trainer.chat import chat_format

    fmt = chat_format(tokenizer)
    mc = mc_only(suite)
    folder = Path(tempfile.mkdtemp(prefix="lmeval-side-by-side-"))
    names = []
    for task in mc.tasks:
        rows = [{"id": item["id"], "context": fmt.generation_text(item["prompt"]) if fmt else generation_input(item["prompt"]),
                 "choices": list(item["choices"]), "target": item["target_index"]} for item in task.items]
        data = folder / f"{task.name}.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        name = f"fl_{task.name}"
        names.append(name)
        (folder / f"{name}.yaml").write_text("\n".join([
            f"task: {name}", "dataset_path: json", f"dataset_kwargs:\n  data_files:\n    test: {data}",
            "test_split: test", "output_type: multiple_choice", 'doc_to_text: "{{context}}"',
            "doc_to_choice: choices", "doc_to_target: target", 'target_delimiter: " "',
            "metric_list:\n  - metric: acc", ""]))
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    manager = TaskManager(include_path=str(folder))
    ours_began = time.perf_counter()
    ours = evaluate_suite(model, tokenizer, mc, batch_size=batch_size)
    ours_s = time.perf_counter() - ours_began
    lm_eval.simple_evaluate(model=lm, tasks=names, task_manager=manager, limit=2, batch_size=batch_size,
                            verbosity="ERROR")  # warm-up: task loading and dataset building are not timed
    began = time.perf_counter()
    result = lm_eval.simple_evaluate(model=lm, tasks=names, task_manager=manager, log_samples=True,
                                     batch_size=batch_size, verbosity="ERROR")
    theirs_s = time.perf_counter() - began
    theirs = {}
    for task in mc.tasks:
        for sample in result["samples"][f"fl_{task.name}"]:
            logliks = [float(r[0]) for r in sample["filtered_resps"]]
            if task.options.get("length_normalized"):  # scored per token, as the suite says: lm-eval's own
                # log-likelihoods over the same continuation tokens (its acc_norm divides by characters instead)
                logliks = [v / max(1, len(tokenizer(" " + c, add_special_tokens=False)["input_ids"]))
                           for v, c in zip(logliks, sample["doc"]["choices"])]
            best = max(range(len(logliks)), key=lambda i: (logliks[i], -i))
            theirs[(task.name, sample["doc"]["id"])] = float(best == sample["doc"]["target"])
    same = sum(theirs[(i.task, i.id)] == i.score for i in ours.items)
    n = len(ours.items)
    return {"items": n, "forgetlessItemsPerSecond": n / ours_s, "lmEvalItemsPerSecond": n / theirs_s,
            "speedup": (n / ours_s) / (n / theirs_s), "agreement": same / n,
            "lmEvalVersion": lm_eval.__version__}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--suite", default=None)
    parser.add_argument("--limit", type=int, default=20, help="items per task (default 20; 0 = all)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--lm-eval", action="store_true",
                        help="instead: the multiple-choice items next to lm-evaluation-harness's HF backend "
                             "(the `lmeval` extra): items/s and per-item agreement")
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

    if args.lm_eval:
        evaluate_suite(model, tokenizer, mc_only(suite).subset(2), batch_size=args.batch_size)  # warm-up
        found = lm_eval_side_by_side(model, tokenizer, suite, args.batch_size)
        print(f"multiple-choice items: {found['items']} (lm-eval {found['lmEvalVersion']}, HF backend, same model, "
              f"same contexts, batch {args.batch_size})")
        print(f"forgetless evaluator : {found['forgetlessItemsPerSecond']:8.2f} items/s")
        print(f"lm-eval HFLM         : {found['lmEvalItemsPerSecond']:8.2f} items/s")
        print(f"speed ratio          : {found['speedup']:8.2f}x  (goal >= {LM_EVAL_GOAL_SPEED}x: "
              f"{'met' if found['speedup'] >= LM_EVAL_GOAL_SPEED else 'NOT met'})")
        print(f"per-item agreement   : {found['agreement']:8.1%}  (goal >= {LM_EVAL_GOAL_AGREEMENT:.0%}: "
              f"{'met' if found['agreement'] >= LM_EVAL_GOAL_AGREEMENT else 'NOT met'})")
        if args.json:
            args.json.write_text(json.dumps({"model": model_name, "suite": suite.name, "threads": args.threads,
                                             "batchSize": args.batch_size, **found}, indent=2) + "\n")
        return 0 if found["speedup"] >= LM_EVAL_GOAL_SPEED and found["agreement"] >= LM_EVAL_GOAL_AGREEMENT else 1

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
