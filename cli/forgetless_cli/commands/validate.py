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
    from forgetless.api.schema import FineTuneJob
    from forgetless.general_data import general_data

    status = exit_codes.OK
    for path in args.files:
        try:
            jobs = load_manifests(path)
        except ManifestError as exc:
            for line in exc.lines:
                print(line, file=sys.stderr)
            status = exit_codes.INVALID
            continue
        problems = [problem for job in jobs for problem in suite_problems(job)]
        for problem in problems:
            print(f"{path}: {problem}", file=sys.stderr)
        if problems:
            status = exit_codes.INVALID
        elif not args.quiet:
            names = ", ".join(job.metadata.name for job in jobs)
            print(f"{path}: ok ({names})")
            for job in jobs:
                if isinstance(job, FineTuneJob):  # a FineTuneSweep's trials say it in their own runs
                    print(f"  {job.metadata.name}: general data: {general_data(job.spec).describe()}")
    return status


def suite_problems(document) -> list[str]:
    """The regression suite's own content (JSONL lines, item fields, scorers), where it can be read from
    here: a bundled suite or a local directory. One on a volume or in a ConfigMap is checked by the
    stage pods before anything is trained (the baseline stage, or the train stage on a cached baseline)."""
    from forgetless.suites import SuiteError, resolve_suite

    spec = getattr(document, "spec", None)
    field = "spec.template.regression.suite" if hasattr(spec, "template") else "spec.regression.suite"
    spec = getattr(spec, "template", spec)  # a FineTuneSweep: its trials' template
    suite = getattr(getattr(spec, "regression", None), "suite", None)
    if suite is None or suite.path is None or suite.pvc is not None:
        return []
    if not suite.path.startswith("bundled:") and not Path(suite.path).expanduser().exists():
        return []  # a path of the cluster's image or volume: not reachable here
    try:
        resolve_suite(suite)
    except (SuiteError, LookupError) as exc:
        return [f"{field}: {exc}"]
    return []
