"""Minimise ``E(m0)`` over the initial momentum by gradient descent.

Each iteration evaluates the energy (one shooting) and, when the step is
accepted, its gradient (one adjoint pass). Three update rules (``method``):

* ``"gd"`` (the original Quicksilver code's rule):
  ``m0 <- m0 - eta * g`` with ``g = dE/dm0``. The momentum accumulates
  kernel-smoothed gradients, so it stays smooth and the deformation is the
  smoothest that matches; in our tests it recovers known deformations best.
  Smooth is not local, though: such a momentum at a voxel depends on image
  content a kernel width away, beyond a 15^3 patch (demo pair, 2 mm:
  a 2-voxel Gaussian keeps 85% of its norm; gd-V's keeps 10%).
* ``"gd-V"``: the gradient in the metric of the velocity space,
  ``m0 <- m0 - eta * L^p g`` (i.e. ``v0 <- v0 - eta * g``, Beg et al. 2005).
  Lowers the energy about twice as fast per iteration, but the momentum
  becomes edge-localised (rough) and folds come closer (smaller det J).
  Its momentum is a sum of adjoint momenta (image gradient times a local
  residual), local like the original code's training targets. On the demo
  (LNCC, 40 evaluations) it reaches a lower energy than ``lbfgs`` with a
  smaller velocity and the same label overlap (0.8499 vs 0.8497).
* ``"lbfgs"`` (default): limited-memory BFGS (Nocedal & Wright, alg. 7.4) on the
  ``gd`` gradients, with a backtracking (Armijo) line search. Its directions
  are combinations of the smooth ``gd`` gradients, so the momentum stays as
  smooth as with ``gd``; on demo brains it reaches in 15 iterations the
  energy ``gd`` reaches in 40.

Step size (``gd``, ``gd-V`` and the first ``lbfgs`` step): ``step`` is the largest velocity change (mm) of the first update
(default half a voxel); it fixes ``eta``. With ``adaptive=True`` (default) a
step that does not lower the energy is rejected (costing one shooting, no
adjoint) and ``eta`` halved, an accepted one grows ``eta`` by 10% -- the
energy never increases. ``adaptive=False`` keeps ``eta`` fixed
(the original's fixed-step gradient descent) and accepts every step.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from .gradient import Energy, Objective


METHODS = ("lbfgs", "gd", "gd-V")


@dataclass
class OptimizeResult:
    """``m0`` (image grid), its ``energy`` and the per-iteration ``history``.

    ``history`` rows: ``iteration`` (0 = the initial momentum), ``energy``,
    ``matching``, ``regularity`` of the current (accepted) momentum after that
    iteration, ``seconds`` since the start, ``accepted``, ``eta``.
    """

    m0: torch.Tensor
    energy: Energy
    history: list = field(default_factory=list)


def optimize(obj: Objective, *, iterations: int = 100, m0: torch.Tensor | None = None, step: float | None = None,
             method: str = "lbfgs", adaptive: bool = True, grow: float = 1.1, progress: bool = True,
             callback=None) -> OptimizeResult:
    """Gradient descent on ``m0`` for ``iterations`` energy evaluations.

    ``step`` (mm) defaults to half the smallest voxel size; ``grow`` is the
    factor by which an accepted step enlarges ``eta``. ``callback(row)`` is
    called after every iteration with the history row.
    """
    if method not in METHODS:
        raise ValueError(f"optimize: method must be one of {', '.join(METHODS)}, got {method!r}")
    if iterations < 0:
        raise ValueError(f"optimize: iterations must be >= 0, got {iterations}")
    step = float(0.5 * min(obj.spacing) if step is None else step)
    if step <= 0:
        raise ValueError(f"optimize: step must be > 0, got {step}")
    m = obj.zeros() if m0 is None else m0.detach().to(dtype=obj.dtype, device=obj.device).clone()
    t0 = time.perf_counter()
    ev = obj.evaluate(m)
    energy, g = ev.energy, ev.gradient()
    history = [_row(0, energy, t0, True, 0.0)]
    if callback:
        callback(history[-1])
    show = progress and sys.stderr.isatty()
    if method == "lbfgs":
        return _lbfgs(obj, m, energy, g, t0, history, iterations, step, show, callback)
    eta = None
    bar = tqdm(range(1, iterations + 1), desc="lddmm", unit="it", disable=not show, leave=False)
    for it in bar:
        d = obj.precondition(g) if method == "gd-V" else g
        if eta is None:
            dv = g if method == "gd-V" else obj.velocity(g)  # velocity change per unit eta
            scale = float(dv.abs().max())
            if not math.isfinite(scale) or scale == 0.0:
                history.append(_row(it, energy, t0, False, 0.0))
                break  # zero gradient: already optimal
            eta = step / scale
        trial = m - eta * d
        ev = obj.evaluate(trial)
        ok = math.isfinite(ev.energy.total) and (ev.energy.total < energy.total or not adaptive)
        if ok:
            m, energy, g = trial, ev.energy, ev.gradient()
            if adaptive:
                eta *= grow
        else:
            del ev
            eta *= 0.5
        history.append(_row(it, energy, t0, ok, eta))
        bar.set_postfix(E=f"{energy.total:.4g}", match=f"{energy.matching:.4g}")
        if callback:
            callback(history[-1])
    bar.close()
    return OptimizeResult(m0=m, energy=energy, history=history)


def _lbfgs(obj, m, energy, g, t0, history, iterations, step, show, callback, memory: int = 8,
           armijo: float = 1e-4) -> OptimizeResult:
    """L-BFGS with backtracking; every energy evaluation counts as one iteration.

    The first trial step is scaled like gradient descent's (largest velocity
    change ``step`` mm); later ones try the quasi-Newton step (length 1) and
    halve it until the energy drops by the Armijo fraction. A direction that
    is not a descent direction, or a line search that fails 8 times, resets
    the memory to steepest descent.
    """
    pairs: list[tuple[torch.Tensor, torch.Tensor, float]] = []  # (s, y, 1 / y.s)
    bar = tqdm(range(1, iterations + 1), desc="lddmm", unit="it", disable=not show, leave=False)
    it = 0

    def direction():
        if not pairs:
            scale = float(obj.velocity(g).abs().max())
            if not math.isfinite(scale) or scale == 0.0:
                return None, 0.0
            return -g * (step / scale), 1.0
        q = g.clone()
        alphas = []
        for s_, y_, rho in reversed(pairs):
            a = rho * float((s_ * q).sum())
            alphas.append(a)
            q -= a * y_
        s_, y_, _ = pairs[-1]
        q *= float((s_ * y_).sum()) / float((y_ * y_).sum())
        for (s_, y_, rho), a in zip(pairs, reversed(alphas)):
            b = rho * float((y_ * q).sum())
            q += (a - b) * s_
        return -q, 1.0

    while it < iterations:
        d, t = direction()
        if d is None:
            break  # zero gradient: already optimal
        slope = float((g * d).sum())
        if slope >= 0:  # not a descent direction: forget the curvature pairs
            pairs.clear()
            continue
        accepted = False
        for _ in range(8):
            if it >= iterations:
                break
            it += 1
            trial = m + t * d
            ev = obj.evaluate(trial)
            if math.isfinite(ev.energy.total) and ev.energy.total <= energy.total + armijo * t * slope:
                g_new = ev.gradient()
                s_vec, y_vec = trial - m, g_new - g
                sy = float((s_vec * y_vec).sum())
                if sy > 1e-12 * float((y_vec * y_vec).sum()) ** 0.5 * float((s_vec * s_vec).sum()) ** 0.5:
                    pairs.append((s_vec, y_vec, 1.0 / sy))
                    del pairs[:-memory]
                m, energy, g = trial, ev.energy, g_new
                accepted = True
            else:
                del ev
                t *= 0.5
            history.append(_row(it, energy, t0, accepted, t))
            bar.update(1)
            bar.set_postfix(E=f"{energy.total:.4g}", match=f"{energy.matching:.4g}")
            if callback:
                callback(history[-1])
            if accepted:
                break
        if not accepted and it < iterations:
            pairs.clear()
    bar.close()
    return OptimizeResult(m0=m, energy=energy, history=history)


def _row(it, e: Energy, t0, accepted, eta) -> dict:
    return {"iteration": it, "energy": e.total, "matching": e.matching, "regularity": e.regularity,
            "seconds": time.perf_counter() - t0, "accepted": bool(accepted), "eta": float(eta)}
