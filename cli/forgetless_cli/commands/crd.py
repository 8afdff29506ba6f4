"""`forgetless crd`: render the FineTuneJob CRD from the pydantic models (stdout); `--write` writes it
and the FineTuneSweep CRD into crds/ and the chart, and the field reference into docs/reference/;
`--check` reports stale files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from forgetless import exit_codes

NAME = "crd"
HELP = ("render the FineTuneJob CRD (to stdout; --write writes it and the FineTuneSweep CRD into crds/ and the chart, "
        "and the field reference into docs/reference/)")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--write",
        metavar="REPO_ROOT",
        type=Path,
        nargs="?",
        const=Path("."),
        help="write crds/, charts/forgetless/crds/ and docs/reference/ under REPO_ROOT (default: current directory)",
    )
    parser.add_argument("--check", metavar="REPO_ROOT", type=Path, nargs="?", const=Path("."),
                        help="exit 1 when the committed CRD files or reference pages differ from the models")


def main(args: argparse.Namespace) -> int:
    from forgetless.api.crd import render_crd_yaml
    from forgetless.api.generated import generated_files, write_crds

    if args.check is not None:
        stale = [p for p, expected in generated_files(args.check).items()
                 if not p.exists() or p.read_text(encoding="utf-8") != expected]
        for path in stale:
            print(f"{path}: out of date; run `forgetless crd --write`", file=sys.stderr)
        return exit_codes.INVALID if stale else exit_codes.OK
    if args.write is not None:
        for path in write_crds(args.write):
            print(f"wrote {path}")
        return exit_codes.OK
    sys.stdout.write(render_crd_yaml())
    return exit_codes.OK
