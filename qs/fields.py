"""The field a network predicts (the LDDMM initial momentum ``m0``, the initial velocity ``v0 = K m0`` or the
deformation itself) and the model's LDDMM.

Quicksilver (Yang et al. 2017, Table 2) predicts the momentum (its best
variant) and compares predicting the velocity (``D, velocity``): both fix
the same geodesic, so the transform is shot the same way. Its third variant
(``D, deformation``) predicts the displacement of ``phi_1^{-1}`` directly
(mm): no shooting, so nothing keeps ``det J > 0`` (the paper: folds on 44% and
100% of its test pairs). ``train.field`` (``qs patches --field``, recorded in
the patch sidecars and in the model as ``field``; models without it predict
the momentum) chooses.

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
The deformation of a momentum (:func:`to_field` with ``"deformation"``) is
the displacement of ``phi_1^{-1}`` that :func:`model_shooter` shoots from it
(mm, on the image grid): exactly what ``qs lddmm`` writes as its warp.
A model's kernel and its geodesic shooting are built here, from its
metadata, by :func:`model_kernel` and :func:`model_shooter`.

A *predicted* velocity is low-passed before ``L`` (:func:`lowpass_velocity`,
:meth:`qs.lddmm.FluidKernel.lowpass`):
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

from functools import lru_cache

import torch

from .lddmm import DEFAULTS, SINGLE_SCALE, FluidKernel, Shooter, padded_shape, zero_pad

FIELDS = ("momentum", "velocity", "deformation")
#: fields from which the transform is shot (a geodesic: diffeomorphic); a deformation is used as it is
SHOT_FIELDS = ("momentum", "velocity")
#: wavelength (mm) where :func:`lowpass_velocity` halves a predicted velocity's spectrum
VELOCITY_CUTOFF_MM = 12.0
#: patch channel names of each field (after ``moving, target``)
FIELD_CHANNELS = {"momentum": ("m0_i", "m0_j", "m0_k"), "velocity": ("v0_i", "v0_j", "v0_k"),
                  "deformation": ("u_i", "u_j", "u_k")}
#: axis label of a loss plot: the L1 of each field in its units
ERROR_LABEL = {"momentum": "mean |m0 error| (momentum units)", "velocity": "mean |v0 error| (mm)",
               "deformation": "mean |u error| (mm)"}


def check_field(field: str) -> str:
    if field not in FIELDS:
        raise ValueError(f"field must be one of {FIELDS}, got {field!r}")
    return field


def is_shot(field: str) -> bool:
    """Whether the transform of a ``field`` is shot from a momentum (momentum, velocity) or is the field itself."""
    return check_field(field) in SHOT_FIELDS


def field_of(meta: dict) -> str:
    """The field a model (or patch sidecar) holds; ``momentum`` when it does not say (older files)."""
    return check_field(meta.get("field", "momentum"))


def kernel_settings(meta: dict) -> dict:
    """The LDDMM kernel and shooting settings of a model: ``alpha, beta, gamma, power, scales, time_steps``
    (``scales``: the meta's ``kernel_scales``, a single width when it has none)."""
    return {
        "alpha": float(meta["alpha"]), "beta": float(meta["beta"]), "gamma": float(meta["gamma"]),
        "power": int(meta.get("power", DEFAULTS["power"])),
        "scales": tuple(float(s) for s in meta.get("kernel_scales", SINGLE_SCALE)), "time_steps": int(meta["time_steps"]),
    }


def model_kernel(meta: dict, shape, spacing, *, pad: int = 0, device="cpu") -> FluidKernel:
    """The float32 fluid kernel of ``meta``'s settings on the periodic grid :func:`qs.lddmm.padded_shape`
    ``(shape, pad)`` of the image grid ``shape`` (voxels) with ``spacing`` (mm)."""
    return settings_kernel(kernel_settings(meta), shape, spacing, pad=pad, device=device)


def settings_kernel(k: dict, shape, spacing, *, pad: int = 0, device="cpu") -> FluidKernel:
    """:func:`model_kernel` from the settings :func:`kernel_settings` returns."""
    return FluidKernel(padded_shape(tuple(int(n) for n in shape), int(pad)), tuple(float(h) for h in spacing),
                       alpha=k["alpha"], beta=k["beta"], gamma=k["gamma"], power=k["power"], scales=k["scales"],
                       dtype=torch.float32, device=device)


def model_shooter(meta: dict, shape, spacing, *, device="cpu", compile=False) -> Shooter:
    """Geodesic shooting with ``meta``'s LDDMM settings for momenta on the image grid ``shape`` (``spacing`` mm).

    The kernel of :func:`model_kernel` with the model's ``pad`` (0 when not
    recorded) and its ``time_steps``: the periodic grid and settings that
    ``qs lddmm`` optimised the training momenta on. ``device``: a torch device.
    """
    kernel = model_kernel(meta, shape, spacing, pad=int(meta.get("pad", 0)), device=device)
    return Shooter(kernel, time_steps=kernel_settings(meta)["time_steps"], compile=compile)


@lru_cache(maxsize=4)  # one kernel per grid and settings: MC samples and correction reuse it
def _kernel(shape, spacing, settings, device) -> FluidKernel:
    return settings_kernel(dict(settings), shape, spacing, device=torch.device(device))


def _on_periodic_grid(x: torch.Tensor, spacing, meta: dict, operator) -> torch.Tensor:
    """``operator(kernel, field)`` applied to the field ``x`` zero-padded onto the model kernel's periodic grid
    (:func:`model_kernel` with ``pad`` 0); the result cropped back to ``x``'s grid and dtype."""
    x = torch.as_tensor(x)
    if x.ndim != 4 or x.shape[0] != 3:
        raise ValueError(f"a field must be (3, I, J, K), got {tuple(x.shape)}")
    shape = tuple(int(n) for n in x.shape[1:])
    spacing = tuple(float(h) for h in spacing)
    kernel = _kernel(shape, spacing, tuple(sorted(kernel_settings(meta).items())), str(x.device))
    out = operator(kernel, zero_pad(x.to(torch.float32), kernel.shape))
    return out[:, : shape[0], : shape[1], : shape[2]].contiguous().to(x.dtype)


def to_field(m0: torch.Tensor, field: str, spacing, meta: dict) -> torch.Tensor:
    """The ``field`` of momentum ``m0``: ``m0`` itself, ``v0 = K m0`` or the displacement of ``phi_1^{-1}`` (mm)
    shot from it with ``meta``'s kernel and time steps (:func:`model_shooter`)."""
    if check_field(field) == "momentum":
        return m0
    if field == "deformation":
        m0 = torch.as_tensor(m0)
        shooter = model_shooter(meta, tuple(m0.shape[1:]), spacing, device=m0.device)
        with torch.no_grad():
            return shooter.shoot(m0.to(torch.float32)).u1.to(m0.dtype)
    return _on_periodic_grid(m0, spacing, meta, lambda kernel, m: kernel.apply(m))


def lowpass_velocity(v: torch.Tensor, spacing, meta: dict, cutoff_mm: float) -> torch.Tensor:
    """``v`` filtered by ``1 / (1 + l(w) / l(w_c))`` on the periodic grid (see the module docstring); mm in, mm out."""
    if not cutoff_mm > 0:
        raise ValueError(f"lowpass_velocity: cutoff_mm must be positive, got {cutoff_mm}")
    return _on_periodic_grid(v, spacing, meta, lambda kernel, f: kernel.lowpass(f, cutoff_mm))


def to_momentum(y: torch.Tensor, field: str, spacing, meta: dict, cutoff_mm="model") -> torch.Tensor:
    """The momentum of a predicted ``field``: ``y`` itself, or ``m0 = L lowpass(y)`` for a velocity.

    ``cutoff_mm``: ``"model"`` = the model's ``velocity_cutoff_mm`` (default
    :data:`VELOCITY_CUTOFF_MM`), a number, or ``None`` (no filter: ``L y`` exactly).
    A deformation has no momentum (``ValueError``): its transform is the field itself.
    """
    if check_field(field) == "momentum":
        return y
    if field == "deformation":
        raise ValueError("to_momentum: a predicted deformation has no momentum (it is not shot)")
    if cutoff_mm == "model":
        cutoff_mm = float(meta.get("velocity_cutoff_mm", VELOCITY_CUTOFF_MM))
    if cutoff_mm is not None:
        y = lowpass_velocity(y, spacing, meta, cutoff_mm)
    return _on_periodic_grid(y, spacing, meta, lambda kernel, v: kernel.apply_operator(v))
