"""Every option with a fixed set of values names the same values in the config schema, the CLI and the code.

The CLI lists its choices literally (``qs --help`` must not import torch),
so these three places can drift apart; a value accepted by the schema but
refused by ``qs`` would fail only when the rule runs.
"""

from pathlib import Path

import pytest
import yaml

from qs.cli import build_parser
from qs.device import CHOICES as DEVICES
from qs.fields import FIELDS
from qs.lddmm.gradient import SIMILARITIES
from qs.lddmm.optimize import METHODS as OPTIMIZERS
from qs.losses import LOSSES
from qs.model_io import KINDS
from qs.net import ARCHITECTURES
from qs.preprocess import NORMALIZATIONS
from qs.syn import METRICS as SYN_METRICS, VARIANTS as SYN_VARIANTS

ROOT = Path(__file__).resolve().parents[1]


def _schema_enum(*keys):
    node = yaml.safe_load((ROOT / "qs" / "schemas" / "config.schema.yaml").read_text())
    for k in keys:
        node = node["properties"][k]
    return node["enum"]


def _cli_choices(command, option):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    action = next(a for a in sub.choices[command]._actions if option in a.option_strings)
    return action.choices


@pytest.mark.parametrize(
    "schema_keys, command, option, values",
    [
        (("train", "loss"), "train", "--loss", LOSSES),
        (("train", "architecture"), "train", "--architecture", tuple(ARCHITECTURES)),
        (("train", "field"), "patches", "--field", FIELDS),
        (("train", "field"), "correction-patches", "--field", FIELDS),
        (("train", "field"), "report", "--field", FIELDS),
        (("lddmm", "optimizer"), "lddmm", "--optimizer", OPTIMIZERS),
        (("lddmm", "similarity"), "lddmm", "--similarity", SIMILARITIES),
        (("preprocess", "normalize"), "preprocess", "--normalize", NORMALIZATIONS),
        (("lddmm", "device"), "lddmm", "--device", DEVICES),
        (("train", "device"), "train", "--device", DEVICES),
        (("evaluate", "syn_metric"), "syn", "--metric", SYN_METRICS),
    ],
)
def test_schema_cli_and_code_name_the_same_values(schema_keys, command, option, values):
    assert set(_schema_enum(*schema_keys)) == set(values), f"schema {'.'.join(schema_keys)} vs code"
    assert set(_cli_choices(command, option)) == set(values), f"qs {command} {option} vs code"


def test_predict_device_is_checked_at_run_time():
    # qs predict also takes cuda:N, so it has no argparse choices; qs.device names the schema's values
    assert _cli_choices("predict", "--device") is None
    assert set(_schema_enum("predict", "device")) == set(DEVICES)


def test_syn_variants():
    """The schema's built-in SyN variants are qs syn's, and its pattern of named settings is qs.syn's."""
    from qs.syn import NAME_PATTERN

    variants = yaml.safe_load((ROOT / "qs" / "schemas" / "config.schema.yaml").read_text())["properties"]["evaluate"]["properties"]["syn_variants"]
    builtin, named = variants["items"]["oneOf"]
    assert set(builtin["enum"]) == set(SYN_VARIANTS)
    assert named["properties"]["name"]["pattern"] == f"^{NAME_PATTERN.pattern}$"


def test_train_kinds():
    assert set(_cli_choices("train", "--kind")) == set(KINDS)
