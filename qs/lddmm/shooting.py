"""Vector-momentum geodesic shooting (EPDiff) with RK4, and its exact discrete adjoint.

State on the periodic (padded) grid, component ``c`` along voxel axis ``c``, mm:

* ``m`` momentum, ``v = K m`` velocity (mm per unit time, ``K`` from :mod:`.kernel`);
* ``u`` displacement of the inverse map, ``phi_t^{-1}(x) = x + u(x)`` (mm).

Equations (``D_j`` = central difference along axis ``j`` divided by ``2 h_j``,
periodic; ``div v = sum_j D_j v_j``)::

    dm_i/dt = -sum_j v_j D_j m_i  -  m_i div v  -  sum_j m_j D_i v_j
              (= -(Dm) v - m div v - (Dv)^T m, EPDiff in vector-momentum form)
    du_i/dt = -sum_j v_j D_j u_i  -  v_i
              (= d(phi^{-1})/dt = -D(phi^{-1}) v, with phi^{-1} = id + u)

both integrated together with classical RK4 over ``t in [0, 1]`` in
``time_steps`` equal steps. The forward map ``phi_1 = id + w`` is obtained by
the same Eulerian scheme run backwards in time on the same velocities,
``dw/ds = v_{1-s} + (Dw) v_{1-s}`` (``phi_1`` is the inverse of the flow of
``-v_{1-s}``).

Gradient: :class:`Shooter` keeps only ``(m_k, u_k)`` at the start of each time
step (``2 x 3`` fields per step; plus the 4 stage velocities when that is
cheap, see ``store_velocities``) and, going backwards, recomputes one step's
four stages and pulls the cotangent back through them with hand-written
vector-Jacobian products (:func:`rhs_vjp`) -- the exact adjoint of the
discrete scheme, checked against autograd in the tests. Peak memory is the
checkpoints plus one step's stages; there is no autograd graph.

Speed: the time goes into element-wise stencil work, not the FFT. The stage
functions (:func:`stage_fwd`, :func:`stage_vjp`, ...) are plain tensor code
that ``torch.compile`` (inductor, C++/OpenMP on CPU) fuses into a few loops
each (``compile=True``, or ``"auto"`` on grids of at least
``COMPILE_MIN_VOXELS``); any compile failure falls back to eager execution
with a warning. :func:`rk4_step` is the same step written as one plain
function: the reference that the naive autograd baseline and the tests use.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from .kernel import FluidKernel, irfft3, rfft3, symbol_multiply

# Grids with at least this many voxels use torch.compile when compile="auto".
COMPILE_MIN_VOXELS = 40**3


# --------------------------------------------------------------------------
# Differential operators and right-hand sides (fields are (3, I, J, K))
# --------------------------------------------------------------------------

def cdiff(f: torch.Tensor, axis: int, h: float) -> torch.Tensor:
    """Central difference ``(f[x+1] - f[x-1]) / 2h`` along spatial ``axis`` (0, 1, 2), periodic.

    Along the two outer axes this is a pair of ``roll``s. Along the innermost
    (contiguous) axis the interior and the two wrapped end voxels are written
    separately: the same numbers, but ``torch.compile`` turns it into
    contiguous vector loads instead of per-element modulo gathers (2x faster).
    """
    if axis < 2:
        ax = axis - 3
        return (torch.roll(f, -1, ax) - torch.roll(f, 1, ax)) * (0.5 / h)
    n = f.shape[-1]
    inner = torch.nn.functional.pad(f[..., 2:] - f[..., :-2], (1, 1))
    k = torch.arange(n, device=f.device)
    out = torch.where(k == 0, f[..., 1:2] - f[..., n - 1:], torch.where(k == n - 1, f[..., :1] - f[..., n - 2:n - 1], inner))
    return out * (0.5 / h)


def epdiff_rhs(m, v, spacing):
    """``dm/dt = -(Dm) v - m div v - (Dv)^T m``."""
    adv = sum(v[j] * cdiff(m, j, spacing[j]) for j in range(3))
    div = sum(cdiff(v[j], j, spacing[j]) for j in range(3))
    dv = [cdiff(v, i, spacing[i]) for i in range(3)]  # dv[i][j] = D_i v_j
    coad = torch.stack([(m * dv[i]).sum(0) for i in range(3)])
    return -(adv + m * div + coad)


def map_rhs(u, v, spacing):
    """``du/dt = -(Du) v - v`` for ``phi^{-1} = id + u``."""
    return -(sum(v[j] * cdiff(u, j, spacing[j]) for j in range(3)) + v)


def forward_map_rhs(w, v, spacing):
    """``dw/ds = (Dw) v + v`` (forward map, integrated backwards in time)."""
    return sum(v[j] * cdiff(w, j, spacing[j]) for j in range(3)) + v


def rhs_vjp(m, u, v, a, b, spacing):
    """Pull cotangents ``a`` (of dm/dt) and ``b`` (of du/dt) back to ``(m, u, v)``.

    With ``D^T = -D`` (periodic central differences)::

        mbar   = sum_j D_j(v_j a) - a div v - [sum_k a_k D_k v_i]_i
        vbar_j = -sum_i a_i D_j m_i + D_j(a . m) + sum_i D_i(a_i m_j)
                 - sum_i b_i D_j u_i - b_j
        ubar   = sum_j D_j(v_j b)

    Returns ``(mbar, ubar, vbar)``; the caller adds ``K vbar`` to ``mbar``.
    """
    h = spacing
    div = sum(cdiff(v[j], j, h[j]) for j in range(3))
    mbar = sum(cdiff(v[j] * a, j, h[j]) for j in range(3)) - a * div
    mbar = mbar - sum(a[k] * cdiff(v, k, h[k]) for k in range(3))
    am = (a * m).sum(0)
    vbar = torch.stack([
        cdiff(am, j, h[j]) - (a * cdiff(m, j, h[j])).sum(0) - (b * cdiff(u, j, h[j])).sum(0)
        for j in range(3)
    ])
    vbar = vbar + sum(cdiff(a[i] * m, i, h[i]) for i in range(3)) - b
    ubar = sum(cdiff(v[j] * b, j, h[j]) for j in range(3))
    return mbar, ubar, vbar


# --------------------------------------------------------------------------
# Reference RK4 step (plain autograd-friendly code: the naive baseline and the tests)
# --------------------------------------------------------------------------

def _kapply(ksym, m, shape):
    X = torch.fft.rfftn(m, dim=(-3, -2, -1))
    return torch.fft.irfftn(symbol_multiply(ksym, X), s=shape, dim=(-3, -2, -1))


def rk4_step(m, u, ksym, *, dt, spacing, shape):
    """One RK4 step of (m, u); returns ``(m', u', v)`` with ``v = K m`` at the step start."""
    v1 = _kapply(ksym, m, shape)
    r1, q1 = epdiff_rhs(m, v1, spacing), map_rhs(u, v1, spacing)
    m2, u2 = m + (0.5 * dt) * r1, u + (0.5 * dt) * q1
    v2 = _kapply(ksym, m2, shape)
    r2, q2 = epdiff_rhs(m2, v2, spacing), map_rhs(u2, v2, spacing)
    m3, u3 = m + (0.5 * dt) * r2, u + (0.5 * dt) * q2
    v3 = _kapply(ksym, m3, shape)
    r3, q3 = epdiff_rhs(m3, v3, spacing), map_rhs(u3, v3, spacing)
    m4, u4 = m + dt * r3, u + dt * q3
    v4 = _kapply(ksym, m4, shape)
    r4, q4 = epdiff_rhs(m4, v4, spacing), map_rhs(u4, v4, spacing)
    c = dt / 6.0
    return m + c * (r1 + 2.0 * (r2 + r3) + r4), u + c * (q1 + 2.0 * (q2 + q3) + q4), v1


def stage_fwd(m, u, v, m0, u0, acc_m, acc_u, a, c, spacing):
    """RK4 stage: ``k = rhs(m, u, v)``; returns ``(y0 + a k, acc + c k)`` for ``y = (m, u)``."""
    r, q = epdiff_rhs(m, v, spacing), map_rhs(u, v, spacing)
    return m0 + a * r, u0 + a * q, acc_m + c * r, acc_u + c * q


def stage_next(m, u, v, m0, u0, a, spacing):
    """RK4 stage state only: ``y0 + a rhs(m, u, v)``."""
    r, q = epdiff_rhs(m, v, spacing), map_rhs(u, v, spacing)
    return m0 + a * r, u0 + a * q


def stage_last(m, u, v, acc_m, acc_u, c, spacing):
    """Last RK4 stage: ``acc + c rhs(m, u, v)`` (the step's result)."""
    r, q = epdiff_rhs(m, v, spacing), map_rhs(u, v, spacing)
    return acc_m + c * r, acc_u + c * q


def stage_vjp(m, u, v, a, b, spacing):
    """Adjoint of one stage for cotangent ``(a, b)``: :func:`rhs_vjp` (compiled on its own, so
    that ``a`` and ``b`` are read from memory by the stencils, not recomputed at every neighbour)."""
    return rhs_vjp(m, u, v, a, b, spacing)


def stage_cotangent(mbar, ubar, pm, pk, pu, acc_m, acc_u, c, a, spacing):
    """Cotangent of an earlier stage, ``c ybar' + a ybar_i``, where ``ybar_i = (pm + pk, pu)`` is
    the later stage's result (``pk`` its kernel part); also adds ``ybar_i`` to ``acc``."""
    pmk = pm + pk
    return c * mbar + a * pmk, c * ubar + a * pu, acc_m + pmk, acc_u + pu


def fmap_stage(w, v, w0, acc, a, c, spacing):
    """Forward-map RK4 stage: ``k = (Dw) v + v``; returns ``(w0 + a k, acc + c k)``."""
    k = forward_map_rhs(w, v, spacing)
    return w0 + a * k, acc + c * k


def fmap_last(w, v, acc, c, spacing):
    """Last forward-map RK4 stage: ``acc + c ((Dw) v + v)``."""
    return (acc + c * forward_map_rhs(w, v, spacing),)


# --------------------------------------------------------------------------
# The shooter: checkpointed forward, adjoint backward, full shooting
# --------------------------------------------------------------------------

@dataclass
class Geodesic:
    """Result of :meth:`Shooter.shoot` (fields on the shooter's padded grid).

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
    """EPDiff shooting on a periodic grid with an exact, checkpointed adjoint.

    The RK4 steps are written out here (the same arithmetic as
    :func:`rk4_step`) around a few stage functions -- right-hand side plus
    the RK4 update (:func:`stage_fwd` ...), the stage VJP (:func:`stage_vjp`),
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
    def _K(self, x):
        return irfft3(self._call("mult", self.kernel._K, rfft3(x)), self.shape)

    def _scalar(self, x):
        return torch.tensor(x, dtype=self.kernel.dtype, device=self.kernel.device)

    def _step(self, m, u, vs=None, *, stages_only=False):
        """One RK4 step; returns ``(m', u', (v1, ..., v4), stage states)``. ``vs``: known stage velocities.

        ``stages_only``: stop once the stage states are known (for the adjoint).
        """
        dt, S = self.dt, self._scalar
        half, full, c6, c3 = S(0.5 * dt), S(dt), S(dt / 6.0), S(dt / 3.0)
        vel = (lambda i, x: self._K(x)) if vs is None else (lambda i, x: vs[i])
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
            A, B, am, au = self._call("stage_cotangent", mbar, ubar, mb, self._K(vb), ub, am, au, S(c), S(a))
            del mb, ub, vb
            mb, ub, vb = self._call("stage_vjp", st[i][0], st[i][1], vs[i], A, B)
            del A, B
            st[i] = vs[i] = None
        return am.add_(mb).add_(self._K(vb)), au.add_(ub)

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
        """Integrate (m, u) from ``(m0, 0)``; returns ``(m1, u1, v0, ckpts)``.

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
        """Shoot ``m0``; optionally also ``phi_1`` (``w1``) and the velocities ``v_t``."""
        m1, u1, v0, ckpts = self.forward(m0, checkpoints=forward_map or velocities)
        out = Geodesic(m1=m1, u1=u1, v0=v0)
        if not (forward_map or velocities):
            return out
        with torch.no_grad():
            v_next = self._K(m1)  # velocity at t = 1
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
