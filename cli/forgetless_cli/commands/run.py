"""`forgetless run FILE`: the whole pipeline on this machine, no cluster (the embedded default).

baseline → train → evaluate → gate, in-process, with the same stage code the trainer pods run.
Exit codes: 0 gate passed (or warned), 3 gate blocked, 1 invalid manifest, 4 a stage failed,
130 interrupted (run again with the same --workdir to resume).
"""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "run"
HELP = "run a FineTuneJob locally: baseline, train, evaluate, gate (resumable)"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, metavar="FILE", help="a FineTuneJob manifest (YAML/JSON)")
    parser.add_argument(
        "--workdir",
        type=Path,
        help="where stages keep results and checkpoints (default: spec.output.path, else runs/<name>); "
        "running again with the same work dir resumes",
    )
    parser.add_argument(
        "--metrics-port", type=int, metavar="N", help="serve Prometheus metrics (forgetting + live training) on N"
    )
    parser.add_argument(
        "--restart", action="store_true", help="discard earlier results in the work dir and start over"
    )


def main(args: argparse.Namespace) -> int:
    from forgetless_trainer import quiet, threads  # before torch/transformers/DeepSpeed are imported

    threads.prepare_environment()  # idle OpenMP threads sleep: set before torch loads
    quiet.silence()
    from forgetless_cli.local.pipeline import run_pipeline

    return run_pipeline(args.file, workdir=args.workdir, metrics_port=args.metrics_port, restart=args.restart)
