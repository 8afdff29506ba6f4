"""Is the recommended recipe robust? `examples/recommended.yaml` for seeds × torch thread counts.

    python benchmarks/recommended_robustness.py [--out runs/robustness] [--seeds 0,1,2,3,4] [--threads 1,2]

Each run is a real `forgetless run` (the quick start's command) in its own process, work dir and
baseline cache (so every run pays for its baseline, as a fresh clone does), with
`spec.training.seed` set and `FORGETLESS_THREADS` chosen. Runs go side by side as far as the cores
allow (`os.sched_getaffinity`): two one-thread runs on two cores, a two-thread run alone. A
different thread count changes the floating-point summation order, so it is a second source of
variation next to the seed.

Prints per run: task score, share kept per category, mean kept, the mean drop and its bounds, the
verdict and the wall time; then min / median kept and whether every run passed, and the goal checks
(all Passed, min kept ≥ 98.5 %, each run ≤ 5 min).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
GENERAL = ("instruction_following", "format", "knowledge", "reasoning", "safety")
SHORT = {"instruction_following": "instr", "format": "format", "knowledge": "know", "reasoning": "reason",
         "safety": "safety"}
GOAL_KEPT, GOAL_SECONDS = 0.985, 300.0


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    return "AVX-512" if "avx512f" in text else "AVX2, no AVX-512" if "avx2" in text else "no AVX2"


def start(manifest: dict, seed: int, threads: int, out: Path) -> tuple[subprocess.Popen, dict]:
    name = f"seed{seed}-t{threads}"
    run_dir = out / name
    run_dir.mkdir(parents=True, exist_ok=True)
    doc = json.loads(json.dumps(manifest))
    doc["metadata"]["name"] = f"robust-{name}"
    doc["spec"].setdefault("training", {})["seed"] = seed
    path = run_dir / "job.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    env = {**os.environ, "FORGETLESS_THREADS": str(threads), "OMP_NUM_THREADS": str(threads),
           "FORGETLESS_CACHE_DIR": str(run_dir / "cache")}
    log = open(run_dir / "run.log", "w")
    command = [sys.executable, "-m", "forgetless_cli", "run", str(path), "--workdir", str(run_dir / "work"), "--restart"]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    return process, {"name": name, "seed": seed, "threads": threads, "dir": run_dir, "began": time.monotonic(),
                     "log": log}


def collect(record: dict, returncode: int) -> dict:
    record["log"].close()
    wall = time.monotonic() - record["began"]
    work = record["dir"] / "work"
    row = {"name": record["name"], "seed": record["seed"], "threads": record["threads"], "exit": returncode,
           "wall_s": round(wall, 1)}
    try:
        report = json.loads((work / "report" / "gate.json").read_text())
    except (OSError, ValueError):
        row["verdict"] = f"error (exit {returncode}; see {record['dir'] / 'run.log'})"
        return row
    gate, base, final = report["gate"], report["baselineScores"], report["finalScores"]
    row["verdict"] = gate["verdict"]
    row["task"] = final.get("task")
    row["kept"] = {c: final[c] / base[c] for c in GENERAL if base.get(c)}
    row["mean_kept"] = sum(final[c] for c in GENERAL) / sum(base[c] for c in GENERAL)
    row["mean_drop"] = (gate["meanDrop"], gate["meanDropLower"], gate["meanDropUpper"])
    train = json.loads((work / "train" / "summary.json").read_text())
    row["steps"], row["train_s"] = train.get("steps"), train.get("trainSeconds")
    return row


def run_all(manifest: dict, seeds: list[int], thread_counts: list[int], out: Path, cores: int) -> list[dict]:
    # one-thread runs pair up on the cores; wider runs go alone (queue order: widest first)
    queue = sorted(((s, t) for t in thread_counts for s in seeds), key=lambda st: (-st[1], st[0]))
    running: list[tuple[subprocess.Popen, dict]] = []
    rows: list[dict] = []
    while queue or running:
        used = sum(r["threads"] for _, r in running)
        fits = [item for item in queue if used + item[1] <= cores or not running]
        if fits:
            item = fits[0]
            queue.remove(item)
            running.append(start(manifest, item[0], item[1], out))
            print(f"started {running[-1][1]['name']}", file=sys.stderr, flush=True)
            continue
        time.sleep(2)
        for process, record in list(running):
            if process.poll() is not None:
                running.remove((process, record))
                rows.append(collect(record, process.returncode))
                print(f"finished {record['name']}: {rows[-1]['verdict']} in {rows[-1]['wall_s']:.0f} s",
                      file=sys.stderr, flush=True)
    return sorted(rows, key=lambda r: (r["threads"], r["seed"]))


def table(rows: list[dict]) -> str:
    head = (f"| run | task | " + " | ".join(SHORT[c] for c in GENERAL)
            + " | mean kept | mean drop [bounds] | verdict | steps | wall |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        if "kept" not in r:
            lines.append(f"| {r['name']} | | | | | | | | | {r['verdict']} | | {r['wall_s']:.0f} s |")
            continue
        drop, lower, upper = r["mean_drop"]
        lines.append(
            f"| {r['name']} | {r['task']:.3f} | " + " | ".join(f"{100 * r['kept'][c]:.1f} %" for c in GENERAL)
            + f" | **{100 * r['mean_kept']:.1f} %** | {drop:+.4f} [{lower:+.4f}, {upper:+.4f}] | {r['verdict']} |"
            f" {r['steps']} | {r['wall_s'] / 60:.1f} m |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "robustness")
    parser.add_argument("--manifest", type=Path, default=REPO / "examples" / "recommended.yaml")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--cores", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    thread_counts = [int(t) for t in args.threads.split(",")]
    manifest = yaml.safe_load(args.manifest.read_text())
    began = time.monotonic()
    rows = run_all(manifest, seeds, thread_counts, args.out, args.cores)
    print(f"{args.manifest.relative_to(REPO) if args.manifest.is_relative_to(REPO) else args.manifest}: "
          f"seeds {args.seeds} × threads {args.threads}, {args.cores} cores ({cpu_model()}, {cpu_flags()}), "
          f"{(time.monotonic() - began) / 60:.1f} min in all")
    print(table(rows))
    kept = [r["mean_kept"] for r in rows if "mean_kept" in r]
    passed = [r for r in rows if r.get("verdict") == "Passed"]
    if kept:
        print(f"mean kept: min {100 * min(kept):.1f} %, median {100 * statistics.median(kept):.1f} %; "
              f"Passed {len(passed)}/{len(rows)}; wall per run: max {max(r['wall_s'] for r in rows) / 60:.1f} min")
    checks = [
        ("every run Passed", len(passed) == len(rows)),
        (f"min kept ≥ {100 * GOAL_KEPT:.1f} %", bool(kept) and len(kept) == len(rows) and min(kept) >= GOAL_KEPT),
        (f"each run ≤ {GOAL_SECONDS / 60:.0f} min", all(r["wall_s"] <= GOAL_SECONDS for r in rows)),
    ]
    for text, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")
    (args.out / "results.json").write_text(json.dumps(
        [{k: v for k, v in r.items()} for r in rows], indent=2, default=str))
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
