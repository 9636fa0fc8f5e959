"""ANTs SyN baselines (syn, syn-quick) and the overlap table on two pre-processed demo subjects."""

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml

from qs import syn
from qs.cli import main
from qs.demo import make_demo_cohort
from qs.evaluate import label_overlaps, total_target_overlap
from qs.io import QsInputError
from qs.preprocess import build_atlas_grid, preprocess_subject

ROOT = Path(__file__).resolve().parents[1]
FEW = ["--iterations", "20", "10", "5"]  # syn with few iterations: seconds on the 3 mm pair


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    make_demo_cohort(root / "demo", n_subjects=2, spacing=3.0, seed=5)
    grid = build_atlas_grid(root / "demo/atlas/atlas_T1w.nii.gz", root / "demo/atlas/atlas_mask.nii.gz", root / "grid", spacing=3.0, margin_mm=6.0)
    out = {}
    for s in ("sub-01", "sub-02"):
        d = root / "demo" / s / s
        out[s] = preprocess_subject(s, grid["t1"], grid["mask"], f"{d}_T1w.nii.gz", root / "pre" / s, labels=f"{d}_labels.nii.gz")
    return root, out


def _run(pre, out, *args):
    m, t = pre["sub-01"], pre["sub-02"]
    return main(["syn", "--moving", str(m["t1"]), "--target", str(t["t1"]), "--labels", str(m["labels"]), "--out", str(out), *args])


def _overlap(pre, out):
    warped = np.asarray(nib.load(str(out / "warped_labels.nii.gz")).dataobj)
    return total_target_overlap(label_overlaps(warped, np.asarray(nib.load(str(pre["sub-02"]["labels"])).dataobj)))


@pytest.fixture(scope="module")
def runs(pair):
    """Both variants of sub-01 -> sub-02 (syn with few iterations): variant -> its output folder."""
    root, pre = pair
    out = {"syn": root / "syn", "syn-quick": root / "syn-quick"}
    assert _run(pre, out["syn"], "--variant", "syn", *FEW) == 0
    assert _run(pre, out["syn-quick"], "--variant", "syn-quick") == 0
    return out


@pytest.mark.parametrize("variant", ["syn", "syn-quick"])
def test_syn_improves_overlap_and_is_ants_compatible(pair, runs, tmp_path, variant):
    import ants

    root, pre = pair
    m, t = pre["sub-01"], pre["sub-02"]
    out = runs[variant]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == variant and summary["transforms"] == ["warp.nii.gz", "affine.mat"] and summary["seconds"] > 0
    warped = ants.apply_transforms(
        fixed=ants.image_read(str(t["t1"])), moving=ants.image_read(str(m["t1"])),
        transformlist=[str(out / f) for f in summary["transforms"]],
    )
    assert np.allclose(warped.numpy(), np.asarray(nib.load(str(out / "warped.nii.gz")).dataobj), atol=1e-4)
    table = tmp_path / "overlap.tsv"
    assert main(["overlap", "--pair", "sub-01_to_sub-02", "--target-labels", str(t["labels"]),
                 "--method", f"affine={m['labels']}", "--method", f"{variant}={out / 'warped_labels.nii.gz'}", "--out", str(table)]) == 0
    df = pd.read_csv(table, sep="\t", dtype={"label": str})
    assert list(df.columns) == ["pair", "method", "label", "target_overlap", "dice"]
    total = df[df.label == "all"].set_index("method")["target_overlap"]
    print(f"target overlap: affine {total['affine']:.3f}, {variant} {total[variant]:.3f}")
    assert total[variant] > total["affine"] + 0.01
    assert {"1001", "2016", "24"} <= set(df.label)


def test_full_strength_beats_the_quick_default(pair, runs):
    """syn (CC, iterations at the finest level too, even few of them) overlaps the target better than ANTsPy's default SyN."""
    root, pre = pair
    full, quick = _overlap(pre, runs["syn"]), _overlap(pre, runs["syn-quick"])
    print(f"target overlap: syn {full:.4f}, syn-quick {quick:.4f}")
    assert full > quick


def test_the_report_states_each_syn_rows_settings(runs):
    from qs.evaluate import OVERLAP_COLUMNS
    from qs.report.pair import read_summary, timing_row
    from qs.report.summary import summary_markdown
    from qs.report.tables import method_settings
    from qs.report.tsv import DEFORMATION_COLUMNS, DETJ_COLUMNS

    timing = pd.DataFrame([timing_row("p", m, read_summary(d, m)) for m, d in runs.items()])
    settings = method_settings(timing)
    assert list(settings) == ["syn", "syn-quick"] and set(timing["device"]) == {"cpu"}
    assert settings["syn"].startswith("ANTsPy SyNOnly (deformable only), CC radius 2, iterations 20x10x5 (shrink 4x2x1")
    assert "40x20x0" in settings["syn-quick"]
    empty = {c: pd.DataFrame(columns=cols) for c, cols in (("d", DEFORMATION_COLUMNS), ("o", OVERLAP_COLUMNS), ("j", DETJ_COLUMNS))}
    text = summary_markdown(empty["d"], empty["o"], timing, empty["j"], paper_table=False)
    section = text.split("## SyN baselines", 1)[1].split("##", 1)[0]
    assert f"- `syn`: {settings['syn']}" in section and f"- `syn-quick`: {settings['syn-quick']}" in section


def test_settings_reach_ants_and_the_summary(pair, tmp_path, monkeypatch):
    import ants

    calls = []
    real = ants.registration
    monkeypatch.setattr(ants, "registration", lambda **kw: calls.append(kw) or real(**kw))
    root, pre = pair
    assert _run(pre, tmp_path / "a", "--metric", "CC", "--radius", "1", "--iterations", "6", "3") == 0
    expected = {"type_of_transform": "SyNOnly", "syn_metric": "CC", "syn_sampling": 1, "reg_iterations": (6, 3)}
    assert {k: v for k, v in calls[0].items() if k not in ("fixed", "moving")} == expected
    summary = json.loads((tmp_path / "a/summary.json").read_text())
    assert summary["method"] == "syn" and summary["settings"] == {**expected, "reg_iterations": [6, 3]}
    assert summary["description"].startswith("ANTsPy SyNOnly") and "CC radius 1, iterations 6x3 (shrink 2x1" in summary["description"]
    assert _run(pre, tmp_path / "b", "--variant", "syn-quick") == 0
    assert {k: v for k, v in calls[1].items() if k not in ("fixed", "moving")} == {"type_of_transform": "SyN"}
    summary = json.loads((tmp_path / "b/summary.json").read_text())
    assert summary["method"] == "syn-quick" and "40x20x0" in summary["description"]


def test_seeded_runs_are_reproducible(pair, tmp_path):
    root, pre = pair

    def warp(name, *args):
        # a process per run, as the workflow's jobs: ITK takes its thread count at its first call in a process,
        # so in-process runs after another test's multi-threaded ANTs call would not be single-threaded
        m, t = pre["sub-01"], pre["sub-02"]
        cmd = [sys.executable, "-m", "qs.cli", "syn", "--moving", str(m["t1"]), "--target", str(t["t1"]),
               "--out", str(tmp_path / name), "--threads", "1", *args]
        assert subprocess.run(cmd, capture_output=True).returncode == 0
        return np.asarray(nib.load(str(tmp_path / name / "warp.nii.gz")).dataobj)

    # syn-quick's affine stage samples the metric at random points: the seed decides them
    quick = warp("q1", "--variant", "syn-quick", "--seed", "3")
    assert np.array_equal(quick, warp("q2", "--variant", "syn-quick", "--seed", "3"))
    assert not np.array_equal(quick, warp("q3", "--variant", "syn-quick", "--seed", "4"))
    assert np.array_equal(warp("s1", "--iterations", "6", "3"), warp("s2", "--iterations", "6", "3"))


def test_schema_names_the_variants_and_metrics_of_the_code(tmp_path):
    """The schema's syn variants and metrics are qs syn's (its defaults are read from the schema itself)."""
    evaluate = yaml.safe_load((ROOT / "qs/schemas/config.schema.yaml").read_text())["properties"]["evaluate"]["properties"]
    assert set(evaluate["syn_variants"]["items"]["oneOf"][0]["enum"]) == set(syn.VARIANTS) == set(evaluate["syn_variants"]["default"])
    assert set(evaluate["syn_variants"]["items"]["oneOf"][1]["properties"]["metric"]["enum"]) == set(syn.METRICS)
    assert set(evaluate["syn_metric"]["enum"]) == set(syn.METRICS)


def test_named_settings_take_syn_defaults_and_refuse_bad_ones():
    """evaluate.syn_variants: names and named settings; a named setting's missing keys are syn's."""
    specs = syn.variant_specs(["syn", "syn-quick", {"name": "syn-4level", "iterations": [100, 70, 50, 20]},
                               {"name": "syn-mattes", "metric": "mattes"}], metric="CC", radius=2, iterations=[9, 8])
    assert specs["syn-quick"] is None
    assert specs["syn"] == {"metric": "CC", "radius": 2, "iterations": [9, 8]}
    assert specs["syn-4level"] == {"metric": "CC", "radius": 2, "iterations": [100, 70, 50, 20]}
    assert specs["syn-mattes"] == {"metric": "mattes", "radius": 2, "iterations": [9, 8]}
    assert syn.ants_settings("syn-4level", **specs["syn-4level"])["reg_iterations"] == (100, 70, 50, 20)
    for bad, words in [(["syn", {"name": "syn"}], "given twice"), ([{"name": "syn-quick", "radius": 3}], "no settings"),
                       ([{"name": "SYN-x"}], "syn-<"), ([{"name": "syn-a", "iterations": [0]}], "at least 1"),
                       ([{"name": "syn", "radius": 3}], "syn_radius")]:
        with pytest.raises(QsInputError, match=words):
            syn.variant_specs(bad)


def test_bad_settings_are_refused_in_one_line(pair, tmp_path, capsys):
    root, pre = pair
    assert _run(pre, tmp_path / "q", "--variant", "syn-quick", "--radius", "3") == 2
    err = capsys.readouterr().err
    assert err.startswith("qs: error: --radius: settings of --variant syn") and err.count("\n") == 1
    with pytest.raises(SystemExit) as refused:  # the schema's bounds are the parser's
        _run(pre, tmp_path / "z", "--iterations", "10", "0")
    assert refused.value.code == 2
    assert "argument --iterations: must be >= 1 (config evaluate.syn_iterations), got 0" in capsys.readouterr().err
    assert not (tmp_path / "q").exists() and not (tmp_path / "z").exists()
    with pytest.raises(QsInputError, match="variant"):
        syn.ants_settings("fast")  # named settings are syn-NAME
    assert syn.ants_settings("syn-fast", iterations=[5])["reg_iterations"] == (5,)
    with pytest.raises(QsInputError, match="radius"):
        syn.ants_settings("syn", radius=0)


def test_overlap_refuses_labels_on_another_grid(pair, tmp_path, capsys):
    root, pre = pair
    raw = root / "demo" / "sub-01" / "sub-01_labels.nii.gz"
    code = main(["overlap", "--pair", "p", "--target-labels", str(pre["sub-02"]["labels"]), "--method", f"affine={raw}", "--out", str(tmp_path / "o.tsv")])
    assert code == 2 and "sub-01_labels.nii.gz" in capsys.readouterr().err
    assert not (tmp_path / "o.tsv").exists()
