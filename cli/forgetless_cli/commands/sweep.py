"""`forgetless sweep FILE`: run a FineTuneSweep locally; find the cheapest policy that passes the gate.

Trials run one after another in-process (or up to --parallel at once in worker processes), each a
FineTuneJob `<sweep>-t<index>` in `<workdir>/<trial>`; results go to `<workdir>/sweep.json`, the
trial table to `report.txt`, the Pareto plot to `pareto.png`. Running the same command again skips
finished trials (resumable). Exit codes: 0 a best trial was found, 3 no trial passed the gate,
1 invalid manifest, 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from forgetless import exit_codes

NAME = "sweep"
HELP = "run a FineTuneSweep locally: trials, the best policy that passes the gate, a Pareto plot (resumable)"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, metavar="FILE", help="a FineTuneSweep manifest (YAML/JSON)")
    parser.add_argument("--parallel", type=int, metavar="N",
                        help="trials at once (default spec.maxParallel); above 1 each runs in its own process")
    parser.add_argument("--workdir", type=Path, help="where trials and sweep.json go (default: runs/<sweep name>)")
    parser.add_argument("--restart", action="store_true", help="discard earlier trials in the work dir and start over")


def main(args: argparse.Namespace) -> int:
    from forgetless.api.documents import load_sweep
    from forgetless.api.manifests import ManifestError

    try:
        sweep = load_sweep(args.file)
    except ManifestError as exc:
        print(str(exc), file=sys.stderr)
        return exit_codes.INVALID
    if args.parallel is not None and args.parallel < 1:
        print("--parallel: must be at least 1", file=sys.stderr)
        return exit_codes.INVALID

    from forgetless_trainer import quiet, threads

    threads.prepare_environment()  # idle OpenMP threads sleep: set before torch loads
    quiet.silence()
    from forgetless.search import expand
    from forgetless_cli.local.pipeline import PreflightError, preflight
    from forgetless_cli.local.sweep import SweepError, TrialRequest, render_trials, run_local_sweep, trial_job

    first = expand(sweep.spec)[0]
    try:
        preflight(trial_job(sweep, TrialRequest("preflight", 0, first.policy, 0, first.epochs(sweep.spec))))
    except PreflightError as exc:
        for line in str(exc).splitlines():
            print(f"{args.file}: spec.template: {line.removeprefix('spec.')}", file=sys.stderr)
        return exit_codes.INVALID
    workdir = args.workdir or Path("runs") / sweep.metadata.name
    print(f"forgetless sweep {sweep.metadata.name}: {sweep.spec.strategy.type}, work dir {workdir}", file=sys.stderr)
    try:
        result = run_local_sweep(sweep, workdir, parallel=args.parallel, restart=args.restart)
    except SweepError as exc:
        print(str(exc), file=sys.stderr)
        return exit_codes.INVALID
    print(render_trials(result.trials, result.best))
    for path in result.report:
        print(f"report: {path}")
    if result.promoted:
        print(f"promoted: {result.promoted['path']} ({result.promoted['digest']})")
    return exit_codes.OK if result.best is not None else exit_codes.GATE_BLOCKED
