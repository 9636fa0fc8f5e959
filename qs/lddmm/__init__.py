"""LDDMM engine: fluid kernel, EPDiff geodesic shooting, adjoint gradient, optimizer.

Layers (pure tensor code; file I/O only in :mod:`.run`):

* :mod:`.kernel`   -- ``K = (-alpha Lap - beta grad div + gamma)^{-p}`` in the Fourier domain (mm units)
* :mod:`.shooting` -- EPDiff + inverse map, RK4, checkpointed exact adjoint (:class:`Shooter`)
* :mod:`.gradient` -- the energy ``E(m0)`` and its gradient (:class:`Objective`)
* :mod:`.optimize` -- L-BFGS or gradient descent on ``m0`` (:func:`optimize`)
* :mod:`.warp`     -- sampling images/labels/fields at maps in mm
* :mod:`.jacobian` -- det J of maps
* :mod:`.run`      -- :func:`register` (tensors) and :func:`run_lddmm` (files)

Conventions: fields are ``(3, I, J, K)``, component ``c`` along voxel axis
``c``, in mm; maps are positions in mm relative to the grid origin (see :mod:`qs`).
"""

from .gradient import Energy, Objective, energy_autograd
from .jacobian import jacobian_determinant
from .kernel import DEFAULTS, FluidKernel, padded_shape, zero_pad
from .optimize import OptimizeResult, optimize
from .run import RegistrationResult, register, run_lddmm
from .shooting import Geodesic, Shooter
from .warp import identity, sample, warp_image, warp_labels

__all__ = [
    "DEFAULTS", "Energy", "FluidKernel", "Geodesic", "Objective", "OptimizeResult", "RegistrationResult",
    "Shooter", "energy_autograd", "identity", "jacobian_determinant", "optimize", "padded_shape", "zero_pad",
    "register", "run_lddmm", "sample", "warp_image", "warp_labels",
]
