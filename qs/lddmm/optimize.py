"""Minimise ``E(m0)`` over the initial momentum by gradient descent.

Each iteration evaluates the energy (one shooting) and, when the step is
accepted, its gradient (one adjoint pass). Two update rules:

* ``metric="l2"`` (default, the original Quicksilver code's rule):
  ``m0 <- m0 - eta * g`` with ``g = dE/dm0``. The momentum accumulates
  kernel-smoothed gradients, so it stays smooth (a good regression target for
  the prediction network) and the deformation is the smoothest that matches;
  in our tests it recovers known deformations best.
* ``metric="V"``: the gradient in the metric of the velocity space,
  ``m0 <- m0 - eta * L^p g`` (i.e. ``v0 <- v0 - eta * g``, Beg et al. 2005).
  Lowers the energy about twice as fast per iteration, but the momentum
  becomes edge-localised (rough) and folds come closer (smaller det J).

Step size: ``step`` is the largest velocity change (mm) of the first update
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
             metric: str = "l2", adaptive: bool = True, grow: float = 1.1, progress: bool = True,
             callback=None) -> OptimizeResult:
    """Gradient descent on ``m0`` for ``iterations`` energy evaluations.

    ``step`` (mm) defaults to half the smallest voxel size; ``grow`` is the
    factor by which an accepted step enlarges ``eta``. ``callback(row)`` is
    called after every iteration with the history row.
    """
    if metric not in ("V", "l2"):
        raise ValueError(f"optimize: metric must be 'V' or 'l2', got {metric!r}")
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
    eta = None
    show = progress and sys.stderr.isatty()
    bar = tqdm(range(1, iterations + 1), desc="lddmm", unit="it", disable=not show, leave=False)
    for it in bar:
        d = obj.precondition(g) if metric == "V" else g
        if eta is None:
            dv = g if metric == "V" else obj.velocity(g)  # velocity change per unit eta
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


def _row(it, e: Energy, t0, accepted, eta) -> dict:
    return {"iteration": it, "energy": e.total, "matching": e.matching, "regularity": e.regularity,
            "seconds": time.perf_counter() - t0, "accepted": bool(accepted), "eta": float(eta)}
