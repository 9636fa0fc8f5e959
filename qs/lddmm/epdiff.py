"""EPDiff in vector-momentum form on a periodic grid: right-hand sides, their exact VJP, RK4 stages.

Fields are ``(3, I, J, K)`` on the periodic (padded) grid, component ``c``
along voxel axis ``c``, in mm; ``spacing`` is in mm:

* ``m`` momentum, ``v = K m`` velocity (mm per unit time, ``K`` from :mod:`.kernel`);
* ``u`` displacement of the inverse map, ``phi_t^{-1}(x) = x + u(x)`` (mm);
* ``w`` displacement of the forward map ``phi_1 = id + w`` (mm).

Equations (``D_j`` = central difference along axis ``j`` divided by ``2 h_j``,
periodic; ``div v = sum_j D_j v_j``)::

    dm_i/dt = -sum_j v_j D_j m_i  -  m_i div v  -  sum_j m_j D_i v_j
              (= -(Dm) v - m div v - (Dv)^T m, EPDiff in vector-momentum form)
    du_i/dt = -sum_j v_j D_j u_i  -  v_i
              (= d(phi^{-1})/dt = -D(phi^{-1}) v, with phi^{-1} = id + u)
    dw/ds   = (Dw) v_{1-s} + v_{1-s}
              (phi_1, the inverse of the flow of -v_{1-s}, integrated backwards in time)

The stage functions (:func:`stage_fwd`, :func:`stage_vjp`, ...) are plain
tensor code that :class:`.shooting.Shooter` runs eagerly or through
``torch.compile``; :func:`rk4_step` is one whole step written as one plain
function: the reference that the naive autograd baseline and the tests use.
"""

from __future__ import annotations

import torch

from .kernel import FluidKernel


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

def rk4_step(m, u, kernel: FluidKernel, *, dt):
    """One RK4 step of (m, u) on ``kernel``'s periodic grid; returns ``(m', u', v)`` with ``v = K m`` at the step start."""
    spacing = kernel.spacing
    v1 = kernel.apply(m)
    r1, q1 = epdiff_rhs(m, v1, spacing), map_rhs(u, v1, spacing)
    m2, u2 = m + (0.5 * dt) * r1, u + (0.5 * dt) * q1
    v2 = kernel.apply(m2)
    r2, q2 = epdiff_rhs(m2, v2, spacing), map_rhs(u2, v2, spacing)
    m3, u3 = m + (0.5 * dt) * r2, u + (0.5 * dt) * q2
    v3 = kernel.apply(m3)
    r3, q3 = epdiff_rhs(m3, v3, spacing), map_rhs(u3, v3, spacing)
    m4, u4 = m + dt * r3, u + dt * q3
    v4 = kernel.apply(m4)
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
