"""The network over the whole grid: a sliding window over the pair's foreground patches, mirror ensemble.

Images are ``(I, J, K)`` on one working grid (voxel axes, spacing from the
model in mm); the network reads patches of the stacked pair ``(2, p, p, p)``
(``p`` = the model's ``patch``) and writes ``(3, p, p, p)``: the momentum
(or, for a model of ``field: velocity``, the velocity, turned into the
momentum by :func:`qs.fields.to_momentum`; for a model of ``field:
deformation``, the displacement of ``phi_1^{-1}`` in mm, kept as it is),
component ``c`` along voxel axis ``c``.

The patches are those of the sliding window (:func:`qs.patches.patch_starts`,
patch and stride from the model) that have foreground in either image, as in
training (:func:`qs.patches.foreground_starts` with the model's
``background_threshold``, recorded by :func:`qs.train.train`; 0 for older
models, which keeps every patch that is not all zero); overlaps are averaged
(the same float64 sums as :func:`qs.patches.reassemble`) and the result is
divided by the model's ``momentum_scale``. Voxels covered by no such patch
get zero: the network never saw background patches, and the LDDMM momentum
vanishes where both images are flat. On the demo grid this skips about half
of the patches (half the network time).
"""

from __future__ import annotations

import itertools
import sys

import numpy as np
import torch
from tqdm import tqdm

from ..fields import field_of, is_shot, to_momentum
from ..net import enable_mc_dropout
from ..patches import foreground_starts, patch_starts


def show_progress(progress) -> bool:
    """``progress`` as a bool; None: when stderr is a terminal."""
    return sys.stderr.isatty() if progress is None else bool(progress)


def progress_bar(total, desc, progress):
    return tqdm(total=total, desc=desc, unit="it", disable=not progress, leave=False, file=sys.stderr,
                mininterval=0.5 if sys.stderr.isatty() else 30.0)


def resolve(device) -> torch.device:
    """A torch device from a device or a ``--device`` setting (``auto``, ``cpu``, ``cuda[:N]``)."""
    if isinstance(device, torch.device):
        return device
    from ..device import resolve_device

    return resolve_device(device)


def as_volume(x, name: str) -> torch.Tensor:
    """An ``(I, J, K)`` image (array or tensor) as a CPU float32 tensor."""
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if t.dim() != 3:
        raise ValueError(f"{name} must be a 3D image (I, J, K), got shape {tuple(t.shape)}")
    return t.detach().to("cpu", torch.float32)


def mirror_subsets(mirror_axes) -> list[tuple[int, ...]]:
    """Every subset of ``mirror_axes`` (voxel axes 0-2), the empty one first: the mirror images to average."""
    axes = tuple(int(a) for a in mirror_axes)
    if any(a not in (0, 1, 2) for a in axes) or len(set(axes)) != len(axes):
        raise ValueError(f"mirror axes must be distinct voxel axes 0, 1, 2, got {list(axes)}")
    return [c for r in range(len(axes) + 1) for c in itertools.combinations(sorted(axes), r)]


def prediction_starts(meta, moving, target, stride=None) -> np.ndarray:
    """Corners (voxels) of the patches the network predicts: the foreground patches of the sliding window."""
    p = int(meta["patch"])
    stride = int(meta["stride"] if stride is None else stride)
    return foreground_starts(moving, target, patch_starts(moving.shape, p, stride), p,
                             float(meta.get("background_threshold", 0.0)))


def network_field(model, p: int, vol: torch.Tensor, starts: np.ndarray, batch_size: int, bar) -> torch.Tensor:
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


def network_pass(model, meta, volumes: torch.Tensor, windows: dict, *, batch_size: int, device, progress,
                 desc: str) -> torch.Tensor:
    """One pass of the network: the momentum ``(3, I, J, K)``, CPU float32.

    :func:`network_field`, averaged over the mirror images of the pair:
    ``windows`` maps each subset of the mirror axes (:func:`prepare_pair`) to the
    foreground patches of the pair flipped along those axes, each mirror
    image on its own sliding window; the output is flipped back and its
    components along the flipped axes negated. LDDMM with an isotropic
    kernel and similarity commutes with mirroring, a trained network only
    roughly, so the mean is an ensemble; where the window does not fit the
    grid evenly, a mirror image's patches are shifted against the pair's,
    which makes the ensemble more diverse (the demo: error -8% against the
    same patches mirrored). Then ``/ momentum_scale``; a model that predicts
    the velocity has it turned into the momentum (:func:`qs.fields.to_momentum`,
    the grid's spacing from the model); a model that predicts the deformation
    returns its displacement (mm).
    """
    p = int(meta["patch"])
    vol = volumes.to(device)
    total = None
    with torch.no_grad(), progress_bar(sum(-(-len(st) // batch_size) for st in windows.values()), desc,
                                       progress) as bar:
        for axes, st in windows.items():
            flip = [1 + a for a in axes]
            y = network_field(model, p, vol.flip(flip) if axes else vol, st, batch_size, bar)
            if axes:
                y = y.flip(flip)
                y[list(axes)] *= -1
            total = y if total is None else total + y
    out = (total / len(windows)).to(torch.float32) / float(meta["momentum_scale"])
    if not is_shot(field_of(meta)):
        return out.cpu()
    return to_momentum(out, field_of(meta), meta["spacing"], meta).cpu()


def prepare_pair(model, meta, moving, target, stride, device, mirror_axes=()):
    """The stacked pair ``(2, I, J, K)`` and the windows of :func:`network_pass`: mirror axes -> patch corners.

    Also moves the model to ``device`` in ``eval`` mode.
    """
    moving, target = as_volume(moving, "moving"), as_volume(target, "target")
    if moving.shape != target.shape:
        raise ValueError(f"moving {tuple(moving.shape)} and target {tuple(target.shape)} must have the same shape")
    windows = {axes: prediction_starts(meta, moving.flip(axes) if axes else moving,
                                       target.flip(axes) if axes else target, stride)
               for axes in mirror_subsets(mirror_axes)}
    model.to(device).eval()
    return torch.stack([moving, target]), windows


def predict_momentum(model, meta, moving, target, *, stride=None, batch_size: int = 64, device="cpu",
                     progress=False, mirror_axes=()) -> torch.Tensor:
    """The initial momentum ``(3, I, J, K)`` (CPU float32) of the pair ``(moving, target)`` (``(I, J, K)``, one grid);
    for a model of ``field: deformation`` the displacement of ``phi_1^{-1}`` (mm).

    One deterministic pass (dropout off) over the grid's foreground patches
    (module docstring), overlaps averaged, divided by ``meta['momentum_scale']``.
    ``stride`` defaults to the model's. ``mirror_axes``: average the
    predictions of the pair mirrored along every subset of these voxel axes
    (:func:`network_pass`; ``(0, 1, 2)``: 8 passes). MC-dropout samples:
    :func:`qs.predict.mc_dropout.sample_momentum`.
    """
    device = resolve(device)
    progress = show_progress(progress)
    volumes, windows = prepare_pair(model, meta, moving, target, stride, device, mirror_axes)
    enable_mc_dropout(model, False)
    return network_pass(model, meta, volumes, windows, batch_size=batch_size, device=device, progress=progress,
                        desc="predict")
