"""The correction network's data flow: warp the target back with the predicted map, predict the residual momentum.

As in the paper: the predicted momentum ``m_pred`` is shot, the TARGET is
warped back into the moving image's space with the forward map,
``I1 o phi_1`` (:func:`warped_back_target`), and the correction network
predicts the residual momentum from ``(moving, warped-back target)``:
``m0 = m_pred + m_corr``. ``rounds = N`` (:func:`correction_rounds`) repeats
the step N times (the paper: once), each on the momentum corrected so far;
the network is trained on first-round residuals only, made by
:func:`correction_inputs` from an LDDMM-optimal ``m0``: ``(moving,
warped-back target, m0_opt - m_pred)``.

Images are ``(I, J, K)`` on one working grid, momenta ``(3, I, J, K)`` on it
(component ``c`` along voxel axis ``c``), maps are displacements in mm;
the shootings use :func:`qs.fields.model_shooter` (the model's LDDMM settings).
"""

from __future__ import annotations

import numpy as np
import torch

from ..fields import model_shooter
from ..lddmm import Shooter, warp_image
from .window import as_volume, predict_momentum, resolve

#: ``compile="auto"`` compiles the shooting only for at least this many shootings in one call:
#: compiling costs ~5 s per process (warm cache) and saves ~0.6 s per shooting (demo grid 90x108x90,
#: 5 RK4 steps, 2 CPU threads: eager 1.1 s per shooting, compiled 0.4 s after a 5.2 s first one).
COMPILE_MIN_SHOTS = 8


def shooting_compile(compile, shots: int):
    """The ``compile`` argument of the shooter (:class:`qs.lddmm.Shooter`) of a call that shoots ``shots`` times."""
    if compile == "auto":
        return "auto" if shots >= COMPILE_MIN_SHOTS else False
    return compile


def warped_back_target(shooter: Shooter, m0: torch.Tensor, target: torch.Tensor, spacing) -> torch.Tensor:
    """``I1 o phi_1``: shoot ``m0`` and pull the target back into the moving image's space (trilinear, 0 outside).

    ``target`` ``(I, J, K)`` and ``m0`` ``(3, I, J, K)`` on the image grid of
    ``spacing`` mm; returns a CPU float32 image.
    """
    phi = shooter.shoot(m0, forward_map=True).w1
    return warp_image(target.to(phi.device, torch.float32), phi.to(torch.float32), spacing, outside_value=0.0).cpu()


def correction_rounds(correction, shooter: Shooter, moving, target, m_start, rounds: int, *, spacing, stride=None,
                      batch_size: int = 64, device="cpu", progress=False, mirror_axes=()):
    """The sum of ``rounds`` deterministic corrections of ``m_start`` (None for 0 rounds).

    ``correction``: ``(model, meta)`` of the correction network. Round ``r``
    shoots ``m_start`` plus the corrections so far, warps the target back and
    adds the network's residual for ``(moving, warped-back target)``.
    """
    total = None
    for _ in range(rounds):
        back = warped_back_target(shooter, m_start if total is None else m_start + total, target, spacing)
        step = predict_momentum(*correction, moving, back, stride=stride, progress=progress, batch_size=batch_size,
                                device=device, mirror_axes=mirror_axes)
        total = step if total is None else total + step
    return total


def correction_inputs(moving, target, m0_opt, model, meta, *, stride=None, batch_size: int = 64, device="cpu",
                      spacing=None, progress=False, compile="auto", mirror_axes=()):
    """Training data of the correction network for one pair.

    ``moving``, ``target`` ``(I, J, K)`` on one grid, ``m0_opt`` ``(3, I, J,
    K)`` the LDDMM-optimal momentum, ``model``/``meta`` the prediction
    network. Predicts ``m_pred`` (deterministic), shoots it, warps the target
    back (``I1 o phi_1``) and returns ``(moving, warped_back_target, m0_opt -
    m_pred)`` as CPU float32 tensors, ready for
    :func:`qs.patches.write_pair_patches`. ``spacing`` (mm) defaults to the model's.
    """
    device = resolve(device)
    spacing = tuple(meta["spacing"] if spacing is None else spacing)
    moving, target = as_volume(moving, "moving"), as_volume(target, "target")
    m0_opt = torch.as_tensor(np.asarray(m0_opt) if not isinstance(m0_opt, torch.Tensor) else m0_opt)
    if tuple(m0_opt.shape) != (3, *moving.shape):
        raise ValueError(f"correction_inputs: m0_opt must be (3, {tuple(moving.shape)}), got {tuple(m0_opt.shape)}")
    m_pred = predict_momentum(model, meta, moving, target, stride=stride, batch_size=batch_size, device=device,
                              progress=progress, mirror_axes=mirror_axes)
    with torch.no_grad():
        shooter = model_shooter(meta, moving.shape, spacing, device=device, compile=shooting_compile(compile, 1))
        back = warped_back_target(shooter, m_pred, target, spacing).to("cpu", torch.float32)
    return moving, back, m0_opt.detach().to("cpu", torch.float32) - m_pred
