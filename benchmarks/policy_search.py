"""Policy search: the cheapest policy that passes the forgetting gate, grid vs successive halving.

    python benchmarks/policy_search.py [--out runs/policy-search] [--only grid|adaptive]
                                       [--task support-tickets|order-requests] [--space quick|full]

Template: examples/recommended.yaml (world-v1 gate; its r, general mix, learning rate and epochs
are the recommended candidate, read from the file). The space varies r ∈ {4, 16}, generalFraction ∈ {0.3, 0.45}, learningRate ∈ {1e-3,
2e-3} and epochs, and always includes the recommended policy itself (`spec.include`), so the grid
measures it in the same run. `--space full` uses epochs ∈ {4, 8} (16 candidates; ~75 min on a
2-core CPU for the grid alone); the default `medium` epochs ∈ {2, 4} and `quick` epochs ∈ {0.5, 1},
each plus the recommended candidate when its epochs are not in the space (docs/benchmarks.md's figures:
the previous recommended policy, 30 % mix, lr 1e-3, 8 epochs; ~45 and ~15 min for the grid). Both strategies run as local sweeps
(`forgetless sweep`'s code) in their own work dirs under --out, sharing only the baseline cache
(the adaptive strategy never reuses a grid trial). Re-running resumes both.

Prints each strategy's trial table, its total training seconds and its winner, then checks:
  - some policy passes the gate with task score ≥ the recommended candidate's (measured in the
    grid run) at a cost ≤ the recommended's;
  - the adaptive strategy trains ≤ 50 % of the grid's seconds.
`--task order-requests` runs the adaptive strategy on bundled:order-requests (suite
world-v1-orders) and prints its winner, to compare with the support-ticket winner.
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
for sub in ("core", "trainer", "cli"):
    sys.path.insert(0, str(REPO / sub))

SEARCHED = ("method.lora.r", "mitigation.dataMixing.generalFraction", "training.learningRate", "training.epochs")


def _recommended_policy() -> dict[str, Any]:
    """examples/recommended.yaml's values of the searched fields (the candidate always included)."""
    spec = yaml.safe_load((REPO / "examples" / "recommended.yaml").read_text())["spec"]
    policy = {}
    for dotted in SEARCHED:
        node: Any = spec
        for key in dotted.split("."):
            node = node[key]
        policy[dotted] = node
    return policy


RECOMMENDED = _recommended_policy()
SPACES = {
    "quick": [0.5, 1],
    "medium": [2, 4],
    "full": [4, 8],
}


def sweep_document(name: str, strategy: dict[str, Any], task: str, space: str) -> dict[str, Any]:
    template = copy.deepcopy(yaml.safe_load((REPO / "examples" / "recommended.yaml").read_text())["spec"])
    if task == "order-requests":
        template["dataset"]["task"]["path"] = "bundled:order-requests"
        template["regression"]["suite"]["path"] = "bundled:world-v1-orders"
    dims = [
        {"field": "method.lora.r", "values": [4, 16]},
        {"field": "mitigation.dataMixing.generalFraction", "values": [0.3, 0.45]},
        {"field": "training.learningRate", "values": [1e-3, 2e-3]},
        {"field": "training.epochs", "values": SPACES[space]},
    ]
    spec: dict[str, Any] = {"template": template, "searchSpace": dims, "strategy": strategy, "promote": "best"}
    if any(RECOMMENDED[d["field"]] not in d["values"] for d in dims):  # not a grid point: add it
        spec["include"] = [RECOMMENDED]
    return {"apiVersion": "forgetless.dev/v1alpha1", "kind": "FineTuneSweep", "metadata": {"name": name}, "spec": spec}


def run(name: str, document: dict[str, Any], out: Path) -> Any:
    from forgetless.api.documents import validate_sweep_document
    from forgetless_cli.local.sweep import run_local_sweep

    sweep = validate_sweep_document(document)
    began = time.monotonic()
    result = run_local_sweep(sweep, out / name, log=lambda m: print(f"[{name}] {m}", file=sys.stderr, flush=True))
    result.wall = time.monotonic() - began  # type: ignore[attr-defined]
    return result


def recommended_trial(result: Any) -> Any:
    for trial in result.trials:
        if all(abs(float(trial.policy.get(k, -1)) - float(v)) < 1e-12 for k, v in RECOMMENDED.items()):
            return trial
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "policy-search")
    parser.add_argument("--only", choices=["grid", "adaptive"])
    parser.add_argument("--task", choices=["support-tickets", "order-requests"], default="support-tickets")
    parser.add_argument("--space", choices=sorted(SPACES), default="medium")
    parser.add_argument("--min-epochs", type=float, default=0.5, help="successive halving's shortest rung")
    args = parser.parse_args()
    os.environ.setdefault("FORGETLESS_CACHE_DIR", str(args.out / "baseline-cache"))
    from forgetless_trainer import quiet

    quiet.silence()
    from forgetless_cli.local.sweep import render_trials

    prefix = "orders" if args.task == "order-requests" else "support"
    strategies = {
        "grid": {"type": "grid"},
        "adaptive": {"type": "successiveHalving", "eta": 3, "minEpochs": args.min_epochs},
    }
    wanted = ["adaptive"] if args.task == "order-requests" else [args.only] if args.only else ["adaptive", "grid"]
    results = {}
    for key in wanted:
        name = f"ps-{prefix}-{key}-{args.space}"
        results[key] = run(name, sweep_document(name, strategies[key], args.task, args.space), args.out)

    summary: dict[str, Any] = {"task": args.task, "space": args.space}
    for key, result in results.items():
        print(f"\n== {key} ({strategies[key]['type']}), task {args.task}, space {args.space} ==")
        print(render_trials(result.trials, result.best))
        print(f"training: {result.train_seconds:.0f} s, wall {result.wall:.0f} s, trials {len(result.trials)}")
        summary[key] = {"trainSeconds": round(result.train_seconds, 1), "wallSeconds": round(result.wall, 1),
                        "best": result.best.model_dump(by_alias=True, exclude_none=True) if result.best else None,
                        "trials": [t.model_dump(by_alias=True, exclude_none=True) for t in result.trials]}
    checks: list[tuple[bool, str]] = []
    grid, adaptive = results.get("grid"), results.get("adaptive")
    if grid is not None:
        rec = recommended_trial(grid)
        if rec is not None and rec.task_score is not None:
            print(f"\nrecommended (measured in the grid): {rec.name} task {rec.task_score:.3f} "
                  f"kept {rec.mean_kept:.1%} {rec.verdict} cost {rec.cost:.3g}")
            for label, result in results.items():
                best = result.best
                ok = (best is not None and best.task_score >= rec.task_score - 1e-12 and best.cost <= rec.cost)
                checks.append((ok, f"{label} winner passes the gate with task ≥ recommended's ({rec.task_score:.3f}) "
                               f"and cost ≤ it" + (f": {best.name} task {best.task_score:.3f} cost {best.cost:.3g}"
                                                    if best else ": no winner")))
    if grid is not None and adaptive is not None:
        share = adaptive.train_seconds / grid.train_seconds if grid.train_seconds else float("inf")
        checks.append((share <= 0.5, f"adaptive trains ≤ 50 % of the grid's seconds ({adaptive.train_seconds:.0f} s "
                       f"vs {grid.train_seconds:.0f} s = {share:.0%})"))
        same = (grid.best and adaptive.best and grid.best.policy == adaptive.best.policy)
        print(f"winners: grid {grid.best.name if grid.best else None}, adaptive "
              f"{adaptive.best.name if adaptive.best else None} ({'same policy' if same else 'different policies'})")
    for ok, text in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")
    summary["checks"] = [{"passed": ok, "check": text} for ok, text in checks]
    (args.out / f"summary-{prefix}-{args.space}.json").write_text(json.dumps(summary, indent=2, default=str))
    return 0 if all(ok for ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
