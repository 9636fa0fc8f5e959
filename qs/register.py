"""``qs register``: one predicted registration of two RAW images, outside the workflow.

A Quicksilver model only works in atlas space, on the working grid it was
trained for (its metadata's ``spacing``). For two raw images (any grid,
any orientation) ``qs register`` therefore:

1. takes the atlas on the model's working grid: the built-in MNI ICBM152
   2009a template (:func:`qs.atlas.write_atlas`) resampled by
   :func:`qs.preprocess.build_atlas_grid` at the model's spacing (margin
   ``--margin``, default 8 mm as in ``config/demo.yaml``), or the user's
   ``--atlas``/``--atlas-mask`` (already on the working grid, its spacing
   must be the model's);
2. pre-processes each image exactly as the workflow does
   (:func:`qs.preprocess.preprocess_subject`: ANTs affine to the atlas,
   resampling onto the working grid, :func:`qs.preprocess.normalize_intensity`);
   ``A_T`` and ``A_M`` are the two ANTs affines (atlas point -> subject point);
3. predicts (and corrects) the registration on the working grid with
   :func:`qs.predict.files.run_predict`: ``phi^{-1}`` maps an atlas-space point of
   the target to the atlas-space point of the moving image;
4. expresses the whole map in the TARGET's raw space. A target raw point
   ``y`` goes to the moving raw point::

       F(y) = A_M( phi^{-1}( A_T^{-1}(y) ) )

   written as an affine plus a displacement field, the way ANTs writes its
   own registrations (``fwdtransforms = [warp, affine]``):

   * ``PREFIX_affine.mat``: ``Aff = A_M o A_T^{-1}`` (ITK ``.mat``, target
     raw point -> moving raw point): the affine-only registration;
   * ``PREFIX_warp.nii.gz``: displacement field on the target's raw grid,
     ``w(y) = A_T(phi^{-1}(A_T^{-1} y)) - y`` (the predicted deformation
     carried into the target's raw space), so that ``F(y) = Aff(y + w(y))``.

   ANTs applies a transform list to the fixed point first-to-last, so::

       ants.apply_transforms(fixed=TARGET, moving=MOVING,
                             transformlist=[PREFIX_warp.nii.gz, PREFIX_affine.mat],
                             whichtoinvert=[False, False])

   reproduces ``PREFIX_warped.nii.gz`` (tested). ``transformlist=[PREFIX_affine.mat]``
   alone gives the affine-only result. Pass ``whichtoinvert`` explicitly:
   for a two-item list ``[.mat, field]`` ANTsPy silently inverts the
   ``.mat``. Outside the working grid ``phi^{-1}`` is the identity (zero
   displacement, as ANTs treats points outside a displacement field), so the
   map is the affine there.

Outputs (``PREFIX`` is a path prefix; ``PREFIX_atlas/`` holds the atlas-space work):

* ``PREFIX_affine.mat``, ``PREFIX_warp.nii.gz`` (see above);
* ``PREFIX_warped.nii.gz``: the raw moving image resampled on the target's
  raw grid through ``F`` (trilinear, 0 outside, raw intensities);
* ``PREFIX_warped_labels.nii.gz`` with ``--labels`` (moving raw labels,
  nearest neighbour, int32, ids exact);
* ``PREFIX_transforms.txt``: the transform list in ANTs order, one file per
  line (paths relative to the folder of the text file), ``#`` comments
  give the call and the equivalent chain through the atlas;
* ``PREFIX_summary.json``: timings, devices, det J, the prediction summary;
* ``PREFIX_atlas/``: the pre-processed images (``moving_T1w.nii.gz``,
  ``target_T1w.nii.gz`` whatever their contrast), the affines
  ``moving_affine.mat``, ``target_affine.mat`` (atlas point -> raw point),
  QC figures, the atlas working grid (``atlas/``) and the prediction
  outputs of :func:`qs.predict.files.run_predict` (``predict/``). The chain
  ``transformlist=[PREFIX_atlas/target_affine.mat, PREFIX_atlas/predict/warp.nii.gz,
  PREFIX_atlas/moving_affine.mat]``, ``whichtoinvert=[True, False, False]``
  is the same map (tested).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from .io import (QsInputError, atomic_path, check_finite, check_same_grid, load_image, load_labels, save_array,
                 spacing as grid_spacing, write_json, write_text)

_F = np.diag([-1.0, -1.0, 1.0])
SLAB_POINTS = 2_000_000


def registration_method(correction_model, refinement) -> str:
    """The method's name: predict, predict+correct, predict+refine or predict+correct+refine."""
    return "predict" + ("+correct" if correction_model is not None else "") + ("+refine" if refinement else "")


def _prefix_path(prefix, suffix: str) -> Path:
    return Path(str(prefix) + suffix)


def transform_list(transforms_txt) -> list[str]:
    """The transform list of a ``PREFIX_transforms.txt`` as absolute paths (ANTs order)."""
    path = Path(transforms_txt)
    if not path.is_file():
        raise QsInputError(f"{path}: transform list does not exist")
    lines = [ln.strip() for ln in path.read_text().splitlines()]
    return [str((path.parent / ln).resolve()) for ln in lines if ln and not ln.startswith("#")]


def write_mat(matrix_lps: np.ndarray, path) -> Path:
    """An ITK affine ``.mat`` (double) for a 4x4 LPS matrix (fixed point -> moving point)."""
    import ants

    tx = ants.create_ants_transform(transform_type="AffineTransform", precision="double", dimension=3,
                                    matrix=matrix_lps[:3, :3], offset=matrix_lps[:3, 3])
    with atomic_path(path) as tmp:
        ants.write_transform(tx, str(tmp))
    return Path(path)


def _atlas_on_grid(atlas, atlas_mask, spacing_mm, margin_mm, folder: Path, model_path):
    """Paths ``(t1, mask)`` of the atlas on the model's working grid (built-in one built into ``folder``)."""
    from .preprocess import build_atlas_grid

    if (atlas is None) != (atlas_mask is None):
        raise QsInputError("--atlas and --atlas-mask go together (the atlas T1 and its brain mask on the working grid)")
    if atlas is not None:
        t1 = load_image(atlas, what="atlas image")
        mask = load_image(atlas_mask, what="atlas mask")
        check_same_grid(t1, mask, atlas, atlas_mask)
        h = np.asarray(grid_spacing(t1))
        if not np.allclose(h, spacing_mm, rtol=1e-3, atol=1e-4):
            raise QsInputError(f"{atlas}: atlas spacing {[round(float(x), 4) for x in h]} mm differs from the "
                               f"working spacing {[round(float(x), 4) for x in spacing_mm]} mm of the model {model_path}; "
                               "give the atlas on the model's working grid (qs grid), or leave --atlas out")
        return Path(atlas), Path(atlas_mask)
    if not np.allclose(spacing_mm, spacing_mm[0]):
        raise QsInputError(f"{model_path}: anisotropic working spacing {list(spacing_mm)}; give --atlas and "
                           "--atlas-mask on that grid (the built-in atlas grid is isotropic)")
    from .atlas import write_atlas

    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".atlas-") as tmp:
        native = write_atlas(tmp, subfolder="")
        out = build_atlas_grid(native["t1"], native["mask"], folder, spacing=float(spacing_mm[0]),
                               margin_mm=float(margin_mm))
    return out["t1"], out["mask"]


def _sample_points(data: torch.Tensor, idx: np.ndarray, *, nearest: bool = False) -> np.ndarray:
    """Values of a 3D (or (C, I, J, K)) array at continuous voxel indices ``idx`` (3, n); ITK-like outside rule."""
    from .lddmm import sample

    pos = torch.from_numpy(np.ascontiguousarray(idx, dtype=np.float64))
    shape = data.shape[-3:]
    if nearest:
        out_mask = np.zeros(idx.shape[1], dtype=bool)
        rounded = []
        for c, n in enumerate(shape):
            out_mask |= (idx[c] < -0.5) | (idx[c] >= n - 0.5)
            rounded.append(np.clip(np.floor(idx[c] + 0.5).astype(np.int64), 0, n - 1))
        vals = data.numpy()[tuple(rounded)]
        return np.where(out_mask, 0, vals)
    pos = pos.to(data.dtype).reshape(3, 1, 1, -1)
    out = sample(data, pos, (1.0, 1.0, 1.0), outside_value=0.0)
    return out.reshape(*data.shape[:-3], -1).numpy()


def compose_to_target(atlas_warp, target_mat, moving_mat, target_img, moving_img, *, moving_labels=None):
    """The map ``F = A_M o phi^{-1} o A_T^{-1}`` on the target's raw grid.

    ``atlas_warp``: ANTs displacement of ``phi^{-1}`` on the working grid;
    ``target_mat``, ``moving_mat``: ANTs affines (atlas point -> raw point).
    Returns ``(w (3, I, J, K) voxel-axis mm on the target grid, warped moving
    (I, J, K), warped labels or None, Aff 4x4 LPS)`` with ``F(y) = Aff(y + w(y))``.
    """
    from .affine import affine_matrix_lps, affine_matrix_ras
    from .transforms import lps_to_voxel, read_ants_displacement

    disp, atlas_aff = read_ants_displacement(atlas_warp)
    h_atlas = np.sqrt((atlas_aff[:3, :3] ** 2).sum(axis=0))
    r_atlas = atlas_aff[:3, :3] / h_atlas
    inv_atlas = np.linalg.inv(atlas_aff)
    a_t, a_m = affine_matrix_ras(target_mat), affine_matrix_ras(moving_mat)
    inv_a_t = np.linalg.inv(a_t)
    aff_t, aff_m = target_img.affine, moving_img.affine
    inv_aff_m = np.linalg.inv(aff_m)
    disp_t = torch.from_numpy(disp.astype(np.float64))
    mov = torch.from_numpy(np.asarray(moving_img.dataobj, dtype=np.float64))
    lab = None if moving_labels is None else torch.from_numpy(np.asarray(moving_labels.dataobj, dtype=np.int32))

    shape = tuple(target_img.shape[:3])
    w = np.zeros((3, *shape), dtype=np.float64)
    warped = np.zeros(shape, dtype=np.float32)
    warped_lab = None if lab is None else np.zeros(shape, dtype=np.int32)
    ij = np.indices(shape[:2], dtype=np.float64).reshape(2, -1)
    slab = max(1, SLAB_POINTS // (shape[0] * shape[1]))
    for k0 in range(0, shape[2], slab):
        ks = np.arange(k0, min(k0 + slab, shape[2]), dtype=np.float64)
        vox = np.vstack([np.tile(ij, len(ks)), np.repeat(ks, ij.shape[1])[None]])  # points: k slowest, then i, j
        y = aff_t[:3, :3] @ vox + aff_t[:3, 3:4]
        x = inv_a_t[:3, :3] @ y + inv_a_t[:3, 3:4]
        idx_atlas = inv_atlas[:3, :3] @ x + inv_atlas[:3, 3:4]
        u = _sample_points(disp_t, idx_atlas)  # zero outside the field, as ITK
        u_ras = r_atlas @ u
        z = a_m[:3, :3] @ (x + u_ras) + a_m[:3, 3:4]
        idx_m = inv_aff_m[:3, :3] @ z + inv_aff_m[:3, 3:4]
        sh = (len(ks), shape[0], shape[1])
        sl = (slice(None), slice(None), slice(k0, k0 + len(ks)))
        w[(slice(None),) + sl] = (a_t[:3, :3] @ u_ras).reshape(3, *sh).transpose(0, 2, 3, 1)
        warped[sl] = _sample_points(mov, idx_m).reshape(sh).transpose(1, 2, 0)
        if lab is not None:
            warped_lab[sl] = _sample_points(lab, idx_m, nearest=True).reshape(sh).transpose(1, 2, 0)
    w_vox = lps_to_voxel(np.moveaxis(np.einsum("ij,j...->i...", _F, w), 0, -1), aff_t)
    aff_lps = affine_matrix_lps(moving_mat) @ np.linalg.inv(affine_matrix_lps(target_mat))
    return w_vox.astype(np.float32), warped, warped_lab, aff_lps


def run_register(moving, target, model_path, out_prefix, *, correction_model=None, corrections: int = 1,
                 stride=None, correction_stride=None, mirror_axes=(), atlas=None, atlas_mask=None, labels=None,
                 samples: int = 1, device="auto", seed: int = 0, threads: int = 1, normalize: str | None = None,
                 margin_mm: float = 8.0, batch_size: int = 64, progress=None, refinement=None) -> dict:
    """``qs register``: register the raw ``moving`` image to the raw ``target`` with a trained model.

    See the module docstring for the steps, the transform design and the
    outputs. ``corrections``, ``stride``, ``correction_stride`` and ``mirror_axes`` as in
    :func:`qs.predict.files.run_predict` (``qs predict --corrections/--stride/--correction-stride/--mirror-axes``),
    checked before the affine step. ``normalize``: the intensity normalisation; None takes the model's
    (metadata ``normalize``, recorded at training; ``percentile`` for models trained before qs recorded it).
    ``refinement``: a :class:`qs.predict.refine.Refinement` (``--refine``: predict+refine) or None.
    Returns the summary (also ``PREFIX_summary.json``) with the
    output paths under ``"outputs"``.
    """
    from .model_io import read_meta
    from .predict.files import check_prediction_options, load_models, run_predict
    from .preprocess import ncc, preprocess_subject

    t_start = time.perf_counter()
    moving, target = Path(moving), Path(target)
    prefix = str(out_prefix)
    if not Path(prefix).name or prefix.endswith(("/", "\\")) or Path(prefix).is_dir():
        raise QsInputError(f"--out {prefix!r}: give a path prefix such as out/sub1_to_sub2, not a folder")
    mov_img = load_image(moving, what="moving image")
    tgt_img = load_image(target, what="target image")
    lab_img = load_labels(labels, reference=mov_img, reference_path=moving) if labels is not None else None
    meta = read_meta(model_path)
    if normalize is None:
        normalize = meta.get("normalize", "percentile")
    check_prediction_options(corrections=corrections, correction_model=correction_model, samples=samples,
                             batch_size=batch_size, mirror_axes=mirror_axes,
                             strides={"--stride": stride, "--correction-stride": correction_stride},
                             patch=meta["patch"])
    load_models(model_path, correction_model)  # kinds and shared settings, before any long step
    spacing_mm = np.asarray(meta["spacing"], dtype=float).reshape(-1)
    if spacing_mm.size == 1:
        spacing_mm = np.repeat(spacing_mm, 3)

    work = _prefix_path(prefix, "_atlas")
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    atlas_t1, mask = _atlas_on_grid(atlas, atlas_mask, spacing_mm, margin_mm, work / "atlas", model_path)
    pre = {}
    for role, raw in (("moving", moving), ("target", target)):
        pre[role] = preprocess_subject(role, atlas_t1, mask, raw, work, normalize=normalize, seed=seed, threads=threads)
    seconds_affine = time.perf_counter() - t0

    pred = run_predict(model_path, pre["moving"]["t1"], pre["target"]["t1"], work / "predict",
                       correction_model=correction_model, corrections=corrections, stride=stride,
                       correction_stride=correction_stride, mirror_axes=mirror_axes, samples=samples,
                       device=device, batch_size=batch_size, seed=seed, progress=progress, refinement=refinement)

    t0 = time.perf_counter()
    w, warped, warped_lab, aff_lps = compose_to_target(work / "predict" / "warp.nii.gz", pre["target"]["affine"],
                                                       pre["moving"]["affine"], tgt_img, mov_img,
                                                       moving_labels=lab_img)
    seconds_compose = time.perf_counter() - t0

    from .transforms import write_ants_displacement

    why = "composing the predicted warp with the affine transforms failed"
    check_finite([("the affine transform", aff_lps, "the affine registrations (preprocess) diverged"),
                  ("the displacement to the target", w, why), ("the warped image", warped, why)], prefix)
    outputs = {
        "affine": write_mat(aff_lps, _prefix_path(prefix, "_affine.mat")),
        "warp": write_ants_displacement(w, tgt_img.affine, _prefix_path(prefix, "_warp.nii.gz")),
        "warped": save_array(warped, tgt_img.affine, _prefix_path(prefix, "_warped.nii.gz")),
    }
    if warped_lab is not None:
        outputs["warped_labels"] = save_array(warped_lab, tgt_img.affine, _prefix_path(prefix, "_warped_labels.nii.gz"),
                                              dtype=np.int32)
    base = Path(prefix).parent
    rel = lambda p: str(Path(p).resolve().relative_to(base.resolve()))  # noqa: E731
    txt = "\n".join([
        "# qs register: ANTs transform list mapping TARGET (fixed) points to MOVING points, in ANTs order;",
        "# paths are relative to this file's folder. Usage:",
        f"#   ants.apply_transforms(fixed=ants.image_read('{target}'), moving=ants.image_read('{moving}'),",
        f"#       transformlist=['{rel(outputs['warp'])}', '{rel(outputs['affine'])}'], whichtoinvert=[False, False])",
        f"#   antsApplyTransforms -d 3 -r {target} -i {moving} -t {rel(outputs['warp'])} -t {rel(outputs['affine'])} -o out.nii.gz",
        f"# affine only: transformlist=['{rel(outputs['affine'])}']",
        "# the same map as a chain through the atlas working grid:",
        f"#   transformlist=['{rel(pre['target']['affine'])}', '{rel(work / 'predict' / 'warp.nii.gz')}', "
        f"'{rel(pre['moving']['affine'])}'], whichtoinvert=[True, False, False]",
        rel(outputs["warp"]),
        rel(outputs["affine"]),
    ]) + "\n"
    outputs["transforms"] = write_text(txt, _prefix_path(prefix, "_transforms.txt"))

    tgt = np.asarray(tgt_img.dataobj, dtype=np.float32)
    fg = tgt > np.percentile(tgt[tgt > 0], 20) if (tgt > 0).any() else np.ones(tgt.shape, bool)
    summary = {
        "moving": str(moving), "target": str(target), "model": str(model_path),
        "correction_model": None if correction_model is None else str(correction_model),
        "method": registration_method(correction_model, refinement),
        "atlas": str(atlas_t1), "atlas_mask": str(mask), "spacing": spacing_mm.tolist(), "normalize": normalize,
        "transformlist": [str(outputs["warp"]), str(outputs["affine"])], "whichtoinvert": [False, False],
        "seconds_affine": seconds_affine, "seconds_predict": pred["seconds"], "seconds_compose": seconds_compose,
        "device": pred["device"], "samples": pred["samples"], "corrected": pred["corrected"],
        "detj_min": pred["detj_min"], "detj_max": pred["detj_max"],
        "ncc_with_target": ncc(warped, tgt, fg),
        "prediction": {k: v for k, v in pred.items() if k != "outputs"},
        "outputs": {k: str(v) for k, v in outputs.items()},
    }
    summary["outputs"]["atlas_folder"] = str(work)
    summary["outputs"]["summary"] = str(_prefix_path(prefix, "_summary.json"))
    summary["seconds_total"] = time.perf_counter() - t_start
    write_json(summary, _prefix_path(prefix, "_summary.json"))
    return summary
