"""Displacement fields <-> ANTs/ITK displacement-field NIfTI (the one place that converts).

Our fields (see :mod:`qs`) are ``(3, I, J, K)`` arrays on an image grid with
nibabel affine ``A`` (RAS, mm): component ``c`` is the displacement along
voxel axis ``c`` in mm. ANTs/ITK displacement fields are vector images on the
same grid whose vectors are in physical **LPS** mm, and ITK describes the grid
by ``origin``, ``spacing``, ``direction`` in LPS.

With ``h = column norms of A[:3, :3]`` (spacing) and ``R = A[:3, :3] / h``
(unit vectors of the voxel axes in RAS), ``F = diag(-1, -1, 1)``:

* ITK grid: ``spacing = h``, ``direction = F R``, ``origin = F A[:3, 3]``;
* vectors: ``d_ras = R d``, ``d_lps = F R d = direction @ d``.

On the working grid (diagonal positive affine) this is ``d_lps = (-d0, -d1, d2)``.
A map ``x -> x + d(x)`` written with :func:`write_ants_displacement` is applied
by ``ants.apply_transforms(fixed=T, moving=M, transformlist=[path])`` as
``M(x + d(x))`` at every voxel ``x`` of ``T`` (the pull-back we compute).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qs.io import QsInputError, atomic_path, open_nifti, read_voxels

_FLIP = np.diag([-1.0, -1.0, 1.0])


def itk_geometry(affine: np.ndarray) -> tuple[tuple, tuple, np.ndarray]:
    """``(origin, spacing, direction)`` in ITK/LPS convention for a nibabel affine."""
    A = np.asarray(affine, dtype=np.float64)
    h = np.sqrt((A[:3, :3] ** 2).sum(axis=0))
    if np.any(h <= 0):
        raise ValueError("itk_geometry: affine has a zero-length voxel axis")
    R = A[:3, :3] / h
    direction = _FLIP @ R
    origin = _FLIP @ A[:3, 3]
    return tuple(float(x) for x in origin), tuple(float(x) for x in h), direction


def voxel_to_lps(disp: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """``(3, I, J, K)`` voxel-axis mm -> ``(I, J, K, 3)`` LPS mm vectors."""
    _, _, direction = itk_geometry(affine)
    return np.einsum("ij,j...->...i", direction, np.asarray(disp, dtype=np.float64))


def lps_to_voxel(vec: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """``(I, J, K, 3)`` LPS mm vectors -> ``(3, I, J, K)`` voxel-axis mm (inverse of :func:`voxel_to_lps`)."""
    _, _, direction = itk_geometry(affine)
    return np.einsum("ji,...j->i...", np.linalg.inv(direction).T, np.asarray(vec, dtype=np.float64))


def to_ants_image(disp: np.ndarray, affine: np.ndarray):
    """ANTsPy vector image (LPS vectors, ITK geometry) of a ``(3, I, J, K)`` displacement."""
    import ants

    disp = np.asarray(disp)
    if disp.ndim != 4 or disp.shape[0] != 3:
        raise ValueError(f"to_ants_image: displacement must be (3, I, J, K), got {disp.shape}")
    origin, spacing, direction = itk_geometry(affine)
    vec = np.ascontiguousarray(voxel_to_lps(disp, affine), dtype=np.float32)
    return ants.from_numpy(vec, origin=origin, spacing=spacing, direction=direction, has_components=True)


def write_ants_displacement(disp: np.ndarray, affine: np.ndarray, path) -> Path:
    """Write an ANTs-compatible displacement field NIfTI (atomically)."""
    import ants

    img = to_ants_image(disp, affine)
    with atomic_path(path) as tmp:
        ants.image_write(img, str(tmp))
    return Path(path)


def read_ants_displacement(path) -> tuple[np.ndarray, np.ndarray]:
    """Read an ANTs displacement field: ``(disp (3, I, J, K) voxel-axis mm, nibabel affine)``."""
    import ants

    path = Path(path)
    # nibabel first: the size from the header, and every voxel decompressed, since ITK reads a truncated
    # .nii.gz without complaint (the missing voxels become zeros)
    read_voxels(open_nifti(path, what="displacement field"), path, what="displacement field")
    try:
        img = ants.image_read(str(path))
    except Exception as exc:  # ITK raises RuntimeError with a long message
        raise QsInputError(f"{path}: cannot read displacement field ({type(exc).__name__})") from exc
    if img.components != 3 or img.dimension != 3:
        raise QsInputError(f"{path}: expected a 3D field of 3-vectors, got {img.dimension}D with {img.components} components")
    direction = np.asarray(img.direction, dtype=np.float64)
    h = np.asarray(img.spacing, dtype=np.float64)
    affine = np.eye(4)
    affine[:3, :3] = _FLIP @ direction * h
    affine[:3, 3] = _FLIP @ np.asarray(img.origin, dtype=np.float64)
    vec = img.numpy()
    return lps_to_voxel(vec, affine).astype(np.float32), affine
