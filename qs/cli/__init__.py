"""The ``qs`` command line: the top layer, which only parses arguments and calls the stages.

One module per group of commands adds its subcommands (:data:`COMMAND_MODULES`); nothing in
``qs`` imports ``qs.cli`` (an import contract in the tests). Bad input ends the program with exit
status 2 and one line ``qs: error: FILE: problem``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .. import __version__
from ..io import QsInputError

#: modules of ``qs.cli`` that add their subcommands through ``add_subcommands(subparsers)``, in help order
COMMAND_MODULES: tuple[str, ...] = ("data", "registration", "learning", "predict", "register", "report", "provenance", "plan")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qs", description="Quicksilver: fast predictive LDDMM registration for cohort studies")
    parser.add_argument("--version", action="version", version=f"qs {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{module}").add_subcommands(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except QsInputError as exc:
        print(f"qs: error: {exc}", file=sys.stderr)
        return 2
    return 0
