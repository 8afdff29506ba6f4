"""How often a fine-tuned model answers unrelated prompts in its task's format, on more prompts than the gate saw.

    python benchmarks/leak_probe.py RUN_DIR [RUN_DIR ...] [--suite bundled:general-en-v2]

For each `forgetless run` work dir (a job whose format detector was learned at baseline:
RUN_DIR/baseline/format_detector.json), the fine-tuned model (RUN_DIR/train/output) answers every
open-ended format prompt of the suite (general-en-v2: 100 TruthfulQA questions; the gate with
`regression.limit: 50` sees the first 50) through its chat template, greedily, with the suite's
token budget; the run's own detector counts the answers in the task's format. The base model's
answers are counted once per model, the same way. Prints per run: leaks / prompts, on the gate's
prompts and on the others, with the leaking prompts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--suite", default="bundled:general-en-v2")
    args = parser.parse_args()

    import torch

    from forgetless.api.schema import FineTuneJob
    from forgetless.suites import Suite, load_suite
    from forgetless_trainer.chat import install_template
    from forgetless_trainer.evaluation.evaluator import evaluate_suite
    from forgetless_trainer.evaluation.format_detector import FormatDetector
    from forgetless_trainer.modeling import load_model_and_tokenizer

    torch.set_num_threads(1)
    suite = load_suite(args.suite)
    probe = next(t for t in suite.tasks if t.scorer == "format_leak")
    only = Suite(suite.name, suite.version, (probe,))
    prompts = {item["id"]: item["prompt"] for item in probe.items}
    base_counted: set[str] = set()
    for run in args.runs:
        job = FineTuneJob.model_validate(json.loads((run / "job.json").read_text()))
        detector = FormatDetector.load(run / "baseline")
        if detector is None:
            print(f"{run}: no learned format detector (baseline/format_detector.json)", file=sys.stderr)
            continue
        limit = job.spec.regression.limit
        targets = [("fine-tuned", run / "train" / "output")]
        if job.spec.model.name not in base_counted:
            targets.insert(0, ("base", None))
            base_counted.add(job.spec.model.name)
        for who, adapter in targets:
            began = time.perf_counter()
            model, tokenizer = load_model_and_tokenizer(job.spec.model, adapter_path=adapter)
            install_template(tokenizer, job.spec.dataset)
            result = evaluate_suite(model, tokenizer, only, batch_size=32, learned_tasks=[probe.name],
                                    leak_detector=detector.task_like)
            flags = [item.score < 1 for item in result.items]  # an item passes when its answer is not task-like
            gate_part = flags[:limit] if limit else flags
            rest = flags[limit:] if limit else []
            print(f"{run.name} ({who}): {sum(flags)} of {len(flags)} prompts answered in the task's format "
                  f"(the gate's first {len(gate_part)}: {sum(gate_part)}; the other {len(rest)}: {sum(rest)}) "
                  f"[{time.perf_counter() - began:.0f} s]")
            for item, flag in zip(result.items, flags):
                if flag:
                    print(f"    {prompts[item.id][:70]!r} -> {item.answer[:70]!r}")


if __name__ == "__main__":
    main()
