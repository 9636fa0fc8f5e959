"""Coarse-to-fine LDDMM: images to a grid twice as coarse, momenta back to the fine grid.

Conventions. A coarse voxel ``i`` averages the fine voxels ``2i`` and
``2i + 1`` along each axis (a last, unpaired fine voxel alone), so its centre
lies at fine index ``2i + 1/2`` and its spacing is twice the fine one (mm).
The momentum is a density (:mod:`.kernel`: the same physical ``m`` gives the
same velocity on any grid), so it moves between grids by interpolation of its
values, without rescaling: :func:`refine_momentum` samples the coarse momentum
trilinearly at the fine voxel centres.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def coarsen_image(image: torch.Tensor) -> torch.Tensor:
    """``(I, J, K)`` -> ``(ceil(I/2), ceil(J/2), ceil(K/2))``: mean over each 2x2x2 block (clipped at the edge)."""
    return F.avg_pool3d(image[None, None], kernel_size=2, stride=2, ceil_mode=True)[0, 0]


def coarse_spacing(spacing) -> tuple[float, float, float]:
    """The spacing (mm) of :func:`coarsen_image`'s grid."""
    return tuple(2.0 * float(h) for h in spacing)


def refine_momentum(m: torch.Tensor, fine_shape) -> torch.Tensor:
    """``(3, *coarse)`` momentum -> ``(3, *fine_shape)`` by trilinear interpolation at the fine voxel centres.

    ``fine_shape`` is the grid :func:`coarsen_image` was given (each axis
    ``2 n - 1`` or ``2 n`` for ``n`` coarse voxels); values beyond the last
    coarse centre are extrapolated as constant.
    """
    coarse = tuple(m.shape[1:])
    if any(not 2 * c - 1 <= f <= 2 * c for c, f in zip(coarse, fine_shape)):
        raise ValueError(f"refine_momentum: {tuple(fine_shape)} is not the fine grid of {coarse}")
    up = F.interpolate(m[None], scale_factor=2.0, mode="trilinear", align_corners=False)[0]
    return up[:, : fine_shape[0], : fine_shape[1], : fine_shape[2]].contiguous()
