"""Prediction: the LDDMM initial momentum from the trained network, geodesic shooting, correction, MC dropout.

Quicksilver (Yang et al. 2017) replaces the LDDMM optimisation of a pair by
a patch-wise prediction of its initial momentum ``m0``; the transform is
obtained by geodesic shooting of the predicted momentum with the same kernel
the training momenta were optimised with, so it stays diffeomorphic.

Pieces (tensors; file I/O only in :func:`run_predict` and the CLI):

* :func:`predict_momentum` -- the network over the grid: the patches of the
  sliding window (:func:`qs.patches.patch_starts`, patch and stride from the
  model) that have foreground in either image, as in training
  (:func:`qs.patches.foreground_starts` with the model's
  ``background_threshold``, recorded by :func:`qs.train.train`; 0 for older
  models, which keeps every patch that is not all zero), overlaps averaged
  (the same float64 sums as :func:`qs.patches.reassemble`), divided by the
  model's ``momentum_scale``. Voxels covered by no such patch get zero
  momentum: the network never saw background patches, and the LDDMM momentum
  vanishes where both images are flat. On the demo grid this skips about
  half of the patches (half the network time). A model trained on the
  velocity (``field: velocity``, :mod:`qs.fields`) predicts ``v0`` this way
  (zero outside the covered patches), then ``m0 = L v0``; everything
  downstream (correction, MC dropout, shooting) sees momenta.
* :func:`shoot` -- EPDiff shooting (:class:`qs.lddmm.Shooter`) of a momentum
  with the model's LDDMM settings (``alpha, beta, gamma, time_steps``,
  ``power`` if recorded, else the engine's default) on the periodic grid
  :func:`qs.lddmm.padded_shape` of the image grid, exactly as ``qs lddmm``
  does, giving ``phi_1^{-1}`` and ``phi_1``.
* correction (as in the paper): the predicted ``m_pred`` is shot, the TARGET
  is warped back into the moving image's space with the forward map,
  ``I1 o phi_1`` (:func:`warp_back`), and the correction network predicts
  the residual momentum from ``(moving, warped-back target)``:
  ``m0 = m_pred + m_corr``. :func:`correction_inputs` makes the correction
  network's training data from an LDDMM-optimal ``m0``: ``(moving,
  warped-back target, m0_opt - m_pred)`` (``qs correction-patches`` writes
  them with :func:`qs.patches.write_pair_patches`). ``corrections = N``
  repeats the step N times (the paper: once), each on the momentum corrected
  so far; the network is trained on first-round residuals only.
* MC dropout (``samples > 1``): dropout stays active at prediction
  (:func:`qs.net.enable_mc_dropout`); sample ``s`` is drawn with the torch
  RNG seeded from ``(seed, stream, s)`` (stream 0 the prediction network,
  1 the correction network), inside :func:`torch.random.fork_rng`, so each
  sample is reproducible on its own and the caller's RNG is untouched. The
  momentum used for the transform is the **mean of the sampled momenta**
  (with correction: the mean prediction is shot and warped back once, then
  each sample is ``m_pred^s + m_corr^s``, the correction network sampled
  too when it has dropout; the prediction samples are then drawn twice,
  once for the mean and once again, from the same seeds, for the sums,
  so that no sample is kept in memory). With ``samples = 1`` dropout is off (``eval``):
  the plain deterministic prediction.

Uncertainty (``uncertainty.nii.gz``, written when ``samples > 1``): every
sample's total momentum ``m^s`` is shot; ``u^s`` is the displacement of its
``phi_1^{-1}`` (mm, on the target grid). Per voxel::

    uncertainty = sum_c var_s(u^s_c)        (unbiased, divisor S - 1; mm^2)

the trace of the covariance of the sampled displacement of ``phi_1^{-1}``;
``sqrt`` of it is an RMS spread in mm. It is accumulated sample by sample
(Welford), so memory does not grow with ``samples``.

Outputs of :func:`run_predict` (the same as ``qs lddmm``, on the target
grid with the target affine):

* ``m0.nii.gz``: ``(I, J, K, 3)`` float32, the final momentum (component
  ``c`` along voxel axis ``c``, LDDMM momentum units);
* ``warp.nii.gz``: ANTs displacement field of ``phi_1^{-1}`` such that
  ``ants.apply_transforms(fixed=T, moving=M, transformlist=[warp])``
  reproduces ``warped.nii.gz`` (:mod:`qs.transforms`);
* ``warped.nii.gz``: ``M o phi_1^{-1}`` (trilinear, 0 outside, like ANTs);
* ``warped_labels.nii.gz`` with ``labels``: nearest neighbour, int32;
* ``uncertainty.nii.gz`` when ``samples > 1`` (float32, mm^2, see above);
* ``summary.json``: ``seconds`` (prediction: networks, shooting,
  correction, sampling, warping, det J; no file I/O and no model loading),
  ``seconds_total`` (the whole call), ``device``, ``detj_min``/``detj_max``
  (of ``phi_1^{-1}``), ``samples``, ``corrected``, ``corrections`` (rounds), ``uncertainty`` (its
  definition and summary numbers), the models and their LDDMM settings.
"""

from __future__ import annotations

import itertools
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .fields import field_of, kernel_settings, to_field, to_momentum
from .io import (QsInputError, check_finite, check_json, check_same_grid, load_image, load_labels, save_array,
                 spacing as grid_spacing, write_json)
from .model_io import LDDMM_KEYS, check_expect, load_model
from .net import MCDropout, enable_mc_dropout
from .patches import foreground_starts, patch_starts

#: the ``uncertainty`` map's definition (also in summary.json)
UNCERTAINTY_DEFINITION = ("per voxel: sum over the 3 components of the variance (unbiased, S - 1) of the displacement "
                          "of phi_1^{-1} over the S MC-dropout samples (each sample's momentum shot); mm^2")

#: settings the prediction and the correction model must share
SHARED_KEYS = LDDMM_KEYS + ("spacing",)


def _progress(progress) -> bool:
    return sys.stderr.isatty() if progress is None else bool(progress)


def _bar(total, desc, progress):
    return tqdm(total=total, desc=desc, unit="it", disable=not progress, leave=False, file=sys.stderr,
                mininterval=0.5 if sys.stderr.isatty() else 30.0)


def _device(device) -> torch.device:
    if isinstance(device, torch.device):
        return device
    from .device import resolve_device

    return resolve_device(device)


def _volume(x, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if t.dim() != 3:
        raise ValueError(f"{name} must be a 3D image (I, J, K), got shape {tuple(t.shape)}")
    return t.detach().to("cpu", torch.float32)


def _sample_seed(seed: int, stream: int, s: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(stream), int(s)]).generate_state(1, np.uint64)[0] >> 1)


def _has_dropout(model) -> bool:
    return any(isinstance(m, MCDropout) for m in model.modules())


# --------------------------------------------------------------------------
# The network over the whole grid
# --------------------------------------------------------------------------


def mirror_subsets(mirror_axes) -> list[tuple[int, ...]]:
    """Every subset of ``mirror_axes`` (voxel axes 0-2), the empty one first: the mirror images to average."""
    axes = tuple(int(a) for a in mirror_axes)
    if any(a not in (0, 1, 2) for a in axes) or len(set(axes)) != len(axes):
        raise ValueError(f"mirror axes must be distinct voxel axes 0, 1, 2, got {list(axes)}")
    return [c for r in range(len(axes) + 1) for c in itertools.combinations(sorted(axes), r)]


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


def _network_field(model, p: int, vol: torch.Tensor, starts: np.ndarray, batch_size: int, bar) -> torch.Tensor:
    """The network's output over the patches at ``starts`` of ``vol`` ``(2, I, J, K)``: ``(3, I, J, K)`` float64.

    Overlaps averaged like :func:`qs.patches.reassemble` (float64 sums in
    patch order, then divided by the counts), zero where no patch lies;
    patch batches streamed so that only one batch is in memory.
    """
    shape = tuple(vol.shape[1:])
    acc = torch.zeros((3, *shape), dtype=torch.float64, device=vol.device)
    cnt = torch.zeros(shape, dtype=torch.float64, device=vol.device)
    for b in range(0, len(starts), batch_size):
        st = starts[b : b + batch_size]
        x = torch.stack([vol[:, i : i + p, j : j + p, k : k + p] for i, j, k in st])
        y = model(x).to(torch.float64)
        for n, (i, j, k) in enumerate(st):
            acc[:, i : i + p, j : j + p, k : k + p] += y[n]
            cnt[i : i + p, j : j + p, k : k + p] += 1
        bar.update(1)
    return torch.where(cnt > 0, acc / cnt.clamp_min(1), torch.zeros_like(acc))


def _predict_pass(model, meta, volumes: torch.Tensor, windows: dict, *, batch_size: int, device, progress,
                  desc: str) -> torch.Tensor:
    """One pass of the network: the momentum ``(3, I, J, K)``, CPU float32.

    :func:`_network_field`, averaged over the mirror images of the pair:
    ``windows`` maps each subset of the mirror axes (:func:`_prepare`) to the
    foreground patches of the pair flipped along those axes, each mirror
    image on its own sliding window; the output is flipped back and its
    components along the flipped axes negated. LDDMM with an isotropic
    kernel and similarity commutes with mirroring, a trained network only
    roughly, so the mean is an ensemble; where the window does not fit the
    grid evenly, a mirror image's patches are shifted against the pair's,
    which makes the ensemble more diverse (the demo: error -8% against the
    same patches mirrored). Then ``/ momentum_scale``; a model that predicts
    the velocity has it turned into the momentum (:func:`qs.fields.to_momentum`,
    the grid's spacing from the model).
    """
    p = int(meta["patch"])
    vol = volumes.to(device)
    total = None
    with torch.no_grad(), _bar(sum(-(-len(st) // batch_size) for st in windows.values()), desc, progress) as bar:
        for axes, st in windows.items():
            flip = [1 + a for a in axes]
            y = _network_field(model, p, vol.flip(flip) if axes else vol, st, batch_size, bar)
            if axes:
                y = y.flip(flip)
                y[list(axes)] *= -1
            total = y if total is None else total + y
    out = (total / len(windows)).to(torch.float32) / float(meta["momentum_scale"])
    return to_momentum(out, field_of(meta), meta["spacing"], meta).cpu()


def prediction_starts(meta, moving, target, stride=None) -> np.ndarray:
    """Corners of the patches the network predicts: the foreground patches of the sliding window."""
    p = int(meta["patch"])
    stride = int(meta["stride"] if stride is None else stride)
    return foreground_starts(moving, target, patch_starts(moving.shape, p, stride), p,
                             float(meta.get("background_threshold", 0.0)))


def _prepare(model, meta, moving, target, stride, device, mirror_axes=()):
    """The stacked pair ``(2, I, J, K)`` and the windows of :func:`_predict_pass`: mirror axes -> patch corners."""
    moving, target = _volume(moving, "moving"), _volume(target, "target")
    if moving.shape != target.shape:
        raise ValueError(f"moving {tuple(moving.shape)} and target {tuple(target.shape)} must have the same shape")
    windows = {axes: prediction_starts(meta, moving.flip(axes) if axes else moving,
                                       target.flip(axes) if axes else target, stride)
               for axes in mirror_subsets(mirror_axes)}
    model.to(device).eval()
    return torch.stack([moving, target]), windows


def iter_momentum_samples(model, meta, moving, target, *, samples: int, seed: int = 0, stream: int = 0,
                          stride=None, batch_size: int = 64, device="cpu", progress=False, desc: str = "MC sample",
                          mirror_axes=()):
    """Yield ``samples`` MC-dropout momentum fields ``(3, I, J, K)`` (CPU float32), one at a time.

    Sample ``s`` uses the torch RNG seeded from ``(seed, stream, s)`` inside
    :func:`torch.random.fork_rng`. Dropout is switched on for each pass and
    off again after it. Raises ``ValueError`` for a model without dropout.
    Each sample averages the mirror images of ``mirror_axes`` (:func:`_predict_pass`).
    """
    device = _device(device)
    volumes, windows = _prepare(model, meta, moving, target, stride, device, mirror_axes)
    if not _has_dropout(model):
        enable_mc_dropout(model, True)  # raises the explanatory ValueError
    rng_devices = [device.index or 0] if device.type == "cuda" else []
    for s in range(int(samples)):
        with torch.random.fork_rng(devices=rng_devices):
            torch.manual_seed(_sample_seed(seed, stream, s))
            enable_mc_dropout(model, True)
            try:
                m = _predict_pass(model, meta, volumes, windows, batch_size=batch_size, device=device,
                                  progress=False, desc=desc)
            finally:
                enable_mc_dropout(model, False)
        yield m


def predict_momentum(model, meta, moving, target, *, stride=None, batch_size: int = 64, device="cpu",
                     samples: int = 1, seed: int = 0, progress=False, mirror_axes=()):
    """Predict the initial momentum of the pair ``(moving, target)`` (``(I, J, K)`` images on one grid).

    Runs the network on the grid's foreground patches (module docstring),
    averages overlaps and divides by ``meta['momentum_scale']``. Returns
    ``(mean_m0 (3, I, J, K), samples_m0)``: with ``samples = 1`` dropout is
    off and ``samples_m0`` is None; with ``samples > 1`` each of the
    ``samples`` MC-dropout passes is a full momentum field (list, CPU
    float32; memory grows with ``samples``: :func:`run_predict` streams them
    instead) and ``mean_m0`` is their mean. ``stride`` defaults to the
    model's. Seeded by ``seed`` (see :func:`iter_momentum_samples`).
    ``mirror_axes``: average the predictions of the pair mirrored along
    every subset of these voxel axes (:func:`_predict_pass`; ``(0, 1, 2)``:
    8 passes).
    """
    if int(samples) < 1:
        raise ValueError(f"predict_momentum: samples must be >= 1, got {samples}")
    device = _device(device)
    progress = _progress(progress)
    if int(samples) == 1:
        volumes, windows = _prepare(model, meta, moving, target, stride, device, mirror_axes)
        enable_mc_dropout(model, False)
        return _predict_pass(model, meta, volumes, windows, batch_size=batch_size, device=device,
                             progress=progress, desc="predict"), None
    out = []
    with _bar(int(samples), "MC samples", progress) as bar:
        for m in iter_momentum_samples(model, meta, moving, target, samples=samples, seed=seed, stride=stride,
                                       batch_size=batch_size, device=device, mirror_axes=mirror_axes):
            out.append(m)
            bar.update(1)
    mean = torch.stack(out).to(torch.float64).mean(0).to(torch.float32)
    return mean, out


# --------------------------------------------------------------------------
# Shooting, warp-back, correction
# --------------------------------------------------------------------------


class Shooting:
    """Geodesic shooting of momenta on one image grid with a model's LDDMM settings (built once, reused).

    ``shape`` is the image grid, ``spacing`` in mm; the periodic grid is
    :func:`qs.lddmm.padded_shape` ``(shape, pad)`` with the momentum zero
    outside the image, as in :func:`qs.lddmm.register`.
    """

    def __init__(self, shape, spacing, meta: dict, *, device="cpu", compile=False, pad: int | None = None):
        from .lddmm import FluidKernel, Shooter, padded_shape

        k = kernel_settings(meta)
        self.shape = tuple(int(n) for n in shape)
        self.spacing = tuple(float(h) for h in spacing)
        self.device = _device(device)
        self.padded = padded_shape(self.shape, int(meta.get("pad", 0) if pad is None else pad))
        kernel = FluidKernel(self.padded, self.spacing, alpha=k["alpha"], beta=k["beta"], gamma=k["gamma"],
                             power=k["power"], dtype=torch.float32, device=self.device)
        self.shooter = Shooter(kernel, time_steps=k["time_steps"], compile=compile)

    def __call__(self, m0: torch.Tensor, *, forward_map: bool = False):
        """``(phiinv, phi)`` displacements (mm, ``(3, *shape)``, on the shooting device); ``phi`` None unless asked."""
        from .lddmm import zero_pad

        I, J, K = self.shape
        geo = self.shooter.shoot(zero_pad(m0.to(self.device, torch.float32), self.padded), forward_map=forward_map)
        u = geo.u1[:, :I, :J, :K]
        w = geo.w1[:, :I, :J, :K] if forward_map else None
        return u, w


def shoot(m0, spacing, meta: dict, *, device="cpu", forward_map: bool = True, compile=False):
    """Shoot ``m0`` ``(3, I, J, K)`` with ``meta``'s LDDMM settings; ``(phiinv, phi)`` displacements, CPU float32."""
    m0 = torch.as_tensor(m0)
    u, w = Shooting(m0.shape[1:], spacing, meta, device=device, compile=compile)(m0, forward_map=forward_map)
    cpu = lambda t: None if t is None else t.detach().to("cpu", torch.float32)  # noqa: E731
    return cpu(u), cpu(w)


def warp_back(target: torch.Tensor, phi: torch.Tensor, spacing) -> torch.Tensor:
    """``I1 o phi_1``: the target pulled back into the moving image's space (trilinear, 0 outside)."""
    from .lddmm import warp_image

    t = target.to(phi.device, torch.float32)
    return warp_image(t, phi.to(torch.float32), spacing, outside_value=0.0)


#: ``compile="auto"`` compiles the shooting only for at least this many shootings in one call:
#: compiling costs ~5 s per process (warm cache) and saves ~0.6 s per shooting (demo grid 90x108x90,
#: 5 RK4 steps, 2 CPU threads: eager 1.1 s per shooting, compiled 0.4 s after a 5.2 s first one).
COMPILE_MIN_SHOTS = 8


def shooting_compile(compile, shots: int):
    """The ``compile`` argument of :class:`Shooting` for a call that shoots ``shots`` times."""
    if compile == "auto":
        return "auto" if shots >= COMPILE_MIN_SHOTS else False
    return compile


def correction_inputs(moving, target, m0_opt, model, meta, *, stride=None, batch_size: int = 64, device="cpu",
                      spacing=None, progress=False, compile="auto", mirror_axes=()):
    """Training data of the correction network for one pair.

    ``moving``, ``target`` ``(I, J, K)`` on one grid, ``m0_opt`` ``(3, I, J,
    K)`` the LDDMM-optimal momentum, ``model``/``meta`` the prediction
    network. Predicts ``m_pred`` (deterministic), shoots it, warps the target
    back (``I1 o phi_1``) and returns ``(moving, warped_back_target, m0_opt -
    m_pred)`` as CPU float32 tensors, ready for
    :func:`qs.patches.write_pair_patches`. ``spacing`` defaults to the model's.
    """
    device = _device(device)
    spacing = tuple(meta["spacing"] if spacing is None else spacing)
    moving, target = _volume(moving, "moving"), _volume(target, "target")
    m0_opt = torch.as_tensor(np.asarray(m0_opt) if not isinstance(m0_opt, torch.Tensor) else m0_opt)
    if tuple(m0_opt.shape) != (3, *moving.shape):
        raise ValueError(f"correction_inputs: m0_opt must be (3, {tuple(moving.shape)}), got {tuple(m0_opt.shape)}")
    m_pred, _ = predict_momentum(model, meta, moving, target, stride=stride, batch_size=batch_size, device=device,
                                 progress=progress, mirror_axes=mirror_axes)
    with torch.no_grad():
        _, phi = Shooting(moving.shape, spacing, meta, device=device,
                          compile=shooting_compile(compile, 1))(m_pred, forward_map=True)
        back = warp_back(target, phi, spacing).to("cpu", torch.float32)
    return moving, back, m0_opt.detach().to("cpu", torch.float32) - m_pred


# --------------------------------------------------------------------------
# The whole registration of one pair (tensors)
# --------------------------------------------------------------------------


@dataclass
class Prediction:
    """Result of :func:`predict_registration` (CPU float32 tensors on the image grid).

    ``m0`` the final momentum, ``m_pred`` the (mean) prediction, ``m_corr``
    the (mean) correction or None, ``phiinv`` the displacement of
    ``phi_1^{-1}`` (mm), ``warped`` ``I0 o phi_1^{-1}``, ``uncertainty``
    (mm^2, ``samples > 1``) or None, ``summary`` JSON-ready numbers.
    """

    m0: torch.Tensor
    m_pred: torch.Tensor
    m_corr: torch.Tensor | None
    phiinv: torch.Tensor
    warped: torch.Tensor
    uncertainty: torch.Tensor | None
    summary: dict = field(default_factory=dict)


class _Welford:
    """Running mean and sum of squared deviations of fields (float64, on their device)."""

    def __init__(self):
        self.n, self.mean, self.m2 = 0, None, None

    def add(self, x: torch.Tensor):
        x = x.to(torch.float64)
        self.n += 1
        if self.mean is None:
            self.mean, self.m2 = x.clone(), torch.zeros_like(x)
            return
        d = x - self.mean
        self.mean += d / self.n
        self.m2 += d * (x - self.mean)

    def variance(self) -> torch.Tensor:
        return self.m2 / max(self.n - 1, 1)


def _warped_back_target(shooting, m0, target, spacing) -> torch.Tensor:
    """Shoot ``m0`` and pull the target back into the moving image's space: ``I1 o phi_1`` (CPU)."""
    _, phi = shooting(m0, forward_map=True)
    return warp_back(target, phi, spacing).cpu()


def predict_registration(model, meta, moving, target, *, spacing=None, correction=None, corrections: int = 1,
                         samples: int = 1, seed: int = 0, stride=None, correction_stride=None, batch_size: int = 64,
                         device="cpu", progress=None, compile="auto", mirror_axes=()) -> Prediction:
    """Predict (and correct) the LDDMM registration of ``moving`` to ``target`` (``(I, J, K)``, one grid).

    ``correction``: ``(model, meta)`` of the correction network or None.
    ``corrections``: rounds of correction (the paper: 1); each shoots the
    momentum so far, warps the target back and adds the correction
    network's residual, so round ``r`` corrects what rounds ``< r`` left.
    With MC dropout all rounds but the last use the mean momentum and the
    correction network without dropout; the last round is sampled.
    ``samples > 1``: MC dropout (see the module docstring). ``mirror_axes``:
    every network pass (both networks, every sample) averages the pair's
    mirror images along these voxel axes (:func:`predict_momentum`).
    ``spacing`` defaults to the model's working spacing.
    """
    from .lddmm import jacobian_determinant, warp_image

    samples, corrections = int(samples), int(corrections)
    if samples < 1:
        raise ValueError(f"predict_registration: samples must be >= 1, got {samples}")
    if corrections < 1:
        raise ValueError(f"predict_registration: corrections must be >= 1, got {corrections}")
    rounds = corrections if correction is not None else 0
    mirrors = mirror_subsets(mirror_axes)  # checks the axes
    device = _device(device)
    progress = _progress(progress)
    spacing = tuple(float(h) for h in (meta["spacing"] if spacing is None else spacing))
    moving, target = _volume(moving, "moving"), _volume(target, "target")
    if samples > 1 and not _has_dropout(model):
        raise QsInputError("--samples > 1 needs MC dropout, but the prediction model has no dropout layers "
                           "(trained with dropout 0); use --samples 1 or a model trained with dropout > 0")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    shots = 1 + rounds + (samples if samples > 1 else 0)  # final, warp-backs, MC samples
    shooting = Shooting(moving.shape, spacing, meta, device=device, compile=shooting_compile(compile, shots))
    kw = dict(batch_size=batch_size, device=device, mirror_axes=tuple(mirrors[-1]))
    uncertainty = None

    def corrected(m_start, rounds):
        """``rounds`` deterministic corrections of ``m_start``: their sum (None for 0 rounds)."""
        total = None
        for _ in range(rounds):
            back = _warped_back_target(shooting, m_start if total is None else m_start + total, target, spacing)
            step, _ = predict_momentum(*correction, moving, back, stride=correction_stride, progress=progress, **kw)
            total = step if total is None else total + step
        return total

    with torch.no_grad():
        if samples == 1:
            m_pred, _ = predict_momentum(model, meta, moving, target, stride=stride, progress=progress, **kw)
            m_corr = corrected(m_pred, rounds)
        else:
            # pass A (only with correction): the mean prediction, corrected by all rounds but the last,
            # to warp the target back for the last (sampled) round
            corr_samples, m_fixed = None, None
            if correction is not None:
                total = None
                with _bar(samples, "MC samples (prediction)", progress) as bar:
                    for m in iter_momentum_samples(model, meta, moving, target, samples=samples, seed=seed,
                                                   stream=0, stride=stride, **kw):
                        total = m.to(torch.float64) if total is None else total + m
                        bar.update(1)
                m_mean = (total / samples).to(torch.float32)
                m_fixed = corrected(m_mean, rounds - 1)
                back = _warped_back_target(shooting, m_mean if m_fixed is None else m_mean + m_fixed, target, spacing)
                cmodel, cmeta = correction
                if _has_dropout(cmodel):
                    corr_samples = iter_momentum_samples(cmodel, cmeta, moving, back, samples=samples, seed=seed,
                                                         stream=1, stride=correction_stride, **kw)
                else:
                    fixed, _ = predict_momentum(cmodel, cmeta, moving, back, stride=correction_stride, **kw)
                    corr_samples = (fixed for _ in range(samples))
            # pass B: every sample's total momentum, shot for the displacement spread
            pred_sum, corr_sum, spread = None, None, _Welford()
            pred_samples = iter_momentum_samples(model, meta, moving, target, samples=samples, seed=seed, stream=0,
                                                 stride=stride, **kw)
            with _bar(samples, "MC samples", progress) as bar:
                for s, mp in enumerate(pred_samples):
                    pred_sum = mp.to(torch.float64) if pred_sum is None else pred_sum + mp
                    ms = mp
                    if corr_samples is not None:
                        mc = next(corr_samples)
                        corr_sum = mc.to(torch.float64) if corr_sum is None else corr_sum + mc
                        ms = mp + mc if m_fixed is None else mp + m_fixed + mc
                    u_s, _ = shooting(ms)
                    spread.add(u_s)
                    bar.update(1)
            m_pred = (pred_sum / samples).to(torch.float32)
            m_corr = None if corr_sum is None else (corr_sum / samples).to(torch.float32)
            if m_fixed is not None:
                m_corr = m_corr + m_fixed
            uncertainty = spread.variance().sum(0).to("cpu", torch.float32)
        m0 = m_pred if m_corr is None else m_pred + m_corr
        u, _ = shooting(m0)
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
        "padded_shape": list(shooting.padded),
        "spacing": list(spacing),
        "kernel": {k: v for k, v in kernel_settings(meta).items() if k != "time_steps"},
        "time_steps": kernel_settings(meta)["time_steps"],
        "sigma": meta.get("sigma"),
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
    return Prediction(m0=cpu(m0), m_pred=cpu(m_pred), m_corr=None if m_corr is None else cpu(m_corr),
                      phiinv=cpu(u), warped=cpu(warped), uncertainty=uncertainty, summary=summary)


# --------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------


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
                compile="auto") -> dict:
    """``qs predict``: predict the registration of ``moving`` to ``target`` (files on one working grid).

    Writes the outputs listed in the module docstring under ``out_dir`` and
    returns the summary (also ``summary.json``) with the paths under
    ``"outputs"``. Bad input raises :class:`qs.io.QsInputError` naming the
    file: different grids, a grid spacing other than the model's, wrong
    model kinds, mismatched LDDMM settings (see :func:`load_models`).
    """
    t_start = time.perf_counter()
    moving, target, out_dir = Path(moving), Path(target), Path(out_dir)
    check_prediction_options(corrections=corrections, correction_model=correction_model, samples=samples,
                             batch_size=batch_size, mirror_axes=mirror_axes)
    tgt = load_image(target, what="target image")
    mov = load_image(moving, what="moving image")
    check_same_grid(tgt, mov, target, moving)
    lab = load_labels(labels, reference=tgt, reference_path=target) if labels is not None else None
    dev = _device(device)
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
                               compile=compile)

    from .lddmm.run import write_registration

    why = "produced non-finite values (weights too large for these images?)"
    check_finite([
        ("the predicted momentum", res.m_pred, f"the model {model_path} {why}"),
        ("the correction momentum", res.m_corr, f"the correction model {correction_model} {why}"),
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

    ``(moving, I1 o phi_1, m0 - m_pred)`` (:func:`correction_inputs`) written
    with :func:`qs.patches.write_pair_patches`; ``momentum`` is the pair's
    LDDMM ``m0.nii.gz``; with ``field="velocity"`` the residual's velocity
    ``K (m0 - m_pred)`` (the prediction model's kernel). ``m_pred`` is
    predicted as ``qs predict`` does with ``predict_stride`` (``--stride``
    there) and ``mirror_axes``, so that the network learns the residuals it
    will see; ``stride`` is the patch files' sliding window. Returns the
    ``(npy, json)`` paths.
    """
    from .io import load_momentum
    from .patches import write_pair_patches

    mov = load_image(moving, what="moving image")
    tgt = load_image(target, what="target image")
    check_same_grid(mov, tgt, moving, target)
    m0 = load_momentum(momentum, mov, moving)
    dev = _device(device)
    model, meta = load_model(model_path, expect={**(expect or {}), "kind": "prediction"}, device=dev)
    _check_spacing(tgt, target, meta, model_path)
    check_prediction_options(batch_size=batch_size, mirror_axes=mirror_axes,
                             strides={"--predict-stride": predict_stride}, patch=meta["patch"])
    mv, back, resid = correction_inputs(np.asarray(mov.dataobj), np.asarray(tgt.dataobj), m0, model, meta,
                                        stride=predict_stride, batch_size=batch_size, device=dev,
                                        spacing=grid_spacing(tgt), progress=_progress(progress),
                                        mirror_axes=mirror_axes)
    resid = to_field(resid, field, grid_spacing(tgt), meta)
    return write_pair_patches(mv, back, resid, out, patch=patch, stride=stride, threshold=threshold, pair=pair,
                              field=field)


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def add_lddmm_expect(p) -> None:
    """Optional ``--alpha --beta --gamma --sigma --time-steps``: the run's LDDMM settings the model must match."""
    g = p.add_argument_group("LDDMM settings the model must have been trained with (checked when given)")
    g.add_argument("--alpha", type=float)
    g.add_argument("--beta", type=float)
    g.add_argument("--gamma", type=float)
    g.add_argument("--sigma", type=float)
    g.add_argument("--time-steps", type=int)


def expect_from_args(args) -> dict:
    keys = {"alpha": "alpha", "beta": "beta", "gamma": "gamma", "sigma": "sigma", "time_steps": "time_steps"}
    return {k: getattr(args, a) for k, a in keys.items() if getattr(args, a, None) is not None}


def add_mirror_axes(p) -> None:
    """``--mirror-axes``, shared by ``qs predict``, ``qs correction-patches`` and ``qs register``."""
    p.add_argument("--mirror-axes", type=int, nargs="*", default=[], choices=[0, 1, 2], metavar="AXIS",
                   help="average the networks' predictions over the pair mirrored along every subset of these voxel "
                        "axes (0 1 2: 8 passes per network call; default: none)")


def _predict(args):
    summary = run_predict(
        args.model, args.moving, args.target, args.out, correction_model=args.correction_model,
        corrections=args.corrections, correction_stride=args.correction_stride, mirror_axes=args.mirror_axes,
        samples=args.samples, device=args.device, batch_size=args.batch_size, seed=args.seed, labels=args.labels,
        expect=expect_from_args(args), stride=args.stride,
    )
    keys = ("seconds", "seconds_total", "device", "detj_min", "detj_max", "samples", "corrected", "corrections",
            "mirror_axes")
    print(json.dumps({k: summary[k] for k in keys}))


def _correction_patches(args):
    npy, _ = run_correction_patches(
        args.model, args.moving, args.target, args.momentum, args.out, patch=args.patch, stride=args.stride,
        threshold=args.threshold, pair=args.pair, device=args.device, batch_size=args.batch_size,
        expect=expect_from_args(args), field=args.field, predict_stride=args.predict_stride,
        mirror_axes=args.mirror_axes,
    )
    print(npy)


def add_subcommands(sub) -> None:
    """Add ``qs predict`` and ``qs correction-patches`` to the ``qs`` parser's subparsers."""
    from .cli.args import add_patch_args

    p = sub.add_parser("predict", help="predict the LDDMM registration of MOVING to TARGET with a trained model")
    p.add_argument("--model", required=True, type=Path, help="prediction model (model.safetensors)")
    p.add_argument("--moving", required=True, type=Path, help="moving image on the working grid")
    p.add_argument("--target", required=True, type=Path, help="target image on the same grid")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--correct", "--correction-model", dest="correction_model", type=Path,
                   metavar="CORRECTION_MODEL", help="correction model: add its predicted residual momentum")
    p.add_argument("--corrections", type=int, default=1,
                   help="rounds of correction with --correct (paper: 1); each corrects what the rounds before left")
    p.add_argument("--samples", type=int, default=1, help="MC-dropout samples (> 1 writes uncertainty.nii.gz)")
    p.add_argument("--labels", type=Path, help="moving label image, warped with nearest neighbour")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--batch-size", type=int, default=64, help="patches per network call")
    p.add_argument("--stride", type=int, help="patch stride of both networks (default: each model's training stride; "
                                              "smaller = overlapping patches averaged, slower)")
    p.add_argument("--correction-stride", type=int,
                   help="patch stride of the correction network (default: --stride); smaller = more overlap, slower")
    p.add_argument("--seed", type=int, default=0, help="seed of the MC-dropout samples")
    add_mirror_axes(p)
    add_lddmm_expect(p)
    p.set_defaults(func=_predict)

    p = sub.add_parser("correction-patches",
                       help="training patches of the correction network for one pair (moving, warped-back target, residual)")
    p.add_argument("--model", required=True, type=Path, help="the trained prediction model")
    add_patch_args(p)
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--predict-stride", type=int,
                   help="the prediction's patch stride, as qs predict --stride (default: the model's training stride)")
    add_mirror_axes(p)
    add_lddmm_expect(p)
    p.set_defaults(func=_correction_patches)
