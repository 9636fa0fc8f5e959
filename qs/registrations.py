"""``qs register-pair``: one registration of the workflow's ``register`` block, in the images' own spaces.

The workflow has pre-processed every subject (ANTs affine ``A`` to the atlas,
atlas point -> subject point, the image on the working grid). For a pair
``moving -> target`` the model predicts (and corrects) the LDDMM transform on
the working grid, ``phi^{-1}`` (target atlas-space point -> moving atlas-space
point); :func:`qs.register.compose_to_target` carries it into the target's own
grid, ``F(y) = A_M(phi^{-1}(A_T^{-1}(y)))``, as an ANTs displacement field plus
an affine. The atlas is a subject whose image is the atlas on the working grid
and whose ``A`` is the identity. With a refinement (``register.method:
predict+refine``) a few LDDMM energy evaluations start from the prediction
(:mod:`qs.predict.refine`); otherwise no LDDMM optimisation runs.

Outputs in ``OUT/`` (``F``: target point -> moving point):

* ``warp.nii.gz``: ANTs displacement on the target's grid and ``affine.mat``
  (``A_M o A_T^{-1}``); ``transforms.txt``: ``warp.nii.gz``, ``affine.mat`` in
  the order ``ants.apply_transforms(fixed=TARGET, moving=MOVING,
  transformlist=..., whichtoinvert=[False, False])`` takes them. Any image on
  the moving image's grid goes into the target's space this way;
* ``warped.nii.gz``: the moving image (its own file, raw intensities) on the
  target's grid; ``warped_labels.nii.gz``: the moving labels (nearest
  neighbour, int32) when given;
* ``m0.nii.gz``: the predicted initial momentum on the working grid (the
  registration's compact form, (I, J, K, 3));
* with ``inverse`` (the atlas-to-image block writes it): the other direction,
  target -> moving, from the forward map ``phi`` of the same geodesic (an exact
  inverse, not a second prediction): ``inverse_warp.nii.gz`` on the moving
  image's grid, ``inverse_affine.mat``, ``inverse_transforms.txt``,
  ``inverse_warped.nii.gz`` (the target image on the moving grid) and
  ``inverse_warped_labels.nii.gz`` (the target's labels) when given;
* ``summary.json``: seconds, det J of ``phi^{-1}`` on the working grid, devices, models.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from .io import (
    QsInputError,
    check_finite,
    load_image,
    load_labels,
    load_momentum,
    save_array,
    spacing,
    write_json,
    write_text,
)
from .register import compose_to_target, registration_method, write_mat
from .transforms import write_ants_displacement


def transforms_text(fixed, moving, warp: str, affine: str, what: str) -> str:
    """A ``transforms.txt``: the two transform files in ANTs order (relative names), ``#`` comments on their use."""
    return "\n".join([
        f"# qs: {what}; ANTs transform list mapping FIXED points to MOVING points, in ANTs order;",
        "# paths are relative to this file's folder. Usage (ANTsPy; antsApplyTransforms takes the same list):",
        f"#   fixed:  {fixed}",
        f"#   moving: {moving}",
        f"#   ants.apply_transforms(fixed=FIXED, moving=MOVING, transformlist=['{warp}', '{affine}'],",
        "#                         whichtoinvert=[False, False])",
        f"# affine only: transformlist=['{affine}']",
        warp,
        affine,
    ]) + "\n"


def _carry(out: Path, prefix: str, field_file: Path, fixed_mat: Path, moving_mat: Path, fixed: Path, moving: Path,
           moving_labels, what: str) -> dict:
    """Compose one direction into the fixed image's grid and write its five files (``prefix`` + name)."""
    fixed_img = load_image(fixed, what="fixed image")
    moving_img = load_image(moving, what="moving image")
    labels = load_labels(moving_labels, reference=moving_img, reference_path=moving) if moving_labels else None
    w, warped, warped_lab, aff_lps = compose_to_target(field_file, fixed_mat, moving_mat, fixed_img, moving_img,
                                                       moving_labels=labels)
    why = "composing the predicted transform with the affine transforms failed"
    check_finite([("the affine transform", aff_lps, "the affine registrations (preprocess) diverged"),
                  ("the displacement", w, why), ("the warped image", warped, why)], out / f"{prefix}warp.nii.gz")
    files = {
        f"{prefix}affine": write_mat(aff_lps, out / f"{prefix}affine.mat"),
        f"{prefix}warp": write_ants_displacement(w, fixed_img.affine, out / f"{prefix}warp.nii.gz"),
        f"{prefix}warped": save_array(warped, fixed_img.affine, out / f"{prefix}warped.nii.gz"),
    }
    if warped_lab is not None:
        files[f"{prefix}warped_labels"] = save_array(warped_lab, fixed_img.affine,
                                                     out / f"{prefix}warped_labels.nii.gz", dtype=np.int32)
    text = transforms_text(fixed, moving, f"{prefix}warp.nii.gz", f"{prefix}affine.mat", what)
    files[f"{prefix}transforms"] = write_text(text, out / f"{prefix}transforms.txt")
    return files


def register_pair(model, moving_grid, target_grid, moving, target, out_dir, *, moving_affine=None,
                  target_affine=None, moving_labels=None, target_labels=None, inverse: bool = False,
                  correction_model=None, corrections: int = 1, stride=None, correction_stride=None, mirror_axes=(),
                  device="auto", batch_size: int = 64, seed: int = 0, refinement=None) -> dict:
    """Predict one registration on the working grid and write it in the images' own spaces (module docstring).

    ``moving_grid``, ``target_grid``: the pre-processed images on the working grid (what the networks see);
    ``moving``, ``target``: the images the outputs are about (the subjects' own files, the atlas on the
    working grid); ``*_affine``: the pre-processing ANTs affines (atlas point -> image point), None for the
    atlas (the identity). ``*_labels``: label images on the grid of ``moving`` / ``target``.
    ``refinement``: a :class:`qs.predict.refine.Refinement` (predict+refine) or None.
    """
    from .fields import field_of, is_shot, model_shooter
    from .model_io import read_meta
    from .predict.files import run_predict

    meta = read_meta(model)
    if not is_shot(field_of(meta)):
        raise QsInputError(f"{model}: a model of field deformation predicts the displacement itself, which may "
                           "fold; the registrations need a shot (diffeomorphic) transform: use a momentum or "
                           "velocity model")
    t_start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=".work-") as tmp:
        work = Path(tmp)
        identity = write_mat(np.eye(4), work / "identity.mat")
        a_m = Path(moving_affine) if moving_affine else identity
        a_t = Path(target_affine) if target_affine else identity
        pred = run_predict(model, moving_grid, target_grid, work / "predict", correction_model=correction_model,
                           corrections=corrections, stride=stride, correction_stride=correction_stride,
                           mirror_axes=mirror_axes, device=device, batch_size=batch_size, seed=seed, progress=False,
                           refinement=refinement)
        t0 = time.perf_counter()
        files = _carry(out, "", work / "predict" / "warp.nii.gz", a_t, a_m, Path(target), Path(moving),
                       moving_labels, "registration of the moving image to the target (target -> moving)")
        seconds = {"predict": pred["seconds"], "compose": time.perf_counter() - t0}
        if inverse:
            t0 = time.perf_counter()
            grid = load_image(moving_grid, what="moving image")
            m0 = load_momentum(work / "predict" / "m0.nii.gz", grid, moving_grid)
            shooter = model_shooter(meta, grid.shape, spacing(grid))
            with torch.no_grad():
                phi = shooter.shoot(torch.from_numpy(m0), forward_map=True).w1.to("cpu", torch.float32).numpy()
            check_finite([("the displacement of phi_1", phi, "shooting the predicted momentum diverged")],
                         out / "inverse_warp.nii.gz")
            write_ants_displacement(phi, grid.affine, work / "phi.nii.gz")
            files.update(_carry(out, "inverse_", work / "phi.nii.gz", a_m, a_t, Path(moving), Path(target),
                                target_labels, "registration of the target to the moving image (moving -> target)"))
            seconds["inverse"] = time.perf_counter() - t0
        shutil.move(str(work / "predict" / "m0.nii.gz"), out / "m0.nii.gz")
        files["m0"] = out / "m0.nii.gz"
    summary = {
        "moving": str(moving), "target": str(target), "model": str(model),
        "correction_model": None if correction_model is None else str(correction_model),
        "method": registration_method(correction_model, refinement),
        "seconds": seconds, "seconds_total": time.perf_counter() - t_start,
        "device": pred["device"], "detj_min": pred["detj_min"], "detj_max": pred["detj_max"],
        "prediction": {k: v for k, v in pred.items() if k not in ("outputs", "moving", "target")},
        "transformlist": ["warp.nii.gz", "affine.mat"], "whichtoinvert": [False, False],
        "outputs": {k: Path(v).name for k, v in files.items()},
    }
    write_json(summary, out / "summary.json")
    return summary
