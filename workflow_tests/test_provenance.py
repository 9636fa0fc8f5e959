"""Provenance (results/provenance/) and selective reruns on config changes.

The rerun tests need a results folder whose Snakemake metadata exists. A real run of the
whole tiny DAG takes minutes, so the folder is made in seconds instead: every output file
is created empty, the provenance job runs for real, and ``snakemake --touch --forceall``
marks every job done, recording the same metadata (params, code, inputs) a real run
records. ``snakemake --summary`` with one config key changed then shows, per output file,
whether its params changed and whether a run would update it.
"""

import copy
import json
import re

import pytest
import yaml

from conftest import ROOT, TINY, snakemake
from qs import cli
from qs.provenance import (
    FILES,
    STAGE_CONFIG,
    config_digest,
    git_info,
    read_provenance,
    report_items,
    stage_rows,
    write_provenance,
)


@pytest.fixture
def config():
    return yaml.safe_load((ROOT / "config" / "demo.yaml").read_text()) | {"seed": 7}


def test_writer_records_config_versions_device_and_seed(tmp_path, config):
    paths = write_provenance(tmp_path / "prov", config, workflow_dir=tmp_path)
    assert {p.name for p in (tmp_path / "prov").iterdir()} == set(FILES.values()) == {p.name for p in paths.values()}
    prov = read_provenance(tmp_path / "prov")
    assert prov["config"] == config  # round-trips, resources included
    assert (tmp_path / "prov" / "seed").read_text() == "7\n" and prov["summary"]["seed"] == 7
    for package in ("python", "qs", "torch", "numpy", "nibabel", "antspyx", "snakemake", "scipy", "pandas"):
        assert re.match(r"\d+\.\d+", prov["versions"][package]), (package, prov["versions"])
    device = prov["device"]
    assert isinstance(device["cuda_available"], bool) and device["cpu_count"] >= 1 and device["torch_threads"] >= 1
    assert device["hostname"] and device["cpu_model"] and set(device["stage_devices"]) == {"lddmm", "train", "predict"}
    assert device["stage_devices"]["lddmm"] in ("cpu", "cuda")
    # not a git checkout: no commit, no failure
    assert prov["summary"]["git_commit"] is None and git_info(tmp_path) == {}
    assert prov["summary"]["config_digest"] == config_digest(config)
    assert set(prov["stages"]) == set(STAGE_CONFIG)
    assert not list((tmp_path / "prov").glob("*.tmp*"))


def test_git_commit_of_a_checkout():
    if not (ROOT / ".git").exists():
        pytest.skip("the workflow is not a git checkout here")
    info = git_info(ROOT)
    assert re.fullmatch(r"[0-9a-f]{40}", info["commit"]) and isinstance(info["dirty"], bool)


def test_digests_ignore_resources_and_follow_the_stages(config):
    other = copy.deepcopy(config)
    for section in ("preprocess", "lddmm", "train", "predict", "evaluate"):
        other[section]["resources"]["threads"] += 3
    other["results"] = "elsewhere"
    assert config_digest(other) == config_digest(config)
    assert stage_rows(other) == stage_rows(config)
    other["predict"]["samples"] += 1
    assert config_digest(other) != config_digest(config)
    changed = {a["rule"] for a, b in zip(stage_rows(config), stage_rows(other)) if a != b}
    assert changed == {"predict_mc", "provenance"}


def test_cli_and_the_report_show_provenance(tree, tmp_path, config, monkeypatch, capsys):
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("report", "provenance"))
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({k: v for k, v in config.items() if k != "lddmm"}))
    resources = json.dumps({"lddmm": {"threads": 4}})
    assert cli.main(["provenance", "--config", str(cfg), "--resources-json", resources, "--out", str(tmp_path / "p")]) == 2
    assert "'lddmm', which is not a config section" in capsys.readouterr().err
    assert cli.main(["provenance", "--config-json", "[1, 2]", "--out", str(tmp_path / "p")]) == 2
    assert "JSON object" in capsys.readouterr().err and not (tmp_path / "p").exists()
    cfg.write_text(yaml.safe_dump(config))
    assert cli.main(["provenance", "--config", str(cfg), "--resources-json", resources, "--workflow-dir", str(ROOT),
                     "--out", str(tmp_path / "p")]) == 0
    prov = read_provenance(tmp_path / "p")
    assert prov["config"]["lddmm"]["resources"] == {"threads": 4} and prov["config"]["seed"] == 7

    items = report_items(prov)
    assert items["seed"] == 7 and list(items["package versions"].columns) == ["package", "version"]
    args = ["report", *map(str, tree["pairs"]), "--out", str(tmp_path / "rep"), "--no-paper-table",
            "--provenance-dir", str(tmp_path / "p")]
    assert cli.main(args) == 0
    text = (tmp_path / "rep/summary.md").read_text()
    section = text.split("## Provenance", 1)[1]
    assert "- seed: 7" in section and f"sha256:{prov['summary']['config_digest'][:16]}" in section
    assert "| torch |" in section and "| snakemake |" in section and prov["device"]["hostname"] in section
    assert cli.main(["report", *map(str, tree["pairs"]), "--out", str(tmp_path / "rep2"),
                     "--provenance-dir", str(tmp_path / "missing")]) == 2
    assert "provenance file does not exist" in capsys.readouterr().err


# --------------------------------------------------------------------------- selective reruns


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """A tiny results folder that Snakemake considers complete (see the module docstring)."""
    root = tmp_path_factory.mktemp("done")
    base = ["--configfile", str(TINY)]
    outputs = [row["output_file"] for row in _summary(root, *base)]
    assert len(outputs) > 50
    for f in outputs:
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        (root / f).touch()
    real = snakemake("results/provenance/provenance.json", "--cores", "1", "--forcerun", "provenance", *base, cwd=root)
    assert real.returncode == 0, real.output[-3000:]
    touched = snakemake("--cores", "1", "--touch", "--forceall", *base, cwd=root)
    assert touched.returncode == 0, touched.output[-3000:]
    return root


def _summary(root, *args) -> list[dict]:
    """The rows of ``snakemake --summary``: output_file, date, rule, log-file(s), status, plan."""
    run = snakemake("--summary", *args, cwd=root)
    assert run.returncode == 0, run.output[-3000:]
    lines = run.stdout.splitlines()
    header = lines.index("output_file\tdate\trule\tlog-file(s)\tstatus\tplan")
    return [dict(zip(lines[header].split("\t"), line.split("\t"))) for line in lines[header + 1:]]


def _dry_run(root, change: dict):
    """With ``change`` merged into the tiny config: the rules a run would rerun, and the rules
    whose params (or set of inputs) changed (whether or not an updated input reruns them anyway)."""
    extra = root / "change.yaml"
    extra.write_text(yaml.safe_dump(change))
    rows = _summary(root, "--configfile", str(TINY), str(extra))
    # a key may also change a rule's inputs (train.correction_init adds the prediction model to them)
    changed = {"params changed", "set of input files changed"}
    assert {r["status"] for r in rows} <= {"ok"} | changed, rows
    return ({r["rule"] for r in rows if r["plan"] != "no update"},
            {r["rule"] for r in rows if r["status"] in changed})


def _reads(rule, key):
    """True when ``rule`` reads config ``key`` (dotted) according to STAGE_CONFIG."""
    return any(k == "*" or k == key or key.startswith(k + ".") for k in STAGE_CONFIG.get(rule, ()))


TRAINING = {"patches", "train_prediction", "correction_patches", "train_correction"}
TESTING = {"predict", "predict_mc", "evaluate_pair", "report", "provenance"}

CHANGES = [  # (dotted key, new value, the jobs that rerun)
    ("predict.samples", 4, {"predict_mc", "evaluate_pair", "report", "provenance"}),
    ("predict.batch_size", 8, {"predict", "predict_mc", "evaluate_pair", "report", "provenance"}),
    ("lddmm.iterations", 11, {"lddmm"} | TRAINING | TESTING),
    ("lddmm.alpha", 0.02, {"lddmm"} | TRAINING | TESTING),
    ("train.epochs", 3, {"train_prediction", "correction_patches", "train_correction"} | TESTING),
    ("train.stride", 10, TRAINING | TESTING),
    ("train.field", "momentum", TRAINING | TESTING),
    ("train.architecture", "quicksilver", {"train_prediction", "correction_patches", "train_correction"} | TESTING),
    ("train.correction_init", "scratch", {"train_correction", "predict", "evaluate_pair", "report", "provenance"}),
    # how the networks predict: also the correction network's training data
    ("predict.stride", 0, {"correction_patches", "train_correction"} | TESTING),
    ("predict.mirror_axes", [1], {"correction_patches", "train_correction"} | TESTING - {"predict_mc"}),
    ("predict.corrections", 1, {"predict", "evaluate_pair", "report", "provenance"}),
    ("predict.correction_stride", 7, {"predict", "evaluate_pair", "report", "provenance"}),
    ("predict.refine_iterations", 3, {"predict", "evaluate_pair", "report", "provenance"}),  # predict-refine's jobs
    ("cohort.demo.max_displacement_mm", [4.0, 6.0],
     {"demo", "validate_subject", "preprocess", "lddmm", "syn"} | TRAINING | TESTING),
    ("train.loss", "l2", {"train_prediction", "correction_patches", "train_correction"} | TESTING),
    ("preprocess.normalize", "max", {"preprocess", "lddmm", "syn"} | TRAINING | TESTING),
    ("grid.margin_mm", 6.0, {"working_grid", "preprocess", "lddmm", "syn"} | TRAINING | TESTING),
    ("cohort.demo.spacing", 3.0, {"demo", "validate_subject", "preprocess", "lddmm", "syn"} | TRAINING | TESTING),
    # the syn variant's settings (test_syn_settings_rerun_only_the_syn_variant: not syn-quick's jobs)
    ("evaluate.syn_iterations", [3, 2], {"syn", "evaluate_pair", "report", "provenance"}),
    ("evaluate.syn_radius", 1, {"syn", "evaluate_pair", "report", "provenance"}),
]


def _nested(key, value):
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def test_unchanged_config_or_resources_rerun_nothing(done):
    assert _dry_run(done, {}) == (set(), set())
    resources = {s: {"resources": {"threads": 2, "mem_mb": 3000, "runtime": 20}}
                 for s in ("preprocess", "lddmm", "train", "predict", "evaluate")}
    assert _dry_run(done, resources) == (set(), set())


@pytest.fixture(scope="module")
def done_rules(done):
    """The rules with jobs in the tiny folder (not ``register``: the tiny config registers nothing)."""
    return {row["rule"] for row in _summary(done, "--configfile", str(TINY))}


@pytest.mark.parametrize(("key", "value", "reruns"), CHANGES, ids=[c[0] for c in CHANGES])
def test_a_config_change_reruns_its_stages_and_what_depends_on_them(done, done_rules, key, value, reruns):
    jobs, triggered = _dry_run(done, _nested(key, value))
    assert jobs == reruns
    # the rules whose params changed are exactly those of this run that read the key (STAGE_CONFIG is right)
    assert triggered == {rule for rule in STAGE_CONFIG if _reads(rule, key)} & done_rules


def test_syn_settings_rerun_only_the_syn_variant(done):
    (done / "change.yaml").write_text(yaml.safe_dump({"evaluate": {"syn_iterations": [3, 2]}}))
    rows = [r for r in _summary(done, "--configfile", str(TINY), str(done / "change.yaml")) if r["rule"] == "syn"]
    full = [r for r in rows if r["output_file"].startswith("results/syn/")]
    quick = [r for r in rows if r["output_file"].startswith("results/syn-quick/")]
    assert full and quick and len(full) + len(quick) == len(rows)
    assert all(r["plan"] != "no update" and r["status"] == "params changed" for r in full)
    assert all(r["plan"] == "no update" and r["status"] == "ok" for r in quick)


def test_provenance_of_the_folder_is_real(done):
    prov = read_provenance(done / "results" / "provenance")
    tiny = yaml.safe_load(TINY.read_text())
    assert prov["config"]["lddmm"]["iterations"] == tiny["lddmm"]["iterations"]
    assert prov["config"]["lddmm"]["resources"]["threads"] == tiny["lddmm"]["resources"]["threads"]
    base = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    assert prov["config"]["lddmm"]["alpha"] == base["lddmm"]["alpha"]  # the demo budget (config/demo.yaml), under the tiny config
    assert prov["summary"]["workflow_dir"] == str(ROOT)
