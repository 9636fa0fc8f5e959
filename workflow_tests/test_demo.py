"""The built-in demo cohort (qs.demo) and its atlas (qs.atlas): files, determinism, and the truth it records."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi

from qs import atlas, demo
from qs.cohort import demo_table
from qs.io import QsInputError

SPACING = 3.0


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Three subjects at 3 mm, seed 0 (the default split puts one in test)."""
    out = tmp_path_factory.mktemp("demo_a")
    sheet = demo.make_demo_cohort(out, n_subjects=3, spacing=SPACING, seed=0)
    return out, sheet


def _arr(path):
    img = nib.load(str(path))
    return np.asanyarray(img.dataobj), img.affine, img


def _sheet(sheet):
    return pd.read_csv(sheet, sep="\t", dtype=str)


def test_sheet_and_files(cohort):
    out, sheet = cohort
    assert sheet == out / "subjects.tsv"
    df = _sheet(sheet)
    assert list(df.columns) == ["subject", "t1", "t2", "labels", "split"]
    assert list(df.subject) == ["sub-01", "sub-02", "sub-03"]
    assert list(df.split) == list(demo_table("", 3, test_fraction=0.25, seed=0)["split"])
    assert sorted(df.split) == ["test", "train", "train"]
    for _, row in df.iterrows():
        for col in ("t1", "t2", "labels"):
            rel = Path(row[col])
            assert not rel.is_absolute()
            assert (sheet.parent / rel).is_file(), rel
        t1, aff, img = _arr(sheet.parent / row.t1)
        t2, aff2, _ = _arr(sheet.parent / row.t2)
        lab, aff3, limg = _arr(sheet.parent / row.labels)
        assert t1.shape == t2.shape == lab.shape
        assert np.allclose(aff, aff2) and np.allclose(aff, aff3)
        assert np.allclose(np.diag(aff)[:3], SPACING) and np.count_nonzero(aff[:3, :3]) == 3
        assert img.get_data_dtype() == np.float32
        assert limg.get_data_dtype() == np.int32
        assert 0 <= t1.min() and 800 < np.percentile(t1, 99.9) < 1300
    for name in ("T1w", "T2w", "labels", "mask"):
        data, aff, img = _arr(out / "atlas" / f"atlas_{name}.nii.gz")
        assert data.shape == (197, 233, 189)
        assert np.allclose(aff, [[1, 0, 0, -98], [0, 1, 0, -134], [0, 0, 1, -72], [0, 0, 0, 1]])
    assert _arr(out / "atlas" / "atlas_labels.nii.gz")[2].get_data_dtype() == np.int32
    for s in ("sub-01", "sub-02", "sub-03"):
        for f in (f"{s}_affine.txt", f"{s}_displacement.nii.gz", f"{s}_params.json"):
            assert (out / "truth" / f).is_file()
    assert not list(out.rglob("*.tmp*")), "temporary files left behind"


def test_determinism_and_independence_of_cohort_size(cohort, tmp_path):
    out, _ = cohort
    # same seed, smaller cohort: sub-01 is identical (same arrays, grid, truth)
    demo.make_demo_cohort(tmp_path / "b", n_subjects=1, spacing=SPACING, seed=0)
    for f in ("sub-01/sub-01_T1w.nii.gz", "sub-01/sub-01_T2w.nii.gz", "sub-01/sub-01_labels.nii.gz",
              "truth/sub-01_displacement.nii.gz"):
        a, aa, _ = _arr(out / f)
        b, ab, _ = _arr(tmp_path / "b" / f)
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), f
        assert np.array_equal(aa, ab)
    assert (out / "truth/sub-01_affine.txt").read_text() == (tmp_path / "b/truth/sub-01_affine.txt").read_text()
    assert _sheet(tmp_path / "b" / "subjects.tsv").split.tolist() == ["train"]
    # same seed again, in memory: sub-02 identical to the file
    s2 = demo.make_subject(0, 1, SPACING)
    assert s2["t1"].tobytes() == _arr(out / "sub-02/sub-02_T1w.nii.gz")[0].tobytes()
    assert np.array_equal(s2["labels"], _arr(out / "sub-02/sub-02_labels.nii.gz")[0])
    assert np.array_equal(s2["A"], np.loadtxt(out / "truth/sub-02_affine.txt"))
    # another seed: a different subject
    demo.make_demo_cohort(tmp_path / "c", n_subjects=1, spacing=SPACING, seed=1, test_fraction=0.0)
    assert _sheet(tmp_path / "c" / "subjects.tsv").split.tolist() == ["train"]
    assert not np.allclose(np.loadtxt(out / "truth/sub-01_affine.txt"), np.loadtxt(tmp_path / "c/truth/sub-01_affine.txt"))
    a = _arr(out / "sub-01/sub-01_T1w.nii.gz")[0]
    c = _arr(tmp_path / "c" / "sub-01/sub-01_T1w.nii.gz")[0]
    assert a.shape != c.shape or not np.array_equal(a, c)
    # subjects of one cohort differ from each other
    assert not np.allclose(np.loadtxt(out / "truth/sub-01_affine.txt"), np.loadtxt(out / "truth/sub-02_affine.txt"))


def test_labels(cohort):
    out, _ = cohort
    parcels = [i for i in atlas.label_ids() if i > 1000]
    assert len(parcels) >= 20
    for s in ("sub-01", "sub-02", "sub-03"):
        lab = _arr(out / s / f"{s}_labels.nii.gz")[0]
        assert np.issubdtype(lab.dtype, np.integer)
        ids = set(np.unique(lab).tolist())
        assert ids <= {0, *atlas.label_ids()}
        assert {atlas.CSF_LABEL, atlas.WM_LEFT_LABEL, atlas.WM_RIGHT_LABEL} <= ids
        assert len([i for i in ids if i > 1000]) >= 20
        assert any(1000 < i < 2000 for i in ids) and any(i > 2000 for i in ids)
    atlas_labels = _arr(out / "atlas" / "atlas_labels.nii.gz")[0]
    assert set(np.unique(atlas_labels).tolist()) == {0, *atlas.label_ids()}


def test_template_resampled_every_parcel_non_empty():
    t2 = atlas.mni_template(2.0)
    assert set(t2) >= {"t1", "gm", "wm", "csf", "mask", "labels"}
    lab = np.asanyarray(t2["labels"].dataobj)
    assert lab.dtype == np.int32
    assert set(np.unique(lab).tolist()) == {0, *atlas.label_ids()}
    assert np.allclose(t2["t1"].affine, [[2, 0, 0, -98], [0, 2, 0, -134], [0, 0, 2, -72], [0, 0, 0, 1]])
    assert t2["t1"].shape == (99, 117, 95)
    # a parcellation independent of the grid: left/right ids are mirror images
    xw = t2["labels"].affine[0, 0] * np.arange(lab.shape[0]) + t2["labels"].affine[0, 3]
    left = lab[xw < 0]
    assert left.max() < 2000 and np.all(lab[xw > 0] != atlas.WM_LEFT_LABEL)
    native = atlas.mni_template()
    assert native["t1"].shape == (197, 233, 189)
    assert set(np.unique(np.asanyarray(native["mask"].dataobj)).tolist()) == {0, 1}


def test_affine_within_ranges(cohort):
    out, _ = cohort
    for s in ("sub-01", "sub-02", "sub-03"):
        a = np.loadtxt(out / "truth" / f"{s}_affine.txt")
        p = json.loads((out / "truth" / f"{s}_params.json").read_text())
        assert a.shape == (4, 4) and np.allclose(a[3], [0, 0, 0, 1])
        lin = a[:3, :3]
        det = np.linalg.det(lin)
        assert demo.SCALE_RANGE[0] ** 3 - 1e-9 <= det <= demo.SCALE_RANGE[1] ** 3 + 1e-9
        assert np.isclose(det, np.prod(p["affine"]["scale_xyz"]))
        sv = np.linalg.svd(lin, compute_uv=False)
        assert sv.min() > 0.87 and sv.max() < 1.13 and np.linalg.cond(a) < 1e3
        # about the brain centre: A c = c + t, |t| <= 8 mm per axis
        c = np.array(p["affine"]["centre_mm"])
        t = (a @ np.append(c, 1.0))[:3] - c
        assert np.allclose(t, p["affine"]["translation_mm"]) and np.all(np.abs(t) <= demo.TRANSLATION_MM)
        # rotation part (polar decomposition) within sqrt(3) * 8 degrees (+ shear)
        u, _, vt = np.linalg.svd(lin)
        r = u @ vt
        angle = math.degrees(math.acos(np.clip((np.trace(r) - 1) / 2, -1, 1)))
        assert angle <= math.sqrt(3) * demo.ROTATION_DEG + 3
        assert np.all(np.abs(p["affine"]["rotation_deg_xyz"]) <= demo.ROTATION_DEG)
        assert np.allclose(np.linalg.inv(a) @ a, np.eye(4))


def _sample_disp(disp_img, pts):
    """Documented interpolation of the truth displacement: trilinear, edges extended."""
    d = np.asanyarray(disp_img.dataobj).astype(np.float64)
    vox = np.linalg.inv(disp_img.affine) @ np.vstack([pts, np.ones((1, pts.shape[1]))])
    return np.stack([ndi.map_coordinates(d[..., c], vox[:3], order=1, mode="nearest") for c in range(3)])


def test_diffeomorphism_is_real_and_invertible(cohort):
    """The subject matches the atlas under A + D much better than under A alone."""
    out, _ = cohort
    at1, aaff, _ = _arr(out / "atlas" / "atlas_T1w.nii.gz")
    alab = _arr(out / "atlas" / "atlas_labels.nii.gz")[0]
    at1 = at1.astype(np.float32)
    for s in ("sub-01", "sub-02"):
        t1, saff, _ = _arr(out / s / f"{s}_T1w.nii.gz")
        lab = _arr(out / s / f"{s}_labels.nii.gz")[0]
        a = np.loadtxt(out / "truth" / f"{s}_affine.txt")
        disp = nib.load(str(out / "truth" / f"{s}_displacement.nii.gz"))
        p = json.loads((out / "truth" / f"{s}_params.json").read_text())["diffeomorphism"]
        idx = np.argwhere(lab > 0).T.astype(np.float64)
        y = saff[:3, :3] @ idx + saff[:3, 3:4]
        z = (np.linalg.inv(a) @ np.vstack([y, np.ones((1, y.shape[1]))]))[:3]
        x = z + _sample_disp(disp, z)
        inv = np.linalg.inv(aaff)
        res = {}
        for name, pts in (("affine", z), ("full", x)):
            v = inv[:3, :3] @ pts + inv[:3, 3:4]
            warped = ndi.map_coordinates(at1, v, order=1)
            wl = ndi.map_coordinates(alab, v, order=0)
            obs = t1[lab > 0]
            res[name] = (np.abs(warped - obs).mean(), np.corrcoef(warped, obs)[0, 1], np.mean(wl == lab[lab > 0]))
        # labels: the documented convention reproduces them (nearest neighbour)
        assert res["full"][2] > 0.99, res
        assert res["affine"][2] < res["full"][2] - 0.05, res
        # T1 intensities (with bias and noise): clearly closer under affine + nonlinear
        assert res["affine"][0] > 1.2 * res["full"][0], res
        assert res["full"][1] > res["affine"][1] + 0.02, res
        # displacement magnitude as documented, and D = I + u invertible (det J > 0)
        assert demo.MAX_DISP_MM[0] - 0.5 <= p["max_displacement_mm"] <= demo.MAX_DISP_MM[1] + 0.5
        u = np.asanyarray(disp.dataobj).astype(np.float64)
        h = disp.affine[0, 0]
        jac = np.empty(u.shape[:3] + (3, 3))
        for c in range(3):
            g = np.gradient(u[..., c], h)
            for d in range(3):
                jac[..., c, d] = g[d] + (c == d)
        assert np.linalg.det(jac).min() > 0.2
        assert 2.5 < np.abs(u).max() < 8


def test_contrast(cohort):
    out, _ = cohort
    for s in ("sub-01", "sub-03"):
        t1 = _arr(out / s / f"{s}_T1w.nii.gz")[0]
        t2 = _arr(out / s / f"{s}_T2w.nii.gz")[0]
        lab = _arr(out / s / f"{s}_labels.nii.gz")[0]
        wm = np.isin(lab, [atlas.WM_LEFT_LABEL, atlas.WM_RIGHT_LABEL])
        gm = lab > 1000
        csf = lab == atlas.CSF_LABEL
        assert t2[wm].mean() < t2[gm].mean() < t2[csf].mean()
        assert t1[wm].mean() > t1[gm].mean() > t1[csf].mean()
        # the background is noise only
        assert t1[lab == 0].mean() < 0.1 * t1[wm].mean()


def test_displacement_range_scales_the_diffeomorphism_only():
    """A harder cohort (``--max-displacement 6 9``): the same draws, a larger displacement (within the range)."""
    rng = lambda: np.random.default_rng(demo.subject_seed(3, 0).spawn(6)[1])  # noqa: E731
    easy, hard = demo.random_diffeomorphism(rng()), demo.random_diffeomorphism(rng(), (6.0, 9.0))
    assert easy.params["velocity_sigma_mm"] == hard.params["velocity_sigma_mm"]
    assert 6.0 - 0.5 <= hard.params["max_displacement_mm"] <= 9.0 + 0.5
    ratio = hard.params["target_max_displacement_mm"] / easy.params["target_max_displacement_mm"]
    assert ratio == pytest.approx((6.0 + 3.0 * (easy.params["target_max_displacement_mm"] - 3.0) / 2.0)
                                  / easy.params["target_max_displacement_mm"])  # the same uniform draw, rescaled


def test_bad_arguments(tmp_path, monkeypatch):
    with pytest.raises(QsInputError, match="spacing"):
        demo.make_demo_cohort(tmp_path, n_subjects=2, spacing=0.0)
    with pytest.raises(QsInputError, match="test_fraction"):
        demo.make_demo_cohort(tmp_path, n_subjects=2, test_fraction=1.5)
    with pytest.raises(QsInputError, match="subjects"):
        demo.make_demo_cohort(tmp_path, n_subjects=0)
    for bad in ((5.0, 3.0), (0.0, 2.0), (3.0, 30.0), (3.0,), "big"):
        with pytest.raises(QsInputError, match="displacement range"):
            demo.make_demo_cohort(tmp_path, n_subjects=2, max_displacement_mm=bad)
    assert not (tmp_path / "subjects.tsv").exists()
    monkeypatch.setitem(atlas.TEMPLATE_FILES, "t1", "no_such_template.nii.gz")
    with pytest.raises(atlas.TemplateNotFoundError, match="no_such_template"):
        atlas.template_dir()
