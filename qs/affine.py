"""Affine pre-alignment with ANTsPy.

The transform is ANTs' own: it maps points of the FIXED image (the atlas on
the working grid) to points of the MOVING image (the subject), in ITK LPS mm,
and is saved as an ITK ``.mat`` that ``antsApplyTransforms`` and
``ants.apply_transforms`` read directly.
"""

from __future__ import annotations

import itertools
import os
import tempfile
from pathlib import Path

import numpy as np

from .io import atomic_path, copy_file, load_image, load_labels

LPS = np.diag([-1.0, -1.0, 1.0])


def _ants():
    import ants  # imported lazily: ANTsPy is slow to import

    return ants


def set_ants_threads(threads: int) -> None:
    """Use ``threads`` ITK threads; set it before the first ANTs call of the process."""
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(max(1, int(threads)))


def seed_ants(seed: int) -> None:
    """Seed ANTs' metric sampling (``antsRegistration --random-seed``).

    ANTsPy ignores a ``random_seed`` keyword of ``ants.registration``; the
    seed only reaches ANTs through its package configuration. ANTs takes a
    seed of 0 to mean "seed from the clock", so ``seed + 1`` is passed. With
    one ITK thread the result is then bit-identical between processes.
    """
    _ants().config._random_seed = int(seed) + 1


def axis_rotations() -> list[np.ndarray]:
    """The 24 proper rotations that map coordinate axes onto coordinate axes (3x3, det +1), identity first.

    They are the orientations a scan can carry against its header's claim (a
    header off by 90 or 180 degrees about any axis); reflections are left out,
    since an affine that mirrors the brain swaps left and right.
    """
    out = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            r = np.zeros((3, 3))
            r[np.arange(3), perm] = signs
            if np.linalg.det(r) > 0:
                out.append(r)
    return out


def _centre_of_mass(img) -> np.ndarray:
    """Intensity-weighted centre of an ANTs image's positive voxels, ITK physical point (LPS mm)."""
    a = img.numpy()
    idx = np.argwhere(a > 0)
    if idx.size == 0:
        raise ValueError("orientation search: the image has no positive voxels")
    w = a[a > 0].astype(np.float64)
    c = (idx * w[:, None]).sum(0) / w.sum()
    return np.asarray(img.origin) + np.asarray(img.direction) @ (np.asarray(img.spacing) * c)


def orientation_search(fixed, moving, out_mat, *, spacing: float = 4.0, keep: int = 4, iterations: int = 30) -> dict:
    """A start for the affine that survives scans stored in another orientation than their header says.

    ``fixed``, ``moving``: ANTs images. Both are resampled to ``spacing`` mm;
    each of the 24 axis rotations (:func:`axis_rotations`) about the fixed
    image's centre of mass, moved onto the moving image's centre of mass, is
    scored by Mattes mutual information; the ``keep`` best each get a similarity
    registration (rotation, one scale, translation; ``iterations`` at that
    spacing), and the best of those (lowest Mattes) is written to ``out_mat``
    (ITK, fixed point -> moving point). Returns ``rotation`` (the 3x3 start
    rotation in ITK LPS, identity when the header was right), ``rotation_index``
    (0 = identity) and ``mattes`` (the chosen start's metric value).
    """
    ants = _ants()
    f = ants.resample_image(fixed, (spacing,) * 3, False, 0)
    m = ants.resample_image(moving, (spacing,) * 3, False, 0)
    cf, cm = _centre_of_mass(f), _centre_of_mass(m)
    rotations = axis_rotations()
    with tempfile.TemporaryDirectory() as tmp:
        starts = []
        for k, r in enumerate(rotations):
            tx = ants.create_ants_transform(transform_type="AffineTransform", dimension=3, matrix=r,
                                            translation=cm - cf, center=cf)
            score = ants.image_similarity(f, tx.apply_to_image(m, reference=f), metric_type="MattesMutualInformation")
            path = os.path.join(tmp, f"start{k}.mat")
            ants.write_transform(tx, path)
            starts.append((float(score), k, path))
        best = None
        for _, k, path in sorted(starts)[:keep]:
            reg = ants.registration(fixed=f, moving=m, type_of_transform="Similarity", initial_transform=path,
                                    aff_metric="mattes", aff_iterations=(iterations,), aff_shrink_factors=(1,),
                                    aff_smoothing_sigmas=(0,))
            score = float(ants.image_similarity(f, reg["warpedmovout"], metric_type="MattesMutualInformation"))
            if best is None or score < best[0]:
                best = (score, k, reg["fwdtransforms"][0])
        copy_file(best[2], out_mat)
    return {"rotation": rotations[best[1]].tolist(), "rotation_index": best[1], "mattes": best[0]}


def register_affine(fixed_path, moving_path, *, seed: int = 0, metric: str = "mattes", iterations=(2100, 1200, 1200, 10),
                    fixed_mask_path=None, search: bool = True) -> dict:
    """Affine registration of ``moving`` to ``fixed``; returns the ANTs result dict, plus ``search``.

    ``search``: start from :func:`orientation_search` (a scan stored rotated
    against its header, LPBA40's for one, is otherwise matched upside down or
    back to front); its result is the dict's ``search`` entry (``None``
    without). Without it ANTs starts from the centres of mass.
    ``seed`` makes ANTs' metric sampling reproducible; with more than one
    ITK thread, results may still differ in the last digits.
    """
    ants = _ants()
    seed_ants(seed)
    load_image(fixed_path, what="fixed image")
    load_image(moving_path, what="moving image")
    fixed = ants.image_read(str(fixed_path))
    moving = ants.image_read(str(moving_path))
    mask = ants.image_read(str(fixed_mask_path)) if fixed_mask_path else None
    with tempfile.TemporaryDirectory() as tmp:
        start = os.path.join(tmp, "start.mat")
        found = orientation_search(fixed, moving, start) if search else None
        result = ants.registration(
            fixed=fixed,
            moving=moving,
            type_of_transform="Affine",
            aff_metric=metric,
            aff_iterations=tuple(iterations),
            mask=mask,
            initial_transform=start if search else None,
        )
    result["search"] = found
    return result


def apply_transforms(fixed_path, image_path, transforms, out_path, *, labels: bool = False) -> Path:
    """Resample an image (or a label image) onto the fixed grid through ANTs ``transforms`` (a list of files).

    Labels use ANTs' ``genericLabel`` interpolation and are stored as
    unsigned integers, so large ids (FreeSurfer-style, in the thousands) stay exact.
    """
    ants = _ants()
    fixed = ants.image_read(str(fixed_path))
    moving = ants.image_read(str(image_path))
    warped = ants.apply_transforms(
        fixed=fixed, moving=moving, transformlist=[str(t) for t in transforms], interpolator="genericLabel" if labels else "linear"
    )
    if labels:
        warped = warped.clone("unsigned int")  # ids validated non-negative; exact below 2^32
    with atomic_path(out_path) as tmp:
        ants.image_write(warped, str(tmp))
    return Path(out_path)


def affine_matrix_lps(transform_path) -> np.ndarray:
    """The 4x4 matrix (ITK LPS mm, fixed point -> moving point) of an ANTs ``.mat``."""
    tx = _ants().read_transform(str(transform_path))
    params = np.asarray(tx.parameters, dtype=float)
    centre = np.asarray(tx.fixed_parameters, dtype=float)
    a, t = params[:9].reshape(3, 3), params[9:12]
    m = np.eye(4)
    m[:3, :3] = a
    m[:3, 3] = t + centre - a @ centre
    return m


def affine_matrix_ras(transform_path) -> np.ndarray:
    """The same transform in nibabel world coordinates (RAS mm)."""
    flip = np.eye(4)
    flip[:3, :3] = LPS
    return flip @ affine_matrix_lps(transform_path) @ flip


def run_affine(fixed, moving, out_prefix, *, labels=None, seed: int = 0, threads: int = 1) -> dict:
    """``qs affine``: write ``PREFIX_affine.mat``, ``PREFIX_warped.nii.gz`` and, with labels, ``PREFIX_labels.nii.gz``."""
    set_ants_threads(threads)
    if labels:
        load_labels(labels, reference=load_image(moving, what="moving image"), reference_path=moving)
    result = register_affine(fixed, moving, seed=seed)
    prefix = str(out_prefix)
    Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    mat = copy_file(result["fwdtransforms"][0], prefix + "_affine.mat")
    outputs = {"affine": mat, "warped": apply_transforms(fixed, moving, [mat], prefix + "_warped.nii.gz")}
    if labels:
        outputs["labels"] = apply_transforms(fixed, labels, [mat], prefix + "_labels.nii.gz", labels=True)
    return outputs
