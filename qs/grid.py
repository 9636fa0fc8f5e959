"""The working grid: atlas space at a chosen spacing, cropped to the brain, FFT-friendly.

All registrations run on this grid. It has a diagonal affine with positive
spacing (voxel axis ``c`` runs along RAS world axis ``c``), covers the atlas
brain mask plus a margin, and has sizes whose prime factors are 2, 3 and 5 so
that the Fourier-domain LDDMM kernel stays fast.
"""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
from scipy import ndimage

from .lddmm.kernel import fft_friendly


def working_grid(mask: nib.Nifti1Image, spacing: float, margin_mm: float) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and affine of the working grid around the non-zero voxels of ``mask``.

    The grid is centred on the mask's world bounding box, extended by
    ``margin_mm`` on every side, with isotropic ``spacing`` mm, and each size
    rounded up to an FFT-friendly integer. Returns ``(shape, affine)``.
    """
    data = np.asarray(mask.dataobj) > 0
    if not data.any():
        raise ValueError("working_grid: the atlas mask is empty")
    idx = np.argwhere(data)
    lo, hi = idx.min(0), idx.max(0)
    box = np.array([[i, j, k, 1.0] for i in (lo[0], hi[0]) for j in (lo[1], hi[1]) for k in (lo[2], hi[2])])
    world = (mask.affine @ box.T).T[:, :3]
    wlo, whi = world.min(0) - margin_mm, world.max(0) + margin_mm
    shape = tuple(fft_friendly(math.ceil((whi[c] - wlo[c]) / spacing) + 1) for c in range(3))
    centre = (wlo + whi) / 2
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = centre - (np.array(shape) - 1) / 2 * spacing
    return shape, affine


def resample_to_grid(img: nib.Nifti1Image, shape, affine: np.ndarray, *, order: int = 1) -> np.ndarray:
    """Sample ``img`` (any affine) on the grid ``(shape, affine)``; world space is shared.

    ``order`` 1 is trilinear (images), 0 nearest neighbour (labels, masks:
    integer values are preserved exactly). Outside the image the value is 0.
    """
    src_from_dst = np.linalg.solve(img.affine, affine)
    data = np.asarray(img.dataobj)
    if order == 0:
        out = ndimage.affine_transform(data, src_from_dst[:3, :3], src_from_dst[:3, 3], output_shape=tuple(shape), order=0, mode="constant", cval=0)
        return out.astype(data.dtype)
    return ndimage.affine_transform(data.astype(np.float32), src_from_dst[:3, :3], src_from_dst[:3, 3], output_shape=tuple(shape), order=order, mode="constant", cval=0.0)
