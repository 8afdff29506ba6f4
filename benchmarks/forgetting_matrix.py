"""The forgetting matrix: every mitigation policy on the same narrow task, side by side, in one run.

    python benchmarks/forgetting_matrix.py [--model tiny-world|smollm2] [--out runs/matrix] [--only naive,recommended]

Runs the full local pipeline (baseline → train → evaluate → gate, the code `forgetless run`
uses) for each policy on the bundled world, with one shared baseline cache, then prints one table:
task score, general score retained per category, gate verdict and wall time; then checks the
goals of the demo (recommended keeps ≥ 98 % and reaches ≥ 95 % of naive's task score; naive keeps
≤ 85 % and is blocked; LoRA forgets less than full fine-tuning).

`--model smollm2` runs the same policies on SmolLM2-135M-Instruct (the `smollm2` extra) from
`examples/smollm2-*.yaml` (support-triage-en task, general-en-v1 suite, self-rehearsal general
data) and checks issue 21's goals: naive blocked with at least two categories failing beyond noise
(the lower bound of the drop above its threshold); recommended passes with task ≥ 0.9 × naive's and
≥ 97 % of the general mean kept. It also prints the "LoRA learns less and forgets less" check
(Biderman et al., 2024): LoRA's mean drop against full fine-tuning's, with their task scores. On a
2-core CPU run rows in parallel processes with one torch thread each (`--only`).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
GENERAL = ("instruction_following", "format", "knowledge", "reasoning", "safety")
SHORT = {"instruction_following": "instr", "format": "format", "knowledge": "know", "reasoning": "reason", "safety": "safety"}


def _example(name: str) -> dict[str, Any]:
    return yaml.safe_load((REPO / "examples" / f"{name}.yaml").read_text())


def _variant(base: str, name: str, **spec_patch: Any) -> dict[str, Any]:
    doc = copy.deepcopy(_example(base))
    doc["metadata"]["name"] = name
    for dotted, value in spec_patch.items():
        node = doc["spec"]
        keys = dotted.split("__")
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        if value is None:
            node.pop(keys[-1], None)
        else:
            node[keys[-1]] = value
    doc["spec"].get("output", {}).pop("path", None)
    return doc


def policies() -> dict[str, list[dict[str, Any]]]:
    """name -> the job(s) it runs (a sequential pair has two; the second starts from the first's model)."""
    return {
        "naive full FT": [_variant("naive", "m-naive")],
        "full + low LR + early stop": [_variant("low-lr-early-stop", "m-lowlr")],
        "full + EWC": [_variant("ewc", "m-ewc")],
        "LoRA (no mixing)": [
            _variant("recommended", "m-lora", mitigation__dataMixing={"generalFraction": 0.0}, mitigation__earlyStopping=None,
                     mitigation__selfDistillation=None)  # self-distillation needs general rows to distil on
        ],
        "LoRA + 60% mix (recommended)": [_variant("recommended", "m-recommended")],
        "LoRA + mix + replay (pair)": [_variant("replay-1", "m-replay-1"), _variant("replay-2", "m-replay-2")],
        # the forgetting budget on the naive recipe: today's stop-at-first-breach vs the controller
        "naive + budget (stop)": [_variant("naive", "m-budget-stop", mitigation__forgettingBudget=dict(
            BUDGET, onBreach="Stop"))],
        "naive + budget (controller)": [_variant("naive", "m-budget-ctl", mitigation__forgettingBudget=dict(
            BUDGET, onBreach="Adjust"))],
    }


def smollm2_policies() -> dict[str, list[dict[str, Any]]]:
    """The matrix on SmolLM2-135M-Instruct; every row from examples/smollm2-naive.yaml or -recommended.yaml."""
    general = {"path": "bundled:general-chat-en"}
    return {
        "naive full FT": [_variant("smollm2-naive", "s-naive")],
        "full + low LR + early stop": [_variant("smollm2-naive", "s-lowlr", training__learningRate=2e-5,
                                                mitigation__earlyStopping={"patience": 2, "evalIntervalSteps": 20})],
        "full + EWC": [_variant("smollm2-naive", "s-ewc", dataset__general=general,
                                mitigation__ewc={"lambda": 5000.0, "fisherSamples": 64})],
        "LoRA (no mixing)": [_variant("smollm2-recommended", "s-lora", mitigation__dataMixing={"generalFraction": 0.0})],
        "LoRA + mix (recommended)": [_variant("smollm2-recommended", "s-recommended")],
        "naive + budget (controller)": [_variant("smollm2-naive", "s-budget-ctl", dataset__general=general,
                                                 mitigation__forgettingBudget={"maxDrop": 0.05, "probeIntervalSteps": 20,
                                                                               "probeItems": 8})],
    }


MODELS = {"tiny-world": policies, "smollm2": smollm2_policies}


def _recommended_row(by_name: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    return next((row for name, row in by_name.items() if "(recommended)" in name), None)


def smollm2_checks(by_name: dict[str, dict[str, Any]]) -> list[tuple[str, bool]]:
    naive, recommended = by_name.get("naive full FT"), _recommended_row(by_name)
    checks = []
    if naive:
        beyond = [c for c in naive["categories"] if c["dropLower"] > c["threshold"]]
        checks.append((f"naive blocked with >= 2 categories failing beyond noise ({', '.join(c['category'] for c in beyond) or 'none'})",
                       naive["verdict"] == "Failed" and len(beyond) >= 2))
    if recommended:
        checks.append(("recommended passes", recommended["verdict"] == "Passed"))
        checks.append((f"recommended keeps >= 97 % of the general mean ({100 * recommended['mean_retained']:.1f} %)",
                       recommended["mean_retained"] >= 0.97))
    if naive and recommended:
        checks.append((f"recommended task >= 0.9 x naive's ({recommended['task']:.2f} vs {naive['task']:.2f})",
                       recommended["task"] >= 0.9 * naive["task"]))
    return checks


BUDGET = {"maxDrop": 0.05, "probeIntervalSteps": 25}
"""The budget of both rows (the controller's other settings are the schema's defaults)."""


def _first_task_retention(job_document: dict[str, Any], workdir: Path) -> float:
    """Score of the pair's final model on the FIRST job's task (world-v1's support tickets)."""
    from forgetless.api.manifests import validate_document
    from forgetless.suites import load_suite
    from forgetless_trainer.evaluation.evaluator import evaluate_suite
    from forgetless_trainer.modeling import load_model_and_tokenizer

    job = validate_document(job_document)
    suite = load_suite("bundled:world-v1")
    tickets = [task for task in suite.tasks if task.category == "task"]
    model, tokenizer = load_model_and_tokenizer(job.spec.model, adapter_path=workdir / "train" / "output")
    result = evaluate_suite(model, tokenizer, type(suite)(suite.name, suite.version, tuple(tickets)))
    return result.category_scores()["task"]


def _run(document: dict[str, Any], workdir: Path) -> Any:
    from forgetless.api.manifests import validate_document
    from forgetless_cli.local.pipeline import execute
    from forgetless_cli.local.workdir import preflight, prepare_workdir

    job = validate_document(document)
    preflight(job)
    prepare_workdir(job, workdir, restart=False)
    return execute(job, workdir, log=lambda message: print(f"    {message}", file=sys.stderr))


def _mean(scores: dict[str, float]) -> float:
    present = [scores[c] for c in GENERAL if c in scores]
    return sum(present) / len(present)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "matrix")
    parser.add_argument("--model", choices=sorted(MODELS), default="tiny-world")
    parser.add_argument("--only", help="comma-separated policy names (substring match)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--format-detector", choices=("Auto", "Learned", "Pattern"),
                        help="regression.formatLeak.detector for every job (Learned: the detector learned at baseline "
                        "in place of the suites' hand regexes)")
    args = parser.parse_args()
    os.environ.setdefault("FORGETLESS_CACHE_DIR", str(args.out / "baseline-cache"))

    rows = []
    for policy, documents in MODELS[args.model]().items():
        if args.only and not any(part in policy for part in args.only.split(",")):
            continue
        print(f"== {policy}", file=sys.stderr)
        started = time.monotonic()
        chain = []
        for document in documents:
            if args.format_detector:
                document["spec"].setdefault("regression", {})["formatLeak"] = {"detector": args.format_detector}
            if chain:  # the pair's second job starts from the first's model and replays its buffer
                promoted = chain[-1].promoted_model  # written by the first job's evaluate stage
                if promoted is None:
                    raise SystemExit(f"{policy}: the first job was not promoted ({chain[-1].status['verdict']})")
                document["spec"]["model"]["name"] = promoted["path"]
                for source in document["spec"].get("mitigation", {}).get("replay", {}).get("sources", []):
                    source["path"] = str(chain[-1].workdir)
            chain.append(_run(document, args.out / document["metadata"]["name"]))
        result = chain[-1]
        first_task_after = (
            _first_task_retention(documents[-1], chain[-1].workdir) if len(chain) > 1 else None
        )
        status = result.status
        rows.append(
            {
                "policy": policy,
                "task": result.final.get("task"),
                "task_baseline": result.baseline.get("task"),
                "retained": {c: result.final[c] / result.baseline[c] for c in GENERAL if result.baseline.get(c)},
                "mean_retained": _mean(result.final) / _mean(result.baseline),
                "verdict": status["verdict"],
                "reasons": status.get("reasons", []),
                "seconds": time.monotonic() - started,
                "first_job_task": chain[0].final.get("task") if len(chain) > 1 else None,
                "adjustments": result.summaries["train"].get("adjustments"),
                "mean_drop": status.get("meanDrop"),
                "categories": status.get("categories", []),
                "stopped_reason": result.summaries["train"].get("stoppedReason"),
                "first_job_task_after_second": first_task_after,
            }
        )

    header = f"{'policy':<30} {'task':>5} " + " ".join(f"{SHORT[c]:>7}" for c in GENERAL) + f" {'mean':>6} {'gate':>7} {'time':>6}"
    print(header)
    for row in rows:
        cells = " ".join(f"{row['retained'].get(c, float('nan')) * 100:6.1f}%" for c in GENERAL)
        print(
            f"{row['policy']:<30} {row['task']:5.2f} {cells} {row['mean_retained'] * 100:5.1f}% "
            f"{row['verdict']:>7} {row['seconds'] / 60:5.1f}m"
        )
    print("(task: exact match on the job's held-out task items; other columns: share of the base model's score kept)")
    for row in rows:
        if row["first_job_task"] is not None:
            print(
                f"{row['policy']}: first task (support tickets) {row['first_job_task']:.2f} after job 1, "
                f"{row['first_job_task_after_second']:.2f} after job 2 (orders {row['task']:.2f})"
            )
    for row in rows:
        if row.get("adjustments") is not None:
            steps = "; ".join(f"step {a['step']}: lr x{a['learningRateScale']:g}, +{a['extraGeneralFraction']:.0%} general"
                              for a in row["adjustments"]) or "none"
            print(f"{row['policy']}: stopped {row['stopped_reason']}; adjustments: {steps}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))

    by_name = {row["policy"]: row for row in rows}
    lora, full = by_name.get("LoRA (no mixing)"), by_name.get("naive full FT")
    if lora and full:
        print(f"LoRA learns less and forgets less? LoRA (no mixing): task {lora['task']:.2f}, mean drop "
              f"{lora['mean_drop']:+.3f}; full fine-tuning: task {full['task']:.2f}, mean drop {full['mean_drop']:+.3f}")
    if args.model == "smollm2":
        checks = smollm2_checks(by_name)
        for label, ok in checks:
            print(f"{'PASS' if ok else 'MISS'}  {label}")
        return 0 if all(ok for _, ok in checks) else 1
    naive, recommended = by_name.get("naive full FT"), _recommended_row(by_name)
    checks = []
    if recommended:
        checks.append(("recommended keeps >= 98% of the mean general score", recommended["mean_retained"] >= 0.98))
        checks.append(("recommended gate passes", recommended["verdict"] == "Passed"))
    if naive:
        checks.append(("naive keeps <= 85% of the mean general score", naive["mean_retained"] <= 0.85))
        checks.append(("naive gate blocks", naive["verdict"] == "Failed"))
    if naive and recommended:
        checks.append(("recommended reaches >= 95% of naive's task score", recommended["task"] >= 0.95 * naive["task"]))
    if lora and full:
        label = f"LoRA forgets less than full fine-tuning (task {lora['task']:.2f} vs {full['task']:.2f})"
        checks.append((label, lora["mean_retained"] > full["mean_retained"]))
    controller, stop = by_name.get("naive + budget (controller)"), by_name.get("naive + budget (stop)")
    if controller:
        checks.append(("budget controller reaches task >= 0.90", controller["task"] >= 0.90))
        checks.append(("budget controller keeps >= 95% of the mean general score", controller["mean_retained"] >= 0.95))
        checks.append(("budget controller's gate passes", controller["verdict"] == "Passed"))
    if stop:
        checks.append((f"budget stop (today's) learns little (task {stop['task']:.2f})", stop["task"] < 0.10))
    for label, ok in checks:
        print(f"{'PASS' if ok else 'MISS'}  {label}")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
