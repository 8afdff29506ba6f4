"""`forgetless stage NAME --job job.json --workdir DIR`: one pipeline stage (the trainer pods' entrypoint).

The same functions run in-process for `forgetless run`; this is only the command-line edge.
Stages are looked up in forgetless_trainer.stages.STAGES, so this module imports no torch.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from forgetless import exit_codes
from forgetless.lifecycle import STAGES

NAME = "stage"
HELP = "run one pipeline stage (baseline, train, evaluate) as trainer pods do"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", choices=list(STAGES), help="the stage to run")
    parser.add_argument("--job", required=True, type=Path, help="FineTuneJob manifest or spec (YAML/JSON)")
    parser.add_argument("--workdir", required=True, type=Path, help="work directory shared by the stages")


def main(args: argparse.Namespace) -> int:
    from forgetless_trainer import quiet, threads  # before torch/transformers/DeepSpeed are imported

    threads.prepare_environment()  # idle OpenMP threads sleep: set before torch loads
    quiet.silence()
    from forgetless.api.manifests import ManifestError, load_job

    try:
        job = load_job(args.job)
    except ManifestError as exc:
        print(str(exc), file=sys.stderr)
        return exit_codes.INVALID
    from forgetless.errors import StageError
    from forgetless_trainer.stages import run_stage

    try:
        summary = run_stage(args.name, job, args.workdir)
    except StageError as exc:
        print(f"stage {args.name} failed: {exc}", file=sys.stderr)
        return exit_codes.FAILED
    print(json.dumps(summary, sort_keys=True))
    return exit_codes.OK
