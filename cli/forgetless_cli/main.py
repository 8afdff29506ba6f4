"""The single `forgetless` entry point.

Sub-commands live in their own modules (listed in COMMAND_MODULES) that import nothing heavy at
module level: `forgetless validate` must not pay for torch. Each module defines NAME, HELP,
`configure(parser)` and `main(args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from forgetless import __version__, exit_codes

COMMAND_MODULES = [
    "forgetless_cli.commands.validate",
    "forgetless_cli.commands.crd",
    "forgetless_cli.commands.stage",
    "forgetless_cli.commands.evaluate",
    "forgetless_cli.commands.run",
    "forgetless_cli.commands.sweep",
    "forgetless_cli.commands.operator",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="forgetless",
        description="Fine-tune language models without breaking what they already knew.",
    )
    parser.add_argument("--version", action="version", version=f"forgetless {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMAND_MODULES:
        module = importlib.import_module(module_name)
        sub = commands.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.configure(sub)
        sub.set_defaults(handler=module.main)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("interrupted; finished work is kept in the work dir", file=sys.stderr)
        return exit_codes.INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
