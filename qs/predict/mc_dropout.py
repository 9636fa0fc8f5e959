"""MC dropout at prediction: reproducible dropout samples of the momentum, and the uncertainty of the transform.

Dropout stays active at prediction (:func:`qs.net.enable_mc_dropout`); sample
``s`` is drawn with the torch RNG seeded from ``(seed, stream, s)`` (stream 0
the prediction network, 1 the correction network), inside
:func:`torch.random.fork_rng`, so each sample is reproducible on its own and
the caller's RNG is untouched. Samples are momentum fields ``(3, I, J, K)``
(CPU float32, voxel axes), each a full :func:`.window.network_pass`.

Uncertainty (``uncertainty.nii.gz``): every sample's total momentum ``m^s``
is shot; ``u^s`` is the displacement of its ``phi_1^{-1}`` (mm, on the target
grid). Per voxel::

    uncertainty = sum_c var_s(u^s_c)        (unbiased, divisor S - 1; mm^2)

the trace of the covariance of the sampled displacement of ``phi_1^{-1}``;
``sqrt`` of it is an RMS spread in mm. It is accumulated sample by sample
(:class:`Welford`), so memory does not grow with the number of samples.
"""

from __future__ import annotations

import numpy as np
import torch

from ..net import enable_mc_dropout, has_mc_dropout
from .window import network_pass, prepare_pair, progress_bar, resolve, show_progress

#: the ``uncertainty`` map's definition (also in summary.json)
UNCERTAINTY_DEFINITION = ("per voxel: sum over the 3 components of the variance (unbiased, S - 1) of the displacement "
                          "of phi_1^{-1} over the S MC-dropout samples (each sample's momentum shot); mm^2")


def sample_seed(seed: int, stream: int, s: int) -> int:
    """The torch seed of sample ``s`` of ``stream`` (0: prediction network, 1: correction network)."""
    return int(np.random.SeedSequence([int(seed), int(stream), int(s)]).generate_state(1, np.uint64)[0] >> 1)


def iter_momentum_samples(model, meta, moving, target, *, samples: int, seed: int = 0, stream: int = 0,
                          stride=None, batch_size: int = 64, device="cpu", progress=False, desc: str = "MC sample",
                          mirror_axes=()):
    """Yield ``samples`` MC-dropout momentum fields ``(3, I, J, K)`` (CPU float32), one at a time.

    Sample ``s`` uses the torch RNG seeded from ``(seed, stream, s)`` inside
    :func:`torch.random.fork_rng`. Dropout is switched on for each pass and
    off again after it. Raises ``ValueError`` for a model without dropout.
    Each sample averages the mirror images of ``mirror_axes`` (:func:`.window.network_pass`).
    """
    device = resolve(device)
    volumes, windows = prepare_pair(model, meta, moving, target, stride, device, mirror_axes)
    if not has_mc_dropout(model):
        enable_mc_dropout(model, True)  # raises the explanatory ValueError
    rng_devices = [device.index or 0] if device.type == "cuda" else []
    for s in range(int(samples)):
        with torch.random.fork_rng(devices=rng_devices):
            torch.manual_seed(sample_seed(seed, stream, s))
            enable_mc_dropout(model, True)
            try:
                m = network_pass(model, meta, volumes, windows, batch_size=batch_size, device=device,
                                 progress=False, desc=desc)
            finally:
                enable_mc_dropout(model, False)
        yield m


def sample_momentum(model, meta, moving, target, *, samples: int, seed: int = 0, stride=None, batch_size: int = 64,
                    device="cpu", progress=False, mirror_axes=()):
    """``(mean, samples)``: ``samples`` MC-dropout momenta of the pair (a list, CPU float32) and their mean.

    Memory grows with ``samples`` (:func:`qs.predict.registration.predict_registration`
    streams them instead); seeded as :func:`iter_momentum_samples` (stream 0).
    """
    if int(samples) < 1:
        raise ValueError(f"sample_momentum: samples must be >= 1, got {samples}")
    device = resolve(device)
    out = []
    with progress_bar(int(samples), "MC samples", show_progress(progress)) as bar:
        for m in iter_momentum_samples(model, meta, moving, target, samples=samples, seed=seed, stride=stride,
                                       batch_size=batch_size, device=device, mirror_axes=mirror_axes):
            out.append(m)
            bar.update(1)
    mean = torch.stack(out).to(torch.float64).mean(0).to(torch.float32)
    return mean, out


class Welford:
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
        """The unbiased variance (divisor ``n - 1``; 1 for a single field)."""
        return self.m2 / max(self.n - 1, 1)
