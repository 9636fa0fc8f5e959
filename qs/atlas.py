"""The built-in atlas: the MNI ICBM152 2009a symmetric template, its brain mask, T2-like contrast and labels.

Used by real cohorts (``qs atlas``, the workflow's atlas), by :mod:`qs.register` and by the synthetic demo
cohort (:mod:`qs.demo`). The template ships inside the ``nilearn`` wheel
(``nilearn/datasets/data/mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted.nii.gz``,
197 x 233 x 189 voxels, 1 mm, affine ``diag(1, 1, 1)`` with origin
``(-98, -134, -72)``). Nothing is downloaded at run time; a missing file raises
:class:`TemplateNotFoundError`.

Coordinates are nibabel world coordinates (RAS+, mm); arrays keep nibabel's voxel axis order ``(i, j, k)``.

The template (:func:`mni_template`)
-----------------------------------
All maps are computed once per process at the native 1 mm grid (:func:`native_template`):

* ``t1``: the template T1 (already brain-extracted) scaled from 0..255 to
  0..1000, float32.
* ``gm``, ``wm``: the tissue probability maps scaled to 0..1, float32.
* ``mask`` (uint8 0/1): ``gm + wm > 0.5``, largest connected component,
  closed (3 iterations of the 6-neighbourhood), holes filled (ventricles),
  dilated by 2 voxels (a CSF rim around the cortex).
* ``csf``: ``mask * clip(1 - gm - wm, 0, 1)`` (sulci, ventricles, the rim).
* ``t2``: a T2-like contrast from the tissue maps,
  ``1000 * (0.90 csf + 0.55 gm + 0.35 wm)`` (CSF bright, WM dark), float32.
* ``labels`` (int32), see :func:`atlas_labels`: inside the mask each voxel
  takes the most probable class among CSF / GM / WM; CSF = 24, WM = 2 (left,
  world ``x < 0``) / 41 (right, ``x >= 0``), grey matter is split into
  ``N_PARCELS_PER_HEMISPHERE`` = 16 parcels per hemisphere, ids ``1001..1016``
  (left) and ``2001..2016`` (right). The parcels are the Voronoi cells of
  fixed world-space centroids: k-means (farthest-point initialisation, no
  randomness) of the left-hemisphere grey-matter voxel coordinates of the
  native template, mirrored ``x -> -x`` for the right hemisphere. The
  parcellation does not depend on any seed nor on the grid.

``mni_template(spacing)`` resamples these maps onto a grid of ``spacing`` mm
with the template's origin and field of view (Gaussian anti-aliasing with
FWHM ``sqrt(spacing^2 - 1)`` mm, :func:`smoothed_map`, then linear interpolation; the mask is the
resampled mask ``>= 0.5``; the labels are recomputed on that grid by
:func:`atlas_labels`, with the same centroids). :func:`write_atlas` writes the native 1 mm maps.
"""

from __future__ import annotations

import functools
import importlib.resources
import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from qs.io import QsInputError, save_array

TEMPLATE_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}

CSF_LABEL = 24
WM_LEFT_LABEL = 2
WM_RIGHT_LABEL = 41
GM_LEFT_BASE = 1000
GM_RIGHT_BASE = 2000
N_PARCELS_PER_HEMISPHERE = 16

INTENSITY_MAX = 1000.0
T2_CSF, T2_GM, T2_WM = 0.90, 0.55, 0.35

_KEYS = ("t1", "t2", "gm", "wm", "csf", "mask", "labels")


class TemplateNotFoundError(FileNotFoundError):
    """The MNI template shipped with nilearn cannot be found."""


def template_dir() -> Path:
    """Folder of nilearn's bundled data holding the ICBM152 2009a files."""
    candidates = []
    spec = importlib.util.find_spec("nilearn")
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / "datasets" / "data" for p in spec.submodule_search_locations]
    if spec is not None and not candidates:  # pragma: no cover - unusual installs
        try:
            candidates.append(Path(str(importlib.resources.files("nilearn") / "datasets" / "data")))
        except Exception:
            pass
    for folder in candidates:
        if all((folder / name).is_file() for name in TEMPLATE_FILES.values()):
            return folder
    where = ", ".join(str(c) for c in candidates) or "(nilearn is not installed)"
    missing = ", ".join(TEMPLATE_FILES.values())
    raise TemplateNotFoundError(
        f"the MNI ICBM152 2009a template files ({missing}) were not found in {where}; "
        "the demo cohort needs them from the nilearn wheel (pip install 'nilearn==0.13.1'); "
        "nothing is downloaded at run time"
    )


@dataclass(frozen=True)
class NativeTemplate:
    """The template's maps at the native 1 mm grid (:func:`native_template`)."""

    affine: np.ndarray
    maps: dict  # key -> read-only array at 1 mm
    centroids: np.ndarray  # (2 * N_PARCELS, 3) world mm: left parcels then right
    centre: np.ndarray  # brain-mask centroid, world mm
    bbox: np.ndarray  # (2, 3) world mm, min and max of the mask voxel centres


def _world_coords(affine: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """(n, 3) voxel indices -> (n, 3) world mm."""
    return idx @ affine[:3, :3].T + affine[:3, 3]


def _tissue_classes(gm, wm, csf, mask) -> np.ndarray:
    """0 outside the mask, else 1 + argmax(csf, gm, wm) -> 1 CSF, 2 GM, 3 WM."""
    stack = np.stack([csf, gm, wm])
    cls = (np.argmax(stack, axis=0) + 1).astype(np.uint8)
    cls[~mask] = 0
    return cls


def _kmeans_farthest(points: np.ndarray, k: int, iterations: int = 60) -> np.ndarray:
    """Deterministic k-means: farthest-point initialisation, Lloyd iterations."""
    start = np.argmin(((points - points.mean(0)) ** 2).sum(1))
    centres = [points[start]]
    dist = ((points - centres[0]) ** 2).sum(1)
    for _ in range(1, k):
        i = int(np.argmax(dist))
        centres.append(points[i])
        dist = np.minimum(dist, ((points - points[i]) ** 2).sum(1))
    c = np.array(centres, dtype=np.float64)
    for _ in range(iterations):
        assign = _nearest(points, c)
        new = np.array([points[assign == j].mean(0) if np.any(assign == j) else c[j] for j in range(k)])
        if np.allclose(new, c, atol=1e-6):
            break
        c = new
    return c


def _nearest(points: np.ndarray, centres: np.ndarray, chunk: int = 200_000) -> np.ndarray:
    out = np.empty(len(points), dtype=np.int64)
    cc = (centres**2).sum(1)
    for s in range(0, len(points), chunk):
        p = points[s : s + chunk]
        d = cc[None, :] - 2.0 * p @ centres.T
        out[s : s + chunk] = np.argmin(d, axis=1)
    return out


def _labels_from_classes(cls: np.ndarray, affine: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    labels = np.zeros(cls.shape, dtype=np.int32)
    labels[cls == 1] = CSF_LABEL
    idx = np.argwhere(cls > 0)
    xw = _world_coords(affine, idx.astype(np.float64))
    left = xw[:, 0] < 0
    c = cls[tuple(idx.T)]
    wm = c == 3
    labels[tuple(idx[wm & left].T)] = WM_LEFT_LABEL
    labels[tuple(idx[wm & ~left].T)] = WM_RIGHT_LABEL
    n = N_PARCELS_PER_HEMISPHERE
    for hemi, base, cents in ((left, GM_LEFT_BASE, centroids[:n]), (~left, GM_RIGHT_BASE, centroids[n:])):
        sel = (c == 2) & hemi
        if sel.any():
            labels[tuple(idx[sel].T)] = base + 1 + _nearest(xw[sel], cents).astype(np.int32)
    return labels


def _load_uint8(path: Path):
    img = nib.load(str(path))
    return np.asarray(img.dataobj, dtype=np.float32), img.affine.copy()


@functools.lru_cache(maxsize=1)
def native_template() -> NativeTemplate:
    """The native 1 mm maps, computed once per process (module docstring); the arrays are read-only."""
    folder = template_dir()
    t1, affine = _load_uint8(folder / TEMPLATE_FILES["t1"])
    gm, _ = _load_uint8(folder / TEMPLATE_FILES["gm"])
    wm, _ = _load_uint8(folder / TEMPLATE_FILES["wm"])
    scale_t1 = INTENSITY_MAX / 255.0 if t1.max() <= 255 else INTENSITY_MAX / float(t1.max())
    t1 *= scale_t1
    gm /= 255.0 if gm.max() > 1.5 else 1.0
    wm /= 255.0 if wm.max() > 1.5 else 1.0

    # brain mask: largest component of gm + wm > 0.5, closed, filled, dilated
    m = (gm + wm) > 0.5
    lab, n = ndi.label(m)
    if n > 1:
        sizes = ndi.sum_labels(m, lab, index=np.arange(1, n + 1))
        m = lab == (1 + int(np.argmax(sizes)))
    pad = 6
    mp = np.pad(m, pad)
    mp = ndi.binary_closing(mp, iterations=3)
    mp = ndi.binary_fill_holes(mp)
    mp = ndi.binary_dilation(mp, iterations=2)
    mask = mp[pad:-pad, pad:-pad, pad:-pad]

    csf = np.where(mask, np.clip(1.0 - gm - wm, 0.0, 1.0), 0.0).astype(np.float32)
    t2 = (INTENSITY_MAX * (T2_CSF * csf + T2_GM * gm + T2_WM * wm)).astype(np.float32)
    t2[~mask] = 0.0

    cls = _tissue_classes(gm, wm, csf, mask)
    idx = np.argwhere(cls == 2)
    xw = _world_coords(affine, idx.astype(np.float64))
    left = xw[xw[:, 0] < 0]
    # cluster a regular 2 mm subsample (fast, still deterministic), then mirror
    sub = idx[xw[:, 0] < 0]
    keep = np.all(sub % 2 == 0, axis=1)
    cl = _kmeans_farthest(left[keep], N_PARCELS_PER_HEMISPHERE)
    order = np.lexsort((cl[:, 0], cl[:, 2], cl[:, 1]))  # ids run posterior -> anterior
    cl = cl[order]
    cr = cl * np.array([-1.0, 1.0, 1.0])
    centroids = np.concatenate([cl, cr])
    labels = _labels_from_classes(cls, affine, centroids)

    midx = np.argwhere(mask).astype(np.float64)
    mw = _world_coords(affine, midx)
    maps = {
        "t1": t1,
        "t2": t2,
        "gm": gm,
        "wm": wm,
        "csf": csf,
        "mask": mask.astype(np.uint8),
        "labels": labels,
    }
    for a in maps.values():
        a.flags.writeable = False
    return NativeTemplate(affine, maps, centroids, mw.mean(0), np.stack([mw.min(0), mw.max(0)]))


def _img(data: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    img = nib.Nifti1Image(data, affine)
    img.set_data_dtype(data.dtype)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return img


def _antialias_sigma_vox(spacing: float) -> float:
    """Gaussian sigma (1 mm voxels) of FWHM sqrt(spacing^2 - 1) mm."""
    if spacing <= 1.0:
        return 0.0
    return math.sqrt(spacing**2 - 1.0) / (2.0 * math.sqrt(2.0 * math.log(2.0)))


@functools.lru_cache(maxsize=8)
def smoothed_map(key: str, spacing: float) -> np.ndarray:
    """Native map ``key`` anti-aliased for a ``spacing`` mm grid (Gaussian, FWHM ``sqrt(spacing^2 - 1)`` mm), read-only."""
    a = native_template().maps[key]
    s = _antialias_sigma_vox(spacing)
    out = ndi.gaussian_filter(a, s, mode="constant") if s > 0 else a
    out = np.asarray(out, dtype=np.float32)
    out.flags.writeable = False
    return out


def check_spacing(spacing) -> float:
    """``spacing`` (mm) as a float in [0.5, 8]; :class:`QsInputError` otherwise."""
    try:
        s = float(spacing)
    except (TypeError, ValueError):
        raise QsInputError(f"demo: spacing must be a number of mm, got {spacing!r}") from None
    if not math.isfinite(s) or not (0.5 <= s <= 8.0):
        raise QsInputError(f"demo: spacing must be between 0.5 and 8 mm, got {spacing!r}")
    return s


def mni_template(spacing: float | None = None) -> dict[str, nib.Nifti1Image]:
    """The MNI ICBM152 2009a template as images (see the module docstring).

    Keys ``'t1'``, ``'gm'``, ``'wm'``, ``'csf'``, ``'mask'``, ``'labels'`` (and
    ``'t2'``, the synthetic T2-like contrast). ``spacing`` (mm) resamples onto a
    grid with the template's origin and field of view; ``None`` (or 1) keeps
    the native 1 mm grid. The arrays are read-only and shared between calls.
    """
    nat = native_template()
    if spacing is None or check_spacing(spacing) == 1.0:
        return {k: _img(nat.maps[k], nat.affine) for k in _KEYS}
    s = check_spacing(spacing)
    shape0 = np.array(nat.maps["t1"].shape)
    shape = tuple(int(n) for n in np.floor((shape0 - 1) / s + 1e-9).astype(int) + 1)
    affine = nat.affine.copy()
    affine[:3, :3] = nat.affine[:3, :3] * s
    grid = np.indices(shape, dtype=np.float64).reshape(3, -1) * s  # native voxel coords
    out = {}
    for k in ("t1", "t2", "gm", "wm", "csf"):
        out[k] = ndi.map_coordinates(smoothed_map(k, s), grid, order=1, mode="constant", cval=0.0).reshape(shape)
    m = ndi.map_coordinates(nat.maps["mask"].astype(np.float32), grid, order=1, mode="constant")
    out["mask"] = (m.reshape(shape) >= 0.5).astype(np.uint8)
    imgs = {k: _img(v.astype(out[k].dtype), affine) for k, v in out.items()}
    imgs["labels"] = atlas_labels(imgs)
    return {k: imgs[k] for k in _KEYS}


def atlas_labels(template: dict) -> nib.Nifti1Image:
    """Tissue classes + grey-matter parcels on the grid of ``template``.

    ``template`` holds nibabel images ``'gm'``, ``'wm'``, ``'csf'``, ``'mask'``
    on one grid (as from :func:`mni_template`). Returns int32 labels: 0
    background, 24 CSF, 2/41 left/right WM, 1001..1016 / 2001..2016 left/right
    GM parcels (fixed world-space centroids, independent of any seed).
    """
    nat = native_template()
    arr = {k: np.asarray(template[k].dataobj, dtype=np.float32) for k in ("gm", "wm", "csf", "mask")}
    cls = _tissue_classes(arr["gm"], arr["wm"], arr["csf"], arr["mask"] > 0.5)
    affine = template["mask"].affine
    return _img(_labels_from_classes(cls, affine, nat.centroids), affine.copy())


def label_ids() -> list[int]:
    """All label ids of the atlas (background excluded)."""
    n = N_PARCELS_PER_HEMISPHERE
    return (
        [WM_LEFT_LABEL, CSF_LABEL, WM_RIGHT_LABEL]
        + [GM_LEFT_BASE + i for i in range(1, n + 1)]
        + [GM_RIGHT_BASE + i for i in range(1, n + 1)]
    )


def write_atlas(out_dir, *, subfolder: str = "atlas") -> dict[str, Path]:
    """Write ``OUT/atlas/atlas_{T1w,T2w,labels,mask}.nii.gz`` (native 1 mm; ``subfolder=""`` writes into OUT)."""
    out_dir = Path(out_dir)
    nat = native_template()
    paths = {}
    for key, name, dtype in (
        ("t1", "T1w", np.float32),
        ("t2", "T2w", np.float32),
        ("labels", "labels", np.int32),
        ("mask", "mask", np.uint8),
    ):
        paths[key] = save_array(nat.maps[key], nat.affine, out_dir / subfolder / f"atlas_{name}.nii.gz", dtype=dtype)
    return paths
