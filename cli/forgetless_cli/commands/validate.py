"""`forgetless validate FILE...`: check FineTuneJob and FineTuneSweep manifests without running anything."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from forgetless import exit_codes

NAME = "validate"
HELP = "check FineTuneJob and FineTuneSweep manifests; one line per problem naming the field"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE", help="YAML or JSON manifests")
    parser.add_argument("--quiet", "-q", action="store_true", help="print only problems")


def main(args: argparse.Namespace) -> int:
    from forgetless.api.documents import load_manifests
    from forgetless.api.manifests import ManifestError

    status = exit_codes.OK
    for path in args.files:
        try:
            jobs = load_manifests(path)
        except ManifestError as exc:
            for line in exc.lines:
                print(line, file=sys.stderr)
            status = exit_codes.INVALID
            continue
        if not args.quiet:
            names = ", ".join(job.metadata.name for job in jobs)
            print(f"{path}: ok ({names})")
    return status
