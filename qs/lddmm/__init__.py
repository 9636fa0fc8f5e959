"""LDDMM engine: fluid kernel, EPDiff geodesic shooting, adjoint gradient, optimizer (tensors only).

Modules (pure tensor code: no file I/O; the file runner of ``qs lddmm`` is the stage :mod:`qs.lddmm_run`):

* :mod:`.kernel`       -- :class:`FluidKernel`: ``K = (-alpha Lap - beta grad div + gamma)^{-p}``,
  ``L^p`` and the kernel-shaped low-pass, in the Fourier domain on a periodic grid (mm units)
* :mod:`.epdiff`       -- EPDiff and inverse-map right-hand sides, their VJP, the RK4 stages
* :mod:`.shooting`     -- :class:`Shooter`: RK4 geodesic shooting with a checkpointed exact adjoint
* :mod:`.gradient`     -- the energy ``E(m0)`` and its gradient (:class:`Objective`)
* :mod:`.optimize`     -- L-BFGS or gradient descent on ``m0`` (:func:`optimize`)
* :mod:`.multiscale`   -- coarse-to-fine: images to a grid twice as coarse, momenta back
* :mod:`.registration` -- :func:`lddmm_registration`: one pair, optimised, shot, warped
* :mod:`.warp`         -- sampling images/labels/fields at maps in mm
* :mod:`.jacobian`     -- det J of maps

Conventions: fields are ``(3, I, J, K)``, component ``c`` along voxel axis
``c``, in mm; maps are positions in mm relative to the grid origin (see :mod:`qs`).
"""

from .gradient import Energy, Objective, energy_autograd
from .jacobian import jacobian_determinant
from .kernel import DEFAULTS, SINGLE_SCALE, FluidKernel, padded_shape, zero_pad
from .optimize import OptimizeResult, optimize
from .registration import RegistrationResult, lddmm_registration
from .shooting import Geodesic, Shooter
from .warp import identity, sample, warp_image, warp_labels

__all__ = [
    "DEFAULTS", "SINGLE_SCALE", "Energy", "FluidKernel", "Geodesic", "Objective", "OptimizeResult", "RegistrationResult",
    "Shooter", "energy_autograd", "identity", "jacobian_determinant", "lddmm_registration", "optimize",
    "padded_shape", "sample", "warp_image", "warp_labels", "zero_pad",
]
