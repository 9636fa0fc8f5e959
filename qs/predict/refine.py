"""Test-time refinement: a few evaluations of the LDDMM energy, started from the predicted momentum.

The network's momentum is a start, not an optimum: :func:`refine_momentum`
runs the LDDMM optimiser (:func:`qs.lddmm.lddmm_registration`, L-BFGS) on
the pair for a few energy evaluations from it, with the model's own kernel,
time steps and ``sigma`` (so the refined momentum is what ``qs lddmm`` would
have moved towards), optionally first on the grid twice as coarse
(``coarse_iterations``). This is instance optimisation as the recent learned
registration methods do it; with 0 iterations nothing is refined.

Images ``(I, J, K)`` on one working grid of ``spacing`` mm, momenta
``(3, I, J, K)`` on it (component ``c`` along voxel axis ``c``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..fields import kernel_settings
from ..lddmm import lddmm_registration
from ..lddmm.gradient import SIMILARITIES


@dataclass(frozen=True)
class Refinement:
    """How a predicted momentum is refined: ``iterations`` energy evaluations on the working grid after
    ``coarse_iterations`` on the grid twice as coarse, matching with ``similarity`` (``lncc`` window
    ``window`` voxels, or ``ssd``)."""

    iterations: int
    coarse_iterations: int = 0
    similarity: str = "lncc"
    window: int = 5

    def __post_init__(self):
        if int(self.iterations) < 0 or int(self.coarse_iterations) < 0:
            raise ValueError(f"refinement: iterations must be >= 0, got {self.iterations} and "
                             f"{self.coarse_iterations} (coarse)")
        if self.similarity not in SIMILARITIES:
            raise ValueError(f"refinement: similarity must be one of {', '.join(SIMILARITIES)}, "
                             f"got {self.similarity!r}")

    @property
    def active(self) -> bool:
        return int(self.iterations) + int(self.coarse_iterations) > 0


def refine_momentum(m0: torch.Tensor, moving, target, meta: dict, spacing, refinement: Refinement, *,
                    device="cpu", compile="auto"):
    """Refine ``m0`` for ``moving`` -> ``target`` with the model ``meta``'s LDDMM settings.

    Returns the :class:`qs.lddmm.registration.RegistrationResult` of the
    optimisation started from ``m0`` (its ``m0``, ``phiinv``, ``warped`` and
    ``summary``, whose ``energy_start`` is the energy of ``m0`` on the working grid).
    """
    k = kernel_settings(meta)
    return lddmm_registration(moving, target, tuple(float(h) for h in spacing), m0=m0,
                              iterations=int(refinement.iterations),
                              coarse_iterations=int(refinement.coarse_iterations), alpha=k["alpha"], beta=k["beta"],
                              gamma=k["gamma"], power=k["power"], scales=k["scales"], time_steps=k["time_steps"],
                              sigma=float(meta["sigma"]), similarity=refinement.similarity,
                              window=int(refinement.window), device=device, compile=compile, progress=False)
