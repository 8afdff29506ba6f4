"""`forgetless evaluate --model M [--adapter A] --suite S [--json] [--limit N]`: score a model on a suite.

Prints per-category and per-task scores (a table, or JSON with --json); `--output FILE` keeps the
item-level results (the format of WORKDIR/baseline/results.json). Torch is imported inside main only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from forgetless import exit_codes

NAME = "evaluate"
HELP = "score a model (optionally with an adapter) on a regression suite"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="bundled:<name>, a model directory, or a Hugging Face id")
    parser.add_argument("--revision", help="Hugging Face revision of --model")
    parser.add_argument("--adapter", type=Path, help="a peft adapter directory (or a full fine-tuned model)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--suite", help="bundled:<name> or a suite directory (with suite.json)")
    source.add_argument(
        "--lm-eval-tasks", help="comma-separated lm-evaluation-harness tasks, optionally name:category (needs lm-eval)"
    )
    parser.add_argument("--limit", type=int, help="first N items of every task")
    parser.add_argument("--batch-size", type=int, default=32, help="items per batch (default 32)")
    parser.add_argument("--json", action="store_true", help="print the scores as JSON")
    parser.add_argument("--output", type=Path, help="write the item-level results to this JSON file")


def _fail(message: str) -> int:
    print(f"forgetless evaluate: {message}", file=sys.stderr)
    return exit_codes.INVALID


def render(result) -> str:
    lines = [f"suite {result.suite} ({result.digest[:19]}…), {len(result.items)} items in {result.seconds:.1f} s", ""]
    lines.append(f"{'category':<24}{'score':>7}")
    for category, score in result.category_scores().items():
        lines.append(f"{category:<24}{score:7.3f}")
    mean = result.mean_general_score()
    if mean is not None:
        lines.append(f"{'mean (general)':<24}{mean:7.3f}")
    lines += ["", f"{'task':<24}{'category':<24}{'score':>7}"]
    for task, score in result.task_scores().items():
        lines.append(f"{task:<24}{result.tasks.get(task, ''):<24}{score:7.3f}")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    from forgetless_trainer import quiet, threads  # before torch/transformers are imported

    threads.prepare_environment()  # idle OpenMP threads sleep: set before torch loads
    quiet.silence()
    if args.limit is not None and args.limit < 1:
        return _fail(f"--limit must be at least 1, got {args.limit}")
    if args.batch_size < 1:
        return _fail(f"--batch-size must be at least 1, got {args.batch_size}")
    from pydantic import ValidationError

    from forgetless.api.schema import ModelSpec, RegressionSpec, SuiteSpec

    try:
        if args.suite is not None:
            suite = SuiteSpec(path=args.suite)
        else:
            suite = SuiteSpec(lmEvalTasks=[t.strip() for t in args.lm_eval_tasks.split(",") if t.strip()])
        model_spec = ModelSpec(name=args.model, revision=args.revision)
    except ValidationError as exc:
        return _fail(f"invalid arguments: {exc.errors()[0]['msg']}")

    from forgetless_trainer.evaluation.runner import load_and_evaluate, resolve_target
    from forgetless.errors import StageError

    try:
        target = resolve_target(RegressionSpec(suite=suite), base_dir=Path.cwd())
        learned = [t.name for t in (target.suite.tasks if target.suite else ()) if t.needs_learned_detector()]
        if learned:  # scored by a detector learned from a job's task data: there is none here
            print(f"note: {', '.join(learned)} not scored: a format_leak task without leak_pattern is scored by the "
                  "format detector a FineTuneJob learns from its task data (docs/your-own-task.md)", file=sys.stderr)
            target = target.with_learned(learned).without_learned()
        result = load_and_evaluate(
            model_spec, target, adapter_path=args.adapter, limit=args.limit, batch_size=args.batch_size,
            base_dir=Path.cwd(),
        )
    except StageError as exc:
        return _fail(str(exc))
    if args.output:
        result.save(args.output)
    if args.json:
        document = result.summary("evaluate")
        document.update({"suite": result.suite, "digest": result.digest, "seconds": round(result.seconds, 3),
                         "meanGeneralScore": result.mean_general_score()})
        print(json.dumps(document, indent=2, sort_keys=True))
    else:
        print(render(result))
    return exit_codes.OK
