"""Per-subject pre-processing: affine to the atlas, resampling to the working grid, normalization.

Outputs (``OUT/SUBJECT_*``), all on the working grid (the atlas image's grid):
``_T1w.nii.gz`` and ``_T2w.nii.gz`` (float32, normalized to [0, 1]),
``_labels.nii.gz`` (int32, ``genericLabel`` resampling), ``_affine.mat`` (ANTs,
atlas point -> subject T1 point), ``_qc.png`` and ``_preprocess.json``.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from . import affine as aff
from .io import QsInputError, atomic_path, check_same_grid, copy_file, load_image, load_labels, save_array, write_json

NORMALIZATIONS = ("percentile", "max", "histeq")


def normalize_intensity(data: np.ndarray, mask: np.ndarray, method: str = "percentile", percentile: float = 99.5) -> np.ndarray:
    """Map intensities to [0, 1].

    ``percentile``: divide by the given percentile of the positive voxels in
    ``mask`` and clip (robust to bright outliers). ``max``: divide by the
    maximum. ``histeq``: histogram equalization of the positive voxels (the
    original Quicksilver pre-processing); zeros stay zero.
    """
    data = np.clip(np.asarray(data, dtype=np.float32), 0, None)
    inside = data[(mask > 0) & (data > 0)]
    if inside.size == 0:
        raise ValueError("normalize_intensity: no positive voxels inside the mask")
    if method == "percentile":
        return np.clip(data / np.percentile(inside, percentile), 0, 1).astype(np.float32)
    if method == "max":
        return (data / data.max()).astype(np.float32)
    if method == "histeq":
        positive = data > 0
        values = np.sort(data[positive])
        out = np.zeros_like(data)
        out[positive] = np.searchsorted(values, data[positive], side="right") / values.size
        return out.astype(np.float32)
    raise ValueError(f"normalize_intensity: unknown method '{method}' (choose from {NORMALIZATIONS})")


def _rigid_to_t1(t1_path, t2_path, out_mat, seed):
    """Rigid ANTs registration of a T2 on its own grid to the T1 (T1 point -> T2 point)."""
    ants = aff._ants()
    aff.seed_ants(seed)
    result = ants.registration(fixed=ants.image_read(str(t1_path)), moving=ants.image_read(str(t2_path)), type_of_transform="Rigid")
    shutil.copyfile(result["fwdtransforms"][0], out_mat)


def _warp_to_grid(atlas_path, image_path, transforms, *, labels=False) -> np.ndarray:
    ants = aff._ants()
    warped = ants.apply_transforms(
        fixed=ants.image_read(str(atlas_path)),
        moving=ants.image_read(str(image_path)),
        transformlist=[str(t) for t in transforms],
        interpolator="genericLabel" if labels else "linear",
    )
    data = warped.numpy()
    return np.rint(data).astype(np.int32) if labels else data.astype(np.float32)


def affine_qc_measures(affine_ras: np.ndarray) -> dict:
    """What a reader checks of an affine (4x4, atlas point -> subject point, mm): ``affine_determinant``,
    ``scales`` (the three stretches of its polar decomposition ``A = R S``, sorted, > 1 = the subject is larger than
    the atlas along that direction), ``rotation_deg`` (the angle of ``R``) and ``shear`` (largest off-diagonal of
    ``S / mean scale``)."""
    a = np.asarray(affine_ras, dtype=float)[:3, :3]
    u, sv, vt = np.linalg.svd(a)
    r = u @ vt
    stretch = vt.T @ np.diag(sv) @ vt
    off = stretch / sv.mean() - np.diag(np.diag(stretch / sv.mean()))
    angle = float(np.degrees(np.arccos(np.clip((np.trace(r) - 1) / 2, -1, 1)))) if np.linalg.det(r) > 0 else None
    return {"affine_determinant": float(np.linalg.det(a)), "scales": sorted(float(x) for x in sv),
            "rotation_deg": angle, "shear": float(np.abs(off).max())}  # rotation_deg None: the affine mirrors


def ncc(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Normalized cross-correlation of two images inside a mask."""
    x, y = a[mask > 0].astype(np.float64), b[mask > 0].astype(np.float64)
    x, y = x - x.mean(), y - y.mean()
    return float((x * y).sum() / np.sqrt((x * x).sum() * (y * y).sum() + 1e-12))


def preprocess_subject(
    subject: str,
    atlas_t1,
    atlas_mask,
    t1,
    out_dir,
    *,
    t2=None,
    labels=None,
    normalize: str = "percentile",
    seed: int = 0,
    threads: int = 1,
    orientation_search: bool = True,
) -> dict:
    """Affine-align one subject to the atlas and resample it onto the working grid.

    ``orientation_search``: start the affine from the best of the 24 axis rotations
    (:func:`qs.affine.orientation_search`), for scans stored rotated against their header.
    """
    if normalize not in NORMALIZATIONS:
        raise QsInputError(f"preprocess: unknown normalization '{normalize}' (choose from {NORMALIZATIONS})")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atlas = load_image(atlas_t1, what="atlas image")
    mask_img = load_image(atlas_mask, what="atlas mask")
    check_same_grid(atlas, mask_img, atlas_t1, atlas_mask)
    mask = np.asarray(mask_img.dataobj) > 0
    t1_img = load_image(t1, what="T1 image")
    t2_img = load_image(t2, what="T2 image") if t2 else None
    if labels:
        load_labels(labels, reference=t1_img, reference_path=t1)

    aff.set_ants_threads(threads)
    stem = out_dir / subject
    result = aff.register_affine(atlas_t1, t1, seed=seed, search=orientation_search)
    mat = copy_file(result["fwdtransforms"][0], f"{stem}_affine.mat")

    t1_grid = normalize_intensity(_warp_to_grid(atlas_t1, t1, [mat]), mask, normalize)
    outputs = {"t1": save_array(t1_grid, atlas.affine, f"{stem}_T1w.nii.gz")}
    if t2_img is not None:
        same = t2_img.shape == t1_img.shape and np.allclose(t2_img.affine, t1_img.affine, atol=1e-3)
        with tempfile.TemporaryDirectory(dir=out_dir) as tmpdir:
            chain = [mat]
            if not same:
                rigid = Path(tmpdir) / "t2_to_t1.mat"
                _rigid_to_t1(t1, t2, rigid, seed)
                chain.append(rigid)
            t2_grid = normalize_intensity(_warp_to_grid(atlas_t1, t2, chain), mask, normalize)
        outputs["t2"] = save_array(t2_grid, atlas.affine, f"{stem}_T2w.nii.gz")
    if labels:
        lab = _warp_to_grid(atlas_t1, labels, [mat], labels=True)
        outputs["labels"] = save_array(lab, atlas.affine, f"{stem}_labels.nii.gz", dtype=np.int32)

    atlas_data = np.asarray(atlas.dataobj)
    affine_ras = aff.affine_matrix_ras(mat)
    support = t1_grid > 0  # what the subject's image holds on the grid (a skull strip may lack the cerebellum)
    qc = {
        "subject": subject,
        "affine_ras": affine_ras.round(6).tolist(),
        **affine_qc_measures(affine_ras),
        "ncc_with_atlas": ncc(t1_grid, atlas_data, mask & support),
        "atlas_mask_coverage": float((mask & support).sum() / max(int(mask.sum()), 1)),
        "start_rotation": result["search"]["rotation"] if result["search"] else None,
        "reoriented": bool(result["search"] and result["search"]["rotation_index"] != 0),
        "normalize": normalize,
        "seed": seed,
    }
    outputs["qc_png"] = qc_figure(atlas_data, t1_grid, mask, f"{stem}_qc.png", title=f"{subject}: affine to atlas (NCC {qc['ncc_with_atlas']:.3f})")
    outputs["json"] = write_json(qc, f"{stem}_preprocess.json")
    outputs["affine"] = mat
    return outputs


def qc_figure(atlas: np.ndarray, subject: np.ndarray, mask: np.ndarray, path, *, title: str) -> Path:
    """Mid-slice overlay: aligned subject in grey, atlas brain outline and edges in colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    centre = [int(np.round(np.mean(ix))) for ix in np.nonzero(mask)]
    views = [("sagittal", lambda v: v[centre[0], :, :]), ("coronal", lambda v: v[:, centre[1], :]), ("axial", lambda v: v[:, :, centre[2]])]
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4))
    for ax, (name, cut) in zip(axes, views):
        ax.imshow(cut(subject).T, cmap="gray", origin="lower", vmin=0, vmax=1)
        ax.contour(cut(atlas).T, levels=[np.percentile(atlas[mask], 60)], colors="tab:red", linewidths=0.6, origin="lower")
        ax.contour(cut(mask.astype(float)).T, levels=[0.5], colors="yellow", linewidths=0.8, origin="lower")
        ax.set_title(name)
        ax.axis("off")
    fig.suptitle(title + "\nred: atlas WM/GM edge, yellow: atlas brain outline", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return Path(path)


def build_atlas_grid(atlas_t1, atlas_mask, out_dir, *, spacing: float, margin_mm: float, atlas_labels=None, atlas_t2=None) -> dict:
    """Resample the atlas onto the working grid (see :mod:`qs.grid`); write it to ``out_dir``.

    Writes ``atlas_T1w.nii.gz`` (normalized to [0, 1]), ``atlas_mask.nii.gz``,
    optionally ``atlas_T2w.nii.gz`` and ``atlas_labels.nii.gz``, and ``grid.json``.
    """
    from .grid import resample_to_grid, working_grid

    out_dir = Path(out_dir)
    t1 = load_image(atlas_t1, what="atlas image")
    mask = load_image(atlas_mask, what="atlas mask")
    check_same_grid(t1, mask, atlas_t1, atlas_mask)
    if not np.asarray(mask.dataobj).any():
        raise QsInputError(f"{atlas_mask}: atlas mask is empty")
    shape, affine = working_grid(mask, spacing, margin_mm)
    m = (resample_to_grid(mask, shape, affine, order=1) > 0.5).astype(np.uint8)
    out = {
        "mask": save_array(m, affine, out_dir / "atlas_mask.nii.gz", dtype=np.uint8),
        "t1": save_array(normalize_intensity(resample_to_grid(t1, shape, affine), m), affine, out_dir / "atlas_T1w.nii.gz"),
    }
    if atlas_t2:
        t2 = load_image(atlas_t2, what="atlas T2 image")
        out["t2"] = save_array(normalize_intensity(resample_to_grid(t2, shape, affine), m), affine, out_dir / "atlas_T2w.nii.gz")
    if atlas_labels:
        lab = load_labels(atlas_labels)
        out["labels"] = save_array(resample_to_grid(lab, shape, affine, order=0), affine, out_dir / "atlas_labels.nii.gz", dtype=np.int32)
    grid = {"shape": list(shape), "spacing_mm": spacing, "affine": affine.tolist(), "margin_mm": margin_mm}
    out["grid"] = write_json(grid, out_dir / "grid.json")
    return out
