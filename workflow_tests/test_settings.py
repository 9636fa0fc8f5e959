"""One source per setting: the schema's defaults reach the CLI, the rules' flags and provenance from one table."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from conftest import ROOT
from qs import settings
from qs.cli import build_parser
from qs.provenance import STAGE_CONFIG

#: (command, group, flags the command's parser needs besides the group's)
COMMANDS = [
    ("demo", "demo", ["--out", "x"]),
    ("demo", "seed", ["--out", "x"]),
    ("grid", "grid", ["--t1", "a", "--mask", "b", "--out", "x"]),
    ("cohort-tables", "cohort", ["--out-subjects", "s", "--out-pairs", "p"]),
    ("preprocess", "preprocess", ["--subject", "s", "--atlas", "a", "--atlas-mask", "m", "--t1", "t", "--out", "x"]),
    ("lddmm", "lddmm", ["--moving", "m", "--target", "t", "--out", "x"]),
    ("lddmm", "kernel", ["--moving", "m", "--target", "t", "--out", "x"]),
    ("patches", "patches", ["--moving", "m", "--target", "t", "--momentum", "m0", "--out", "x"]),
    ("train", "network", ["p", "--out", "x"]),
    ("train", "kernel", ["p", "--out", "x"]),
]


def subparser(command):
    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    return sub.choices[command]


def parse(command, argv):
    return vars(subparser(command).parse_args(argv))


def dest(flag):
    return flag.lstrip("-").replace("-", "_")


def test_every_key_of_the_table_is_in_the_schema_with_a_default():
    settings.check_table()
    with pytest.raises(KeyError, match="lddmm.nope: not a config key"):
        settings.schema_of("lddmm.nope")


def test_every_rule_of_the_table_is_a_workflow_rule():
    rules = {m for f in (ROOT / "rules").glob("*.smk") for m in re.findall(r"^\s*rule (\w+):", f.read_text(), re.M)}
    assert rules and set(settings.RULES) <= rules, set(settings.RULES) - rules
    assert STAGE_CONFIG == {rule: settings.rule_keys(rule) for rule in settings.RULES}


@pytest.mark.parametrize("command, group, required", COMMANDS, ids=[f"{c}-{g}" for c, g, _ in COMMANDS])
def test_cli_defaults_are_the_schemas(command, group, required):
    args = parse(command, required)
    for key, flag in settings.GROUPS[group].items():
        assert args[dest(flag)] == settings.default(key), (command, flag, key)


@pytest.mark.parametrize("command, group, required", COMMANDS, ids=[f"{c}-{g}" for c, g, _ in COMMANDS])
def test_rule_flags_round_trip_through_the_cli(command, group, required):
    """The flags a rule builds from a config (here: each value changed from the default) parse back to it."""
    config = {}
    for key in settings.GROUPS[group]:
        node, value = settings.schema_of(key), settings.default(key)
        if "enum" in node:
            value = node["enum"][-1] if value == node["enum"][0] else node["enum"][0]
        elif node["type"] == "array":
            value = value[:1] or ["x"]
        elif node["type"] in ("integer", "number"):
            value = value + 2 if node["type"] == "integer" else value / 2 + 0.25
        elif node["type"] == "string":
            value = value + "y"
        section = config
        *parents, last = key.split(".")
        for part in parents:
            section = section.setdefault(part, {})
        section[last] = value
    argv = [str(v) for v in settings.group_args(config, group)]
    args = parse(command, required + argv)
    for key, flag in settings.GROUPS[group].items():
        assert args[dest(flag)] == settings.lookup(config, key), (command, flag, key, argv)


def test_empty_values_leave_their_flag_out():
    config = {"cohort": {"source": "sheet", "sheet": "", "bids": "", "bids_label_suffixes": [], "test_fraction": 0.5,
                         "demo": {"subjects": 3}}, "pairs": {"mode": "image-to-image", "max_train_pairs": 0,
                                                              "max_test_pairs": 2}}
    argv = settings.group_args(config, "cohort")
    assert "--sheet" not in argv and "--bids" not in argv and "--label-suffixes" not in argv
    assert argv[:2] == ["--source", "sheet"] and argv[-2:] == ["--max-test-pairs", 2]


@pytest.mark.parametrize("argv, message", [
    (["--window", "4"], "argument --window: must be an odd integer >= 1, got 4"),
    (["--window", "x"], "argument --window: must be an odd integer >= 1, got 'x'"),
    (["--iterations", "-1"], "argument --iterations: must be >= 0 (config lddmm.iterations), got -1"),
    (["--alpha", "0"], "argument --alpha: must be > 0 (config lddmm.alpha), got 0.0"),
    (["--similarity", "mi"], "argument --similarity: invalid choice: 'mi'"),
])
def test_the_cli_refuses_what_the_schema_refuses(argv, message):
    done = subprocess.run([sys.executable, "-m", "qs.cli", "lddmm", "--moving", "m", "--target", "t", "--out", "x",
                           *argv], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and message in done.stderr, done.stderr


def test_help_states_the_schema_default_and_key():
    text = subparser("lddmm").format_help()
    assert "config lddmm.iterations; default 100" in re.sub(r"\s+", " ", text)


# --- defaults without surprises: the demo's CPU budget reaches the demo cohort only ----------------------

DEMO_FILE = ROOT / "config" / "demo.yaml"


def test_the_demo_budget_applies_to_the_demo_under_the_users_settings():
    cfg = settings.with_demo_budget({"lddmm": {"iterations": 7}}, DEMO_FILE)
    assert cfg["lddmm"]["iterations"] == 7  # the user's value wins
    assert cfg["lddmm"]["alpha"] == 0.08 != settings.default("lddmm.alpha")  # the rest of the demo's budget
    assert cfg["train"]["architecture"] == "dilated-match"


@pytest.mark.parametrize("source", ["sheet", "bids"])
def test_another_cohort_gets_no_demo_setting(source):
    user = {"cohort": {"source": source, source: "/data/x"}, "lddmm": {"iterations": 7}}
    assert settings.with_demo_budget(user, DEMO_FILE) == user


def _dry(cwd, sheet, *extra):
    from conftest import snakemake

    cfg = cwd / "cohort.yaml"
    cfg.write_text(f"cohort: {{source: sheet, sheet: '{sheet}'}}\n" + "".join(extra))
    return snakemake("-n", "-p", "--configfile", str(cfg), cwd=cwd)


def test_a_sheet_cohort_plans_with_the_schemas_defaults(tmp_path, subject_files):
    rows = ["subject\tt1\tlabels"]
    for name in ("s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8"):
        files = subject_files(name)
        rows.append(f"{name}\t{files['t1']}\t{files['labels']}")
    (tmp_path / "subjects.tsv").write_text("\n".join(rows) + "\n")
    run = _dry(tmp_path, tmp_path / "subjects.tsv")
    assert run.returncode == 0, run.output[-2000:]
    lddmm = next(ln for ln in run.output.splitlines() if "qs lddmm " in ln)
    assert f"--iterations {settings.default('lddmm.iterations')} " in lddmm  # 100, not the demo's 40
    assert f"--similarity {settings.default('lddmm.similarity')} " in lddmm
    train = next(ln for ln in run.output.splitlines() if "qs train" in ln and "--kind prediction" in ln)
    assert f"--architecture {settings.default('train.architecture')} " in train
