"""``qs plan``: the jobs per stage of a run and an order of magnitude of its CPU and GPU hours, before anything runs
(:mod:`qs.plan`)."""

from __future__ import annotations

import os
from pathlib import Path

from ..io import QsInputError


def _plan(args):
    from ..plan import plan

    try:
        text = plan(snakefile=args.snakefile, configfiles=args.configfile or (), config_args=args.config or (),
                    directory=args.directory, targets=args.targets, cores=args.cores)
    except RuntimeError as exc:
        raise QsInputError(f"the dry run failed:\n{exc}") from None
    print(text)


def add_subcommands(sub) -> None:
    p = sub.add_parser("plan", help="jobs per stage and estimated CPU/GPU hours of a run (a dry run; nothing runs)")
    p.add_argument("targets", nargs="*", help="Snakemake targets (default: the whole run)")
    p.add_argument("--configfile", nargs="+", type=Path, help="config files, as for snakemake --configfile")
    p.add_argument("--config", nargs="+", metavar="KEY=VALUE", help="settings, as for snakemake --config")
    p.add_argument("--directory", type=Path, help="the run's working directory (default: the current one)")
    p.add_argument("--snakefile", type=Path, help="the workflow (default: ./Snakefile, else the checkout's)")
    p.add_argument("--cores", type=int, default=os.cpu_count(),
                   help="CPU cores the wall-clock estimate assumes (default: this machine's)")
    p.set_defaults(func=_plan)
