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
in the Fourier domain, so ``to_field`` is exact and ``to_momentum(to_field(m,
"velocity"), cutoff_mm=None)`` gives ``m`` back up to float rounding (tested).

A *predicted* velocity is low-passed before ``L`` (:func:`lowpass_velocity`):
a network's velocity is rough at the patch seams and from voxel noise, and
``L`` (fourth order) turns that roughness into a momentum whose geodesic folds
within the unit time (NaN displacements on the demo's test pairs). The filter
``1 / (1 + l(w) / l(w_c))`` with ``l(w) = (alpha |w|^2 + gamma)^power`` (the
kernel's isotropic part, discrete Laplacian symbol) and ``w_c = 2 pi /
cutoff_mm`` is the Tikhonov projection onto fields of the kernel's
smoothness; at the default :data:`VELOCITY_CUTOFF_MM` = 12 mm it changes the
demo's LDDMM velocities so little that their shot transform moves by 0.9% of
the affine-to-LDDMM median distance, and it makes the predicted geodesics
finite (``docs/learning.md``). A model may record another ``velocity_cutoff_mm``.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

FIELDS = ("momentum", "velocity")
#: wavelength (mm) where :func:`lowpass_velocity` halves a predicted velocity's spectrum
VELOCITY_CUTOFF_MM = 12.0
#: patch channel names of each field (after ``moving, target``)
FIELD_CHANNELS = {"momentum": ("m0_i", "m0_j", "m0_k"), "velocity": ("v0_i", "v0_j", "v0_k")}
#: axis label of a loss plot: the L1 of each field in its units
ERROR_LABEL = {"momentum": "mean |m0 error| (momentum units)", "velocity": "mean |v0 error| (mm)"}


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


@lru_cache(maxsize=4)  # the low-pass filter of a grid and settings, reused like the kernel
def _lowpass_symbol(padded, spacing, alpha, gamma, power, cutoff_mm, device):
    from .lddmm.kernel import _axis_symbols

    lap = sum(_axis_symbols(n, h, 3, a)[0] for a, (n, h) in enumerate(zip(padded, spacing)))
    wc = 2.0 * math.pi / cutoff_mm
    symbol = (alpha * lap + gamma) ** power
    return (1.0 / (1.0 + symbol / (alpha * wc * wc + gamma) ** power)).to(torch.float32).to(torch.device(device))


def _on_periodic_grid(x: torch.Tensor, spacing, meta: dict, operator: str, cutoff_mm=None) -> torch.Tensor:
    """``operator`` (``"K"``, ``"L"`` or ``"lowpass"``) applied to the field ``x`` zero-padded onto the
    periodic grid; the result cropped back to ``x``'s grid and dtype."""
    from .lddmm import padded_shape, zero_pad
    from .lddmm.kernel import irfft3, rfft3

    x = torch.as_tensor(x)
    if x.ndim != 4 or x.shape[0] != 3:
        raise ValueError(f"a field must be (3, I, J, K), got {tuple(x.shape)}")
    k = kernel_settings(meta)
    shape = tuple(int(n) for n in x.shape[1:])
    spacing = tuple(float(h) for h in spacing)
    padded = zero_pad(x.to(torch.float32), padded_shape(shape, 0))
    if operator == "lowpass":
        filt = _lowpass_symbol(tuple(padded.shape[1:]), spacing, k["alpha"], k["gamma"], k["power"],
                               float(cutoff_mm), str(x.device))
        out = irfft3(rfft3(padded) * filt, padded.shape[1:])
    else:
        kernel = _kernel(shape, spacing, k["alpha"], k["beta"], k["gamma"], k["power"], str(x.device))
        out = kernel.apply_operator(padded) if operator == "L" else kernel.apply(padded)
    return out[:, : shape[0], : shape[1], : shape[2]].contiguous().to(x.dtype)


def to_field(m0: torch.Tensor, field: str, spacing, meta: dict) -> torch.Tensor:
    """The ``field`` of momentum ``m0``: ``m0`` itself or ``v0 = K m0``."""
    return m0 if check_field(field) == "momentum" else _on_periodic_grid(m0, spacing, meta, "K")


def lowpass_velocity(v: torch.Tensor, spacing, meta: dict, cutoff_mm: float) -> torch.Tensor:
    """``v`` filtered by ``1 / (1 + l(w) / l(w_c))`` on the periodic grid (see the module docstring); mm in, mm out."""
    if not cutoff_mm > 0:
        raise ValueError(f"lowpass_velocity: cutoff_mm must be positive, got {cutoff_mm}")
    return _on_periodic_grid(v, spacing, meta, "lowpass", cutoff_mm)


def to_momentum(y: torch.Tensor, field: str, spacing, meta: dict, cutoff_mm="model") -> torch.Tensor:
    """The momentum of a predicted ``field``: ``y`` itself, or ``m0 = L lowpass(y)`` for a velocity.

    ``cutoff_mm``: ``"model"`` = the model's ``velocity_cutoff_mm`` (default
    :data:`VELOCITY_CUTOFF_MM`), a number, or ``None`` (no filter: ``L y`` exactly).
    """
    if check_field(field) == "momentum":
        return y
    if cutoff_mm == "model":
        cutoff_mm = float(meta.get("velocity_cutoff_mm", VELOCITY_CUTOFF_MM))
    if cutoff_mm is not None:
        y = lowpass_velocity(y, spacing, meta, cutoff_mm)
    return _on_periodic_grid(y, spacing, meta, "L")
