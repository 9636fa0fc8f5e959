"""``qs lddmm``: the LDDMM registration of one image pair, files in, files out.

Reads the pair (and labels) on one working grid, runs the engine
(:func:`qs.lddmm.lddmm_registration`, tensors) and writes (all on the target
grid, target affine):

* ``m0.nii.gz``: the initial momentum, 4D ``(I, J, K, 3)`` float32;
  ``m0[..., c]`` is the component along voxel axis ``c`` (= world RAS axis
  ``c`` on the working grid). Units: ``v0 = K m0`` is in mm per unit time with
  ``K`` the fluid kernel in mm (:mod:`qs.lddmm.kernel`; parameters in ``summary.json``).
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

from pathlib import Path

import numpy as np
import torch

from .device import resolve_device
from .io import (check_finite, check_json, check_same_grid, load_image, load_labels, save_array,
                 spacing as grid_spacing, write_json, write_text)
from .lddmm import DEFAULTS, SINGLE_SCALE, lddmm_registration, warp_labels
from .lddmm.registration import DEFAULT_ITERATIONS
from .transforms import write_ants_displacement


def write_registration(out_dir, affine, spacing, m0, phiinv, warped, *, labels=None) -> dict:
    """Write a registration's files on the target grid (``affine``); shared by ``qs lddmm`` and ``qs predict``.

    ``m0.nii.gz`` (I, J, K, 3; not when ``m0`` is None: a predicted deformation), ``warp.nii.gz`` (ANTs displacement of ``phiinv``),
    ``warped.nii.gz`` and, with ``labels`` (a label image on the grid),
    ``warped_labels.nii.gz`` (nearest neighbour, int32). Returns the paths.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs = {} if m0 is None else {"m0": save_array(np.moveaxis(m0.numpy(), 0, -1), affine, out_dir / "m0.nii.gz")}
    outputs["warp"] = write_ants_displacement(phiinv.numpy(), affine, out_dir / "warp.nii.gz")
    outputs["warped"] = save_array(warped.numpy(), affine, out_dir / "warped.nii.gz")
    if labels is not None:
        lab = torch.from_numpy(np.asarray(labels.dataobj, dtype=np.int32))
        outputs["warped_labels"] = save_array(warp_labels(lab, phiinv.double(), spacing).numpy().astype(np.int32),
                                              affine, out_dir / "warped_labels.nii.gz", dtype=np.int32)
    return outputs


def run_lddmm(moving, target, out_dir, *, labels=None, iterations: int = DEFAULT_ITERATIONS,
              alpha: float = DEFAULTS["alpha"], beta: float = DEFAULTS["beta"], gamma: float = DEFAULTS["gamma"],
              scales=SINGLE_SCALE, sigma: float = 0.2, time_steps: int = 10, step: float | None = None, optimizer: str = "lbfgs",
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
    dev = resolve_device(device) if isinstance(device, str) else torch.device(device)
    res = lddmm_registration(np.asarray(mov.dataobj), np.asarray(tgt.dataobj), h, iterations=iterations,
                             alpha=alpha, beta=beta, gamma=gamma, scales=scales, sigma=sigma, time_steps=time_steps, step=step,
                             method=optimizer, pad=pad, coarse_iterations=coarse_iterations, similarity=similarity,
                             window=window, device=dev, compile=compile, seed=seed, progress=progress)
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
