"""LDDMM registration of one image pair on tensors: optimise the momentum, shoot it, warp, det J.

Tensors on one image grid, spacing in mm; fields ``(3, I, J, K)`` with
component ``c`` along voxel axis ``c``, in mm. The file runner (NIfTI in,
NIfTI out) is the stage :func:`qs.lddmm_run.run_lddmm`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from .gradient import Objective
from .jacobian import jacobian_determinant
from .kernel import DEFAULTS, SINGLE_SCALE
from .multiscale import coarse_spacing, coarsen_image, refine_momentum
from .optimize import optimize
from .warp import warp_image

DEFAULT_ITERATIONS = 50


@dataclass
class RegistrationResult:
    """Tensors on the image grid (CPU): ``m0`` ``(3, *S)``; ``phiinv`` and ``phi``:
    displacements (mm, voxel axes) of ``phi_1^{-1}`` and ``phi_1``; ``warped`` =
    ``I0 o phi_1^{-1}``; ``history`` (see :class:`.optimize.OptimizeResult`);
    ``summary`` (JSON-ready numbers; ``energy_initial`` is the history's first row, on the coarse grid of a
    coarse-to-fine run, ``energy_start`` the start momentum's energy on the working grid)."""

    m0: torch.Tensor
    phiinv: torch.Tensor
    phi: torch.Tensor
    warped: torch.Tensor
    history: list
    summary: dict = field(default_factory=dict)


def lddmm_registration(I0, I1, spacing, *, iterations: int = DEFAULT_ITERATIONS, alpha: float = DEFAULTS["alpha"],
                       beta: float = DEFAULTS["beta"], gamma: float = DEFAULTS["gamma"], power: int = DEFAULTS["power"],
                       scales=SINGLE_SCALE,
                       sigma: float = 0.2, time_steps: int = 10, step: float | None = None, method: str = "lbfgs",
                       pad: int = 0, m0=None, coarse_iterations: int = 0, similarity: str = "ssd", window: int = 5,
                       device="cpu", compile="auto", dtype=torch.float32, seed: int = 0,
                       progress: bool = True) -> RegistrationResult:
    """Optimise the LDDMM registration of moving ``I0`` to target ``I1`` (3D arrays/tensors on one grid of ``spacing`` mm).

    ``device``: a torch device (or its name, e.g. ``"cpu"``, ``"cuda:0"``;
    the stage :func:`qs.lddmm_run.run_lddmm` resolves ``"auto"``).

    Minimises ``E(m0)`` (:mod:`.gradient`) by :func:`.optimize.optimize` for
    ``iterations`` evaluations starting from ``m0`` (default zero), then
    shoots the result once more for ``phi_1^{-1}``, ``phi_1`` and the warped image.
    With ``coarse_iterations`` > 0 the optimization first runs that many
    evaluations on the images averaged to a grid twice as coarse (8x fewer
    voxels, :mod:`.multiscale`) and starts the working-grid ones from that
    momentum, interpolated back: most of the deformation is found at an
    eighth of the cost.
    """
    torch.manual_seed(seed)
    dev = torch.device(device)
    if coarse_iterations < 0:
        raise ValueError(f"lddmm_registration: coarse_iterations must be >= 0, got {coarse_iterations}")
    t0 = time.perf_counter()
    settings = dict(sigma=sigma, similarity=similarity, window=window, alpha=alpha, beta=beta, gamma=gamma,
                    power=power, scales=scales, time_steps=time_steps, pad=pad, compile=compile, dtype=dtype, device=dev)
    obj = Objective(I0, I1, spacing, **settings)
    if m0 is not None:
        m0 = torch.as_tensor(m0, dtype=dtype, device=dev)
    history = []
    # the energy of the start on the working grid (the coarse level's rows come first in the history)
    energy_start = obj.evaluate(obj.zeros() if m0 is None else m0).energy.total if coarse_iterations else None
    if coarse_iterations:
        coarse = Objective(coarsen_image(obj.I0), coarsen_image(obj.I1), coarse_spacing(obj.spacing), **settings)
        start = None if m0 is None else torch.stack([coarsen_image(c) for c in m0])
        res = optimize(coarse, iterations=coarse_iterations, m0=start, method=method, progress=progress,
                       step=None if step is None else 2.0 * step)
        history = [dict(r, spacing_mm=max(coarse.spacing)) for r in res.history]
        m0 = refine_momentum(res.m0, obj.shape)
        del coarse, res
    t_fine = time.perf_counter() - t0
    res = optimize(obj, iterations=iterations, m0=m0, step=step, method=method, progress=progress)
    history += [dict(r, iteration=r["iteration"] + len(history), seconds=r["seconds"] + t_fine,
                     spacing_mm=max(obj.spacing)) for r in res.history]
    geo = obj.shooter.shoot(res.m0, forward_map=True)
    u, w = geo.u1, geo.w1
    with torch.no_grad():
        warped = warp_image(obj.I0, u, obj.spacing, outside_value=0.0)
        detj = jacobian_determinant(u.double(), obj.spacing)
        detj_phi = jacobian_determinant(w.double(), obj.spacing)
    seconds = time.perf_counter() - t0
    summary = {
        "iterations": int(iterations),
        "coarse_iterations": int(coarse_iterations),
        "accepted_steps": int(sum(r["accepted"] for r in res.history[1:])),
        "energy_initial": history[0]["energy"],
        "energy_start": history[0]["energy"] if energy_start is None else energy_start,
        "energy": res.energy.total,
        "matching": res.energy.matching,
        "regularity": res.energy.regularity,
        "detj_min": float(detj.min()),
        "detj_max": float(detj.max()),
        "detj_phi_min": float(detj_phi.min()),
        "detj_phi_max": float(detj_phi.max()),
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "compiled": bool(obj.shooter.compiled),
        "seconds": seconds,
        "seconds_per_iteration": (res.history[-1]["seconds"] / max(len(res.history) - 1, 1)),
        "kernel": obj.kernel.params,
        "sigma": float(sigma),
        "similarity": similarity,
        "window": int(window),
        "time_steps": int(time_steps),
        "optimizer": method,
        "shape": list(obj.shape),
        "padded_shape": list(obj.padded),
        "spacing": list(obj.spacing),
    }
    cpu = lambda t: t.detach().to("cpu", torch.float32)  # noqa: E731
    return RegistrationResult(m0=cpu(res.m0), phiinv=cpu(u), phi=cpu(w), warped=cpu(warped),
                              history=history, summary=summary)
