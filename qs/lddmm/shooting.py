"""Vector-momentum geodesic shooting (EPDiff, RK4) with its exact discrete adjoint: :class:`Shooter`.

The state and the equations are those of :mod:`.epdiff`: ``(m, u)``
integrated together with classical RK4 over ``t in [0, 1]`` in
``time_steps`` equal steps, on the kernel's periodic grid (mm). The forward
map ``phi_1 = id + w`` is obtained by the same Eulerian scheme run backwards
in time on the same velocities. A momentum given on an image grid (smaller
than the periodic grid) sits at the start of the periodic grid, zero
outside, and the outputs are cropped back to it (:meth:`Shooter.shoot`).

Gradient: :class:`Shooter` keeps only ``(m_k, u_k)`` at the start of each time
step (``2 x 3`` fields per step; plus the 4 stage velocities when that is
cheap, see ``store_velocities``) and, going backwards, recomputes one step's
four stages and pulls the cotangent back through them with hand-written
vector-Jacobian products (:func:`.epdiff.rhs_vjp`) -- the exact adjoint of the
discrete scheme, checked against autograd in the tests. Peak memory is the
checkpoints plus one step's stages; there is no autograd graph.

Speed: the time goes into element-wise stencil work, not the FFT. The stage
functions of :mod:`.epdiff` are what ``torch.compile`` (inductor, C++/OpenMP
on CPU) fuses into a few loops each (``compile=True``, or ``"auto"`` on grids
of at least ``COMPILE_MIN_VOXELS``); any compile failure falls back to eager
execution with a warning.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from .epdiff import fmap_last, fmap_stage, stage_cotangent, stage_fwd, stage_last, stage_next, stage_vjp
from .kernel import FluidKernel, symbol_multiply, zero_pad

# Grids with at least this many voxels use torch.compile when compile="auto".
COMPILE_MIN_VOXELS = 40**3


@dataclass
class Geodesic:
    """Result of :meth:`Shooter.shoot`: fields on the grid of the shot momentum (mm, voxel axes).

    ``m1``: momentum at t = 1; ``u1``: displacement of ``phi_1^{-1}``; ``v0``:
    initial velocity; ``w1``: displacement of ``phi_1`` (or None);
    ``velocities``: ``v_t`` at ``t_k = k / time_steps`` (or None).
    """

    m1: torch.Tensor
    u1: torch.Tensor
    v0: torch.Tensor
    w1: torch.Tensor | None = None
    velocities: list | None = None


SLAB_VOXELS = 1 << 19


def _slab_size(shape) -> int | None:
    """Slices per slab (a divisor of ``shape[0]``) for about ``SLAB_VOXELS`` voxels, or None."""
    n, plane = shape[0], shape[1] * shape[2]
    if n * plane <= 2 * SLAB_VOXELS:
        return None
    target = max(4, SLAB_VOXELS // plane)
    divisors = [d for d in range(4, n) if n % d == 0]
    return min(divisors, key=lambda d: abs(d - target)) if divisors else None


def _halo_slab(x: torch.Tensor, i0: int, b: int) -> torch.Tensor:
    """Slices ``i0 - 1 .. i0 + b`` (periodic) of ``x`` along its second axis."""
    n = x.shape[1]
    if i0 >= 1 and i0 + b + 1 <= n:
        return x[:, i0 - 1:i0 + b + 1]
    idx = torch.arange(i0 - 1, i0 + b + 1, device=x.device) % n
    return x.index_select(1, idx)


class Shooter:
    """EPDiff shooting on a periodic grid with an exact, checkpointed adjoint: the one shooting API.

    :meth:`shoot` gives the maps of a momentum (on an image grid or on the
    periodic grid); :meth:`forward` and :meth:`backward` are the checkpointed
    pass and its adjoint that :class:`.gradient.Objective` uses.

    The RK4 steps are written out here (the same arithmetic as
    :func:`.epdiff.rk4_step`) around a few stage functions -- right-hand side plus
    the RK4 update (:func:`.epdiff.stage_fwd` ...), the stage VJP (:func:`.epdiff.stage_vjp`),
    the kernel's symbol multiply -- which are what ``torch.compile`` fuses.
    Compiling each stage separately (rather than a whole step) keeps every
    stage's result in memory once instead of letting the compiler recompute
    stencils of stencils.

    Parameters
    ----------
    kernel: the :class:`FluidKernel` (its shape is the periodic grid).
    time_steps: RK4 steps over [0, 1] (default 10, as in the original code).
    compile: ``True``, ``False`` or ``"auto"`` (compile on grids of at least
        ``COMPILE_MIN_VOXELS`` voxels). Falls back to eager on any error.
    store_velocities: keep the 4 stage velocities of every step from the
        forward pass, so the adjoint need not recompute them (a third fewer
        FFTs for ``12 x time_steps`` extra fields). ``"auto"``: when that
        costs at most ``STORE_MAX_BYTES``.
    slabs: on large grids the stage functions run slab by slab along the first
        axis (with a one-voxel periodic halo; the stencils have radius one), so
        that their inputs, outputs and the compiler's intermediates stay in
        cache and peak memory does not grow with the grid. ``"auto"``: slabs of
        about ``SLAB_VOXELS`` voxels on grids of more than ``2 x SLAB_VOXELS``;
        an int: that many slices; None: whole grid.

    Memory of a gradient evaluation: ``6 x time_steps`` fields of checkpoints
    (+ ``12 x time_steps`` with stored velocities) plus one step's stages.
    """

    STORE_MAX_BYTES = 1 << 30

    def __init__(self, kernel: FluidKernel, time_steps: int = 10, compile="auto", store_velocities="auto",
                 slabs="auto"):
        if int(time_steps) < 1:
            raise ValueError(f"Shooter: time_steps must be >= 1, got {time_steps}")
        self.kernel = kernel
        self.time_steps = int(time_steps)
        self.dt = 1.0 / self.time_steps
        self.shape = kernel.shape
        self.spacing = kernel.spacing
        n = self.shape[0] * self.shape[1] * self.shape[2]
        if compile == "auto":
            compile = n >= COMPILE_MIN_VOXELS
        if store_velocities == "auto":
            itemsize = torch.empty((), dtype=kernel.dtype).element_size()
            store_velocities = 12 * self.time_steps * n * itemsize <= self.STORE_MAX_BYTES
        self.store_velocities = bool(store_velocities)
        self.slab = _slab_size(self.shape) if slabs == "auto" else (int(slabs) if slabs else None)
        self.compiled = False
        # module-level functions (each its own code object, so each has its own compile cache)
        self._eager = {f.__name__: f for f in (stage_fwd, stage_next, stage_last, stage_vjp, stage_cotangent,
                                               fmap_stage, fmap_last)}
        self._eager["mult"] = symbol_multiply
        self._fns = dict(self._eager)
        if compile:
            try:
                self._fns = {k: torch.compile(f, dynamic=False) for k, f in self._eager.items()}
                self.compiled = True
            except Exception as exc:  # torch.compile unavailable on this platform
                warnings.warn(f"Shooter: torch.compile unavailable ({exc}); running eager", stacklevel=2)

    def _call(self, name, *args):
        if self.slab and name not in ("mult", "stage_cotangent"):
            return self._call_slabs(name, *args)
        return self._call_fn(name, *args)

    def _call_fn(self, name, *args):
        if name != "mult":
            args = (*args, self.spacing)
        if self.compiled:
            try:
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message=".*does not support code generation for complex.*")
                    return self._fns[name](*args)
            except Exception as exc:  # compiler problems: fall back, keep going
                warnings.warn(f"Shooter: compiled '{name}' failed ({type(exc).__name__}: {exc}); "
                              "falling back to eager", stacklevel=3)
                self.compiled = False
                self._fns = dict(self._eager)
        return self._fns[name](*args)

    def _call_slabs(self, name, *args):
        """Apply a stage function slab by slab along axis 0 (periodic one-voxel halo)."""
        n, b = self.shape[0], self.slab
        outs = None
        for i0 in range(0, n, b):
            bb = min(b, n - i0)
            sl = [_halo_slab(a, i0, bb) if a.dim() == 4 else a for a in args]
            res = self._call_fn(name, *sl)
            if outs is None:
                outs = [torch.empty((r.shape[0], *self.shape), dtype=r.dtype, device=r.device) for r in res]
            for o, r in zip(outs, res):
                o[:, i0:i0 + bb].copy_(r[:, 1:-1])
        return tuple(outs)

    # primitives -------------------------------------------------------------
    def _multiply(self, sym, X):
        return self._call("mult", sym, X)

    def _velocity(self, m):
        """``K m`` with the (compiled) symbol product."""
        return self.kernel.apply(m, multiply=self._multiply)

    def _scalar(self, x):
        return torch.tensor(x, dtype=self.kernel.dtype, device=self.kernel.device)

    def _step(self, m, u, vs=None, *, stages_only=False):
        """One RK4 step; returns ``(m', u', (v1, ..., v4), stage states)``. ``vs``: known stage velocities.

        ``stages_only``: stop once the stage states are known (for the adjoint).
        """
        dt, S = self.dt, self._scalar
        half, full, c6, c3 = S(0.5 * dt), S(dt), S(dt / 6.0), S(dt / 3.0)
        vel = (lambda i, x: self._velocity(x)) if vs is None else (lambda i, x: vs[i])
        v1 = vel(0, m)
        if stages_only:
            m2, u2 = self._call("stage_next", m, u, v1, m, u, half)
            v2 = vel(1, m2)
            m3, u3 = self._call("stage_next", m2, u2, v2, m, u, half)
            v3 = vel(2, m3)
            m4, u4 = self._call("stage_next", m3, u3, v3, m, u, full)
            v4 = vel(3, m4)
            return None, None, (v1, v2, v3, v4), ((m, u), (m2, u2), (m3, u3), (m4, u4))
        m2, u2, am, au = self._call("stage_fwd", m, u, v1, m, u, m, u, half, c6)
        v2 = vel(1, m2)
        m3, u3, am, au = self._call("stage_fwd", m2, u2, v2, m, u, am, au, half, c3)
        v3 = vel(2, m3)
        m4, u4, am, au = self._call("stage_fwd", m3, u3, v3, m, u, am, au, full, c3)
        v4 = vel(3, m4)
        m_next, u_next = self._call("stage_last", m4, u4, v4, am, au, c6)
        return m_next, u_next, (v1, v2, v3, v4), ((m, u), (m2, u2), (m3, u3), (m4, u4))

    def _step_vjp(self, m, u, vs, mbar, ubar):
        """Adjoint of one step: ``kbar_4 = dt/6 ybar'``, ``kbar_3 = dt/3 ybar' + dt ybar_4``,
        ``kbar_2 = dt/3 ybar' + dt/2 ybar_3``, ``kbar_1 = dt/6 ybar' + dt/2 ybar_2``,
        ``ybar = ybar' + sum_i ybar_i``, ``ybar_i = (d rhs / d y)(stage i)^T kbar_i``."""
        dt, S = self.dt, self._scalar
        _, _, vs, st = self._step(m, u, vs, stages_only=True)  # recompute the stage states
        c6 = dt / 6.0
        st, vs = list(st), list(vs)
        mb, ub, vb = self._call("stage_vjp", st[3][0], st[3][1], vs[3], mbar * c6, ubar * c6)
        st[3] = vs[3] = None  # free each stage as soon as it is done
        am, au = mbar, ubar
        for i, c, a in ((2, dt / 3.0, dt), (1, dt / 3.0, 0.5 * dt), (0, dt / 6.0, 0.5 * dt)):
            A, B, am, au = self._call("stage_cotangent", mbar, ubar, mb, self._velocity(vb), ub, am, au, S(c), S(a))
            del mb, ub, vb
            mb, ub, vb = self._call("stage_vjp", st[i][0], st[i][1], vs[i], A, B)
            del A, B
            st[i] = vs[i] = None
        return am.add_(mb).add_(self._velocity(vb)), au.add_(ub)

    def _fmap_step(self, w, va, vb2, vb3, vc):
        """RK4 step of ``dw/ds = (Dw) v + v`` with velocities at s, s + dt/2 (two estimates), s + dt."""
        dt, S = self.dt, self._scalar
        half, c6, c3 = S(0.5 * dt), S(dt / 6.0), S(dt / 3.0)
        w2, acc = self._call("fmap_stage", w, va, w, w, half, c6)
        w3, acc = self._call("fmap_stage", w2, vb2, w, acc, half, c3)
        w4, acc = self._call("fmap_stage", w3, vb3, w, acc, S(dt), c3)
        return self._call("fmap_last", w4, vc, acc, c6)[0]

    # forward with checkpoints ---------------------------------------------
    def forward(self, m0: torch.Tensor, *, checkpoints: bool = True):
        """Integrate (m, u) from ``(m0, 0)`` (``m0`` on the periodic grid); returns ``(m1, u1, v0, ckpts)``.

        ``ckpts`` lists, per step, ``(m_k, u_k)`` at its start and the 4 stage
        velocities (or None when not stored); None if ``checkpoints`` is False.
        """
        self._check(m0)
        m, u = m0, torch.zeros_like(m0)
        ckpts = [] if checkpoints else None
        v0 = None
        with torch.no_grad():
            for _ in range(self.time_steps):
                m_next, u_next, vs, _ = self._step(m, u)
                if checkpoints:
                    ckpts.append((m, u, vs if self.store_velocities else None))
                if v0 is None:
                    v0 = vs[0]
                m, u = m_next, u_next
        return m, u, v0, ckpts

    def backward(self, ckpts, ubar1: torch.Tensor, mbar1: torch.Tensor | None = None) -> torch.Tensor:
        """Cotangent of ``m0`` given cotangents of ``u1`` (and ``m1``), by the discrete adjoint."""
        mbar = torch.zeros_like(ubar1) if mbar1 is None else mbar1
        ubar = ubar1
        with torch.no_grad():
            for k in range(len(ckpts) - 1, -1, -1):
                m, u, vs = ckpts[k]
                ckpts[k] = None  # free as we go
                mbar, ubar = self._step_vjp(m, u, vs, mbar, ubar)
        return mbar

    # full shooting (outputs) ----------------------------------------------
    def shoot(self, m0: torch.Tensor, *, forward_map: bool = False, velocities: bool = False) -> Geodesic:
        """Shoot the momentum ``m0``; optionally also ``phi_1`` (``w1``) and the velocities ``v_t``.

        ``m0`` is ``(3, *S)`` on an image grid ``S`` that fits in the periodic
        grid: it is moved to the kernel's device and dtype, placed at the start
        of the periodic grid (zero outside, :func:`.kernel.zero_pad`) and every
        output is cropped back to ``S``. With ``S`` the periodic grid itself
        nothing is padded or cropped.
        """
        image = tuple(m0.shape[1:])
        if len(image) != 3 or any(n > p for n, p in zip(image, self.shape)):
            raise ValueError(f"Shooter: momentum must be (3, I, J, K) within the periodic grid {self.shape}, "
                             f"got {tuple(m0.shape)}")
        geo = self._shoot(zero_pad(m0.to(self.kernel.device, self.kernel.dtype), self.shape), forward_map, velocities)
        if image == self.shape:
            return geo
        I, J, K = image
        crop = lambda f: None if f is None else f[:, :I, :J, :K]  # noqa: E731
        return Geodesic(m1=crop(geo.m1), u1=crop(geo.u1), v0=crop(geo.v0), w1=crop(geo.w1),
                        velocities=None if geo.velocities is None else [crop(v) for v in geo.velocities])

    def _shoot(self, m0: torch.Tensor, forward_map: bool, velocities: bool) -> Geodesic:
        """:meth:`shoot` on the periodic grid."""
        m1, u1, v0, ckpts = self.forward(m0, checkpoints=forward_map or velocities)
        out = Geodesic(m1=m1, u1=u1, v0=v0)
        if not (forward_map or velocities):
            return out
        with torch.no_grad():
            v_next = self._velocity(m1)  # velocity at t = 1
            vt = [v_next]
            w = torch.zeros_like(m0) if forward_map else None
            for k in range(self.time_steps - 1, -1, -1):
                m, u, vs = ckpts[k]
                ckpts[k] = None
                if vs is None:
                    vs = self._step(m, u, stages_only=True)[2]
                if forward_map:  # s = 1 - t runs from t_{k+1} down to t_k
                    w = self._fmap_step(w, v_next, vs[2], vs[1], vs[0])
                v_next = vs[0]
                vt.append(v_next)
        out.w1 = w
        if velocities:
            out.velocities = vt[::-1]
        return out

    def _check(self, m0):
        if m0.shape != (3, *self.shape):
            raise ValueError(f"Shooter: momentum must be (3, {self.shape}) on the padded grid, got {tuple(m0.shape)}")
