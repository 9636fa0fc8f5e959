"""LDDMM registration of one image pair: on tensors (:func:`register`) and on files (:func:`run_lddmm`).

Outputs of :func:`run_lddmm` (all on the target grid, target affine):

* ``m0.nii.gz``: the initial momentum, 4D ``(I, J, K, 3)`` float32;
  ``m0[..., c]`` is the component along voxel axis ``c`` (= world RAS axis
  ``c`` on the working grid). Units: ``v0 = K m0`` is in mm per unit time with
  ``K`` the fluid kernel in mm (:mod:`.kernel`; parameters in ``summary.json``).
* ``warp.nii.gz``: ANTs displacement field of ``phi_1^{-1}`` (:mod:`qs.transforms`):
  ``ants.apply_transforms(fixed=T, moving=M, transformlist=[warp])``
  reproduces ``warped.nii.gz``.
* ``warped.nii.gz``: ``M o phi_1^{-1}`` (trilinear; 0 outside ``M``, as ANTs).
* ``warped_labels.nii.gz`` (with ``labels``): nearest neighbour, int32, exact ids.
* ``energy.tsv``: ``iteration, energy, matching, regularity, seconds, spacing_mm``
  (iteration 0 is the initial momentum; energies of the accepted momentum;
  ``spacing_mm``: the grid of the row, twice the working spacing for the
  coarse level of a coarse-to-fine run, whose rows come first).
* ``summary.json``: det J of ``phi_1^{-1}`` (min/max), iterations, device,
  time, kernel parameters, sigma, grid.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from qs.device import resolve_device
from qs.io import (check_finite, check_json, check_same_grid, load_image, load_labels, save_array,
                   spacing as grid_spacing, write_json, write_text)
from qs.transforms import write_ants_displacement

from .gradient import Objective
from .jacobian import jacobian_determinant
from .kernel import DEFAULTS
from .multiscale import coarse_spacing, coarsen_image, refine_momentum
from .optimize import optimize
from .warp import warp_image, warp_labels

DEFAULT_ITERATIONS = 50


@dataclass
class RegistrationResult:
    """Tensors on the image grid (CPU): ``m0`` ``(3, *S)``; ``phiinv`` and ``phi``:
    displacements (mm, voxel axes) of ``phi_1^{-1}`` and ``phi_1``; ``warped`` =
    ``I0 o phi_1^{-1}``; ``history`` (see :class:`.optimize.OptimizeResult`);
    ``summary`` (JSON-ready numbers)."""

    m0: torch.Tensor
    phiinv: torch.Tensor
    phi: torch.Tensor
    warped: torch.Tensor
    history: list
    summary: dict = field(default_factory=dict)


def register(I0, I1, spacing, *, iterations: int = DEFAULT_ITERATIONS, alpha: float = DEFAULTS["alpha"],
             beta: float = DEFAULTS["beta"], gamma: float = DEFAULTS["gamma"], power: int = DEFAULTS["power"],
             sigma: float = 0.2, time_steps: int = 10, step: float | None = None, method: str = "lbfgs",
             pad: int = 0, m0=None, coarse_iterations: int = 0, similarity: str = "ssd", window: int = 5,
             device="auto", compile="auto", dtype=torch.float32, seed: int = 0,
             progress: bool = True) -> RegistrationResult:
    """Register moving ``I0`` to target ``I1`` (3D arrays/tensors on one grid of ``spacing`` mm).

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
    dev = resolve_device(device) if isinstance(device, str) else torch.device(device)
    if coarse_iterations < 0:
        raise ValueError(f"register: coarse_iterations must be >= 0, got {coarse_iterations}")
    t0 = time.perf_counter()
    settings = dict(sigma=sigma, similarity=similarity, window=window, alpha=alpha, beta=beta, gamma=gamma,
                    power=power, time_steps=time_steps, pad=pad, compile=compile, dtype=dtype, device=dev)
    obj = Objective(I0, I1, spacing, **settings)
    if m0 is not None:
        m0 = torch.as_tensor(m0, dtype=dtype, device=dev)
    history = []
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
    geo = obj.shooter.shoot(obj.pad(res.m0), forward_map=True)
    u, w = obj.crop(geo.u1), obj.crop(geo.w1)
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


def write_registration(out_dir, affine, spacing, m0, phiinv, warped, *, labels=None) -> dict:
    """Write a registration's files on the target grid (``affine``); shared by ``qs lddmm`` and ``qs predict``.

    ``m0.nii.gz`` (I, J, K, 3), ``warp.nii.gz`` (ANTs displacement of ``phiinv``),
    ``warped.nii.gz`` and, with ``labels`` (a label image on the grid),
    ``warped_labels.nii.gz`` (nearest neighbour, int32). Returns the paths.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs = {
        "m0": save_array(np.moveaxis(m0.numpy(), 0, -1), affine, out_dir / "m0.nii.gz"),
        "warp": write_ants_displacement(phiinv.numpy(), affine, out_dir / "warp.nii.gz"),
        "warped": save_array(warped.numpy(), affine, out_dir / "warped.nii.gz"),
    }
    if labels is not None:
        lab = torch.from_numpy(np.asarray(labels.dataobj, dtype=np.int32))
        outputs["warped_labels"] = save_array(warp_labels(lab, phiinv.double(), spacing).numpy().astype(np.int32),
                                              affine, out_dir / "warped_labels.nii.gz", dtype=np.int32)
    return outputs


def run_lddmm(moving, target, out_dir, *, labels=None, iterations: int = DEFAULT_ITERATIONS,
              alpha: float = DEFAULTS["alpha"], beta: float = DEFAULTS["beta"], gamma: float = DEFAULTS["gamma"],
              sigma: float = 0.2, time_steps: int = 10, step: float | None = None, optimizer: str = "lbfgs",
              coarse_iterations: int = 0, similarity: str = "ssd", window: int = 5, device="auto", seed: int = 0,
              progress: bool = True, compile="auto", pad: int = 0) -> dict:
    """Register the image file ``moving`` to ``target`` and write the outputs under ``out_dir``.

    Both images (and ``labels``, on the moving grid) must already be on the
    same working grid; otherwise :class:`qs.io.QsInputError` names the file.
    Intensities are used as they are (the pipeline normalises them to about
    [0, 1], which ``sigma`` assumes). Returns the summary dict (also written
    to ``summary.json``) with the output paths under ``"outputs"``.
    """
    moving, target, out_dir = Path(moving), Path(target), Path(out_dir)
    tgt = load_image(target, what="target image")
    mov = load_image(moving, what="moving image")
    check_same_grid(tgt, mov, target, moving)
    lab = load_labels(labels, reference=tgt, reference_path=target) if labels is not None else None
    affine = tgt.affine
    h = grid_spacing(tgt)
    res = register(np.asarray(mov.dataobj), np.asarray(tgt.dataobj), h, iterations=iterations, alpha=alpha,
                   beta=beta, gamma=gamma, sigma=sigma, time_steps=time_steps, step=step, method=optimizer, pad=pad,
                   coarse_iterations=coarse_iterations, similarity=similarity, window=window, device=device,
                   compile=compile, seed=seed, progress=progress)
    check_finite([
        ("the optimised momentum", res.m0, "the LDDMM optimisation diverged (try a larger --sigma or more "
                                           "--time-steps)"),
        ("the displacement of phi_1^{-1}", res.phiinv, "geodesic shooting of the optimised momentum diverged"),
        ("the warped image", res.warped, "warping the moving image with the transform failed"),
    ], out_dir)
    check_json(res.summary, out_dir / "summary.json")
    outputs = write_registration(out_dir, affine, h, res.m0, res.phiinv, res.warped, labels=lab)
    lines = ["iteration\tenergy\tmatching\tregularity\tseconds\tspacing_mm"]
    lines += [f"{r['iteration']}\t{r['energy']:.8g}\t{r['matching']:.8g}\t{r['regularity']:.8g}\t{r['seconds']:.3f}"
              f"\t{r['spacing_mm']:g}" for r in res.history]
    outputs["energy"] = write_text("\n".join(lines) + "\n", out_dir / "energy.tsv")
    summary = dict(res.summary, moving=str(moving), target=str(target),
                   labels=None if labels is None else str(labels),
                   outputs={k: str(v) for k, v in outputs.items()})
    write_json(summary, out_dir / "summary.json")
    summary["outputs"]["summary"] = str(out_dir / "summary.json")
    return summary
