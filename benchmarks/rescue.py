"""Rescue by weight interpolation next to retraining with the recommended policy, in one run.

    python benchmarks/rescue.py [--out runs/rescue] [--only naive,low-lr,ewc,recommended] [--cores N]

Runs real `forgetless run` processes (one torch thread each, side by side as far as the cores allow,
each with its own work dir and baseline cache):

- `examples/naive.yaml`, `examples/low-lr-early-stop.yaml` and `examples/ewc.yaml`, each with
  `regression.rescue: {interpolation: {maxEvaluations: 6}}`: the α found, task score and share kept on
  the confirmation half, the evaluations spent, the rescue's wall time;
- `examples/recommended.yaml` as it is: what retraining with the production rule costs (its train
  stage's wall time) and gives.

Then the goal checks of issue #22: naive rescued with task ≥ 0.80 and ≥ 95 % kept (confirmed), in
≤ 6 evaluations and in ≤ 25 % of the recommended policy's training time. Wall times are only
comparable within one invocation (the same machine, the same load).

`--model smollm2` runs `examples/smollm2-naive.yaml` with the rescue instead (SmolLM2-135M-Instruct,
the `smollm2` extra; ~20 min of training on one thread) next to `examples/smollm2-recommended.yaml`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
RESCUE = {"interpolation": {"maxEvaluations": 6}}
ROWS = {
    "tiny-world": {"naive": ("naive", True), "low-lr": ("low-lr-early-stop", True), "ewc": ("ewc", True),
                   "recommended": ("recommended", False)},
    "smollm2": {"naive": ("smollm2-naive", True), "recommended": ("smollm2-recommended", False)},
}
GOAL_TASK, GOAL_KEPT, GOAL_EVALUATIONS, GOAL_TIME_SHARE = 0.80, 0.95, 6, 0.25


def start(name: str, example: str, rescue: bool, out: Path) -> tuple[subprocess.Popen, dict]:
    run_dir = out / name
    run_dir.mkdir(parents=True, exist_ok=True)
    doc = yaml.safe_load((REPO / "examples" / f"{example}.yaml").read_text())
    doc["metadata"]["name"] = f"rescue-{name}"
    if rescue:
        doc["spec"].setdefault("regression", {})["rescue"] = RESCUE
    manifest = run_dir / "job.yaml"
    manifest.write_text(yaml.safe_dump(doc, sort_keys=False))
    env = dict(os.environ, FORGETLESS_THREADS="1", OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE",
               FORGETLESS_CACHE_DIR=str(run_dir / "cache"))
    log = (run_dir / "run.log").open("w")
    process = subprocess.Popen([sys.executable, "-m", "forgetless_cli", "run", str(manifest), "--workdir",
                                str(run_dir / "work"), "--restart"], stdout=log, stderr=subprocess.STDOUT, env=env)
    return process, {"name": name, "example": example, "rescue": rescue, "dir": run_dir, "began": time.monotonic()}


def collect(run: dict) -> dict:
    work = run["dir"] / "work"
    evaluate = json.loads((work / "evaluate" / "summary.json").read_text())
    train = json.loads((work / "train" / "summary.json").read_text())
    gate = evaluate["gate"]
    rescue = gate.get("rescue") or {}
    unrescued = evaluate.get("unrescuedScores") or evaluate["scores"]
    baseline = json.loads((work / "baseline" / "summary.json").read_text())["scores"]

    def kept(s):
        general = [c for c in s if c != "task" and c in baseline]
        return sum(s[c] for c in general) / sum(baseline[c] for c in general)

    return {**run, "verdict": gate["verdict"], "train_s": train.get("trainSeconds"),
            "task_before": unrescued.get("task"), "kept_before": kept(unrescued),
            "task": rescue.get("taskScore"), "kept": rescue.get("kept"),
            "alpha": rescue.get("alpha"), "evaluations": rescue.get("evaluations"), "rescue_s": rescue.get("seconds"),
            "trials": rescue.get("trials") or [], "message": rescue.get("message")}


def fmt(value, pattern: str, missing: str = "–") -> str:
    return missing if value is None else format(value, pattern)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "rescue")
    parser.add_argument("--model", choices=sorted(ROWS), default="tiny-world")
    parser.add_argument("--only", default="")
    parser.add_argument("--cores", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()
    rows = ROWS[args.model]
    names = [n for n in (args.only.split(",") if args.only else rows) if n]
    unknown = sorted(set(names) - set(rows))
    if unknown:
        parser.error(f"--only: unknown rows {unknown} (choose from {', '.join(rows)})")
    began = time.monotonic()
    pending, running, finished = list(names), [], []
    while pending or running:
        while pending and len(running) < max(1, args.cores):
            name = pending.pop(0)
            example, rescue = rows[name]
            running.append(start(name, example, rescue, args.out))
            print(f"started {name}", flush=True)
        time.sleep(2)
        for process, run in list(running):
            if process.poll() is not None:
                running.remove((process, run))
                run["wall_s"] = time.monotonic() - run["began"]
                try:
                    finished.append(collect(run))
                    print(f"finished {name_of(run)}: exit {process.returncode} in {run['wall_s']:.0f} s", flush=True)
                except (OSError, ValueError, KeyError) as exc:
                    print(f"{name_of(run)} failed (exit {process.returncode}): {exc}; see {run['dir'] / 'run.log'}")
    print(f"\nbenchmarks/rescue.py --model {args.model}: {len(finished)} runs, one torch thread each, "
          f"{args.cores} cores, {(time.monotonic() - began) / 60:.1f} min in all\n")
    print("| run | task / kept (fine-tuned) | verdict | α | task / kept (confirmation half) | evaluations | rescue | train stage |")
    print("|---|---|---|---:|---|---:|---:|---:|")
    for r in finished:
        print(f"| {r['name']} | {fmt(r['task_before'], '.3f')} / {fmt(r['kept_before'], '.1%')} | {r['verdict']} | "
              f"{fmt(r['alpha'], 'g')} | {fmt(r['task'], '.3f')} / {fmt(r['kept'], '.1%')} | {fmt(r['evaluations'], 'd')} | "
              f"{fmt(r['rescue_s'], '.0f')} s | {fmt(r['train_s'], '.0f')} s |")
    for r in finished:
        if r["trials"]:
            tried = ", ".join(f"{t['alpha']:g}/{t['half'][:4]}: {fmt(t.get('taskScore'), '.2f')} "
                              f"{fmt(t.get('kept'), '.1%')} {t['verdict']}" for t in r["trials"])
            print(f"\n{r['name']} trials (α/half: task kept gate): {tried}\n  {r['message']}")
    by_name = {r["name"]: r for r in finished}
    naive, recommended = by_name.get("naive"), by_name.get("recommended")
    if naive is None:
        return 0
    checks = [
        ("naive rescued (confirmed)", naive["verdict"] == "Rescued"),
        (f"naive task ≥ {GOAL_TASK} at α", (naive["task"] or 0) >= GOAL_TASK),
        (f"naive kept ≥ {GOAL_KEPT:.0%} at α (confirmation half)", (naive["kept"] or 0) >= GOAL_KEPT),
        (f"≤ {GOAL_EVALUATIONS} evaluations", (naive["evaluations"] or 99) <= GOAL_EVALUATIONS),
    ]
    if recommended is not None and naive["rescue_s"] and recommended["train_s"]:
        share = naive["rescue_s"] / recommended["train_s"]
        print(f"\nrescue time / recommended training time: {naive['rescue_s']:.0f} s / {recommended['train_s']:.0f} s = {share:.0%}")
        checks.append((f"rescue ≤ {GOAL_TIME_SHARE:.0%} of the recommended policy's training time", share <= GOAL_TIME_SHARE))
    print()
    for label, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {label}")
    return 0 if all(ok for _, ok in checks) else 1


def name_of(run: dict) -> str:
    return run["name"]


if __name__ == "__main__":
    sys.exit(main())
