"""The built-in synthetic demo cohort, made from the MNI ICBM152 2009a template (:mod:`qs.atlas`).

No MRI cohort can be downloaded here, so ``qs demo`` synthesizes one from the
built-in atlas (:mod:`qs.atlas`: the MNI ICBM152 2009a template that ships inside the ``nilearn`` wheel,
its mask, T2-like contrast and labels). Nothing is downloaded at run time.

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
4. **Sampling**: T1 and T2 templates (anti-aliased, :func:`qs.atlas.smoothed_map`) with
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
cohort is complete): ``atlas/atlas_{T1w,T2w,labels,mask}.nii.gz`` (1 mm, :func:`qs.atlas.write_atlas`),
``sub-XX/sub-XX_{T1w,T2w,labels}.nii.gz`` (``spacing`` mm),
``truth/sub-XX_affine.txt``, ``truth/sub-XX_displacement.nii.gz``,
``truth/sub-XX_params.json`` and ``subjects.tsv`` (columns ``subject``,
``t1``, ``t2``, ``labels``, ``split``; paths relative to the sheet; the
split is :func:`qs.cohort.demo_table`'s, seeded).
"""

from __future__ import annotations

import io as _io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from qs.atlas import INTENSITY_MAX, check_spacing, native_template, smoothed_map, write_atlas
from qs.cohort import demo_table
from qs.io import QsInputError, save_array, write_json, write_text

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
    nat = native_template()
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


def random_diffeomorphism(rng: np.random.Generator, max_disp_mm=MAX_DISP_MM) -> _Field:
    """Draw ``D = exp(v)`` on the truth grid (see the module docstring); ``max_disp_mm``: the range (mm) of the
    largest displacement over the brain."""
    nat = native_template()
    shape, affine = _truth_grid()
    sigma_mm = float(rng.uniform(*VELOCITY_SIGMA_MM))
    target = float(rng.uniform(*max_disp_mm))
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
    nat = native_template()
    lo, hi = nat.bbox
    corners = np.array([[x, y, z, 1.0] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    yc = (a @ corners.T)[:3]
    ylo, yhi = yc.min(1) - margin, yc.max(1) + margin
    origin = np.floor(ylo / spacing) * spacing - rng.uniform(0.0, spacing, 3)
    shape = tuple(int(n) for n in np.ceil((yhi - origin) / spacing).astype(int) + 1)
    affine = np.diag([spacing] * 3 + [1.0])
    affine[:3, 3] = origin
    return shape, affine


def make_subject(seed: int, k: int, spacing: float = 2.0, max_disp_mm=MAX_DISP_MM) -> dict:
    """Synthesize subject ``k`` (0-based). Returns arrays, grid and truth.

    Keys: ``t1``, ``t2`` (float32), ``labels`` (int32), ``affine`` (the
    subject grid), ``A`` (atlas world -> subject world), ``displacement``
    (``(I, J, K, 3)`` on the truth grid), ``displacement_affine``, ``params``.
    """
    s = check_spacing(spacing)
    nat = native_template()
    streams = [np.random.default_rng(ss) for ss in subject_seed(seed, k).spawn(6)]
    r_aff, r_vel, r_b1, r_b2, r_n1, r_n2 = streams
    a, aparams = random_affine(r_aff, nat.centre)
    field = random_diffeomorphism(r_vel, max_disp_mm)
    shape, gaff = _subject_grid(a, FOV_MARGIN_MM + field.params["max_displacement_mm"], s, r_aff)

    t1s, t2s, lab = smoothed_map("t1", s), smoothed_map("t2", s), nat.maps["labels"]
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



#: the largest nonlinear displacement the demo draws (mm): beyond it the synthetic subjects stop looking like brains
MAX_DISP_LIMIT_MM = 20.0


def check_displacement_range(value) -> tuple[float, float]:
    """``(low, high)`` mm with ``0 < low <= high <= MAX_DISP_LIMIT_MM``, or :class:`QsInputError`."""
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise QsInputError(f"demo: the displacement range must be two numbers (mm), got {value!r}") from None
    if not (0 < low <= high <= MAX_DISP_LIMIT_MM):
        raise QsInputError(f"demo: the displacement range must satisfy 0 < low <= high <= {MAX_DISP_LIMIT_MM:g} mm, "
                           f"got {low:g} {high:g}")
    return low, high


def make_demo_cohort(out_dir, n_subjects: int = 8, spacing: float = 2.0, seed: int = 0, test_fraction: float = 0.25,
                     max_displacement_mm=MAX_DISP_MM) -> Path:
    """Write the demo cohort under ``out_dir`` and return ``out_dir/subjects.tsv``.

    See the module docstring for the files and the generative model. Subject
    ids and the train/test split come from :func:`qs.cohort.demo_table`
    (``test_fraction`` of the subjects, chosen with ``seed``), so the sheet
    agrees with the table the workflow builds before the files exist.
    ``max_displacement_mm``: ``(low, high)``, the range (mm) from which each
    subject's largest nonlinear displacement over the brain is drawn
    (default 3-5 mm; a larger range makes a harder cohort).
    """
    if isinstance(n_subjects, bool) or not isinstance(n_subjects, (int, np.integer)) or n_subjects < 1:
        raise QsInputError(f"demo: the number of subjects must be a positive integer, got {n_subjects!r}")
    n_subjects = int(n_subjects)
    if not 0 <= test_fraction < 1:
        raise QsInputError(f"demo: test_fraction must be in [0, 1), got {test_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise QsInputError(f"demo: seed must be a non-negative integer, got {seed!r}")
    s = check_spacing(spacing)
    disp = check_displacement_range(max_displacement_mm)
    out_dir = Path(out_dir)
    table = demo_table("", n_subjects, test_fraction=test_fraction, seed=int(seed))

    write_atlas(out_dir)
    for k, row in table.iterrows():
        name = row["subject"]
        subj = make_subject(int(seed), k, s, disp)
        for key in ("t1", "t2", "labels"):
            save_array(subj[key], subj["affine"], out_dir / row[key])
        truth = out_dir / "truth"
        write_text(_matrix_text(subj["A"]), truth / f"{name}_affine.txt")
        save_array(subj["displacement"], subj["displacement_affine"], truth / f"{name}_displacement.nii.gz")
        write_json(subj["params"], truth / f"{name}_params.json")
        del subj

    return write_text(table.to_csv(sep="\t", index=False), out_dir / "subjects.tsv")
