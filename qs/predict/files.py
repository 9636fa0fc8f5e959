"""``qs predict`` and ``qs correction-patches`` on files: load, check, run the tensors' code, write.

Outputs of :func:`run_predict` (the same as ``qs lddmm``, on the target
grid with the target affine):

* ``m0.nii.gz``: ``(I, J, K, 3)`` float32, the final momentum (component
  ``c`` along voxel axis ``c``, LDDMM momentum units);
* ``warp.nii.gz``: ANTs displacement field of ``phi_1^{-1}`` such that
  ``ants.apply_transforms(fixed=T, moving=M, transformlist=[warp])``
  reproduces ``warped.nii.gz`` (:mod:`qs.transforms`);
* ``warped.nii.gz``: ``M o phi_1^{-1}`` (trilinear, 0 outside, like ANTs);
* ``warped_labels.nii.gz`` with ``labels``: nearest neighbour, int32;
* ``uncertainty.nii.gz`` when ``samples > 1`` (float32, mm^2, :mod:`.mc_dropout`);
* ``summary.json``: ``seconds`` (prediction: networks, shooting,
  correction, sampling, warping, det J; no file I/O and no model loading),
  ``seconds_total`` (the whole call), ``device``, ``detj_min``/``detj_max``
  (of ``phi_1^{-1}``), ``samples``, ``corrected``, ``corrections`` (rounds), ``uncertainty`` (its
  definition and summary numbers), the models and their LDDMM settings.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..fields import field_of, to_field
from ..io import (QsInputError, check_finite, check_json, check_same_grid, load_image, load_labels, load_momentum,
                  save_array, spacing as grid_spacing, write_json)
from ..lddmm_run import write_registration
from ..model_io import LDDMM_KEYS, check_expect, load_model
from ..patches import write_pair_patches
from .correction import correction_inputs
from .registration import predict_registration
from .window import mirror_subsets, resolve, show_progress

#: settings the prediction and the correction model must share
SHARED_KEYS = LDDMM_KEYS + ("spacing",)


def check_prediction_options(*, corrections: int = 1, correction_model=None, samples: int = 1, batch_size: int = 64,
                             mirror_axes=(), strides: dict | None = None, patch: int | None = None) -> None:
    """The numbers of ``qs predict`` / ``qs register`` / ``qs correction-patches``, checked before any long step.

    Raises :class:`QsInputError` naming the flag. ``strides`` maps stride
    flags to their values (voxels, None: not given), checked against the
    model's ``patch`` size.
    """
    if int(samples) < 1:
        raise QsInputError(f"--samples must be >= 1, got {samples}")
    if int(corrections) < 1:
        raise QsInputError(f"--corrections must be >= 1, got {corrections}")
    if int(corrections) > 1 and correction_model is None:
        raise QsInputError(f"--corrections {corrections} needs a correction model (--correct)")
    if int(batch_size) < 1:
        raise QsInputError(f"--batch-size must be >= 1, got {batch_size}")
    try:
        mirror_subsets(mirror_axes)
    except ValueError as exc:
        raise QsInputError(f"--mirror-axes: {exc}") from None
    for flag, value in (strides or {}).items():
        if value is not None and not 1 <= int(value) <= int(patch):
            raise QsInputError(f"{flag} must be between 1 and the patch size {patch}, got {value}")


def _fmt(v):
    return [round(float(x), 6) for x in v] if isinstance(v, (list, tuple)) else v


def load_models(model_path, correction_model=None, *, expect: dict | None = None, device="cpu"):
    """Load the prediction model (and the correction model) and check that they fit together.

    Refuses (``QsInputError`` naming the file): a prediction model whose
    ``kind`` is not ``'prediction'``, a correction model whose ``kind`` is not
    ``'correction'``, models whose settings differ from ``expect`` (e.g. the
    LDDMM ``alpha, beta, gamma, time_steps, sigma`` of this run), and a
    correction model trained with other LDDMM settings or spacing than the
    prediction model. Returns ``((model, meta), (cmodel, cmeta) or None)``.
    """
    expect = dict(expect or {})
    model, meta = load_model(model_path, expect={**expect, "kind": "prediction"}, device=device)
    if correction_model is None:
        return (model, meta), None
    cmodel, cmeta = load_model(correction_model, expect={**expect, "kind": "correction"}, device=device)
    try:
        check_expect(cmeta, {k: meta[k] for k in SHARED_KEYS if k in meta}, correction_model)
    except QsInputError as exc:
        raise QsInputError(f"{exc} (the correction model must be trained with the same LDDMM settings and "
                           f"spacing as the prediction model {model_path})") from None
    return (model, meta), (cmodel, cmeta)


def _check_spacing(img, path, meta, model_path):
    h = np.asarray(grid_spacing(img))
    want = np.asarray(meta["spacing"], dtype=float).reshape(-1)
    if want.size == 1:
        want = np.repeat(want, 3)
    if not np.allclose(h, want, rtol=1e-3, atol=1e-4):
        raise QsInputError(f"{path}: grid spacing {_fmt(h.tolist())} mm differs from the working spacing "
                           f"{_fmt(want.tolist())} mm the model {model_path} was trained for; "
                           "resample onto the model's working grid (qs preprocess) first")


def run_predict(model_path, moving, target, out_dir, *, correction_model=None, corrections: int = 1,
                samples: int = 1, device="auto", batch_size: int = 64, seed: int = 0, labels=None,
                expect: dict | None = None, stride=None, correction_stride=None, mirror_axes=(), progress=None,
                compile="auto", refinement=None) -> dict:
    """``qs predict``: predict the registration of ``moving`` to ``target`` (files on one working grid).

    Writes the outputs listed in the module docstring under ``out_dir`` and
    returns the summary (also ``summary.json``) with the paths under
    ``"outputs"``. Bad input raises :class:`qs.io.QsInputError` naming the
    file: different grids, a grid spacing other than the model's, wrong
    model kinds, mismatched LDDMM settings (see :func:`load_models`).
    ``refinement``: a :class:`.refine.Refinement` (``qs predict --refine``) or None.
    """
    t_start = time.perf_counter()
    moving, target, out_dir = Path(moving), Path(target), Path(out_dir)
    check_prediction_options(corrections=corrections, correction_model=correction_model, samples=samples,
                             batch_size=batch_size, mirror_axes=mirror_axes)
    tgt = load_image(target, what="target image")
    mov = load_image(moving, what="moving image")
    check_same_grid(tgt, mov, target, moving)
    lab = load_labels(labels, reference=tgt, reference_path=target) if labels is not None else None
    dev = resolve(device)
    (model, meta), corr = load_models(model_path, correction_model, expect=expect, device=dev)
    _check_spacing(tgt, target, meta, model_path)
    for m_, path_ in ((meta, model_path), (corr[1] if corr else None, correction_model)):
        if m_ is not None and min(tgt.shape) < int(m_["patch"]):
            raise QsInputError(f"{target}: grid {tuple(tgt.shape)} is smaller than the patch size {m_['patch']} "
                               f"of {path_} along an axis")
    check_prediction_options(strides={"--stride": stride, "--correction-stride": correction_stride},
                             patch=meta["patch"])
    h = grid_spacing(tgt)
    res = predict_registration(model, meta, np.asarray(mov.dataobj), np.asarray(tgt.dataobj), spacing=h,
                               correction=corr, corrections=corrections, samples=samples, seed=seed, stride=stride,
                               correction_stride=stride if correction_stride is None else correction_stride,
                               mirror_axes=mirror_axes, batch_size=batch_size, device=dev, progress=progress,
                               compile=compile, refinement=refinement)

    why = "produced non-finite values (weights too large for these images?)"
    check_finite([
        ("the predicted momentum", res.m_pred, f"the model {model_path} {why}"),
        ("the correction momentum", res.m_corr, f"the correction model {correction_model} {why}"),
        ("the refinement's momentum change", res.m_refine, "the LDDMM refinement of the prediction diverged"),
        ("the momentum", res.m0, "the sum of the predicted and the correction momentum overflowed"),
        ("the displacement of phi_1^{-1}", res.phiinv, "geodesic shooting of the predicted momentum diverged (a "
                                                       "momentum too large for the model's LDDMM settings)"),
        ("the warped image", res.warped, "warping the moving image with the transform failed"),
        ("the uncertainty", res.uncertainty, "the shooting of an MC-dropout sample's momentum diverged"),
    ], out_dir)
    check_json(res.summary, out_dir / "summary.json")
    affine = tgt.affine
    outputs = write_registration(out_dir, affine, h, res.m0, res.phiinv, res.warped, labels=lab)
    if res.uncertainty is not None:
        outputs["uncertainty"] = save_array(res.uncertainty.numpy(), affine, out_dir / "uncertainty.nii.gz")
    summary = dict(res.summary)
    summary.update(
        moving=str(moving), target=str(target), labels=None if labels is None else str(labels),
        model=str(model_path), correction_model=None if correction_model is None else str(correction_model),
        model_kind=meta["kind"], modality=meta.get("modality"),
        models={"prediction": {k: meta.get(k) for k in (*SHARED_KEYS, "features", "dropout", "momentum_scale")}},
    )
    if corr is not None:
        summary["models"]["correction"] = {k: corr[1].get(k) for k in (*SHARED_KEYS, "features", "dropout",
                                                                      "momentum_scale")}
    summary["outputs"] = {k: str(v) for k, v in outputs.items()}
    summary["outputs"]["summary"] = str(out_dir / "summary.json")
    summary["seconds_total"] = time.perf_counter() - t_start
    write_json(summary, out_dir / "summary.json")
    return summary


def run_correction_patches(model_path, moving, target, momentum, out, *, patch: int = 15, stride: int = 14,
                           threshold: float = 0.0, pair=None, device="auto", batch_size: int = 64,
                           expect: dict | None = None, progress=None, field: str = "momentum", predict_stride=None,
                           mirror_axes=()):
    """``qs correction-patches``: the correction network's training patches of one pair.

    ``(moving, I1 o phi_1, m0 - m_pred)`` (:func:`.correction.correction_inputs`) written
    with :func:`qs.patches.write_pair_patches`; ``momentum`` is the pair's
    LDDMM ``m0.nii.gz``; with ``field="velocity"`` the residual's velocity
    ``K (m0 - m_pred)`` (the prediction model's kernel). ``m_pred`` is
    predicted as ``qs predict`` does with ``predict_stride`` (``--stride``
    there) and ``mirror_axes``, so that the network learns the residuals it
    will see; ``stride`` is the patch files' sliding window. Returns the
    ``(npy, json)`` paths.
    """
    if field == "deformation":
        raise QsInputError("qs correction-patches: --field deformation: a deformation has no correction network "
                           "(the paper's deformation variant has none)")
    mov = load_image(moving, what="moving image")
    tgt = load_image(target, what="target image")
    check_same_grid(mov, tgt, moving, target)
    m0 = load_momentum(momentum, mov, moving)
    dev = resolve(device)
    model, meta = load_model(model_path, expect={**(expect or {}), "kind": "prediction"}, device=dev)
    if field_of(meta) == "deformation":
        raise QsInputError(f"{model_path}: a model of field deformation has no correction network")
    _check_spacing(tgt, target, meta, model_path)
    check_prediction_options(batch_size=batch_size, mirror_axes=mirror_axes,
                             strides={"--predict-stride": predict_stride}, patch=meta["patch"])
    mv, back, resid = correction_inputs(np.asarray(mov.dataobj), np.asarray(tgt.dataobj), m0, model, meta,
                                        stride=predict_stride, batch_size=batch_size, device=dev,
                                        spacing=grid_spacing(tgt), progress=show_progress(progress),
                                        mirror_axes=mirror_axes)
    resid = to_field(resid, field, grid_spacing(tgt), meta)
    return write_pair_patches(mv, back, resid, out, patch=patch, stride=stride, threshold=threshold, pair=pair,
                              field=field)
