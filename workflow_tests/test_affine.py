"""ANTsPy affine pre-alignment on the demo cohort: recovery of the known affine, labels, orientation."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from qs.affine import affine_matrix_ras
from qs.cli import main
from qs.demo import make_demo_cohort
from qs.preprocess import affine_qc_measures, build_atlas_grid, preprocess_subject

SPACING = 3.0


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    make_demo_cohort(root, n_subjects=2, spacing=SPACING, seed=3)
    grid = build_atlas_grid(
        root / "atlas" / "atlas_T1w.nii.gz", root / "atlas" / "atlas_mask.nii.gz", root / "grid",
        spacing=SPACING, margin_mm=6.0, atlas_labels=root / "atlas" / "atlas_labels.nii.gz",
    )
    return root, grid


def brain_points(mask_path):
    mask = nib.load(str(mask_path))
    idx = np.argwhere(np.asarray(mask.dataobj) > 0)
    return (mask.affine @ np.c_[idx, np.ones(len(idx))].T)


def affine_error_mm(found, truth, points):
    return np.linalg.norm(((found - truth) @ points)[:3], axis=0).mean()


def test_affine_recovers_the_demo_affine(demo, tmp_path):
    root, grid = demo
    sub = root / "sub-01" / "sub-01"
    out = preprocess_subject(
        "sub-01", grid["t1"], grid["mask"], f"{sub}_T1w.nii.gz", tmp_path,
        t2=f"{sub}_T2w.nii.gz", labels=f"{sub}_labels.nii.gz", seed=0,
    )
    truth = np.loadtxt(root / "truth" / "sub-01_affine.txt")
    found = affine_matrix_ras(out["affine"])
    err = affine_error_mm(found, truth, brain_points(grid["mask"]))
    identity_err = affine_error_mm(np.eye(4), truth, brain_points(grid["mask"]))
    print(f"affine recovery: mean error over the brain {err:.3f} mm (identity: {identity_err:.3f} mm)")
    assert err < SPACING  # within one working voxel
    assert err < identity_err / 3
    qc = json.loads(out["json"].read_text())
    assert qc["ncc_with_atlas"] > 0.8
    lab = np.asarray(nib.load(str(out["labels"])).dataobj)
    atlas_lab = np.asarray(nib.load(str(grid["labels"])).dataobj)
    assert lab.dtype == np.int32 and set(np.unique(lab)) <= set(np.unique(atlas_lab)) | {0}
    gm = (lab > 1000) & (atlas_lab > 1000)
    assert (lab[gm] == atlas_lab[gm]).mean() > 0.5  # parcels land on the atlas parcels


def test_flipped_header_gives_the_same_alignment(demo, tmp_path):
    """The same world content stored with flipped axes (LPS-like storage) aligns the same way."""
    root, grid = demo
    img = nib.load(str(root / "sub-01" / "sub-01_T1w.nii.gz"))
    data = np.asarray(img.dataobj)[::-1, ::-1, :]
    flip = np.eye(4)
    flip[0, 0] = flip[1, 1] = -1
    flip[0, 3], flip[1, 3] = data.shape[0] - 1, data.shape[1] - 1
    flipped = tmp_path / "flipped_T1w.nii.gz"
    nib.save(nib.Nifti1Image(data, img.affine @ flip), str(flipped))
    assert nib.aff2axcodes(nib.load(str(flipped)).affine) == ("L", "P", "S")
    a = preprocess_subject("a", grid["t1"], grid["mask"], root / "sub-01" / "sub-01_T1w.nii.gz", tmp_path / "a", seed=0)
    b = preprocess_subject("b", grid["t1"], grid["mask"], flipped, tmp_path / "b", seed=0)
    diff = affine_error_mm(affine_matrix_ras(a["affine"]), affine_matrix_ras(b["affine"]), brain_points(grid["mask"]))
    assert diff < 0.5 * SPACING
    ta = np.asarray(nib.load(str(a["t1"])).dataobj)
    tb = np.asarray(nib.load(str(b["t1"])).dataobj)
    assert np.corrcoef(ta.ravel(), tb.ravel())[0, 1] > 0.98


@pytest.mark.parametrize("axes, turns", [((0, 1), 2), ((1, 2), 1)])
def test_a_scan_stored_rotated_against_its_header_aligns_as_the_original(demo, tmp_path, axes, turns):
    """The voxels turned 180 degrees about the vertical axis (LPBA40's case) or 90 degrees about the left-right
    axis, the header left as it was: the orientation search finds the turn, and the aligned image and its
    affine's QC match the original's; without the search the affine is matched wrong (lower NCC)."""
    root, grid = demo
    img = nib.load(str(root / "sub-01" / "sub-01_T1w.nii.gz"))
    turned = tmp_path / "turned_T1w.nii.gz"
    nib.save(nib.Nifti1Image(np.ascontiguousarray(np.rot90(np.asarray(img.dataobj), turns, axes)), img.affine), str(turned))
    a = preprocess_subject("a", grid["t1"], grid["mask"], root / "sub-01" / "sub-01_T1w.nii.gz", tmp_path / "a", seed=0)
    b = preprocess_subject("b", grid["t1"], grid["mask"], turned, tmp_path / "b", seed=0)
    c = preprocess_subject("c", grid["t1"], grid["mask"], turned, tmp_path / "c", seed=0, orientation_search=False)
    qa, qb, qc = (json.loads(Path(x["json"]).read_text()) for x in (a, b, c))
    assert not qa["reoriented"] and qb["reoriented"]
    start = np.asarray(qb["start_rotation"])
    assert np.allclose(np.abs(start), np.abs(start).round()) and np.isclose(np.linalg.det(start), 1)
    ta, tb = (np.asarray(nib.load(str(x["t1"])).dataobj) for x in (a, b))
    assert np.corrcoef(ta.ravel(), tb.ravel())[0, 1] > 0.98
    assert abs(qb["affine_determinant"] - qa["affine_determinant"]) < 0.02 * qa["affine_determinant"]
    assert abs(qb["ncc_with_atlas"] - qa["ncc_with_atlas"]) < 0.01
    assert qc["ncc_with_atlas"] < qb["ncc_with_atlas"] - 0.1, (qb["ncc_with_atlas"], qc["ncc_with_atlas"])


def test_affine_qc_measures_known_answers():
    """Determinant, scales, rotation angle and shear of known matrices; a mirror has no rotation angle."""
    theta = np.radians(30)
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    m = np.eye(4)
    m[:3, :3] = rot @ np.diag([0.8, 0.9, 1.1])
    q = affine_qc_measures(m)
    assert np.isclose(q["affine_determinant"], 0.8 * 0.9 * 1.1) and np.allclose(q["scales"], [0.8, 0.9, 1.1])
    assert np.isclose(q["rotation_deg"], 30) and q["shear"] < 1e-9
    mirror = np.diag([-1.0, 1, 1, 1])
    assert affine_qc_measures(mirror)["rotation_deg"] is None and affine_qc_measures(mirror)["affine_determinant"] < 0


def test_qs_affine_cli_outputs_are_ants_compatible(demo, tmp_path):
    import ants

    root, grid = demo
    sub = root / "sub-02" / "sub-02"
    prefix = tmp_path / "sub-02"
    code = main(["affine", "--fixed", str(grid["t1"]), "--moving", f"{sub}_T1w.nii.gz", "--labels", f"{sub}_labels.nii.gz", "--out", str(prefix)])
    assert code == 0
    warped = nib.load(f"{prefix}_warped.nii.gz")
    fixed = nib.load(str(grid["t1"]))
    assert warped.shape == fixed.shape and np.allclose(warped.affine, fixed.affine, atol=1e-4)
    again = ants.apply_transforms(
        fixed=ants.image_read(str(grid["t1"])), moving=ants.image_read(f"{sub}_T1w.nii.gz"), transformlist=[f"{prefix}_affine.mat"]
    )
    assert np.allclose(again.numpy(), np.asarray(warped.dataobj), atol=1e-3 * np.abs(again.numpy()).max())
    labels = nib.load(f"{prefix}_labels.nii.gz")
    ids = np.unique(np.asarray(labels.dataobj))
    assert np.issubdtype(labels.get_data_dtype(), np.integer) and ids.max() > 2000


def test_cli_rejects_labels_off_the_image_grid(demo, tmp_path, capsys):
    root, grid = demo
    code = main(["affine", "--fixed", str(grid["t1"]), "--moving", str(root / "sub-01" / "sub-01_T1w.nii.gz"),
                 "--labels", str(grid["labels"]), "--out", str(tmp_path / "x")])
    assert code == 2 and "differs from" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_preprocessing_is_deterministic_across_processes(demo, tmp_path):
    """Two separate `qs preprocess` processes with one thread and one seed give identical files."""
    import subprocess
    import sys

    root, grid = demo
    t1 = root / "sub-02" / "sub-02_T1w.nii.gz"
    for k in range(2):
        cmd = [sys.executable, "-m", "qs.cli", "preprocess", "--subject", "s", "--atlas", str(grid["t1"]), "--atlas-mask",
               str(grid["mask"]), "--t1", str(t1), "--seed", "0", "--threads", "1", "--out", str(tmp_path / str(k))]
        subprocess.run(cmd, check=True, capture_output=True)
    a, b = (np.asarray(nib.load(str(tmp_path / str(k) / "s_T1w.nii.gz")).dataobj) for k in range(2))
    assert np.array_equal(a, b)
    assert (tmp_path / "0" / "s_affine.mat").read_bytes() == (tmp_path / "1" / "s_affine.mat").read_bytes()
