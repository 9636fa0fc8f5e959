"""The LDDMM energy of an initial momentum and its memory-efficient gradient.

For images ``I0`` (moving) and ``I1`` (target) on a grid of ``N`` voxels::

    E(m0) = 1/(2N) <m0, K m0>  +  1/(2 N sigma^2) || I0 o phi_1^{-1} - I1 ||^2

with sums over voxels (no voxel volume), ``phi_1^{-1}`` from shooting ``m0``
(:mod:`.shooting`). This is the original code's normalisation (energy per
voxel, each term halved); it is ``1/2`` of ``<m0, K m0> + ||.||^2 / sigma^2``
divided by ``N``, so it has the same minimiser.

The momentum lives on the image grid; the shooting runs on a periodic grid
that holds it (``pad`` extra voxels per axis, rounded up to FFT-friendly
sizes, :func:`.kernel.padded_shape`), with ``m0`` zero outside the image.

:class:`Objective` computes ``E`` and ``dE/dm0`` by the checkpointed adjoint
of :class:`.shooting.Shooter`. :func:`energy_autograd` is the naive reference
(autograd through the whole RK4 trajectory), used by the tests and the
benchmark only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .kernel import DEFAULTS, SINGLE_SCALE, FluidKernel, padded_shape, zero_pad
from .epdiff import rk4_step
from .shooting import Shooter
from .warp import identity, sample


@dataclass
class Energy:
    total: float
    matching: float
    regularity: float


def _as3d(x, name, dtype, device) -> torch.Tensor:
    t = torch.as_tensor(x)
    while t.dim() > 3 and t.shape[0] == 1:
        t = t[0]
    if t.dim() != 3:
        raise ValueError(f"{name} must be a 3D image (or (1, 1, I, J, K)), got shape {tuple(t.shape)}")
    return t.to(dtype=dtype, device=device)


SIMILARITIES = ("ssd", "lncc")


def local_ncc(a: torch.Tensor, b: torch.Tensor, window: int = 5, eps: float = 1e-5) -> torch.Tensor:
    """Mean over voxels of the squared local normalised cross-correlation of two 3D images.

    Per voxel ``cc = cov(a, b)^2 / (var(a) var(b) + eps)`` over the cube of
    ``window`` voxels around it (edge cubes clipped), as ANTs' ``CC`` metric;
    ``1`` for images equal up to a local linear intensity map (bias fields,
    contrast), about ``0`` where either image is flat. ``eps`` damps windows
    whose contrast is at the noise level (for images in [0, 1]: local standard
    deviations below about 0.05), so flat tissue adds little; the price is a
    bias: where the target is nearly flat, a deformation that brings contrast
    into the window scores a little higher. Differentiable.
    """
    if window < 1 or window % 2 == 0:
        raise ValueError(f"local_ncc: window must be an odd number >= 1, got {window}")

    def mean(x):
        return F.avg_pool3d(x[None, None], window, stride=1, padding=window // 2, count_include_pad=False)[0, 0]

    ma, mb = mean(a), mean(b)
    cov = mean(a * b) - ma * mb
    va = (mean(a * a) - ma * ma).clamp_min(0)
    vb = (mean(b * b) - mb * mb).clamp_min(0)
    return (cov * cov / (va * vb + eps)).mean()


class Objective:
    """``E(m0)`` and ``dE/dm0`` for one image pair.

    Parameters: ``I0`` moving, ``I1`` target (3D, same shape), ``spacing``
    (mm, 3 values), ``sigma``, ``similarity`` (``"ssd"``: the sum of squared
    differences above; ``"lncc"``: ``(1 - local_ncc) / (2 sigma^2)``, robust to
    bias fields and contrast, ``window`` voxels wide), kernel ``alpha, beta, gamma, power, scales``,
    ``time_steps``, ``pad`` (extra periodic voxels per axis), ``compile`` and
    ``store_velocities`` (see :class:`.shooting.Shooter`), ``dtype``, ``device``.
    """

    def __init__(self, I0, I1, spacing, *, sigma=0.2, alpha=DEFAULTS["alpha"], beta=DEFAULTS["beta"],
                 gamma=DEFAULTS["gamma"], power=DEFAULTS["power"], scales=SINGLE_SCALE, time_steps=10, pad=0,
                 compile="auto",
                 store_velocities="auto", similarity="ssd", window=5, dtype=torch.float32, device="cpu"):
        self.I0 = _as3d(I0, "I0", dtype, device)
        self.I1 = _as3d(I1, "I1", dtype, device)
        if self.I0.shape != self.I1.shape:
            raise ValueError(f"Objective: I0 {tuple(self.I0.shape)} and I1 {tuple(self.I1.shape)} differ in shape")
        if sigma <= 0:
            raise ValueError(f"Objective: sigma must be > 0, got {sigma}")
        if similarity not in SIMILARITIES:
            raise ValueError(f"Objective: similarity must be one of {', '.join(SIMILARITIES)}, got {similarity!r}")
        if int(window) < 1 or int(window) % 2 == 0:
            raise ValueError(f"Objective: window must be an odd number >= 1, got {window}")
        self.similarity, self.window = similarity, int(window)
        self.spacing = tuple(float(h) for h in spacing)
        self.shape = tuple(self.I0.shape)
        self.padded = padded_shape(self.shape, pad)
        self.sigma = float(sigma)
        self.nvox = self.shape[0] * self.shape[1] * self.shape[2]
        self.dtype, self.device = dtype, torch.device(device)
        self.kernel = FluidKernel(self.padded, self.spacing, alpha=alpha, beta=beta, gamma=gamma, power=power,
                                  scales=scales, dtype=dtype, device=device)
        self.shooter = Shooter(self.kernel, time_steps=time_steps, compile=compile, store_velocities=store_velocities)
        self._id = identity(self.shape, self.spacing, dtype=dtype, device=device)

    # grid helpers -----------------------------------------------------------
    def pad(self, f: torch.Tensor) -> torch.Tensor:
        """Image-grid field ``(3, *shape)`` -> periodic grid, zero outside."""
        return zero_pad(f, self.padded)

    def crop(self, f: torch.Tensor) -> torch.Tensor:
        """Periodic-grid field -> image grid."""
        return f[:, : self.shape[0], : self.shape[1], : self.shape[2]]

    def zeros(self) -> torch.Tensor:
        return torch.zeros((3, *self.shape), dtype=self.dtype, device=self.device)

    # energy -----------------------------------------------------------------
    def matching(self, u1: torch.Tensor) -> torch.Tensor:
        """``||I0 o (id + u1) - I1||^2 / (2 N sigma^2)`` (or the LNCC term) for ``u1`` on the image grid."""
        warped = sample(self.I0, self._id + u1, self.spacing)
        if self.similarity == "lncc":
            return (1.0 - local_ncc(warped, self.I1, self.window)) / (2.0 * self.sigma**2)
        r = warped - self.I1
        return (r * r).sum() / (2.0 * self.nvox * self.sigma**2)

    def evaluate(self, m0: torch.Tensor, *, grad: bool = True) -> "Evaluation":
        """Shoot ``m0`` (image grid, ``(3, *shape)``) and return the energy.

        With ``grad`` the step checkpoints are kept so that
        :meth:`Evaluation.gradient` can run the adjoint afterwards (an
        optimizer that rejects the step never pays for it).
        """
        if tuple(m0.shape) != (3, *self.shape):
            raise ValueError(f"Objective: m0 must be (3, {self.shape}), got {tuple(m0.shape)}")
        m0p = self.pad(m0.detach().to(self.dtype))
        _, u1, v0, ckpts = self.shooter.forward(m0p, checkpoints=grad)
        reg = float(0.5 * (m0p * v0).sum() / self.nvox)
        u1c = self.crop(u1)
        if not grad:
            with torch.no_grad():
                match = float(self.matching(u1c))
            return Evaluation(self, Energy(reg + match, match, reg), None, None, None)
        with torch.enable_grad():
            u1c = u1c.detach().requires_grad_(True)
            match_t = self.matching(u1c)
            (ubar,) = torch.autograd.grad(match_t, u1c)
        match = float(match_t.detach())
        return Evaluation(self, Energy(reg + match, match, reg), ckpts, ubar, v0)

    def __call__(self, m0: torch.Tensor, *, grad: bool = True):
        """``(Energy, dE/dm0 or None)``: :meth:`evaluate` and, with ``grad``, the adjoint."""
        ev = self.evaluate(m0, grad=grad)
        return ev.energy, (ev.gradient() if grad else None)

    def precondition(self, g: torch.Tensor) -> torch.Tensor:
        """``L^p g`` (pad, apply the operator, crop): the gradient in the metric of ``V``.

        A step ``dm0 = -eta L^p g`` changes the velocity by ``dv0 = -eta g``.
        """
        with torch.no_grad():
            return self.crop(self.kernel.apply_operator(self.pad(g)))

    def velocity(self, m0: torch.Tensor) -> torch.Tensor:
        """``v0 = K m0`` on the image grid."""
        with torch.no_grad():
            return self.crop(self.kernel.apply(self.pad(m0.to(self.dtype))))


class Evaluation:
    """Energy of one momentum and, on demand, its gradient (by the adjoint)."""

    def __init__(self, obj, energy, ckpts, ubar, v0):
        self.obj, self.energy = obj, energy
        self._ckpts, self._ubar, self._v0 = ckpts, ubar, v0

    def gradient(self) -> torch.Tensor:
        """``dE/dm0`` on the image grid; frees the checkpoints (call once)."""
        if self._ckpts is None:
            raise RuntimeError("Evaluation.gradient: evaluated without grad, or gradient already taken")
        obj = self.obj
        mbar = obj.shooter.backward(self._ckpts, obj.pad(self._ubar))
        self._ckpts = None
        return obj.crop(mbar + self._v0 / obj.nvox)


def energy_autograd(obj: Objective, m0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Naive reference: ``E(m0)`` with autograd through the whole RK4 trajectory (eager).

    Returns ``(total, matching, regularity)`` as differentiable tensors.
    Memory grows with every intermediate of every stage; for tests and the
    benchmark's baseline only.
    """
    sh = obj.shooter
    m0p = obj.pad(m0)
    m, u = m0p, torch.zeros_like(m0p)
    v0 = None
    for _ in range(sh.time_steps):
        m, u, v = rk4_step(m, u, sh.kernel, dt=sh.dt)
        if v0 is None:
            v0 = v
    reg = 0.5 * (m0p * v0).sum() / obj.nvox
    match = obj.matching(obj.crop(u))
    return reg + match, match, reg
