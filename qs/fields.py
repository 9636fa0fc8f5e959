"""The field a network predicts: the LDDMM initial momentum ``m0`` or the initial velocity ``v0 = K m0``.

Quicksilver (Yang et al. 2017, Table 2) predicts the momentum (its best
variant) and compares predicting the velocity (``D, velocity``): both fix
the same geodesic, so the transform is shot the same way. ``train.field``
(``qs patches --field``, recorded in the patch sidecars and in the model as
``field``; models without it predict the momentum) chooses.

Conventions: fields are ``(3, I, J, K)`` on the image grid, component ``c``
along voxel axis ``c``. ``K`` is the run's fluid kernel
(:class:`qs.lddmm.FluidKernel`, settings from the model metadata or the
``qs lddmm`` flags) on the periodic grid :func:`qs.lddmm.padded_shape`
``(shape, 0)`` that ``qs lddmm`` and the prediction shoot on, with the field
zero outside the image; spacing in mm. The velocity is in mm per unit time
(the displacement of a short geodesic), smooth over the kernel's width; the
momentum is in the LDDMM's momentum units. ``L = K^{-1}`` is applied exactly
in the Fourier domain, so ``to_momentum(to_field(m, "velocity"))`` gives
``m`` back up to float rounding (tested), and shooting the momentum of a
predicted velocity starts from exactly that velocity inside the grid.
"""

from __future__ import annotations

from functools import lru_cache

import torch

FIELDS = ("momentum", "velocity")
#: patch channel names of each field (after ``moving, target``)
FIELD_CHANNELS = {"momentum": ("m0_i", "m0_j", "m0_k"), "velocity": ("v0_i", "v0_j", "v0_k")}


def check_field(field: str) -> str:
    if field not in FIELDS:
        raise ValueError(f"field must be one of {FIELDS}, got {field!r}")
    return field


def field_of(meta: dict) -> str:
    """The field a model (or patch sidecar) holds; ``momentum`` when it does not say (older files)."""
    return check_field(meta.get("field", "momentum"))


def kernel_settings(meta: dict) -> dict:
    """The LDDMM kernel and shooting settings of a model: ``alpha, beta, gamma, power, time_steps``."""
    from .lddmm import DEFAULTS

    return {
        "alpha": float(meta["alpha"]), "beta": float(meta["beta"]), "gamma": float(meta["gamma"]),
        "power": int(meta.get("power", DEFAULTS["power"])), "time_steps": int(meta["time_steps"]),
    }


@lru_cache(maxsize=4)  # one kernel per grid and settings: MC samples and correction reuse it
def _kernel(shape, spacing, alpha, beta, gamma, power, device):
    from .lddmm import FluidKernel, padded_shape

    return FluidKernel(padded_shape(shape, 0), spacing, alpha=alpha, beta=beta, gamma=gamma, power=power,
                       dtype=torch.float32, device=torch.device(device))


def _apply(x: torch.Tensor, spacing, meta: dict, inverse: bool) -> torch.Tensor:
    from .lddmm import zero_pad

    x = torch.as_tensor(x)
    if x.ndim != 4 or x.shape[0] != 3:
        raise ValueError(f"a field must be (3, I, J, K), got {tuple(x.shape)}")
    k = kernel_settings(meta)
    shape = tuple(int(n) for n in x.shape[1:])
    kernel = _kernel(shape, tuple(float(h) for h in spacing), k["alpha"], k["beta"], k["gamma"], k["power"],
                     str(x.device))
    padded = zero_pad(x.to(torch.float32), kernel.shape)
    out = kernel.apply_operator(padded) if inverse else kernel.apply(padded)
    return out[:, : shape[0], : shape[1], : shape[2]].contiguous().to(x.dtype)


def to_field(m0: torch.Tensor, field: str, spacing, meta: dict) -> torch.Tensor:
    """The ``field`` of momentum ``m0``: ``m0`` itself or ``v0 = K m0``."""
    return m0 if check_field(field) == "momentum" else _apply(m0, spacing, meta, inverse=False)


def to_momentum(y: torch.Tensor, field: str, spacing, meta: dict) -> torch.Tensor:
    """The momentum of a predicted ``field``: ``y`` itself or ``m0 = L y`` for a velocity."""
    return y if check_field(field) == "momentum" else _apply(y, spacing, meta, inverse=True)
