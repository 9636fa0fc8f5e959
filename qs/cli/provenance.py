"""``qs provenance``: record the config, package versions, device, seed and workflow commit (:mod:`qs.provenance`)."""

from __future__ import annotations

import json
from pathlib import Path

from ..io import QsInputError


def _json_arg(text, what):
    """A JSON object given on the command line; :class:`QsInputError` naming the option otherwise."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise QsInputError(f"{what}: not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise QsInputError(f"{what}: expected a JSON object")
    return value


def _provenance_cli(args):
    import yaml

    from ..provenance import with_resources, write_provenance

    if args.config is not None:
        try:
            config = yaml.safe_load(args.config.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise QsInputError(f"{args.config}: cannot read config ({exc})") from None
        if not isinstance(config, dict):
            raise QsInputError(f"{args.config}: config must be a mapping")
    else:
        config = _json_arg(args.config_json, "--config-json")
    if args.resources_json:
        config = with_resources(config, _json_arg(args.resources_json, "--resources-json"))
    out = write_provenance(args.out, config, workflow_dir=args.workflow_dir)
    print(json.dumps({k: str(v) for k, v in out.items()}))


def add_subcommands(subparsers) -> None:
    """Add ``qs provenance`` to the ``qs`` command line."""
    p = subparsers.add_parser("provenance", help="record the config, package versions, device, seed and workflow commit")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", type=Path, help="the effective config as a YAML (or JSON) file")
    src.add_argument("--config-json", help="the effective config as a JSON object (as the workflow passes it)")
    p.add_argument("--resources-json", help="JSON object section -> resources, merged into the config")
    p.add_argument("--workflow-dir", type=Path, help="the workflow's folder (its git commit is recorded when it is a checkout)")
    p.add_argument("--out", required=True, type=Path, help="output folder (results/provenance)")
    p.set_defaults(func=_provenance_cli)
