"""ANTsPy SyN baseline and the overlap table on two pre-processed demo subjects."""

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from qs.cli import main
from qs.demo import make_demo_cohort
from qs.preprocess import build_atlas_grid, preprocess_subject


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


def test_syn_improves_overlap_and_is_ants_compatible(pair, tmp_path):
    import ants

    root, pre = pair
    m, t = pre["sub-01"], pre["sub-02"]
    assert main(["syn", "--moving", str(m["t1"]), "--target", str(t["t1"]), "--labels", str(m["labels"]), "--out", str(tmp_path / "syn")]) == 0
    warped = ants.apply_transforms(
        fixed=ants.image_read(str(t["t1"])), moving=ants.image_read(str(m["t1"])),
        transformlist=[str(tmp_path / "syn/warp.nii.gz"), str(tmp_path / "syn/affine.mat")],
    )
    assert np.allclose(warped.numpy(), np.asarray(nib.load(str(tmp_path / "syn/warped.nii.gz")).dataobj), atol=1e-4)
    table = tmp_path / "overlap.tsv"
    assert main(["overlap", "--pair", "sub-01_to_sub-02", "--target-labels", str(t["labels"]),
                 "--method", f"affine={m['labels']}", "--method", f"syn={tmp_path / 'syn/warped_labels.nii.gz'}", "--out", str(table)]) == 0
    df = pd.read_csv(table, sep="\t", dtype={"label": str})
    assert list(df.columns) == ["pair", "method", "label", "target_overlap", "dice"]
    total = df[df.label == "all"].set_index("method")["target_overlap"]
    print(f"target overlap: affine {total['affine']:.3f}, syn {total['syn']:.3f}")
    assert total["syn"] > total["affine"] + 0.01
    assert {"1001", "2016", "24"} <= set(df.label)


def test_overlap_refuses_labels_on_another_grid(pair, tmp_path, capsys):
    root, pre = pair
    raw = root / "demo" / "sub-01" / "sub-01_labels.nii.gz"
    code = main(["overlap", "--pair", "p", "--target-labels", str(pre["sub-02"]["labels"]), "--method", f"affine={raw}", "--out", str(tmp_path / "o.tsv")])
    assert code == 2 and "sub-01_labels.nii.gz" in capsys.readouterr().err
    assert not (tmp_path / "o.tsv").exists()
