"""Evaluation against LDDMM and the report, on a tiny synthetic results tree with known answers.

Two test pairs on a 16 x 18 x 14 grid (1.5 mm, shifted origin). LDDMM's
displacement is the constant (0, 1.2, 1.6) mm, so ``affine`` (zero
displacement) is 2.0 mm off everywhere. ``predict`` is 0.5 mm off in pair 1
and 1.5 mm off in pair 2 (equal brain masks), so its pooled percentiles are
0.5 up to p25, 1.0 at p50 and 1.5 from p75 on; ``predict+correct`` is 0.25
mm off everywhere. ``predict-mc`` folds (det J < 0) in pair 1 only. (The tree: the ``tree`` fixture in
conftest.py, shared with test_provenance.py.)
"""

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread

from conftest import AFFINE, PAIRS, SECONDS, SHAPE, tree_labels
from qs import cli
from qs.evaluate import OVERLAP_COLUMNS, detj_summary
from qs.io import QsInputError, save_array
from qs.report.build import build_report
from qs.report.methods import method_folder, method_name
from qs.report.pair import evaluate_pair
from qs.report.paper import PAPER_DEFORMATION_ERROR
from qs.report.tsv import DEFORMATION_COLUMNS


def _tsv(path):
    return pd.read_csv(path, sep="\t", dtype={"label": str, "pair": str})


def test_contract_columns_exactly(tree):
    rep = tree["root"] / "report"
    assert list(_tsv(rep / "deformation_error.tsv").columns) == DEFORMATION_COLUMNS
    assert DEFORMATION_COLUMNS == ["method", "p0.3", "p5", "p25", "p50", "p75", "p95", "p99.7", "detj_pos_pct"]
    assert list(_tsv(rep / "target_overlap.tsv").columns) == OVERLAP_COLUMNS == ["pair", "method", "label", "target_overlap", "dice"]
    assert list(_tsv(rep / "timing.tsv").columns) == ["pair", "method", "seconds", "device", "threads"]


def test_percentiles_have_the_known_values(tree):
    df = _tsv(tree["root"] / "report/deformation_error.tsv").set_index("method")
    assert list(df.index) == ["affine", "predict", "predict+correct", "predict-mc"]
    pcols = DEFORMATION_COLUMNS[1:-1]
    assert np.allclose(df.loc["affine", pcols].to_numpy(float), 2.0, atol=1e-5)
    assert np.allclose(df.loc["predict+correct", pcols].to_numpy(float), 0.25, atol=1e-5)
    expect = {"p0.3": 0.5, "p5": 0.5, "p25": 0.5, "p50": 1.0, "p75": 1.5, "p95": 1.5, "p99.7": 1.5}
    assert df.loc["predict", pcols].to_dict() == pytest.approx(expect, abs=1e-5)
    # per-pair error samples: float32, one value per target brain voxel
    with np.load(tree["pairs"][0] / "deformation_error.npz") as z:
        assert set(z.files) == {"affine", "predict", "predict+correct", "predict-mc"}
        assert z["predict"].dtype == np.float32 and z["predict"].size == int((tree_labels() > 0).sum())
        assert np.allclose(z["predict"], 0.5, atol=1e-5)


def test_detj_detects_folding(tree):
    d1 = _tsv(tree["pairs"][0] / "detj.tsv").set_index("method")
    d2 = _tsv(tree["pairs"][1] / "detj.tsv").set_index("method")
    assert list(d1.index) == ["lddmm", "predict", "predict+correct", "predict-mc"]
    assert not d1.loc["predict-mc", "detj_pos"] and d1.loc["predict-mc", "detj_min"] < 0  # summary said 0.9
    assert d1.loc["predict-mc", "detj_nonpos_voxels"] > 0
    assert d2.loc["predict-mc", "detj_pos"] and d1.loc["lddmm", "detj_pos"] and d1.loc["predict", "detj_pos"]
    assert d1.loc["predict", "detj_min"] == pytest.approx(1.0, abs=1e-5)
    df = _tsv(tree["root"] / "report/deformation_error.tsv").set_index("method")
    assert df.loc["predict-mc", "detj_pos_pct"] == pytest.approx(50.0)
    assert df.loc["predict", "detj_pos_pct"] == pytest.approx(100.0)
    assert np.isnan(df.loc["affine", "detj_pos_pct"])  # n/a, as in the paper
    assert len(_tsv(tree["root"] / "report/detj.tsv")) == 8
    # summary.md says which method folds where (the fold's pair and voxels), and no other
    folds = next(ln for ln in (tree["root"] / "report/summary.md").read_text().splitlines() if "**Folds**" in ln)
    pair = tree["pairs"][0].name
    assert f"`predict-mc` on {pair} ({int(d1.loc['predict-mc', 'detj_nonpos_voxels'])} voxels" in folds
    assert "`lddmm` on" not in folds and "`predict` on" not in folds


def test_detj_summary_counts_nonpositive_voxels():
    s = detj_summary(np.array([[[1.0, 0.0], [-0.5, 2.0]]]))
    assert s == {"detj_min": -0.5, "detj_max": 2.0, "detj_pos": False, "detj_nonpos_voxels": 2}


def test_overlap_rows_for_every_method(tree):
    df = _tsv(tree["root"] / "report/target_overlap.tsv")
    methods = ["affine", "lddmm", "syn", "predict", "predict+correct", "predict-mc"]
    for pair in PAIRS:
        sub = df[df.pair == pair]
        assert sorted(sub.method.unique()) == sorted(methods)
        for m in methods:
            assert sorted(sub[sub.method == m].label) == ["1001", "2035", "41000", "all"]
    total = df[(df.label == "all") & (df.pair == PAIRS[0])].set_index("method")["target_overlap"]
    assert total["lddmm"] == 1.0 and total["predict+correct"] == 1.0
    assert total["affine"] < total["syn"] < total["predict"] < 1.0  # shifted by 3, 2, 1 voxels


def test_timing_rows(tree):
    df = _tsv(tree["root"] / "report/timing.tsv")
    assert len(df) == 2 * 5 and set(df.pair) == set(PAIRS)
    t = df[df.pair == PAIRS[0]].set_index("method")
    assert t["seconds"].to_dict() == pytest.approx(SECONDS)
    assert t.loc["syn", "device"] == "cpu" and t.loc["predict", "device"] == "cuda:0"
    # thread counts from the summaries; 0 where a summary does not say
    assert t["threads"].to_dict() == {"lddmm": 2, "syn": 1, "predict": 0, "predict+correct": 0, "predict-mc": 0}


def test_figures_written_and_not_blank(tree):
    for name in ("target_overlap", "deformation_error", "example_pair", "loss"):
        path = tree["root"] / f"report/{name}.png"
        assert path.stat().st_size > 10_000, name
        img = imread(path)
        assert img.shape[0] > 200 and img.shape[1] > 400 and img[..., :3].std() > 0.05, name


def test_summary_has_our_table_and_the_papers(tree):
    text = (tree["root"] / "report/summary.md").read_text()
    # training: final L1s and their ratio to the zero field's (NaN for a loss.tsv without it)
    assert "| model | epochs | train_l1 | val_l1 | val_zero_l1 | val_vs_zero |" in text
    assert "| prediction | 3 | 0.3 | 0.45 | 0.9 | 0.500 |" in text
    assert "| correction | 3 | 0.3 | 0.45 | n/a | n/a |" in text
    assert "| method | p0.3 | p5 | p25 | p50 | p75 | p95 | p99.7 | detj_pos_pct |" in text
    assert "| predict | 0.5000 | 0.5000 | 0.5000 | 1.0000 | 1.5000 | 1.5000 | 1.5000 | 100 |" in text
    assert "| predict-mc |" in text and "| affine | 2.0000 |" in text
    for row in PAPER_DEFORMATION_ERROR["method"]:
        assert f"| {row} |" in text
    assert "| D, momentum, stride 14 + correction | 0.0104 |" in text
    assert "LPBA40" in text and "0.702" in text and "OASIS" in text
    assert "50.0x faster than LDDMM" in text  # median 100 s / 2 s
    assert "- config: tiny.yaml" in text


def test_velocity_networks_are_set_beside_the_papers_velocity_row():
    from qs.report.paper import paper_rows
    from qs.report.summary import summary_markdown

    assert paper_rows("momentum")["predict"] == "D, momentum, stride 14"
    rows = paper_rows("velocity")
    assert rows["predict"] == "D, velocity, stride 14"
    assert rows["predict+correct"] == "D, momentum, stride 14 + correction"  # the paper has no corrected velocity row
    assert set(rows.values()) <= set(PAPER_DEFORMATION_ERROR["method"])
    with pytest.raises(ValueError, match="field must be one of"):
        paper_rows("displacement")
    deformation = pd.DataFrame([{"method": "predict", "p0.3": 0.1, "p5": 0.2, "p25": 0.3, "p50": 0.5, "p75": 0.7,
                                 "p95": 0.9, "p99.7": 1.2, "detj_pos_pct": 100.0}])
    from qs.report.tsv import DETJ_COLUMNS, TIMING_COLUMNS

    empty = [pd.DataFrame(columns=c) for c in (OVERLAP_COLUMNS, TIMING_COLUMNS, DETJ_COLUMNS)]
    text = summary_markdown(deformation, *empty, field="velocity")
    assert "| predict | D, velocity, stride 14 | 0.5000 | 0.2703 |" in text
    assert "no corrected or MC velocity rows" in text


def test_outputs_are_atomic(tree):
    for folder in [tree["root"] / "report", *tree["pairs"]]:
        assert not [p.name for p in folder.iterdir() if p.name.startswith(".") or ".tmp" in p.name]
    assert sorted(p.name for p in tree["pairs"][0].iterdir()) == ["deformation_error.npz", "detj.tsv", "overlap.tsv", "timing.tsv"]


def test_method_names():
    assert method_name("predict-correct") == "predict+correct" and method_folder("predict+correct") == "predict-correct"
    assert method_name("syn") == "syn" == method_folder("syn")


def test_cli_evaluate_pair_and_report(tree, tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("report",))
    root, pair = tree["root"], PAIRS[0]
    lddmm, dirs = tree["dirs"][pair]
    args = ["evaluate-pair", "--pair", pair, "--lddmm", str(lddmm), "--out", str(tmp_path / "ev"),
            "--target-labels", str(root / "pre/target_labels.nii.gz"), "--moving-labels", str(root / "pre/moving_labels.nii.gz")]
    args += [x for m, d in dirs.items() for x in ("--method", f"{m}={d}")]
    assert cli.main(args) == 0
    a = _tsv(tmp_path / "ev/overlap.tsv")
    b = _tsv(tree["pairs"][0] / "overlap.tsv")
    pd.testing.assert_frame_equal(a, b)
    ex = tree["example"]
    args = ["report", str(tmp_path / "ev"), str(tree["pairs"][1]), "--out", str(tmp_path / "rep"), "--no-paper-table",
            "--loss", f"prediction={root / 'models/prediction/loss.tsv'}", "--provenance", "seed=0",
            "--example", f"target={ex['target']}", "--example", f"warp={ex['warp']}",
            "--example", f"warped={dirs['predict-mc'] / 'warp.nii.gz'}"]
    # a displacement field is not a 3D image: refused with the file named, nothing written
    assert cli.main(args) == 2
    assert not (tmp_path / "rep/summary.md").exists()
    args[-1] = f"moving={ex['moving']}"
    assert cli.main(args) == 0
    text = (tmp_path / "rep/summary.md").read_text()
    assert "D, momentum, stride 14 + correction" not in text and "- seed: 0" in text
    pd.testing.assert_frame_equal(_tsv(tmp_path / "rep/deformation_error.tsv"), _tsv(root / "report/deformation_error.tsv"))


def test_bad_input_is_refused(tree, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("report",))
    root, pair = tree["root"], PAIRS[0]
    lddmm, dirs = tree["dirs"][pair]
    assert cli.main(["evaluate-pair", "--pair", pair, "--lddmm", str(tmp_path / "nope"), "--out", str(tmp_path / "o"),
                     "--target-labels", str(root / "pre/target_labels.nii.gz")]) == 2
    assert "warp.nii.gz" in capsys.readouterr().err and not (tmp_path / "o").exists()
    assert cli.main(["evaluate-pair", "--pair", pair, "--lddmm", str(lddmm), "--out", str(tmp_path / "o"),
                     "--method", f"predict{dirs['predict']}"]) == 2
    assert "NAME=VALUE" in capsys.readouterr().err
    other = np.diag([2.0, 2.0, 2.0, 1.0])
    save_array(tree_labels(), other, tmp_path / "bad_labels.nii.gz")
    with pytest.raises(QsInputError, match="bad_labels"):
        evaluate_pair(pair, tmp_path / "o", lddmm_dir=lddmm, method_dirs={}, target_labels=tmp_path / "bad_labels.nii.gz")
    with pytest.raises(QsInputError, match="target labels or a brain mask"):
        evaluate_pair(pair, tmp_path / "o", lddmm_dir=lddmm, method_dirs={})
    assert cli.main(["report", str(tmp_path / "missing"), "--out", str(tmp_path / "r")]) == 2
    assert "deformation_error.npz" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() and not (tmp_path / "r").exists()


def test_cohort_without_labels(tree, tmp_path):
    """No labels: the error is measured in the given mask, overlap is empty, every figure is still written."""
    lddmm, dirs = tree["dirs"][PAIRS[0]]
    mask = np.zeros(SHAPE, np.float32)
    mask[2:6] = 1
    save_array(mask, AFFINE, tmp_path / "mask.nii.gz")
    evaluate_pair("p", tmp_path / "ev", lddmm_dir=lddmm, method_dirs={"predict": dirs["predict"]}, mask=tmp_path / "mask.nii.gz")
    with np.load(tmp_path / "ev/deformation_error.npz") as z:
        assert z["predict"].size == mask.sum() and np.allclose(z["affine"], 2.0, atol=1e-5)
    assert len(_tsv(tmp_path / "ev/overlap.tsv")) == 0
    build_report([tmp_path / "ev"], tmp_path / "rep", loss_tsvs={}, example=None)
    assert len(_tsv(tmp_path / "rep/target_overlap.tsv")) == 0
    assert "No labels" in (tmp_path / "rep/summary.md").read_text()
    for name in ("target_overlap", "deformation_error", "example_pair", "loss"):
        assert (tmp_path / f"rep/{name}.png").stat().st_size > 2000


def test_affine_qc_flags_outliers_against_the_cohorts_spread():
    """Robust z-scores with floors: a low NCC and a mirrored affine are flagged, a high NCC and the
    near-identical rest are not; the warning names exactly the flagged subjects."""
    from qs.report.qc import affine_qc_table, qc_warning

    rng = np.random.default_rng(0)
    records = [{"subject": f"s{i}", "ncc_with_atlas": 0.66 + 0.002 * rng.standard_normal(),
                "atlas_mask_coverage": 0.87, "affine_determinant": 0.65 + 0.01 * rng.standard_normal(),
                "scales": [0.82, 0.86, 0.9], "rotation_deg": 179.0, "shear": 0.01, "reoriented": True}
               for i in range(8)]
    records[1]["ncc_with_atlas"] = 0.40
    records[2]["ncc_with_atlas"] = 0.75  # better than the rest: not a failure
    records[3]["affine_determinant"] = -0.65
    table = affine_qc_table(records).set_index("subject")
    assert list(table.index[table["flagged"]]) == ["s1", "s3"]
    assert table.loc["s1", "flags"].startswith("ncc_with_atlas 0.4 (cohort 0.6")
    assert "mirrors" in table.loc["s3", "flags"]
    warning = qc_warning(table.reset_index())
    assert warning.startswith("affine QC flags 2 of 8 subjects") and "s1:" in warning and "s3:" in warning
    assert qc_warning(affine_qc_table(records[4:])) is None


def test_a_syn_setting_on_fewer_pairs_is_compared_pair_by_pair():
    """evaluate.syn_max_pairs runs the slow SyN settings on fewer reference pairs: the strongest SyN setting is
    chosen on the pairs every setting ran on, and the differences against it are taken pair by pair."""
    from qs.report.tables import accuracy_time_table, label_overlap_table, strongest_syn

    rows = []
    # syn-quick: 0.70 on p1, 0.80 on p2 and p3; syn only on p1, at 0.75 (its mean is below syn-quick's 0.767)
    for method, values in {"syn-quick": [0.70, 0.80, 0.80], "syn": [0.75], "lddmm": [0.72, 0.78, 0.79]}.items():
        for pair, v in zip(["p1", "p2", "p3"], values):
            for label in ("all", "1"):
                rows.append({"pair": pair, "method": method, "label": label, "target_overlap": v, "dice": v})
    overlap = pd.DataFrame(rows)
    assert strongest_syn(overlap) == "syn"  # better on the one pair both ran on
    acc = accuracy_time_table(overlap, pd.DataFrame()).set_index("method")
    assert acc.loc["syn", "pairs"] == 1 and acc.loc["lddmm", "pairs"] == 3
    assert acc.loc["lddmm", "vs_reference_mean"] == pytest.approx(-0.03)  # p1 only
    assert acc.loc["syn-quick", "pairs_at_or_above_reference"] == 0
    per_label = label_overlap_table(overlap).set_index("method")
    assert per_label.loc["lddmm", "vs_reference"] == pytest.approx(-0.03)
    assert per_label.loc["lddmm", "target_overlap_mean"] == pytest.approx((0.72 + 0.78 + 0.79) / 3)
