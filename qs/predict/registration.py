"""The predicted registration of one pair (tensors): prediction, correction rounds, MC dropout, shooting, warping.

Quicksilver (Yang et al. 2017) replaces the LDDMM optimisation of a pair by
a patch-wise prediction of its initial momentum ``m0``
(:mod:`.window`); the transform is obtained by geodesic shooting of the
predicted momentum with the same kernel the training momenta were optimised
with (:func:`qs.fields.model_shooter`: the model's ``alpha, beta, gamma,
time_steps``, ``power`` if recorded, on the periodic grid
:func:`qs.lddmm.padded_shape` of the image grid, exactly as ``qs lddmm``), so
it stays diffeomorphic. Correction: :mod:`.correction`; MC dropout and the
uncertainty: :mod:`.mc_dropout`.

With ``samples > 1`` the momentum used for the transform is the **mean of the
sampled momenta** (with correction: the mean prediction is shot and warped
back once, then each sample is ``m_pred^s + m_corr^s``, the correction network
sampled too when it has dropout; the prediction samples are then drawn
twice, once for the mean and once again, from the same seeds, for the sums,
so that no sample is kept in memory). With ``samples = 1`` dropout is off
(``eval``): the plain deterministic prediction.

A model of ``field: deformation`` (the paper's ``D, deformation`` rows)
predicts the displacement of ``phi_1^{-1}`` itself: nothing is shot, its
MC samples are averaged as displacements, and it has no correction network
(the paper has none) and no momentum (``m0`` None).

Images ``(I, J, K)`` on one working grid (spacing in mm), momenta
``(3, I, J, K)`` on it, displacements in mm, component ``c`` along voxel axis ``c``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from ..fields import field_of, is_shot, kernel_settings, model_shooter
from ..io import QsInputError
from ..lddmm import jacobian_determinant, warp_image
from ..net import has_mc_dropout
from .correction import correction_rounds, shooting_compile, warped_back_target
from .mc_dropout import UNCERTAINTY_DEFINITION, Welford, iter_momentum_samples
from .refine import Refinement, refine_momentum
from .window import as_volume, mirror_subsets, predict_momentum, prediction_starts, progress_bar, resolve, show_progress


@dataclass
class Prediction:
    """Result of :func:`predict_registration` (CPU float32 tensors on the image grid).

    ``m0`` the final momentum (None for a deformation model), ``m_pred`` the (mean) prediction (a deformation
    model's: the displacement), ``m_corr``
    the (mean) correction or None, ``m_refine`` what the refinement added or None, ``phiinv`` the displacement of
    ``phi_1^{-1}`` (mm), ``warped`` ``I0 o phi_1^{-1}``, ``uncertainty``
    (mm^2, ``samples > 1``) or None, ``summary`` JSON-ready numbers.
    """

    m0: torch.Tensor | None
    m_pred: torch.Tensor
    m_corr: torch.Tensor | None
    m_refine: torch.Tensor | None
    phiinv: torch.Tensor
    warped: torch.Tensor
    uncertainty: torch.Tensor | None
    summary: dict = field(default_factory=dict)


def predict_registration(model, meta, moving, target, *, spacing=None, correction=None, corrections: int = 1,
                         samples: int = 1, seed: int = 0, stride=None, correction_stride=None, batch_size: int = 64,
                         device="cpu", progress=None, compile="auto", mirror_axes=(),
                         refinement: Refinement | None = None) -> Prediction:
    """Predict (and correct) the LDDMM registration of ``moving`` to ``target`` (``(I, J, K)``, one grid).

    ``correction``: ``(model, meta)`` of the correction network or None.
    ``corrections``: rounds of correction (the paper: 1); each shoots the
    momentum so far, warps the target back and adds the correction
    network's residual, so round ``r`` corrects what rounds ``< r`` left.
    With MC dropout all rounds but the last use the mean momentum and the
    correction network without dropout; the last round is sampled.
    ``samples > 1``: MC dropout (see the module docstring). ``mirror_axes``:
    every network pass (both networks, every sample) averages the pair's
    mirror images along these voxel axes (:func:`.window.predict_momentum`).
    ``refinement``: refine the final momentum by a few LDDMM energy
    evaluations (:mod:`.refine`; deterministic predictions only).
    ``spacing`` (mm) defaults to the model's working spacing.
    """
    samples, corrections = int(samples), int(corrections)
    if samples < 1:
        raise ValueError(f"predict_registration: samples must be >= 1, got {samples}")
    if corrections < 1:
        raise ValueError(f"predict_registration: corrections must be >= 1, got {corrections}")
    rounds = corrections if correction is not None else 0
    mirrors = mirror_subsets(mirror_axes)  # checks the axes
    device = resolve(device)
    progress = show_progress(progress)
    spacing = tuple(float(h) for h in (meta["spacing"] if spacing is None else spacing))
    moving, target = as_volume(moving, "moving"), as_volume(target, "target")
    if samples > 1 and not has_mc_dropout(model):
        raise QsInputError("--samples > 1 needs MC dropout, but the prediction model has no dropout layers "
                           "(trained with dropout 0); use --samples 1 or a model trained with dropout > 0")
    field = field_of(meta)
    if not is_shot(field) and correction is not None:
        raise QsInputError("a model of field deformation predicts the displacement itself and has no correction "
                           "network (the paper's deformation variant has none); predict without --correct")
    refining = refinement is not None and refinement.active
    if refining and not is_shot(field):
        raise QsInputError("a model of field deformation predicts no momentum to refine; predict without --refine")
    if refining and samples > 1:
        raise QsInputError("refinement (--refine) optimises one momentum; it is not combined with MC dropout "
                           "samples (--samples > 1)")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    shots = 1 + rounds + (samples if samples > 1 else 0)  # final, warp-backs, MC samples
    shooter = (model_shooter(meta, moving.shape, spacing, device=device, compile=shooting_compile(compile, shots))
               if is_shot(field) else None)

    def displacement(m):
        """The displacement of phi_1^{-1} (mm) of a prediction: shot from a momentum, or the deformation itself."""
        return m.to(device) if shooter is None else shooter.shoot(m).u1
    kw = dict(batch_size=batch_size, device=device, mirror_axes=tuple(mirrors[-1]))
    uncertainty = None

    def corrected(m_start, n):
        return correction_rounds(correction, shooter, moving, target, m_start, n, spacing=spacing,
                                 stride=correction_stride, progress=progress, **kw)

    with torch.no_grad():
        if samples == 1:
            m_pred = predict_momentum(model, meta, moving, target, stride=stride, progress=progress, **kw)
            m_corr = corrected(m_pred, rounds)
        else:
            # pass A (only with correction): the mean prediction, corrected by all rounds but the last,
            # to warp the target back for the last (sampled) round
            corr_samples, m_fixed = None, None
            if correction is not None:
                total = None
                with progress_bar(samples, "MC samples (prediction)", progress) as bar:
                    for m in iter_momentum_samples(model, meta, moving, target, samples=samples, seed=seed,
                                                   stream=0, stride=stride, **kw):
                        total = m.to(torch.float64) if total is None else total + m
                        bar.update(1)
                m_mean = (total / samples).to(torch.float32)
                m_fixed = corrected(m_mean, rounds - 1)
                back = warped_back_target(shooter, m_mean if m_fixed is None else m_mean + m_fixed, target, spacing)
                cmodel, cmeta = correction
                if has_mc_dropout(cmodel):
                    corr_samples = iter_momentum_samples(cmodel, cmeta, moving, back, samples=samples, seed=seed,
                                                         stream=1, stride=correction_stride, **kw)
                else:
                    fixed = predict_momentum(cmodel, cmeta, moving, back, stride=correction_stride, **kw)
                    corr_samples = (fixed for _ in range(samples))
            # pass B: every sample's total momentum, shot for the displacement spread
            pred_sum, corr_sum, spread = None, None, Welford()
            pred_samples = iter_momentum_samples(model, meta, moving, target, samples=samples, seed=seed, stream=0,
                                                 stride=stride, **kw)
            with progress_bar(samples, "MC samples", progress) as bar:
                for s, mp in enumerate(pred_samples):
                    pred_sum = mp.to(torch.float64) if pred_sum is None else pred_sum + mp
                    ms = mp
                    if corr_samples is not None:
                        mc = next(corr_samples)
                        corr_sum = mc.to(torch.float64) if corr_sum is None else corr_sum + mc
                        ms = mp + mc if m_fixed is None else mp + m_fixed + mc
                    spread.add(displacement(ms))
                    bar.update(1)
            m_pred = (pred_sum / samples).to(torch.float32)
            m_corr = None if corr_sum is None else (corr_sum / samples).to(torch.float32)
            if m_fixed is not None:
                m_corr = m_corr + m_fixed
            uncertainty = spread.variance().sum(0).to("cpu", torch.float32)
        m0 = m_pred if m_corr is None else m_pred + m_corr
    m_refine, refined = None, None
    if refining:  # the LDDMM optimiser keeps no autograd graph either (its adjoint is hand-written)
        refined = refine_momentum(m0, moving, target, meta, spacing, refinement, device=device, compile=compile)
        m_refine, m0 = refined.m0 - m0.cpu(), refined.m0
    with torch.no_grad():
        u = displacement(m0) if refined is None else refined.phiinv.to(device)
        warped = warp_image(moving.to(device), u, spacing, outside_value=0.0)
        detj = jacobian_determinant(u.double(), spacing)
    sync()
    seconds = time.perf_counter() - t0
    summary = {
        "seconds": seconds,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "detj_min": float(detj.min()),
        "detj_max": float(detj.max()),
        "samples": samples,
        "field": field,
        "corrected": correction is not None,
        "corrections": rounds,
        "mirror_axes": list(mirrors[-1]),
        "seed": int(seed),
        "correction_stride": (int(correction[1]["stride"] if correction_stride is None else correction_stride)
                              if correction is not None else None),
        "stride": int(meta["stride"] if stride is None else stride),
        "patch": int(meta["patch"]),
        "n_patches": int(len(prediction_starts(meta, moving, target, stride))),
        "shape": list(moving.shape),
        "padded_shape": None if shooter is None else list(shooter.shape),
        "spacing": list(spacing),
        "kernel": {k: v for k, v in kernel_settings(meta).items() if k != "time_steps"},
        "time_steps": kernel_settings(meta)["time_steps"],
        "sigma": meta.get("sigma"),
        "refine": None if refined is None else {
            "iterations": int(refinement.iterations),
            "coarse_iterations": int(refinement.coarse_iterations),
            "similarity": refinement.similarity,
            "window": int(refinement.window),
            "energy_start": refined.summary["energy_start"],
            "energy": refined.summary["energy"],
            "accepted_steps": refined.summary["accepted_steps"],
            "seconds": refined.summary["seconds"],
            "compiled": refined.summary["compiled"],
        },
    }
    if uncertainty is not None:
        summary["uncertainty"] = {
            "definition": UNCERTAINTY_DEFINITION,
            "units": "mm^2",
            "mean": float(uncertainty.mean()),
            "max": float(uncertainty.max()),
            "rms_spread_mm_max": float(uncertainty.max().sqrt()),
        }
    cpu = lambda t: t.detach().to("cpu", torch.float32)  # noqa: E731
    return Prediction(m0=cpu(m0) if shooter is not None else None, m_pred=cpu(m_pred),
                      m_corr=None if m_corr is None else cpu(m_corr), m_refine=None if m_refine is None else cpu(m_refine),
                      phiinv=cpu(u), warped=cpu(warped), uncertainty=uncertainty, summary=summary)
