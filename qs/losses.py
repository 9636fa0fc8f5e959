"""Training losses between predicted and LDDMM field patches (pure torch, no file I/O).

Patches are ``(N, C, p, p, p)`` (``C = 3`` field components along the voxel axes), in the scaled units the
network learns (the field times ``momentum_scale``); ``sigma`` is in voxels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: training losses: ``l1`` (the paper's), ``l2`` (mean squared error), ``lowpass`` (squared error of the
#: Gaussian-smoothed difference, LOWPASS_SIGMA voxels: the part of the momentum the kernel K keeps)
LOSSES = ("l1", "l2", "lowpass")
LOWPASS_SIGMA = 2.0


def _gaussian_taps(sigma: float) -> torch.Tensor:
    """Normalised 1D Gaussian taps of ``sigma`` voxels, radius ``ceil(3 sigma)``."""
    r = max(1, int(math.ceil(3 * sigma)))
    t = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float32) / sigma) ** 2)
    return t / t.sum()


def lowpass(x: torch.Tensor, sigma: float = LOWPASS_SIGMA) -> torch.Tensor:
    """Gaussian smoothing (``sigma`` voxels) of patches ``(N, C, p, p, p)``, normalised at the patch border.

    Separable, per channel; zero padding divided by the smoothed ones
    (normalised convolution), so a constant patch stays constant up to its border.
    """
    taps = _gaussian_taps(sigma).to(x.device, x.dtype)
    r = (len(taps) - 1) // 2
    n, c = x.shape[:2]

    def smooth(v):
        v = v.reshape(-1, 1, *v.shape[2:])
        for axis in range(3):
            shape = [1, 1, 1, 1, 1]
            shape[2 + axis] = len(taps)
            pad = [0, 0, 0, 0, 0, 0]
            pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = r
            v = F.conv3d(F.pad(v, pad), taps.reshape(shape))
        return v

    ones = torch.ones_like(x[:1, :1])
    return (smooth(x) / smooth(ones)).reshape(n, c, *x.shape[2:])


def momentum_loss(pred: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """Training loss between scaled momentum patches (see :data:`LOSSES`)."""
    if kind == "l1":
        return F.l1_loss(pred, target)
    if kind == "l2":
        return F.mse_loss(pred, target)
    if kind == "lowpass":
        d = lowpass(pred - target)
        return (d * d).mean()
    raise ValueError(f"train: loss must be one of {LOSSES}, got {kind!r}")
