"""The built-in demo cohort, made from the MNI ICBM152 2009a symmetric template.

No MRI cohort can be downloaded here, so ``qs demo`` synthesizes one from the
template that ships inside the ``nilearn`` wheel
(``nilearn/datasets/data/mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted.nii.gz``,
197 x 233 x 189 voxels, 1 mm, affine ``diag(1, 1, 1)`` with origin
``(-98, -134, -72)``). Nothing is downloaded at run time; a missing file raises
:class:`TemplateNotFoundError`.

The template (:func:`mni_template`)
-----------------------------------
All maps are computed once per process at the native 1 mm grid:

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
FWHM ``sqrt(spacing^2 - 1)`` mm, then linear interpolation; the mask is the
resampled mask ``>= 0.5``; the labels are recomputed on that grid by
:func:`atlas_labels`, with the same centroids).

Generative model of a subject
-----------------------------
Subject ``k`` (0-based; written as ``sub-{k+1:02d}``) draws everything from
``np.random.SeedSequence(seed, spawn_key=(k,))``, which is exactly
``np.random.default_rng(seed).spawn(n)[k]``'s seed sequence, so subject ``k``
is the same whatever ``n_subjects``. That sequence is split in turn
(``.spawn(6)``) into independent streams for the affine, the velocity field,
the bias of T1, the bias of T2, the noise of T1 and the noise of T2; the
affine and the diffeomorphism therefore do not depend on ``spacing`` either.

Coordinates are nibabel world coordinates (RAS+, mm). ``x`` is an atlas
point, ``y`` a subject point. The subject image is

    I_subject(y) = bias(y) * I_template(x) + noise,   x = D(A^-1 y)

1. **Affine** ``A`` (4 x 4, written to ``truth/sub-XX_affine.txt`` with
   ``np.savetxt``), maps an atlas world point to the subject world point:
   ``y = A x`` (up to the nonlinear part). With ``c`` the centroid of the
   atlas brain mask (world mm),

       A = T(c + t) @ R @ S @ H @ T(-c)

   where ``T(.)`` is a translation, ``R = Rz(gz) @ Ry(gy) @ Rx(gx)`` with
   angles ``gx, gy, gz ~ U(-8, 8)`` degrees, ``S = diag(sx, sy, sz)`` with
   ``s ~ U(0.92, 1.08)``, ``H`` unit upper triangular with the three shears
   ``~ U(-0.03, 0.03)``, and ``t ~ U(-8, 8)`` mm per axis. So ``A c = c + t``.
2. **Diffeomorphism** ``D`` in atlas space, ``D(x) = x + u(x)``, the
   exponential of a stationary velocity field ``v``: i.i.d. normal noise on a
   4 mm grid (the *truth grid*: the atlas field of view plus 32 mm on each
   side), Gaussian-smoothed per component with ``sigma ~ U(12, 20)`` mm,
   integrated by scaling and squaring (``2^7`` steps, trilinear composition,
   edge values extended), so ``D`` is invertible. ``v`` is scaled so that the
   largest ``|u|`` over the brain mask equals ``max_disp ~ U(3, 5)`` mm (one
   rescale after a first integration; the exact value reached is in the
   parameters). ``u`` is written to ``truth/sub-XX_displacement.nii.gz``:
   shape ``(I, J, K, 3)``, float32, component ``c`` along world axis ``c``
   (RAS, mm), on the truth grid whose affine is in the file. Trilinear
   interpolation of that file (voxel index = ``inv(affine) @ x``, values
   beyond the grid = nearest edge value) reproduces ``u`` exactly as used.
3. **Grid**: diagonal affine with ``spacing`` mm; the field of view is the
   bounding box of ``A`` applied to the corners of the atlas brain's bounding
   box, plus a margin of ``10 mm + max_disp``; the origin is further shifted
   by ``U(0, spacing)`` per axis, so the subject and atlas grids never align.
4. **Sampling**: T1 and T2 templates (after the anti-aliasing above) with
   linear interpolation, labels with nearest neighbour, 0 outside the
   template.
5. **Bias**: ``bias = exp(b)``, ``b`` a random quadratic polynomial (all nine
   non-constant terms, normal coefficients) in the subject coordinates
   normalized to ``[-1, 1]`` over the field of view, scaled so that
   ``max |b| = log(1 + a)`` with ``a ~ U(0.10, 0.15)`` (about +-15 %). T1 and T2
   have their own bias.
6. **Noise**: Rician (magnitude of complex Gaussian noise),
   ``sqrt((s + n1)^2 + n2^2)`` with ``n1, n2 ~ N(0, sigma^2)``,
   ``sigma = f * 1000``, ``f ~ U(0.02, 0.03)`` (2-3 % of the brain's maximum
   intensity); own draw per image. Images are float32, about 0..1000.

Labels are the native atlas labels warped with the same map (no bias, no
noise). In ANTs' LPS convention the affine is ``F @ A @ F`` with
``F = diag(-1, -1, 1, 1)``; an ANTs transform registering the subject (fixed)
to the atlas (moving) maps subject points to atlas points, i.e. it estimates
``A^-1`` (and ``D`` for the nonlinear part).

Files written by :func:`make_demo_cohort` (all through :mod:`qs.io`, each one
atomically; ``subjects.tsv`` is written last, so its presence means the
cohort is complete): ``atlas/atlas_{T1w,T2w,labels,mask}.nii.gz`` (1 mm),
``sub-XX/sub-XX_{T1w,T2w,labels}.nii.gz`` (``spacing`` mm),
``truth/sub-XX_affine.txt``, ``truth/sub-XX_displacement.nii.gz``,
``truth/sub-XX_params.json`` and ``subjects.tsv`` (columns ``subject``,
``t1``, ``t2``, ``labels``, ``split``; paths relative to the sheet; the
split is :func:`qs.cohort.demo_table`'s, seeded).
"""

from __future__ import annotations

import functools
import importlib.resources
import importlib.util
import io as _io
import math
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from qs.cohort import demo_table
from qs.io import QsInputError, save_array, write_json, write_text

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

# Ranges of the generative model (documented in the module docstring).
ROTATION_DEG = 8.0
TRANSLATION_MM = 8.0
SCALE_RANGE = (0.92, 1.08)
SHEAR = 0.03
VELOCITY_SIGMA_MM = (12.0, 20.0)
MAX_DISP_MM = (3.0, 5.0)
TRUTH_GRID_MM = 4.0
TRUTH_GRID_MARGIN_MM = 32.0
SQUARING_STEPS = 7
FOV_MARGIN_MM = 10.0
BIAS_AMPLITUDE = (0.10, 0.15)
NOISE_FRACTION = (0.02, 0.03)

_KEYS = ("t1", "t2", "gm", "wm", "csf", "mask", "labels")


class TemplateNotFoundError(FileNotFoundError):
    """The MNI template shipped with nilearn cannot be found."""


# --------------------------------------------------------------------------
# Template
# --------------------------------------------------------------------------


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
class _Native:
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
def _native() -> _Native:
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
    return _Native(affine, maps, centroids, mw.mean(0), np.stack([mw.min(0), mw.max(0)]))


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
def _smoothed(key: str, spacing: float) -> np.ndarray:
    a = _native().maps[key]
    s = _antialias_sigma_vox(spacing)
    out = ndi.gaussian_filter(a, s, mode="constant") if s > 0 else a
    out = np.asarray(out, dtype=np.float32)
    out.flags.writeable = False
    return out


def _check_spacing(spacing) -> float:
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
    nat = _native()
    if spacing is None or _check_spacing(spacing) == 1.0:
        return {k: _img(nat.maps[k], nat.affine) for k in _KEYS}
    s = _check_spacing(spacing)
    shape0 = np.array(nat.maps["t1"].shape)
    shape = tuple(int(n) for n in np.floor((shape0 - 1) / s + 1e-9).astype(int) + 1)
    affine = nat.affine.copy()
    affine[:3, :3] = nat.affine[:3, :3] * s
    grid = np.indices(shape, dtype=np.float64).reshape(3, -1) * s  # native voxel coords
    out = {}
    for k in ("t1", "t2", "gm", "wm", "csf"):
        out[k] = ndi.map_coordinates(_smoothed(k, s), grid, order=1, mode="constant", cval=0.0).reshape(shape)
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
    nat = _native()
    arr = {k: np.asarray(template[k].dataobj, dtype=np.float32) for k in ("gm", "wm", "csf", "mask")}
    cls = _tissue_classes(arr["gm"], arr["wm"], arr["csf"], arr["mask"] > 0.5)
    affine = template["mask"].affine
    return _img(_labels_from_classes(cls, affine, nat.centroids), affine.copy())


def label_ids() -> list[int]:
    """All label ids the demo uses (background excluded)."""
    n = N_PARCELS_PER_HEMISPHERE
    return (
        [WM_LEFT_LABEL, CSF_LABEL, WM_RIGHT_LABEL]
        + [GM_LEFT_BASE + i for i in range(1, n + 1)]
        + [GM_RIGHT_BASE + i for i in range(1, n + 1)]
    )


# --------------------------------------------------------------------------
# Random transforms
# --------------------------------------------------------------------------


def _rotation(gx: float, gy: float, gz: float) -> np.ndarray:
    cx, sx = math.cos(gx), math.sin(gx)
    cy, sy = math.cos(gy), math.sin(gy)
    cz, sz = math.cos(gz), math.sin(gz)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def random_affine(rng: np.random.Generator, centre) -> tuple[np.ndarray, dict]:
    """Draw ``A = T(c + t) R S H T(-c)`` (see the module docstring)."""
    angles = rng.uniform(-ROTATION_DEG, ROTATION_DEG, 3)
    trans = rng.uniform(-TRANSLATION_MM, TRANSLATION_MM, 3)
    scales = rng.uniform(*SCALE_RANGE, 3)
    shears = rng.uniform(-SHEAR, SHEAR, 3)
    h = np.eye(3)
    h[0, 1], h[0, 2], h[1, 2] = shears
    lin = _rotation(*np.deg2rad(angles)) @ np.diag(scales) @ h
    c = np.asarray(centre, dtype=np.float64)
    a = np.eye(4)
    a[:3, :3] = lin
    a[:3, 3] = c + trans - lin @ c
    params = {
        "rotation_deg_xyz": angles.tolist(),
        "translation_mm": trans.tolist(),
        "scale_xyz": scales.tolist(),
        "shear_xy_xz_yz": shears.tolist(),
        "centre_mm": c.tolist(),
    }
    return a, params


@dataclass(frozen=True)
class _Field:
    disp: np.ndarray  # (3, I, J, K) world mm, component c along world axis c
    affine: np.ndarray  # diagonal, truth grid
    params: dict


def _truth_grid() -> tuple[tuple[int, ...], np.ndarray]:
    nat = _native()
    shape0 = np.array(nat.maps["t1"].shape)
    lo = nat.affine[:3, 3] - TRUTH_GRID_MARGIN_MM
    hi = nat.affine[:3, 3] + (shape0 - 1) * np.diag(nat.affine)[:3] + TRUTH_GRID_MARGIN_MM
    shape = tuple(int(n) for n in np.ceil((hi - lo) / TRUTH_GRID_MM).astype(int) + 1)
    affine = np.diag([TRUTH_GRID_MM] * 3 + [1.0])
    affine[:3, 3] = lo
    return shape, affine


def _sample_field(disp: np.ndarray, vox: np.ndarray) -> np.ndarray:
    """Trilinear sample of a (3, I, J, K) field at (3, n) voxel coords, edges extended."""
    return np.stack([ndi.map_coordinates(d, vox, order=1, mode="nearest") for d in disp])


def _exp_velocity(v: np.ndarray, h: float) -> np.ndarray:
    """Scaling and squaring of a stationary velocity (3, I, J, K) on an h-mm grid."""
    shape = v.shape[1:]
    ident = np.indices(shape, dtype=np.float64).reshape(3, -1)
    d = (v / 2.0**SQUARING_STEPS).reshape(3, -1).astype(np.float64)
    for _ in range(SQUARING_STEPS):
        d = d + _sample_field(d.reshape((3,) + shape), ident + d / h)
    return d.reshape((3,) + shape)


def random_diffeomorphism(rng: np.random.Generator) -> _Field:
    """Draw ``D = exp(v)`` on the truth grid (see the module docstring)."""
    nat = _native()
    shape, affine = _truth_grid()
    sigma_mm = float(rng.uniform(*VELOCITY_SIGMA_MM))
    target = float(rng.uniform(*MAX_DISP_MM))
    noise = rng.standard_normal((3,) + shape)
    v = np.stack([ndi.gaussian_filter(n, sigma_mm / TRUTH_GRID_MM, mode="reflect") for n in noise])
    # brain points of the truth grid
    grid = np.indices(shape, dtype=np.float64).reshape(3, -1)
    world = affine[:3, :3] @ grid + affine[:3, 3:4]
    nvox = np.linalg.solve(nat.affine, np.vstack([world, np.ones((1, world.shape[1]))]))[:3]
    inside = ndi.map_coordinates(nat.maps["mask"], nvox, order=0, mode="constant", cval=0) > 0

    def brain_max(f):
        return float(np.sqrt((f.reshape(3, -1)[:, inside] ** 2).sum(0)).max())

    v *= target / brain_max(v)
    d = _exp_velocity(v, TRUTH_GRID_MM)
    v *= target / brain_max(d)
    d = _exp_velocity(v, TRUTH_GRID_MM)
    params = {
        "velocity_sigma_mm": sigma_mm,
        "target_max_displacement_mm": target,
        "max_displacement_mm": brain_max(d),
        "max_velocity_mm": brain_max(v),
        "squaring_steps": SQUARING_STEPS,
        "truth_grid_mm": TRUTH_GRID_MM,
    }
    return _Field(d.astype(np.float32), affine, params)


def _bias_field(rng: np.random.Generator, shape) -> tuple[np.ndarray, float]:
    """exp of a random quadratic polynomial, max |log| = log(1 + a)."""
    amp = float(rng.uniform(*BIAS_AMPLITUDE))
    coef = [float(c) for c in rng.standard_normal(9)]
    x, y, z = (np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape)
    x, y, z = x[:, None, None], y[None, :, None], z[None, None, :]
    b = coef[0] * x + coef[1] * y + coef[2] * z + coef[3] * x * x + coef[4] * y * y + coef[5] * z * z
    b = b + coef[6] * x * y + coef[7] * x * z + coef[8] * y * z
    b = np.asarray(b, dtype=np.float32)
    b *= np.float32(math.log1p(amp) / max(float(np.abs(b).max()), 1e-12))
    return np.exp(b), amp


def _rician(rng: np.random.Generator, img: np.ndarray) -> tuple[np.ndarray, float]:
    frac = float(rng.uniform(*NOISE_FRACTION))
    sigma = np.float32(frac * INTENSITY_MAX)
    n1 = rng.standard_normal(img.shape, dtype=np.float32)
    n1 *= sigma
    n1 += img
    np.square(n1, out=n1)
    n2 = rng.standard_normal(img.shape, dtype=np.float32)
    n2 *= sigma
    np.square(n2, out=n2)
    n1 += n2
    return np.sqrt(n1, out=n1), frac


# --------------------------------------------------------------------------
# Subjects
# --------------------------------------------------------------------------


def subject_seed(seed: int, k: int) -> np.random.SeedSequence:
    """Seed sequence of subject ``k`` (0-based), independent of the cohort size."""
    return np.random.SeedSequence(int(seed), spawn_key=(int(k),))


def _subject_grid(a: np.ndarray, margin: float, spacing: float, rng) -> tuple[tuple[int, ...], np.ndarray]:
    nat = _native()
    lo, hi = nat.bbox
    corners = np.array([[x, y, z, 1.0] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    yc = (a @ corners.T)[:3]
    ylo, yhi = yc.min(1) - margin, yc.max(1) + margin
    origin = np.floor(ylo / spacing) * spacing - rng.uniform(0.0, spacing, 3)
    shape = tuple(int(n) for n in np.ceil((yhi - origin) / spacing).astype(int) + 1)
    affine = np.diag([spacing] * 3 + [1.0])
    affine[:3, 3] = origin
    return shape, affine


def make_subject(seed: int, k: int, spacing: float = 2.0) -> dict:
    """Synthesize subject ``k`` (0-based). Returns arrays, grid and truth.

    Keys: ``t1``, ``t2`` (float32), ``labels`` (int32), ``affine`` (the
    subject grid), ``A`` (atlas world -> subject world), ``displacement``
    (``(I, J, K, 3)`` on the truth grid), ``displacement_affine``, ``params``.
    """
    s = _check_spacing(spacing)
    nat = _native()
    streams = [np.random.default_rng(ss) for ss in subject_seed(seed, k).spawn(6)]
    r_aff, r_vel, r_b1, r_b2, r_n1, r_n2 = streams
    a, aparams = random_affine(r_aff, nat.centre)
    field = random_diffeomorphism(r_vel)
    shape, gaff = _subject_grid(a, FOV_MARGIN_MM + field.params["max_displacement_mm"], s, r_aff)

    t1s, t2s, lab = _smoothed("t1", s), _smoothed("t2", s), nat.maps["labels"]
    t1 = np.empty(shape, np.float32)
    t2 = np.empty(shape, np.float32)
    labels = np.empty(shape, np.int32)
    # y (subject world) -> z = A^-1 y -> x = z + u(z) -> native voxel
    m = np.linalg.inv(a) @ gaff  # subject voxel -> atlas world (affine part)
    tinv = np.linalg.inv(field.affine)
    ninv = np.linalg.inv(nat.affine)
    ij = np.indices(shape[:2], dtype=np.float64).reshape(2, -1)
    slab = max(1, int(2_000_000 // (shape[0] * shape[1])))
    for k0 in range(0, shape[2], slab):
        ks = np.arange(k0, min(k0 + slab, shape[2]), dtype=np.float64)
        vox = np.vstack([np.tile(ij, len(ks)), np.repeat(ks, ij.shape[1])[None]])
        z = m[:3, :3] @ vox + m[:3, 3:4]
        u = _sample_field(field.disp, tinv[:3, :3] @ z + tinv[:3, 3:4])
        x = z + u
        nv = ninv[:3, :3] @ x + ninv[:3, 3:4]
        sl = (slice(None), slice(None), slice(k0, k0 + len(ks)))
        sh = (len(ks), shape[0], shape[1])  # points run k (slowest), i, j
        for dst, src, order in ((t1, t1s, 1), (t2, t2s, 1), (labels, lab, 0)):
            vals = ndi.map_coordinates(src, nv, order=order, mode="constant", cval=0)
            dst[sl] = vals.reshape(sh).transpose(1, 2, 0)

    bias1, amp1 = _bias_field(r_b1, shape)
    t1 *= bias1
    del bias1
    bias2, amp2 = _bias_field(r_b2, shape)
    t2 *= bias2
    del bias2
    t1, f1 = _rician(r_n1, t1)
    t2, f2 = _rician(r_n2, t2)

    params = {
        "subject_index": int(k),
        "seed": int(seed),
        "spacing_mm": s,
        "affine": aparams,
        "diffeomorphism": field.params,
        "bias_amplitude": {"t1": amp1, "t2": amp2},
        "noise_fraction": {"t1": f1, "t2": f2},
        "noise_sigma": {"t1": f1 * INTENSITY_MAX, "t2": f2 * INTENSITY_MAX},
        "grid_shape": list(shape),
        "grid_affine": gaff.tolist(),
        "convention": "y = A x (atlas world x -> subject world y, RAS mm); "
        "subject voxel at world y shows the template at x = D(A^-1 y), D(x) = x + u(x)",
    }
    return {
        "t1": t1,
        "t2": t2,
        "labels": labels,
        "affine": gaff,
        "A": a,
        "displacement": np.ascontiguousarray(np.moveaxis(field.disp, 0, -1)),
        "displacement_affine": field.affine,
        "params": params,
    }


def _matrix_text(a: np.ndarray) -> str:
    buf = _io.StringIO()
    np.savetxt(buf, a, fmt="%.17g")
    return buf.getvalue()


def write_atlas(out_dir, *, subfolder: str = "atlas") -> dict[str, Path]:
    """Write ``OUT/atlas/atlas_{T1w,T2w,labels,mask}.nii.gz`` (native 1 mm; ``subfolder=""`` writes into OUT)."""
    out_dir = Path(out_dir)
    nat = _native()
    paths = {}
    for key, name, dtype in (
        ("t1", "T1w", np.float32),
        ("t2", "T2w", np.float32),
        ("labels", "labels", np.int32),
        ("mask", "mask", np.uint8),
    ):
        paths[key] = save_array(nat.maps[key], nat.affine, out_dir / subfolder / f"atlas_{name}.nii.gz", dtype=dtype)
    return paths


def make_demo_cohort(out_dir, n_subjects: int = 8, spacing: float = 2.0, seed: int = 0, test_fraction: float = 0.25) -> Path:
    """Write the demo cohort under ``out_dir`` and return ``out_dir/subjects.tsv``.

    See the module docstring for the files and the generative model. Subject
    ids and the train/test split come from :func:`qs.cohort.demo_table`
    (``test_fraction`` of the subjects, chosen with ``seed``), so the sheet
    agrees with the table the workflow builds before the files exist.
    """
    if isinstance(n_subjects, bool) or not isinstance(n_subjects, (int, np.integer)) or n_subjects < 1:
        raise QsInputError(f"demo: the number of subjects must be a positive integer, got {n_subjects!r}")
    n_subjects = int(n_subjects)
    if not 0 <= test_fraction < 1:
        raise QsInputError(f"demo: test_fraction must be in [0, 1), got {test_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise QsInputError(f"demo: seed must be a non-negative integer, got {seed!r}")
    s = _check_spacing(spacing)
    out_dir = Path(out_dir)
    table = demo_table("", n_subjects, test_fraction=test_fraction, seed=int(seed))

    write_atlas(out_dir)
    for k, row in table.iterrows():
        name = row["subject"]
        subj = make_subject(int(seed), k, s)
        for key in ("t1", "t2", "labels"):
            save_array(subj[key], subj["affine"], out_dir / row[key])
        truth = out_dir / "truth"
        write_text(_matrix_text(subj["A"]), truth / f"{name}_affine.txt")
        save_array(subj["displacement"], subj["displacement_affine"], truth / f"{name}_displacement.nii.gz")
        write_json(subj["params"], truth / f"{name}_params.json")
        del subj

    return write_text(table.to_csv(sep="\t", index=False), out_dir / "subjects.tsv")
