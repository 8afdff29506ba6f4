"""The learned format detector against the hand regexes it replaces, and what it costs, from finished runs.

    python benchmarks/format_detector.py RUN_DIR[:SUITE] [RUN_DIR[:SUITE] ...]

Each RUN_DIR is a `forgetless run` work dir whose job learned a format detector (its suite's
format_leak items scored by it: general-en-v2, or `regression.formatLeak.detector: Learned`).
SUITE names the suite whose hand regex (`leak_pattern`) was written for the run's task —
`bundled:world-v1` (support tickets), `bundled:world-v1-orders` (orders), `bundled:general-en-v1`
(support triage) — default: the run's own suite.

For every answer to an open-ended format prompt, the base model's (baseline/results.json) and the
fine-tuned model's (evaluate/results.json), it compares the detector's verdict (the items' scores:
the baseline's are out-of-fold) with the regex's, and prints per run: answers, agreement, leaks the
regex finds and how many of them the detector finds too, leaks only the detector finds. Then the
cost: the detector's fitting and calibration at baseline and its scoring at evaluate, as a share of
that stage's evaluation time (results' `seconds`), measured in the same run.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _collapse(text: str) -> str:
    return " ".join(text.lower().split())


def _pattern(suite_ref: str) -> re.Pattern:
    from forgetless.suites import load_suite

    suite = load_suite(suite_ref)
    patterns = [t.options["leak_pattern"] for t in suite.tasks if t.scorer == "format_leak" and t.options.get("leak_pattern")]
    if not patterns:
        raise SystemExit(f"{suite_ref} has no format_leak task with a leak_pattern to compare with")
    return re.compile(patterns[0])


def compare(run: Path, suite_ref: str | None) -> dict:
    job = json.loads((run / "job.json").read_text()) if (run / "job.json").exists() else None
    if suite_ref is None:
        suite_ref = ((job or {}).get("spec", {}).get("regression", {}).get("suite") or {}).get("path")
    pattern = _pattern(suite_ref)
    documents = {stage: json.loads((run / stage / "results.json").read_text()) for stage in ("baseline", "evaluate")}
    rows = []
    for stage, results in documents.items():
        leak_tasks = {t for t, c in results["tasks"].items() if c == "format" and "leak" in t}
        for item in results["items"]:
            if item["task"] in leak_tasks:
                rows.append((stage, pattern.match(_collapse(item["answer"])) is not None, item["score"] < 0.5))
    regex_leaks = sum(r for _, r, _ in rows)
    caught = sum(d for _, r, d in rows if r)
    only_detector = sum(d and not r for _, r, d in rows)
    base, final = documents["baseline"], documents["evaluate"]
    calibration = base["meta"].get("formatDetector") or {}
    return {
        "run": run.name, "suite": suite_ref, "answers": len(rows),
        "agreement": sum(r == d for _, r, d in rows) / max(len(rows), 1),
        "regex_leaks": regex_leaks, "caught": caught, "only_detector": only_detector,
        "fit_seconds": calibration.get("seconds"), "baseline_eval_seconds": base.get("seconds"),
        "score_seconds": final["meta"].get("formatDetectorSeconds"), "evaluate_eval_seconds": final.get("seconds"),
        "detection": calibration.get("detectionRate"), "false_positives": calibration.get("falsePositiveRate"),
    }


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    print("| run | regex of | answers | agreement | regex leaks | caught | detector only | detection | false pos. "
          "| fit / baseline eval | scoring / evaluate eval |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for arg in argv:
        path, _, suite = arg.partition(":")
        row = compare(Path(path), suite or None)
        fit = (f"{row['fit_seconds']:.2f} s / {row['baseline_eval_seconds']:.1f} s = "
               f"{row['fit_seconds'] / row['baseline_eval_seconds']:.1%}") if row["fit_seconds"] else "—"
        score = (f"{row['score_seconds'] * 1000:.1f} ms / {row['evaluate_eval_seconds']:.1f} s = "
                 f"{row['score_seconds'] / row['evaluate_eval_seconds']:.2%}") if row["score_seconds"] else "—"
        print(f"| {row['run']} | {row['suite']} | {row['answers']} | {row['agreement']:.1%} | {row['regex_leaks']} | "
              f"{row['caught']} | {row['only_detector']} | {row['detection']} | {row['false_positives']} | {fit} | {score} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
