"""Sampling images and fields at positions in mm (the one resampler of the engine).

Positions are ``(3, *S)`` tensors, component ``c`` along voxel axis ``c``, in
mm relative to the grid origin (voxel ``(0, 0, 0)`` is at ``0``); voxel
``idx`` of a grid with spacing ``h`` is at ``idx * h``. A map is
``phi = identity + displacement``. Sampling uses ``grid_sample`` with
``align_corners=True`` (voxel centres are the samples).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def identity(shape, spacing, *, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """Voxel positions in mm, ``(3, *shape)``."""
    axes = [torch.arange(n, dtype=dtype, device=device) * float(h) for n, h in zip(shape, spacing)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"))


def _normalized_grid(pos: torch.Tensor, shape, spacing) -> torch.Tensor:
    """mm positions ``(3, *S)`` -> ``grid_sample`` grid ``(1, *S, 3)`` (x = last voxel axis)."""
    coords = [pos[c] * (2.0 / ((n - 1) * float(h))) - 1.0 for c, (n, h) in enumerate(zip(shape, spacing))]
    return torch.stack(coords[::-1], dim=-1).unsqueeze(0)


def sample(image: torch.Tensor, pos: torch.Tensor, spacing, *, mode: str = "bilinear",
           outside_value: float | None = None) -> torch.Tensor:
    """Trilinear sample of ``image`` (``(I, J, K)`` or ``(C, I, J, K)``) at mm positions ``pos``.

    ``outside_value=None`` clamps to the border (used inside the optimizer: it
    keeps the gradient defined). A number reproduces ITK/ANTs
    ``apply_transforms``: a position whose continuous voxel index lies outside
    ``[-0.5, n - 0.5)`` on any axis gets that value, and positions inside that
    band but past the last voxel take the border voxel.
    """
    squeeze = image.dim() == 3
    img = image.unsqueeze(0) if squeeze else image
    shape = img.shape[-3:]
    if min(shape) < 2:
        raise ValueError(f"sample: image must have at least 2 voxels per axis, got {tuple(shape)}")
    grid = _normalized_grid(pos.to(img.dtype), shape, spacing)
    out = F.grid_sample(img.unsqueeze(0), grid, mode=mode, padding_mode="border", align_corners=True)[0]
    if outside_value is not None:
        out = torch.where(_outside(pos, shape, spacing), torch.as_tensor(outside_value, dtype=out.dtype), out)
    return out[0] if squeeze else out


def _outside(pos, shape, spacing) -> torch.Tensor:
    mask = torch.zeros(pos.shape[1:], dtype=torch.bool, device=pos.device)
    for c, (n, h) in enumerate(zip(shape, spacing)):
        idx = pos[c] / float(h)
        mask |= (idx < -0.5) | (idx >= n - 0.5)
    return mask


def warp_image(image: torch.Tensor, disp: torch.Tensor, spacing, *, outside_value: float | None = None) -> torch.Tensor:
    """``image o (id + disp)`` on the grid of ``disp`` (same spacing and origin as ``image``)."""
    pos = identity(disp.shape[1:], spacing, dtype=disp.dtype, device=disp.device) + disp
    return sample(image, pos, spacing, outside_value=outside_value)


def warp_labels(labels: torch.Tensor, disp: torch.Tensor, spacing, *, outside_value: int = 0) -> torch.Tensor:
    """Nearest-neighbour ``labels o (id + disp)``, exact for any integer id.

    Indexes the integer tensor directly (no float round trip, so ids such as
    2035 or 2^30 stay exact). Rounds half up and treats positions outside
    ``[-0.5, n - 0.5)`` as ``outside_value``, like ITK's nearest-neighbour
    interpolator in ``ants.apply_transforms``.
    """
    shape = labels.shape
    pos = identity(disp.shape[1:], spacing, dtype=torch.float64, device=disp.device) + disp.to(torch.float64)
    idx = [torch.floor(pos[c] / float(h) + 0.5).long() for c, h in enumerate(spacing)]
    out_mask = _outside(pos, shape, spacing)
    idx = [i.clamp(0, n - 1) for i, n in zip(idx, shape)]
    out = labels[idx[0], idx[1], idx[2]]
    return torch.where(out_mask, torch.as_tensor(outside_value, dtype=labels.dtype), out)
